//! What travels through RabbitMQ: the queue names, the message body (Python QTasks' JSON), the
//! mapping of priorities onto AMQP's, and the delay queues.

use std::time::Duration;

use qtasks_core::QueuedTask;

/// The highest AMQP priority of the task queue (`x-max-priority`). RabbitMQ recommends a few
/// levels: each costs an internal queue.
pub(crate) const MAX_PRIORITY: u8 = 10;

/// The qtasks priority that maps onto the middle AMQP level; the default priority 0 sits
/// there, with five levels on either side.
const MIDDLE: i64 = (MAX_PRIORITY / 2) as i64;

/// The queue names of one app (`N` = the app name).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `N:task_queue`, the original's queue.
    pub(crate) queue: String,
    /// `N:qtasks:dead`: messages that are not tasks, with the reason in a header.
    pub(crate) dead: String,
    /// `N:qtasks:cancel` (fanout exchange): cancel requests for running tasks.
    pub(crate) cancel: String,
    prefix: String,
}

impl Names {
    pub(crate) fn new(app: &str) -> Self {
        Names {
            queue: format!("{app}:task_queue"),
            dead: format!("{app}:qtasks:dead"),
            cancel: format!("{app}:qtasks:cancel"),
            prefix: app.to_owned(),
        }
    }

    /// The delay queue whose messages wait `tier` before they return to the task queue.
    pub(crate) fn delay(&self, tier: Duration) -> String {
        format!("{}:qtasks:delay:{}", self.prefix, tier.as_millis())
    }

    /// The AMQP queue of a named queue (`None`, or `default`: the original's task queue).
    pub(crate) fn queue_of(&self, queue: Option<&str>) -> String {
        match queue {
            None | Some(qtasks_core::queues::DEFAULT_QUEUE) => self.queue.clone(),
            Some(name) => format!("{}:qtasks:q:{name}", self.prefix),
        }
    }

    /// The delay queue of `tier` whose messages return to the named queue `queue`.
    pub(crate) fn delay_of(&self, tier: Duration, queue: Option<&str>) -> String {
        match queue {
            None | Some(qtasks_core::queues::DEFAULT_QUEUE) => self.delay(tier),
            Some(name) => format!("{}:{name}", self.delay(tier)),
        }
    }
}

/// The AMQP priority of a qtasks priority: lower qtasks numbers run first, higher AMQP
/// numbers do. Priorities -5 to 5 each get a level; those beyond share the end levels.
pub(crate) fn amqp_priority(priority: i64) -> u8 {
    (MIDDLE - priority).clamp(0, i64::from(MAX_PRIORITY)) as u8
}

/// The body of a task's message: the original's JSON object (`uuid`, `task_name`, `priority`,
/// `args`, `kwargs`, `created_at`) with qtasks' own fields beside it when set.
pub(crate) fn encode(task: &QueuedTask) -> Vec<u8> {
    serde_json::to_vec(task).expect("a task's JSON values always serialize")
}

/// The latest time a message may name (Unix seconds, the year 5138): past it a time is no
/// time but a bad number, and would overflow a wait.
const LATEST_TIME: f64 = 1e11;

/// Reads a message body back, or says why it is not a task. Every number a worker computes
/// with is checked here: a message is data from the network, and a time out of range must be
/// a dead letter, not a panic in the fetch loop.
pub(crate) fn decode(body: &[u8]) -> Result<QueuedTask, String> {
    let shown = || -> String { String::from_utf8_lossy(body).chars().take(80).collect() };
    let task: QueuedTask = serde_json::from_slice(body)
        .map_err(|e| format!("the message is not a qtasks task ({e}): {:?}", shown()))?;
    let is_time = |at: f64| at.is_finite() && (0.0..=LATEST_TIME).contains(&at);
    if !is_time(task.created_at) {
        return Err(format!(
            "the message's `created_at` ({}) is not a time: {:?}",
            task.created_at,
            shown()
        ));
    }
    if let Some(queue) = &task.queue
        && let Err(reason) = qtasks_core::queues::check_queue_name(queue)
    {
        return Err(format!(
            "the message's queue is not one: {reason}: {:?}",
            shown()
        ));
    }
    if let Some(key) = &task.rate_key
        && let Err(reason) = qtasks_core::limits::check_rate_key(key)
    {
        return Err(format!("the message's rate key: {reason}: {:?}", shown()));
    }
    if let Some(run_at) = task.run_at.filter(|at| !is_time(*at)) {
        return Err(format!(
            "the message's `run_at` ({run_at}) is not a time: {:?}",
            shown()
        ));
    }
    Ok(task)
}

/// The header that carries how many deliveries of a task's attempt ended with their worker
/// (it died or lost its connection while it ran the task): RabbitMQ hands a message out again
/// unchanged, so the count travels in a copy published for each such end.
pub(crate) const DELIVERIES_HEADER: &str = "x-qtasks-deliveries";

/// The deliveries a message's header counts (0 without one, or for a value that is no count).
pub(crate) fn deliveries_of(properties: &lapin::BasicProperties) -> u32 {
    use lapin::types::AMQPValue;
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(DELIVERIES_HEADER))
    else {
        return 0;
    };
    let count = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// The header that carries how long a delayed task has still to wait (ms) once the hop it
/// is published for is over: the producer turns its `run_at` into a wait by its own clock,
/// and each hop through a delay queue (timed by RabbitMQ) takes its tier off, so no other
/// process's clock moves the due time. A message without it (another producer) is timed by
/// its `run_at` against the consumer's clock.
pub(crate) const WAIT_HEADER: &str = "x-qtasks-wait-ms";

/// The wait a message's header carries, if it carries one that is a number (a negative one is
/// no wait; one beyond any tier is held to the longest tier's hops like any other).
pub(crate) fn wait_of(properties: &lapin::BasicProperties) -> Option<Duration> {
    use lapin::types::AMQPValue;
    let millis = match properties.headers().as_ref()?.inner().get(WAIT_HEADER)? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        _ => return None,
    };
    Some(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
}

/// How long from now until `at` (Unix seconds); zero for a time past, or one no wait can
/// hold.
pub(crate) fn wait_until(at: f64, now: f64) -> Duration {
    Duration::try_from_secs_f64((at - now).max(0.0)).unwrap_or_default()
}

/// The shortest delay queue: a task due sooner waits in the worker that took it instead.
pub(crate) const SHORTEST_TIER: Duration = Duration::from_millis(32);

/// The longest delay queue (about 18.6 hours); a longer wait goes round it again.
const LONGEST_TIER: Duration = Duration::from_millis(1 << 26);

/// The delay queue for a task that may run only after `wait`: the longest power-of-two tier
/// (32 ms .. 2^26 ms) that does not overshoot. Every message of one tier waits as long, so
/// they expire in order, as RabbitMQ expires them (from the head of a queue only); a task
/// returns to the task queue after each hop and goes on to the next tier until it is due.
/// `None`: due within [`SHORTEST_TIER`].
pub(crate) fn delay_tier(wait: Duration) -> Option<Duration> {
    if wait < SHORTEST_TIER {
        return None;
    }
    let millis = wait.as_millis().min(LONGEST_TIER.as_millis()) as u64;
    // The highest power of two not above `millis`.
    Some(Duration::from_millis(1 << (63 - millis.leading_zeros())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_qtasks_priorities_get_higher_amqp_levels() {
        assert_eq!(amqp_priority(0), 5);
        assert!(amqp_priority(-1) > amqp_priority(0));
        assert!(amqp_priority(4) < amqp_priority(0));
        assert_eq!(amqp_priority(-100), MAX_PRIORITY);
        assert_eq!(amqp_priority(100), 0);
    }

    #[test]
    fn delays_pick_the_longest_tier_that_does_not_overshoot() {
        assert_eq!(delay_tier(Duration::from_millis(10)), None);
        assert_eq!(
            delay_tier(Duration::from_millis(32)),
            Some(Duration::from_millis(32))
        );
        assert_eq!(
            delay_tier(Duration::from_millis(1500)),
            Some(Duration::from_millis(1024))
        );
        assert_eq!(
            delay_tier(Duration::from_secs(7 * 24 * 3600)),
            Some(LONGEST_TIER)
        );
    }

    #[test]
    fn the_originals_body_decodes_and_bad_bytes_say_why() {
        let body = br#"{"uuid":"9b2f1d8e-3c3a-4f57-9f8e-2d6c4a1b7e10","task_name":"add","priority":0,"args":[2,3],"kwargs":{},"created_at":1700000000.5}"#;
        let task = decode(body).unwrap();
        assert_eq!(task.task_name, "add");
        assert_eq!(task.args, vec![serde_json::json!(2), serde_json::json!(3)]);
        let error = decode(b"\xff\xfe not json").unwrap_err();
        assert!(error.contains("not a qtasks task"), "{error}");
        let round = decode(&encode(&task)).unwrap();
        assert_eq!(round.uuid, task.uuid);
    }

    #[test]
    fn numbers_out_of_range_are_refused_with_the_field_named() {
        for (body, field) in [
            (
                r#"{"uuid":"5a469176-81b0-4c8a-996d-22ea5df7c4cf","task_name":"t","priority":0,"args":[],"kwargs":{},"created_at":1.0,"run_at":1e300}"#,
                "run_at",
            ),
            (
                r#"{"uuid":"5a469176-81b0-4c8a-996d-22ea5df7c4cf","task_name":"t","priority":0,"args":[],"kwargs":{},"created_at":-5.0}"#,
                "created_at",
            ),
        ] {
            let error = decode(body.as_bytes()).expect_err(body);
            assert!(error.contains(field), "{error}");
        }
        assert_eq!(wait_until(1e300, 0.0), Duration::ZERO, "no panic");
        assert_eq!(wait_until(f64::NAN, 0.0), Duration::ZERO, "no panic");
    }
}
