//! Groups and chords: results gathered in order, a callback with the members' results, a
//! failing member, handles made again from the id; on memory and on Redis, and on Redis across
//! a worker process killed mid-chord.

mod support;

use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{QueueTasks, TaskError, TaskFailure, TaskResult};
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use support::WorkerProcess;

const WAIT: Duration = Duration::from_secs(20);

#[qtasks::task]
async fn group_square(x: i64) -> i64 {
    // Later members end first: gathering must keep the members' order.
    tokio::time::sleep(Duration::from_millis((10 - x.min(10)) as u64 * 5)).await;
    x * x
}

#[qtasks::task]
async fn group_fail_on(x: i64, bad: i64) -> TaskResult<i64> {
    if x == bad {
        return Err(TaskError::msg(format!("{x} is bad")));
    }
    Ok(x)
}

#[qtasks::task]
async fn group_total(label: String, parts: Vec<i64>) -> String {
    format!(
        "{label}={}",
        parts
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join("+")
    )
}

async fn scenarios(app: &QueueTasks) {
    // A group: results in the members' order.
    let squares = qtasks::group((1..=6).map(group_square::call))
        .add(app)
        .await
        .unwrap();
    let results: Vec<i64> = squares.results(WAIT).await.unwrap();
    assert_eq!(results, [1, 4, 9, 16, 25, 36]);

    // A member that fails: the others' results stay readable, the failure names it.
    let mixed = qtasks::group((1..=3).map(|x| group_fail_on::call(x, 2)))
        .add(app)
        .await
        .unwrap();
    let outcomes = mixed.outcomes::<i64>(WAIT).await;
    assert!(matches!(outcomes[0], Ok(1)), "{outcomes:?}");
    assert!(
        matches!(&outcomes[1], Err(TaskFailure::Error { message, .. }) if message == "2 is bad"),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[2], Ok(3)), "{outcomes:?}");
    assert!(mixed.results::<i64>(WAIT).await.is_err());

    // A chord: the callback gets the results in order, as its last argument.
    let chord = qtasks::chord(
        qtasks::group((1..=5).map(group_square::call)),
        group_total::call_with("squares".into()),
    )
    .add(app)
    .await
    .unwrap();
    let total: String = chord.result(WAIT).await.unwrap();
    assert_eq!(total, "squares=1+4+9+16+25");
    // The handle can be made again from the id (another process could).
    let again = app.chord_handle(chord.group().id()).await.unwrap().unwrap();
    assert_eq!(again.callback_uuid(), chord.callback_uuid());
    assert_eq!(again.result::<String>(WAIT).await.unwrap(), total);
    let group_again = app.group_handle(squares.id()).await.unwrap().unwrap();
    assert_eq!(group_again.members(), squares.members());

    // A chord with a failing member: the failure, and the callback never runs.
    let broken = qtasks::chord(
        qtasks::group((1..=3).map(|x| group_fail_on::call(x, 3))),
        group_total::call_with("never".into()),
    )
    .add(app)
    .await
    .unwrap();
    let failure = broken
        .result::<String>(Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(&failure, TaskFailure::Error { message, .. } if message == "3 is bad"),
        "{failure:?}"
    );
    assert!(app.get(broken.callback_uuid()).await.unwrap().is_none());

    // An empty chord runs its callback with an empty list.
    let empty = qtasks::chord(
        qtasks::group(Vec::<qtasks::TaskCall>::new()),
        group_total::call_with("none".into()),
    )
    .add(app)
    .await
    .unwrap();
    // (No member finishes to add it: a waiting handle completes it.)
    assert_eq!(empty.result::<String>(WAIT).await.unwrap(), "none=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_chords_in_memory() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    scenarios(&app).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn groups_and_chords_on_redis() {
    let Some(url) = redis_url("groups_and_chords_on_redis") else {
        return;
    };
    let prefix = unique_prefix("groups");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    app.start().await.unwrap();
    scenarios(&app).await;
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_chord_completes_across_a_killed_worker_and_a_new_client() {
    let Some(url) = redis_url("a_chord_completes_across_a_killed_worker") else {
        return;
    };
    let prefix = unique_prefix("chord_kill");
    let id = {
        // This client adds the chord and goes away: the state is in Redis, not here.
        let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
        let members = (0..8).map(|i| {
            qtasks::TaskCall::new(
                "record_run",
                vec![format!("m{i}").into(), 300.into()],
                Default::default(),
            )
        });
        let callback = qtasks::TaskCall::new("join_labels", vec!["-".into()], Default::default());
        let chord = qtasks::chord(qtasks::group(members), callback)
            .add(&client)
            .await
            .unwrap();
        chord.group().id()
    };
    // The first worker takes members, then dies mid-run (SIGKILL): its tasks are leased to
    // nobody alive, and run again on the next worker once the lease (1.5 s) runs out.
    let mut first = WorkerProcess::spawn(&prefix, 1500, 2, &[]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _second = WorkerProcess::spawn(&prefix, 1500, 2, &[]);

    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let chord = client
        .chord_handle(id)
        .await
        .unwrap()
        .expect("stored in Redis");
    let joined: String = chord.result(WAIT).await.unwrap();
    assert_eq!(joined, "m0-m1-m2-m3-m4-m5-m6-m7");
    client.flush_all().await.unwrap();
}
