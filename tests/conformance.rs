//! The backend conformance suite (`qtasks::testing::conformance`) on the in-memory backend. Each
//! engine runs it in its own crate (`qtasks-redis/tests/conformance.rs`,
//! `qtasks-rabbitmq/tests/conformance.rs`).

use qtasks::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_conformance_suite() {
    let report = conformance::run(&conformance::memory(), "memory").await;
    assert!(report.cases.len() >= 30, "{report}");
    assert!(report.passed(), "{report}");
}
