//! Scheduling: delays, periodic schedules under tokio's paused clock (exact counts over
//! hundreds of slots, several workers, missed slots, time zones and daylight saving time), and
//! the attribute form.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qtasks::backend::{BackendError, MemoryBroker, MemoryStorage};
use qtasks::components::MemoryGlobalConfig;
use qtasks::redis::RedisOptions;
use qtasks::schedule::{Schedule, TokioClock};
use qtasks::{AddOptions, QueueConfig, QueueTasks, TaskCall, TaskStatus};
use qtasks_test_support::WAIT;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;

/// Runs per label, counted by the task itself.
static RUNS: LazyLock<Mutex<HashMap<String, Arc<AtomicU64>>>> = LazyLock::new(Mutex::default);

fn runs(label: &str) -> Arc<AtomicU64> {
    Arc::clone(RUNS.lock().unwrap().entry(label.to_owned()).or_default())
}

#[qtasks::task]
async fn sched_count(label: String) {
    runs(&label).fetch_add(1, Ordering::SeqCst);
}

/// Counted under "nightly" each time its cron fires (in the tests below: never, the
/// expression is for the attribute's compile-time check and the inspect listing).
#[qtasks::task(cron = "0 0 3 * * *")]
async fn sched_nightly() {
    runs("nightly").fetch_add(1, Ordering::SeqCst);
}

fn secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A time well in the future, on a whole minute: slots are easy to count from it.
const T0: u64 = 1_900_000_020;

/// `n` apps on one in-memory backend (as worker processes share Redis), each with the paused
/// clock reading `start`.
fn workers_on_one_backend(n: usize, start: SystemTime) -> Vec<QueueTasks> {
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let global = Arc::new(MemoryGlobalConfig::new());
    (0..n)
        .map(|_| {
            let app = QueueTasks::builder()
                .config(QueueConfig {
                    max_tasks_process: 4,
                    ..Default::default()
                })
                .backend(broker.clone(), storage.clone())
                .global_config(global.clone())
                .build();
            app.schedules()
                .set_clock(Arc::new(TokioClock::starting_at(start)));
            app
        })
        .collect()
}

fn count_call(label: &str) -> TaskCall {
    sched_count::call(label.to_owned()).untyped()
}

#[tokio::test(start_paused = true)]
async fn three_workers_fire_each_of_300_slots_exactly_once() {
    let label = "three_workers_300";
    let apps = workers_on_one_backend(3, secs(T0) + Duration::from_millis(500));
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(secs(T0 + 10))
        .until(secs(T0 + 309));
    for app in &apps {
        app.schedules()
            .add("tick", schedule.clone(), count_call(label))
            .unwrap();
        app.start().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(400)).await;
    for app in &apps {
        app.stop().await.unwrap();
    }
    assert_eq!(runs(label).load(Ordering::SeqCst), 300);
    let infos = apps[0].schedules().recorded().await.unwrap();
    let tick = infos.iter().find(|info| info.name == "tick").unwrap();
    assert_eq!(tick.last_slot, Some((T0 + 309) as f64));
    assert_eq!(tick.next_at, None, "the schedule has ended");
    assert!(tick.last_uuid.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_worker_down_during_slots_leaves_them_to_another() {
    let label = "down_during_slots";
    let apps = workers_on_one_backend(2, secs(T0) + Duration::from_millis(500));
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(secs(T0 + 5))
        .until(secs(T0 + 104));
    for app in &apps {
        app.schedules()
            .add("tick", schedule.clone(), count_call(label))
            .unwrap();
        app.start().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    apps[0].stop().await.unwrap(); // one of the two goes away half way
    tokio::time::sleep(Duration::from_secs(100)).await;
    apps[1].stop().await.unwrap();
    assert_eq!(runs(label).load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn missed_slots_are_skipped_or_caught_up_as_asked() {
    for (label, schedule, expected) in [
        // 21 slots on time (the one half a second before the start too), 29 missed while no
        // worker ran, 21 on time again; catching up fires the newest 3 missed.
        ("skip", Schedule::every(Duration::from_secs(1)), 42),
        (
            "catch_up",
            Schedule::every(Duration::from_secs(1)).catch_up(3),
            45,
        ),
    ] {
        let apps = workers_on_one_backend(1, secs(T0) + Duration::from_millis(500));
        let app = &apps[0];
        app.schedules()
            .add(label, schedule, count_call(label))
            .unwrap();
        app.start().await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        app.stop().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        app.start().await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        app.stop().await.unwrap();
        assert_eq!(runs(label).load(Ordering::SeqCst), expected, "{label}");
    }
}

#[tokio::test(start_paused = true)]
async fn catching_up_from_an_explicit_start_fires_the_slots_before_the_first_worker() {
    // The first worker starts 4.5 s after the schedule's start: before any slot fired, only
    // an explicit start tells which slots were missed. Without catch-up they stay skipped.
    for (label, catch_up, expected) in [("from_start", true, 10), ("from_start_skip", false, 6)] {
        let apps = workers_on_one_backend(1, secs(T0) + Duration::from_millis(4500));
        let schedule = Schedule::every(Duration::from_secs(1))
            .starting_at(secs(T0))
            .until(secs(T0 + 9));
        let schedule = if catch_up {
            schedule.catch_up(100)
        } else {
            schedule
        };
        apps[0]
            .schedules()
            .add(label, schedule, count_call(label))
            .unwrap();
        apps[0].start().await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        apps[0].stop().await.unwrap();
        assert_eq!(runs(label).load(Ordering::SeqCst), expected, "{label}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_schedule_does_not_fire_until_resumed() {
    let label = "paused";
    let apps = workers_on_one_backend(1, secs(T0) + Duration::from_millis(500));
    let app = &apps[0];
    app.schedules()
        .add(
            "tick",
            Schedule::every(Duration::from_secs(1)),
            count_call(label),
        )
        .unwrap();
    app.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    app.schedules().pause("tick").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let infos = app.schedules().recorded().await.unwrap();
    assert!(
        infos.iter().any(|info| info.name == "tick" && info.paused),
        "{infos:?}"
    );
    app.schedules().resume("tick").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    app.stop().await.unwrap();
    // 11 before the pause (the slot half a second before the start too), 10 after it.
    assert_eq!(runs(label).load(Ordering::SeqCst), 21);
}

#[tokio::test(start_paused = true)]
async fn a_daily_cron_in_a_time_zone_follows_its_wall_clock_across_daylight_saving() {
    // Europe/Berlin moves its clocks forward on 2026-03-29 (02:00 → 03:00) and back on
    // 2026-10-25 (03:00 → 02:00). A job at 02:30 local: the spring day has no 02:30, so it
    // fires once when the clocks have moved (03:00 local, as cron does); the autumn day has two
    // 02:30s, and it fires once.
    let daily = Schedule::cron("0 30 2 * * *")
        .unwrap()
        .in_time_zone("Europe/Berlin")
        .unwrap();
    let spring = daily.slots_between(secs(1_774_569_600), secs(1_774_569_600 + 4 * 86_400), 10); // 2026-03-27 00:00 UTC, 4 days
    assert_eq!(spring.len(), 4, "{spring:?}");
    let autumn = daily.slots_between(secs(1_792_713_600), secs(1_792_713_600 + 4 * 86_400), 10); // 2026-10-23 00:00 UTC
    assert_eq!(autumn.len(), 4, "{autumn:?}");
    // 02:30 CET is 01:30 UTC; 02:30 CEST is 00:30 UTC.
    let utc_hour =
        |t: &SystemTime| (t.duration_since(UNIX_EPOCH).unwrap().as_secs() % 86_400) / 3600;
    assert_eq!(utc_hour(&spring[0]), 1);
    assert_eq!(
        utc_hour(&spring[2]),
        1,
        "03:00 CEST, the first time after the gap"
    );
    assert_eq!(utc_hour(&spring[3]), 0);

    // The same, fired by a worker over the spring week under the paused clock.
    let label = "berlin";
    let apps = workers_on_one_backend(1, secs(1_774_569_600));
    apps[0]
        .schedules()
        .add(label, daily, count_call(label))
        .unwrap();
    apps[0].start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4 * 86_400)).await;
    apps[0].stop().await.unwrap();
    assert_eq!(runs(label).load(Ordering::SeqCst), 4);

    // Nine in the morning in New York: 14:00 UTC in winter, 13:00 UTC in summer.
    let new_york = Schedule::cron("0 9 * * *")
        .unwrap()
        .in_time_zone("America/New_York")
        .unwrap();
    let winter = new_york.next_after(secs(1_767_225_600)).unwrap(); // 2026-01-01
    let summer = new_york.next_after(secs(1_782_864_000)).unwrap(); // 2026-07-01
    assert_eq!((utc_hour(&winter), utc_hour(&summer)), (14, 13));
}

#[tokio::test]
async fn cron_tasks_and_schedules_show_in_inspect() {
    let app = QueueTasks::new();
    app.schedules()
        .add(
            "reports",
            Schedule::every(Duration::from_secs(3600)),
            count_call("unused"),
        )
        .unwrap();
    let inspection = app.inspect().await;
    let names: Vec<&str> = inspection
        .schedules
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        names.contains(&"reports") && names.contains(&"sched_nightly"),
        "{names:?}"
    );
    let nightly = inspection
        .schedules
        .iter()
        .find(|s| s.name == "sched_nightly")
        .unwrap();
    assert_eq!(nightly.task, "sched_nightly");
    assert!(nightly.when.contains("0 0 3 * * *"), "{}", nightly.when);
    assert!(nightly.next_at.is_some());
    // Bad names and duplicates are refused.
    assert!(
        app.schedules()
            .add(
                "a:b",
                Schedule::every(Duration::from_secs(1)),
                count_call("x")
            )
            .is_err()
    );
    let zero = Schedule::every(Duration::ZERO);
    assert!(app.schedules().add("zero", zero, count_call("x")).is_err());
}

/// A delayed task stays `new` until its time, on this backend; a cancelled one never runs.
async fn delays_hold_tasks_until_their_time(app: QueueTasks, label: &str) {
    app.start().await.unwrap();
    let started = tokio::time::Instant::now();
    let later = app
        .add_task_with(
            "sched_count",
            (label,),
            (),
            AddOptions::default().delay(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let doomed = sched_count::call(format!("{label}-doomed"))
        .delay(Duration::from_millis(1000))
        .add(&app)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.get(later.uuid()).await.unwrap().unwrap().status,
        TaskStatus::New
    );
    assert!(app.cancel(doomed.uuid(), "not wanted").await.unwrap());
    let stats = app.stats().await.unwrap().queue.unwrap();
    assert!(stats.delayed >= 1, "{stats:?}");
    let done = later.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(runs(&format!("{label}-doomed")).load(Ordering::SeqCst), 0);
    assert_eq!(
        app.get(doomed.uuid()).await.unwrap().unwrap().status,
        TaskStatus::Cancel
    );
    assert_eq!(runs(label).load(Ordering::SeqCst), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn memory_delays_hold_tasks_until_their_time() {
    delays_hold_tasks_until_their_time(QueueTasks::new(), "memory_delay").await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_delays_hold_tasks_until_their_time() {
    let Some(url) = redis_url("redis_delays_hold_tasks_until_their_time") else {
        return;
    };
    let prefix = unique_prefix("delay");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    delays_hold_tasks_until_their_time(app.clone(), &prefix).await;
    app.flush_all().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_firings_but_each_slot_still_fires_once() {
    let label = "jitter";
    let apps = workers_on_one_backend(2, secs(T0) + Duration::from_millis(500));
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(secs(T0 + 5))
        .until(secs(T0 + 54))
        .jitter(Duration::from_millis(800));
    for app in &apps {
        app.schedules()
            .add("tick", schedule.clone(), count_call(label))
            .unwrap();
        app.start().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(70)).await;
    for app in &apps {
        app.stop().await.unwrap();
    }
    assert_eq!(runs(label).load(Ordering::SeqCst), 50);
}

#[tokio::test(start_paused = true)]
async fn a_timer_ported_from_python_adds_on_its_triggers() {
    let apps = workers_on_one_backend(1, secs(T0) + Duration::from_millis(500));
    let app = &apps[0];
    let mut timer = qtasks::schedule::Timer::new(app);
    let interval = Schedule::every(Duration::from_secs(10))
        .starting_at(secs(T0 + 10))
        .until(secs(T0 + 100));
    timer
        .add_task("sched_count", interval, ("timer_interval",), ())
        .unwrap()
        .add_task(
            "sched_count",
            Schedule::at(secs(T0 + 42)),
            ("timer_date",),
            (),
        )
        .unwrap();
    let names: Vec<String> = app
        .schedules()
        .registered()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        names.contains(&"sched_count".to_owned()) && names.contains(&"sched_count#2".to_owned())
    );
    app.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    app.stop().await.unwrap();
    assert_eq!(runs("timer_interval").load(Ordering::SeqCst), 10);
    assert_eq!(runs("timer_date").load(Ordering::SeqCst), 1);
}

/// A broker whose first `fail_first` adds fail (every add, with `u64::MAX`: a worker that dies
/// between claiming a slot and adding its task; a few: an outage, or a reply lost); the rest is
/// the shared in-memory broker's.
struct AddFails {
    inner: Arc<MemoryBroker>,
    failed: AtomicU64,
    fail_first: u64,
    /// Fails every add of this task instead (and only it).
    only: Option<qtasks::Uuid>,
}

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for AddFails {
    fn name(&self) -> &str {
        "AddFails"
    }
}

#[qtasks::async_trait]
impl qtasks::backend::Broker for AddFails {
    async fn add(&self, task: qtasks::QueuedTask) -> Result<(), BackendError> {
        if let Some(only) = self.only {
            if task.uuid != only {
                return self.inner.add(task).await;
            }
            self.failed.fetch_add(1, Ordering::SeqCst);
        } else if self.failed.fetch_add(1, Ordering::SeqCst) >= self.fail_first {
            self.failed.fetch_sub(1, Ordering::SeqCst);
            return self.inner.add(task).await;
        }
        Err(BackendError::new("test", "died before adding"))
    }
    async fn next_batch(&self, max: usize) -> Result<Vec<qtasks::backend::Delivery>, BackendError> {
        self.inner.next_batch(max).await
    }
    async fn finish(
        &self,
        delivery: &qtasks::backend::Delivery,
        outcome: qtasks::Outcome,
    ) -> Result<(), BackendError> {
        self.inner.finish(delivery, outcome).await
    }
    async fn flush_all(&self) -> Result<(), BackendError> {
        self.inner.flush_all().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slot_whose_claimer_did_not_add_it_is_added_by_another_worker() {
    let label = "recovered";
    let start = secs(T0) + Duration::from_millis(500);
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let global = Arc::new(MemoryGlobalConfig::new());
    let failing = Arc::new(AddFails {
        inner: broker.clone(),
        failed: AtomicU64::new(0),
        fail_first: u64::MAX,
        only: None,
    });
    let build = |broker: Arc<dyn qtasks::backend::Broker>| {
        let app = QueueTasks::builder()
            .backend(broker, storage.clone())
            .global_config(global.clone())
            .build();
        app.schedules()
            .set_clock(Arc::new(TokioClock::starting_at(start)));
        app
    };
    // The failing worker starts first, so it wins the claims (its timers fire first).
    let apps = [build(failing.clone()), build(broker.clone())];
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(secs(T0 + 5))
        .until(secs(T0 + 24));
    for app in &apps {
        app.schedules()
            .add("tick", schedule.clone(), count_call(label))
            .unwrap();
        app.start().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    for app in &apps {
        app.stop().await.unwrap();
    }
    assert!(
        failing.failed.load(Ordering::SeqCst) > 0,
        "the failing worker never won a slot"
    );
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        20,
        "every slot ran once"
    );
}

/// A lone worker whose adds fail for a while (the storage or broker down, a reply lost) adds
/// each slot's task again until it is there: no slot is lost (found by the fault harness: a
/// slot's add that failed was never tried again).
#[tokio::test(start_paused = true)]
async fn a_lone_worker_adds_a_slot_again_after_its_add_failed() {
    let label = "added_again";
    let start = secs(T0) + Duration::from_millis(500);
    let storage = Arc::new(MemoryStorage::new());
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let flaky = Arc::new(AddFails {
        inner: broker,
        failed: AtomicU64::new(0),
        fail_first: 12,
        only: None,
    });
    let app = QueueTasks::builder()
        .backend(flaky.clone(), storage)
        .global_config(Arc::new(MemoryGlobalConfig::new()))
        .build();
    app.schedules()
        .set_clock(Arc::new(TokioClock::starting_at(start)));
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(secs(T0 + 5))
        .until(secs(T0 + 24));
    app.schedules()
        .add("tick", schedule, count_call(label))
        .unwrap();
    app.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(90)).await;
    app.stop().await.unwrap();
    assert!(
        flaky.failed.load(Ordering::SeqCst) >= 12,
        "the adds never failed"
    );
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        20,
        "every slot ran once"
    );
}

/// One worker's two lives on one backend, with one paused clock and the schedule `tick`
/// (every second, slots 5 to 24 after `T0`, catching up to 100): `life(broker)` builds the
/// worker anew over `broker` (the shared one, or one that fails some adds).
struct TwoLives {
    storage: Arc<MemoryStorage>,
    broker: Arc<MemoryBroker>,
    global: Arc<MemoryGlobalConfig>,
    clock: Arc<TokioClock>,
    label: &'static str,
}

impl TwoLives {
    fn new(label: &'static str) -> Self {
        let storage = Arc::new(MemoryStorage::new());
        TwoLives {
            broker: Arc::new(MemoryBroker::new(Arc::clone(&storage))),
            storage,
            global: Arc::new(MemoryGlobalConfig::new()),
            clock: Arc::new(TokioClock::starting_at(
                secs(T0) + Duration::from_millis(500),
            )),
            label,
        }
    }

    fn life(&self, broker: Arc<dyn qtasks::backend::Broker>) -> QueueTasks {
        let schedule = Schedule::every(Duration::from_secs(1))
            .starting_at(secs(T0 + 5))
            .until(secs(T0 + 24))
            .catch_up(100);
        let app = QueueTasks::builder()
            .backend(broker, self.storage.clone())
            .global_config(self.global.clone())
            .build();
        app.schedules().set_clock(self.clock.clone());
        app.schedules()
            .add("tick", schedule, count_call(self.label))
            .unwrap();
        app
    }
}

/// A lone worker that dies between claiming a slot and adding its task, after later slots were
/// added, adds the slot when it starts again: the check a worker keeps for such a slot dies
/// with it, and catching up starts after the last slot recorded (found by the fault harness: a
/// worker killed between its claim and its add, with no other worker left to check the slot).
#[tokio::test(start_paused = true)]
async fn a_worker_that_starts_again_adds_a_slot_its_last_life_claimed_and_never_added() {
    let label = "recovered_at_start";
    let lives = TwoLives::new(label);
    let lost = qtasks::schedule::slot_task_id("QueueTasks", "tick", secs(T0 + 5));
    let dying = Arc::new(AddFails {
        inner: lives.broker.clone(),
        failed: AtomicU64::new(0),
        fail_first: 0,
        only: Some(lost),
    });
    // Its first life claims slot 5 and cannot add it (it keeps trying: the tries die with
    // it), adds slots 6 and 7, and is gone before slot 8.
    let first_life = lives.life(dying.clone());
    first_life.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(7_300)).await;
    first_life.stop().await.unwrap();
    assert!(
        dying.failed.load(Ordering::SeqCst) > 0,
        "slot 5 was never tried"
    );
    assert_eq!(runs(label).load(Ordering::SeqCst), 2, "slots 6 and 7 ran");

    let second_life = lives.life(lives.broker.clone());
    second_life.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    second_life.stop().await.unwrap();
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        20,
        "every slot ran once, slot 5 among them"
    );
}

/// A worker that starts again checks the slots before it by their marks, not by their
/// records: a slot whose record was deleted since it ran, and a slot that passed while the
/// schedule was paused, do not run (the check would otherwise read both as never added).
#[tokio::test(start_paused = true)]
async fn a_worker_that_starts_again_runs_no_deleted_or_paused_slot() {
    let label = "not_again_at_start";
    let lives = TwoLives::new(label);
    // Slots 5 to 9 run; 10 to 12 pass paused; 13 runs; the records of 5 to 9 are deleted.
    let first_life = lives.life(lives.broker.clone());
    first_life.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(9_300)).await;
    first_life.schedules().pause("tick").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    first_life.schedules().resume("tick").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    first_life.stop().await.unwrap();
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        6,
        "slots 5 to 9 and 13 ran"
    );
    for slot in 5..=9 {
        let uuid = qtasks::schedule::slot_task_id("QueueTasks", "tick", secs(T0 + slot));
        assert!(
            first_life.records().delete(uuid).await.unwrap(),
            "slot {slot}'s record"
        );
    }

    let second_life = lives.life(lives.broker.clone());
    second_life.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    second_life.stop().await.unwrap();
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        17,
        "slots 14 to 24 ran, and no slot again or paused"
    );
}

/// The in-memory global config, but the claim of one key fails once (the backend restarting
/// as the slot came).
struct ClaimFailsOnce {
    inner: MemoryGlobalConfig,
    key: String,
    failed: AtomicU64,
}

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for ClaimFailsOnce {
    fn name(&self) -> &str {
        "ClaimFailsOnce"
    }
}

#[qtasks::async_trait]
impl qtasks::components::GlobalConfig for ClaimFailsOnce {
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError> {
        self.inner.set(name, key, value).await
    }
    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError> {
        self.inner.get(name, key).await
    }
    async fn get_all(&self, name: &str) -> Result<BTreeMap<String, String>, BackendError> {
        self.inner.get_all(name).await
    }
    async fn get_match(&self, pattern: &str) -> Result<BTreeMap<String, String>, BackendError> {
        self.inner.get_match(pattern).await
    }
    async fn set_status(&self, ttl: Duration) -> Result<(), BackendError> {
        self.inner.set_status(ttl).await
    }
    async fn clear_status(&self) -> Result<(), BackendError> {
        self.inner.clear_status().await
    }
    async fn status(&self) -> Result<bool, BackendError> {
        self.inner.status().await
    }
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        if key == self.key && self.failed.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(BackendError::new("test", "the connection was reset"));
        }
        self.inner.claim(key, ttl).await
    }
}

/// A lone worker whose claim of a slot fails (every worker's would, with the backend restarting
/// as the slot comes) adds the slot two seconds after it, not ten: a worker that died in
/// between lost the slot for good, since a worker that starts reads a slot nobody claimed as
/// one not to fire (found by the fault harness on PostgreSQL: seed 1796425969019, a lone worker
/// killed by the aborting task three seconds after its claim failed on a server stopped
/// `immediate`).
#[tokio::test(start_paused = true)]
async fn a_slot_whose_claim_failed_is_added_soon_after() {
    let label = "claim_failed";
    let slot = secs(T0 + 5);
    let slot_ms = i64::try_from(slot.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let global = Arc::new(ClaimFailsOnce {
        inner: MemoryGlobalConfig::new(),
        key: format!("schedule:tick:{slot_ms}"),
        failed: AtomicU64::new(0),
    });
    let storage = Arc::new(MemoryStorage::new());
    let app = QueueTasks::builder()
        .backend(Arc::new(MemoryBroker::new(Arc::clone(&storage))), storage)
        .global_config(global.clone())
        .build();
    app.schedules().set_clock(Arc::new(TokioClock::starting_at(
        secs(T0) + Duration::from_millis(500),
    )));
    let schedule = Schedule::every(Duration::from_secs(1))
        .starting_at(slot)
        .until(secs(T0 + 6));
    app.schedules()
        .add("tick", schedule, count_call(label))
        .unwrap();
    app.start().await.unwrap();
    // Slot 5 (its claim fails) and slot 6, then the worker is gone three seconds after slot 5.
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    app.stop().await.unwrap();
    assert!(
        global.failed.load(Ordering::SeqCst) > 0,
        "the claim never failed"
    );
    assert_eq!(
        runs(label).load(Ordering::SeqCst),
        2,
        "slots 5 and 6 ran before the worker was gone"
    );
}
