//! `stop_now` while a task runs: the task is handed back and the stopping worker does not take
//! it again (it once could: the task came back to the queue before the worker was told to stop
//! taking, the worker took it, and then waited for it forever).

use qtasks::backend::{MemoryBroker, MemoryStorage};
use qtasks::components::MemoryGlobalConfig;
use qtasks::{QueueConfig, QueueTasks};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::Semaphore;
static GATE: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(0)));
static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
#[qtasks::task]
async fn stop_now_gated() -> u32 {
    STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    GATE.acquire().await.unwrap().forget();
    1
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_never_takes_back_what_it_handed_back() {
    for round in 0..100 {
        let storage = Arc::new(MemoryStorage::new());
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
        let global = Arc::new(MemoryGlobalConfig::new());
        let mk = || {
            QueueTasks::builder()
                .config(QueueConfig {
                    max_tasks_process: 1,
                    ..Default::default()
                })
                .backend(broker.clone(), storage.clone())
                .global_config(global.clone())
                .build()
        };
        let first = mk();
        first.start().await.unwrap();
        let before = STARTED.load(std::sync::atomic::Ordering::SeqCst);
        let h = stop_now_gated::add_task(&first).await.unwrap();
        while STARTED.load(std::sync::atomic::Ordering::SeqCst) == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::timeout(Duration::from_secs(5), first.stop_now())
            .await
            .unwrap_or_else(|_| panic!("round {round}: stop_now hung"))
            .unwrap();
        let st = first.get(h.uuid()).await.unwrap().unwrap().status;
        assert_eq!(st, qtasks::TaskStatus::New, "round {round}");
        GATE.add_permits(1);
        let second = mk();
        second.start().await.unwrap();
        let r = h
            .wait(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.status, qtasks::TaskStatus::Success);
        tokio::time::timeout(Duration::from_secs(5), second.stop_now())
            .await
            .unwrap_or_else(|_| panic!("round {round}: second stop hung"))
            .unwrap();
    }
}

#[qtasks::task]
async fn stop_now_long(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// Found by the fault harness: an app stopped with `stop_now` and started again must run what
/// it handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_started_again_after_stop_now_runs_what_it_handed_back() {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: 2,
        ..Default::default()
    });
    for round in 0..20 {
        app.start().await.unwrap();
        let long = stop_now_long::add_task(&app, 300).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.stop_now().await.unwrap();
        app.start().await.unwrap();
        let done = long
            .wait(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(done.status, qtasks::TaskStatus::Success, "round {round}");
        app.stop().await.unwrap();
    }
}

/// In memory too, a cancel asked while a task runs is kept with its record: a run that ends
/// before it hears of it still ends `cancel` (no next attempt), and so does one handed back.
#[tokio::test]
async fn in_memory_a_cancel_of_a_running_task_wins_at_its_finish_and_its_hand_back() {
    use qtasks::backend::{Broker, CancelState};
    use qtasks::{Outcome, QueuedTask, TaskStatus, Uuid};
    let storage = Arc::new(MemoryStorage::new());
    let broker = MemoryBroker::new(Arc::clone(&storage));
    let (finished, handed_back) = (Uuid::new_v4(), Uuid::new_v4());
    for uuid in [finished, handed_back] {
        broker
            .add(QueuedTask::new(uuid, "stop_now_long"))
            .await
            .unwrap();
    }
    let taken = broker.next_batch(2).await.unwrap();
    assert_eq!(taken.len(), 2);
    for delivery in &taken {
        let state = broker.cancel(delivery.task.uuid, "asked").await.unwrap();
        assert_eq!(state, Some(CancelState::Running));
    }
    for delivery in taken {
        if delivery.task.uuid == finished {
            let error = broker
                .finish(&delivery, Outcome::Success(serde_json::json!(1)))
                .await
                .expect_err("the cancel wins");
            assert_eq!(error.cancel_reason(), Some("asked"));
        } else {
            broker.release(&delivery).await.unwrap();
        }
    }
    use qtasks::backend::Storage;
    for uuid in [finished, handed_back] {
        let record = storage.get(uuid).await.unwrap().unwrap();
        assert_eq!(
            (record.status, record.cancel_reason.as_deref()),
            (TaskStatus::Cancel, Some("asked"))
        );
    }
}
