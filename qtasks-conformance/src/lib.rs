//! The behaviour every qtasks backend must keep, as cases a backend author gets for free: add,
//! take and finish; statuses and results; priorities and FIFO; delays; cancels; retries;
//! deliveries handed back; poison; waits; stream items; flush isolation; concurrent takers;
//! stats; claims. The in-memory backend and Redis pass it in CI.
//!
//! Give [`run`] a [`Backend`]: something that connects an app by its config. Called several
//! times with one app name, it must reach the same queue (as processes sharing a server do);
//! every case uses app names of its own, starting with the prefix you give.
//!
//! ```no_run
//! # async fn demo() {
//! use qtasks::testing::conformance::{self, Backend};
//!
//! // Your engine's connector, here the Redis one.
//! let backend = |config: qtasks::QueueConfig| async move {
//!     qtasks::redis::connect_with("redis://127.0.0.1:6379/0", config, Default::default()).await
//! };
//! let report = conformance::run(&backend, "myengine").await;
//! assert!(report.passed(), "{report}");
//! # }
//! ```
#![warn(missing_docs)]

// The task attribute names `::qtasks::__private`: the core is that crate here.
extern crate qtasks_core as qtasks;

mod cases;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qtasks_core::backend::{MemoryBroker, MemoryStorage};
use qtasks_core::components::MemoryGlobalConfig;
use qtasks_core::plugin::BoxFuture;
use qtasks_core::{QueueConfig, QueueTasks};

/// Connects apps for the suite.
pub trait Backend: Send + Sync {
    /// A handle on the app this config names: a fresh queue the first time a name is used, the
    /// same queue every later time.
    fn connect(&self, config: QueueConfig) -> BoxFuture<'_, qtasks_core::Result<QueueTasks>>;
}

impl<F, Fut> Backend for F
where
    F: Fn(QueueConfig) -> Fut + Send + Sync,
    Fut: Future<Output = qtasks_core::Result<QueueTasks>> + Send + 'static,
{
    fn connect(&self, config: QueueConfig) -> BoxFuture<'_, qtasks_core::Result<QueueTasks>> {
        Box::pin(self(config))
    }
}

/// The in-memory backend as a [`Backend`]: apps of one name share one broker, storage and
/// global config.
pub fn memory() -> impl Backend {
    type Parts = (
        Arc<MemoryBroker>,
        Arc<MemoryStorage>,
        Arc<MemoryGlobalConfig>,
    );
    let shared: Arc<Mutex<HashMap<String, Parts>>> = Arc::default();
    move |config: QueueConfig| {
        let (broker, storage, global) = shared
            .lock()
            .entry(config.name.clone())
            .or_insert_with(|| {
                let storage = Arc::new(MemoryStorage::new());
                let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
                (broker, storage, Arc::new(MemoryGlobalConfig::new()))
            })
            .clone();
        async move {
            Ok(QueueTasks::builder()
                .config(config)
                .backend(broker, storage)
                .global_config(global)
                .build())
        }
    }
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: &'static str,
    /// `Err` says what did not hold.
    pub outcome: Result<(), String>,
    /// How long it took.
    pub took: Duration,
}

/// How the suite went.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every case, in the order they ran.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// Whether every case held.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|case| case.outcome.is_ok())
    }

    /// The cases that did not hold.
    pub fn failures(&self) -> Vec<&CaseResult> {
        self.cases.iter().filter(|c| c.outcome.is_err()).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().len();
        writeln!(
            f,
            "conformance: {} of {} cases held",
            self.cases.len() - failed,
            self.cases.len()
        )?;
        // The failures first: a long report cut short in a log still shows what broke.
        for case in &self.cases {
            if let Err(why) = &case.outcome {
                writeln!(f, "  FAIL  {}: {why}", case.name)?;
            }
        }
        for case in &self.cases {
            if case.outcome.is_ok() {
                writeln!(f, "  ok    {} ({:?})", case.name, case.took)?;
            }
        }
        Ok(())
    }
}

/// The names of every case, in the order [`run`] runs them.
pub fn case_names() -> Vec<&'static str> {
    cases::ALL.iter().map(|(name, _)| *name).collect()
}

/// Runs every case on `backend`, one after another, each with app names starting with
/// `prefix`; a case that panics or takes over a minute fails alone.
pub async fn run(backend: &dyn Backend, prefix: &str) -> Report {
    let mut report = Report::default();
    for (name, case) in cases::ALL {
        let started = Instant::now();
        let context = cases::Context::new(backend, format!("{prefix}_{name}"));
        let outcome = match tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(case(&context))),
        )
        .await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_panic)) => Err("the case panicked".to_owned()),
            Err(_) => Err("the case took over a minute".to_owned()),
        };
        context.clean_up().await;
        report.cases.push(CaseResult {
            name,
            outcome,
            took: started.elapsed(),
        });
    }
    report
}
