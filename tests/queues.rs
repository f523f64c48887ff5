//! Named queues on the in-memory engine: a worker takes only from the queues it serves, in
//! their weights or strict order, within per-queue caps; paused queues wait; a task a worker
//! does not run goes back to its queue (a rolling deploy), then to the dead letters, and a
//! requeued dead letter runs. (Redis has the same cases in `qtasks-redis/tests/queues.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qtasks::backend::{MemoryBroker, MemoryStorage};
use qtasks::{AddOptions, Error, QueueConfig, QueueTasks, TaskStatus};
use serde_json::json;
use std::sync::Mutex;

const WAIT: Duration = Duration::from_secs(20);

#[qtasks::task(queue = "billing")]
async fn invoice(order: u64) -> u64 {
    order
}

#[qtasks::task]
async fn plain(n: u64) -> u64 {
    n
}

#[qtasks::task(router = "reports")]
async fn report(n: u64) -> u64 {
    n
}

/// The order tasks started in, by their label.
static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[qtasks::task]
async fn labelled(label: String) -> String {
    STARTED.lock().unwrap().push(label.clone());
    label
}

static SLOW_NOW: AtomicUsize = AtomicUsize::new(0);
static SLOW_MOST: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task(queue = "slow")]
async fn slow(ms: u64) -> u64 {
    let now = SLOW_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    SLOW_MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    SLOW_NOW.fetch_sub(1, Ordering::SeqCst);
    ms
}

/// Apps on one in-memory backend: worker processes on one server.
fn on_one_backend(configs: Vec<QueueConfig>) -> Vec<QueueTasks> {
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    configs
        .into_iter()
        .map(|config| {
            QueueTasks::builder()
                .config(config)
                .backend(broker.clone(), storage.clone())
                .build()
        })
        .collect()
}

fn serving(queues: &str) -> QueueConfig {
    QueueConfig {
        queues: queues.parse().unwrap(),
        ..QueueConfig::default()
    }
}

async fn waiting_in(app: &QueueTasks, queue: &str) -> u64 {
    app.queues()
        .list()
        .await
        .unwrap()
        .get(queue)
        .map_or(0, |numbers| numbers.waiting)
}

#[tokio::test]
async fn a_worker_takes_only_the_queues_it_serves() {
    let apps = on_one_backend(vec![serving("default"), serving("billing")]);
    let (default_worker, billing_worker) = (&apps[0], &apps[1]);
    default_worker.start().await.unwrap();
    let mut billed = Vec::new();
    for order in 0..5 {
        billed.push(invoice::add_task(default_worker, order).await.unwrap());
    }
    let plain = plain::add_task(default_worker, 7).await.unwrap();
    assert_eq!(plain.wait(WAIT).await.unwrap().returning, Some(json!(7)));
    // The default worker ran its task and left every billing task waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for handle in &billed {
        let record = handle.get().await.unwrap().unwrap();
        assert_eq!(
            record.status,
            TaskStatus::New,
            "not taken by the default worker"
        );
        assert_eq!(record.queue.as_deref(), Some("billing"));
    }
    assert_eq!(waiting_in(default_worker, "billing").await, 5);

    billing_worker.start().await.unwrap();
    for (order, handle) in billed.iter().enumerate() {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.returning, Some(json!(order)));
    }
    let billing_by = billed[0].get().await.unwrap().unwrap().worker;
    let plain_by = plain.get().await.unwrap().unwrap().worker;
    assert!(
        billing_by.is_some() && billing_by != plain_by,
        "{billing_by:?} {plain_by:?}"
    );
    assert_eq!(waiting_in(default_worker, "billing").await, 0);
    for app in &apps {
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_call_picks_its_queue_and_a_bad_name_is_refused() {
    let apps = on_one_backend(vec![serving("emails")]);
    let app = &apps[0];
    app.start().await.unwrap();
    let handle = plain::call(3).queue("emails").add(app).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.queue.as_deref(), Some("emails"));
    assert_eq!(record.status, TaskStatus::Success);
    // The call's queue wins over the task's; `default` is stored as no queue.
    let defaulted = invoice::call(1).queue("default").add(app).await.unwrap();
    assert_eq!(defaulted.get().await.unwrap().unwrap().queue, None);
    let refused = app
        .add_task_with("plain", (1,), (), AddOptions::default().queue("billing:eu"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidQueue { queue, reason } if queue == "billing:eu" && reason.contains("`:`")),
        "{refused}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn strict_order_drains_the_first_queue_first() {
    let apps = on_one_backend(vec![QueueConfig {
        queues: "urgent,default".parse().unwrap(),
        queues_strict: true,
        max_tasks_process: 1,
        ..QueueConfig::default()
    }]);
    let app = &apps[0];
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(labelled::call(format!("later-{i}")).add(app).await.unwrap());
    }
    for i in 0..4 {
        let call = labelled::call(format!("urgent-{i}")).queue("urgent");
        handles.push(call.add(app).await.unwrap());
    }
    app.start().await.unwrap();
    for handle in handles {
        handle.wait(WAIT).await.unwrap();
    }
    let started = STARTED.lock().unwrap().clone();
    let ours: Vec<&String> = started
        .iter()
        .filter(|label| label.starts_with("urgent-") || label.starts_with("later-"))
        .collect();
    let first_later = ours.iter().position(|l| l.starts_with("later-")).unwrap();
    assert!(
        ours[..first_later].len() == 4
            && ours[first_later..].iter().all(|l| l.starts_with("later-")),
        "every urgent task before any later one: {ours:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_capped_queue_runs_at_most_its_cap_while_others_use_the_free_slots() {
    let apps = on_one_backend(vec![QueueConfig {
        queues: "slow,default".parse().unwrap(),
        queue_concurrency: "slow:1".parse().unwrap(),
        max_tasks_process: 4,
        ..QueueConfig::default()
    }]);
    let app = &apps[0];
    let mut slow_ones = Vec::new();
    for _ in 0..4 {
        slow_ones.push(slow::add_task(app, 150).await.unwrap());
    }
    app.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The slots the cap leaves free run other queues' tasks meanwhile.
    let quick = plain::add_task(app, 1).await.unwrap();
    let quick_done = quick.wait(WAIT).await.unwrap();
    let last_slow = slow_ones.last().unwrap();
    assert_eq!(
        last_slow.get().await.unwrap().unwrap().status,
        TaskStatus::New,
        "the quick task ended before the capped queue drained"
    );
    assert_eq!(quick_done.status, TaskStatus::Success);
    for handle in &slow_ones {
        handle.wait(WAIT).await.unwrap();
    }
    assert_eq!(
        SLOW_MOST.load(Ordering::SeqCst),
        1,
        "never two slow tasks at once"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_paused_queue_waits_until_it_is_resumed() {
    let apps = on_one_backend(vec![serving("billing,default")]);
    let app = &apps[0];
    app.start().await.unwrap();
    app.queues().pause("billing").await.unwrap();
    let held = invoice::add_task(app, 9).await.unwrap();
    let other = plain::add_task(app, 1).await.unwrap();
    other.wait(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(held.get().await.unwrap().unwrap().status, TaskStatus::New);
    let queues = app.queues().list().await.unwrap();
    assert!(
        queues["billing"].paused && queues["billing"].waiting == 1,
        "{queues:?}"
    );
    assert!(!queues["default"].paused);
    app.queues().resume("billing").await.unwrap();
    assert_eq!(held.wait(WAIT).await.unwrap().returning, Some(json!(9)));
    assert!(app.queues().pause("no|pipes").await.is_err());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_this_worker_does_not_run_goes_back_for_a_worker_that_does() {
    // The old worker of a rolling deploy: it does not run `report` (not among its routers).
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let old = QueueTasks::builder()
        .backend(broker.clone(), storage.clone())
        .routers(["other"])
        .build();
    old.start().await.unwrap();
    let handle = report::add_task(&old, 5).await.unwrap();
    // Handed back, not failed: it waits in its queue again.
    let deadline = tokio::time::Instant::now() + WAIT;
    let record = loop {
        let record = handle.get().await.unwrap().unwrap();
        if record.hand_backs >= 1 || tokio::time::Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.hand_backs, 1);
    assert_eq!(record.status, TaskStatus::New);
    assert_eq!(record.traceback, None);
    // The deploy goes on: the old worker stops, the new one knows the task and runs it.
    old.stop().await.unwrap();
    let new = QueueTasks::builder()
        .backend(broker.clone(), storage.clone())
        .build();
    new.start().await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success, "{:?}", done.traceback);
    assert_eq!(done.returning, Some(json!(5)));
    new.stop().await.unwrap();
}

#[tokio::test]
async fn past_its_hand_backs_a_task_is_set_aside_and_a_requeued_letter_runs() {
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let old = QueueTasks::builder()
        .config(QueueConfig {
            unknown_task_hand_backs: 1,
            ..QueueConfig::default()
        })
        .backend(broker.clone(), storage.clone())
        .routers(["other"])
        .build();
    old.start().await.unwrap();
    let handle = report::add_task(&old, 8).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Error);
    let reason = record.traceback.unwrap();
    assert!(
        reason
            .starts_with("UnknownTask: task `report` belongs to a router this worker does not run")
            && reason.contains("handed back 1 time(s)")
            && reason.contains("dead letters"),
        "{reason}"
    );
    let letters = old.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].entry.starts_with("report:"), "{:?}", letters[0]);
    assert_eq!(old.stats().await.unwrap().queue.unwrap().dead_letters, 1);
    old.stop().await.unwrap();

    // Deployed now: the letter is queued again and runs.
    let new = QueueTasks::builder()
        .backend(broker.clone(), storage.clone())
        .build();
    new.start().await.unwrap();
    assert!(new.dead_letters().resolve(&letters[0], true).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    let record = loop {
        let record = handle.get().await.unwrap().unwrap();
        if record.status == TaskStatus::Success || tokio::time::Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.returning, Some(json!(8)), "{record:?}");
    assert!(new.dead_letters().list(10).await.unwrap().is_empty());
    new.stop().await.unwrap();
}

#[tokio::test]
async fn weights_share_the_takes_between_busy_queues() {
    let apps = on_one_backend(vec![QueueConfig {
        queues: "heavy:3,light:1".parse().unwrap(),
        max_tasks_process: 1,
        ..QueueConfig::default()
    }]);
    let app = &apps[0];
    let mut handles = Vec::new();
    for i in 0..40 {
        handles.push(
            labelled::call(format!("heavy-{i}"))
                .queue("heavy")
                .add(app)
                .await
                .unwrap(),
        );
        handles.push(
            labelled::call(format!("light-{i}"))
                .queue("light")
                .add(app)
                .await
                .unwrap(),
        );
    }
    app.start().await.unwrap();
    for handle in &handles {
        handle.wait(WAIT).await.unwrap();
    }
    let started = STARTED.lock().unwrap().clone();
    let ours: Vec<&String> = started
        .iter()
        .filter(|l| l.starts_with("heavy-") || l.starts_with("light-"))
        .collect();
    // While both queues are busy (the first 40 takes), heavy leads three in four.
    let heavy = ours[..40]
        .iter()
        .filter(|l| l.starts_with("heavy-"))
        .count();
    assert!((28..=32).contains(&heavy), "{heavy} of 40: {ours:?}");
    app.stop().await.unwrap();
}

/// A broker that keeps no named queues: the in-memory one, seen only through the required
/// methods (as a custom engine written before queues would be).
struct DefaultQueueOnly(MemoryBroker);

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for DefaultQueueOnly {
    fn name(&self) -> &str {
        "DefaultQueueOnly"
    }
}

#[qtasks::async_trait]
impl qtasks::backend::Broker for DefaultQueueOnly {
    async fn add(&self, task: qtasks::QueuedTask) -> Result<(), qtasks::backend::BackendError> {
        self.0.add(task).await
    }

    async fn next_batch(
        &self,
        max: usize,
    ) -> Result<Vec<qtasks::backend::Delivery>, qtasks::backend::BackendError> {
        self.0.next_batch(max).await
    }

    async fn finish(
        &self,
        delivery: &qtasks::backend::Delivery,
        outcome: qtasks::Outcome,
    ) -> Result<(), qtasks::backend::BackendError> {
        self.0.finish(delivery, outcome).await
    }

    async fn flush_all(&self) -> Result<(), qtasks::backend::BackendError> {
        self.0.flush_all().await
    }
}

#[tokio::test]
async fn an_engine_without_named_queues_refuses_them_clearly() {
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(DefaultQueueOnly(MemoryBroker::new(Arc::clone(&storage))));
    // A worker that serves a queue its broker cannot keep does not start.
    let app = QueueTasks::builder()
        .queues("billing")
        .backend(broker.clone(), storage.clone())
        .build();
    let error = app.start().await.unwrap_err();
    assert!(
        error.to_string().contains("keeps no named queues"),
        "{error}"
    );
    // Nor is a task added to one: it would run on a default worker.
    let app = QueueTasks::builder().backend(broker, storage).build();
    let error = invoice::add_task(&app, 1).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidQueue { queue, .. } if queue == "billing"),
        "{error}"
    );
    assert!(
        error.to_string().contains("keeps no named queues"),
        "{error}"
    );
}
