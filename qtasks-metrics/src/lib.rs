//! Prometheus metrics for a qtasks app, in the OpenMetrics text format.
//!
//! [`Metrics::install`] counts what this process's worker does (from the app's events) and
//! reads the queue's live numbers from [`QueueTasks::stats`] at each scrape; [`serve`] serves
//! them at `http://ADDR/metrics` (the command line's `worker --metrics ADDR`), and
//! [`Metrics::router`] gives the route to mount in a server of your own.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `qtasks_tasks_finished_total` | counter | `task`, `status` |
//! | `qtasks_task_duration_seconds` | histogram | `task` |
//! | `qtasks_retries_total` | counter | `task` |
//! | `qtasks_lease_losses_total` | counter | |
//! | `qtasks_tasks_waiting` | gauge | `priority` |
//! | `qtasks_tasks_delayed`, `qtasks_tasks_running` | gauge | |
//! | `qtasks_queue_waiting`, `qtasks_queue_delayed`, `qtasks_queue_paused` | gauge | `queue` |
//! | `qtasks_oldest_waiting_seconds` | gauge | |
//! | `qtasks_dead_letters` | gauge | |
//! | `qtasks_workers` | gauge | |
//! | `qtasks_worker_up` | gauge | |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = qtasks::QueueTasks::new();
//! let metrics = qtasks_metrics::Metrics::install(&app);
//! let text = metrics.render().await;
//! assert!(text.contains("qtasks_tasks_running 0"));
//! # }
//! ```
#![warn(missing_docs)]

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use qtasks_core::{Event, EventKind, Outcome, QueueTasks, TaskStatus, Uuid};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    task: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByTask {
    task: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPriority {
    priority: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByQueue {
    queue: String,
}

/// The metrics of one app.
pub struct Metrics {
    app: QueueTasks,
    registry: Registry,
    finished: Family<Finished, Counter>,
    durations: Family<ByTask, Histogram>,
    retries: Family<ByTask, Counter>,
    lease_losses: Counter,
    lease_losses_seen: AtomicU64,
    waiting: Family<ByPriority, Gauge>,
    queue_waiting: Family<ByQueue, Gauge>,
    queue_delayed: Family<ByQueue, Gauge>,
    queue_paused: Family<ByQueue, Gauge>,
    delayed: Gauge,
    running: Gauge,
    oldest_waiting: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
    workers: Gauge,
    worker_up: Gauge,
    /// When each running task of this process started.
    started: Mutex<HashMap<Uuid, Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("app", &self.app.name())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the metrics of `app` and the event callbacks that count its worker's tasks.
    pub fn install(app: &QueueTasks) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let finished = Family::<Finished, Counter>::default();
        registry.register(
            "qtasks_tasks_finished",
            "Tasks this worker finished, by task and final status",
            finished.clone(),
        );
        // 1 ms to ~9 hours, doubling.
        let durations = Family::<ByTask, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 25))
        });
        registry.register_with_unit(
            "qtasks_task_duration",
            "How long tasks ran, by task",
            prometheus_client::registry::Unit::Seconds,
            durations.clone(),
        );
        let retries = Family::<ByTask, Counter>::default();
        registry.register(
            "qtasks_retries",
            "Failed attempts that were retried, by task",
            retries.clone(),
        );
        let lease_losses = Counter::default();
        registry.register(
            "qtasks_lease_losses",
            "Outcomes refused because this worker stalled past the task's lease",
            lease_losses.clone(),
        );
        let waiting = Family::<ByPriority, Gauge>::default();
        registry.register(
            "qtasks_tasks_waiting",
            "Tasks that may run now, by priority",
            waiting.clone(),
        );
        let queue_waiting = Family::<ByQueue, Gauge>::default();
        registry.register(
            "qtasks_queue_waiting",
            "Tasks that may run now, by named queue",
            queue_waiting.clone(),
        );
        let queue_delayed = Family::<ByQueue, Gauge>::default();
        registry.register(
            "qtasks_queue_delayed",
            "Tasks that may run only later, by named queue",
            queue_delayed.clone(),
        );
        let queue_paused = Family::<ByQueue, Gauge>::default();
        registry.register(
            "qtasks_queue_paused",
            "1 while a named queue is paused",
            queue_paused.clone(),
        );
        let delayed = Gauge::default();
        registry.register(
            "qtasks_tasks_delayed",
            "Tasks that may run only later",
            delayed.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "qtasks_tasks_running",
            "Tasks taken by a worker and not finished",
            running.clone(),
        );
        let oldest_waiting = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "qtasks_oldest_waiting",
            "How long the oldest waiting task has waited",
            prometheus_client::registry::Unit::Seconds,
            oldest_waiting.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "qtasks_dead_letters",
            "Queue entries that could not run, set aside",
            dead_letters.clone(),
        );
        let workers = Gauge::default();
        registry.register(
            "qtasks_workers",
            "Workers whose heartbeat is alive",
            workers.clone(),
        );
        let worker_up = Gauge::default();
        registry.register(
            "qtasks_worker_up",
            "1 while this process's worker runs",
            worker_up.clone(),
        );
        let metrics = Arc::new(Metrics {
            app: app.clone(),
            registry,
            finished,
            durations,
            retries,
            lease_losses,
            lease_losses_seen: AtomicU64::new(0),
            waiting,
            queue_waiting,
            queue_delayed,
            queue_paused,
            delayed,
            running,
            oldest_waiting,
            dead_letters,
            workers,
            worker_up,
            started: Mutex::default(),
        });
        Self::count_events(app, &metrics);
        metrics
    }

    fn count_events(app: &QueueTasks, metrics: &Arc<Metrics>) {
        let on = |kind: EventKind, handle: fn(&Metrics, &Event)| {
            let metrics = Arc::downgrade(metrics);
            app.on_event(kind, move |event| {
                if let Some(metrics) = metrics.upgrade() {
                    handle(&metrics, event);
                }
            });
        };
        on(EventKind::WorkerRunning, |m, _| {
            m.worker_up.set(1);
        });
        on(EventKind::WorkerStopping, |m, _| {
            m.worker_up.set(0);
        });
        on(EventKind::TaskRunning, |m, event| {
            if let Some(task) = &event.task {
                m.started_lock().insert(task.uuid, Instant::now());
            }
        });
        on(EventKind::TaskStopping, |m, event| {
            if let Some(task) = &event.task
                && let Some(started) = m.started_lock().remove(&task.uuid)
            {
                m.durations
                    .get_or_create(&ByTask {
                        task: task.task_name.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
            }
        });
        for kind in [
            EventKind::TaskSuccess,
            EventKind::TaskError,
            EventKind::TaskCancel,
        ] {
            on(kind, |m, event| {
                let (Some(task), Some(outcome)) = (&event.task, &event.outcome) else {
                    return;
                };
                let status = outcome.status();
                m.finished
                    .get_or_create(&Finished {
                        task: task.task_name.clone(),
                        status: status.as_str().to_owned(),
                    })
                    .inc();
                if status == TaskStatus::Retry || matches!(outcome, Outcome::Retry { .. }) {
                    m.retries
                        .get_or_create(&ByTask {
                            task: task.task_name.clone(),
                        })
                        .inc();
                }
            });
        }
    }

    fn started_lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.started.lock()
    }

    /// Reads the live numbers and renders every metric in the OpenMetrics text format. When
    /// the backend cannot be read, the queue's gauges keep their last values (and it is
    /// logged); the counters are this process's own.
    pub async fn render(&self) -> String {
        match self.app.stats().await {
            Ok(stats) => {
                if let Some(queue) = &stats.queue {
                    self.waiting.clear();
                    for (priority, count) in &queue.waiting {
                        self.waiting
                            .get_or_create(&ByPriority {
                                priority: priority.to_string(),
                            })
                            .set(i64::try_from(*count).unwrap_or(i64::MAX));
                    }
                    self.queue_waiting.clear();
                    self.queue_delayed.clear();
                    self.queue_paused.clear();
                    for (name, numbers) in &queue.queues {
                        let label = ByQueue {
                            queue: name.clone(),
                        };
                        self.queue_waiting
                            .get_or_create(&label)
                            .set(gauge(numbers.waiting));
                        self.queue_delayed
                            .get_or_create(&label)
                            .set(gauge(numbers.delayed));
                        self.queue_paused
                            .get_or_create(&label)
                            .set(i64::from(numbers.paused));
                    }
                    self.delayed.set(gauge(queue.delayed));
                    self.running.set(gauge(queue.running));
                    self.dead_letters.set(gauge(queue.dead_letters));
                    self.oldest_waiting
                        .set(queue.oldest_waiting_secs.unwrap_or(0.0));
                }
                self.workers.set(gauge(stats.workers.len() as u64));
            }
            Err(error) => {
                tracing::warn!(
                    "metrics: reading the queue's stats failed: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
            }
        }
        let refused = self.app.counters().refused_outcomes;
        let seen = self.lease_losses_seen.swap(refused, Ordering::Relaxed);
        self.lease_losses.inc_by(refused.saturating_sub(seen));
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("metrics: encoding failed: {error}");
        }
        text
    }

    /// The `/metrics` route, to mount in an axum server of your own.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let metrics = Arc::clone(self);
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        metrics.render().await,
                    )
                }
            }),
        )
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Installs the metrics of `app` and serves them at `http://address/metrics` in the
/// background; returns the address bound (port 0 picks a free one).
pub async fn serve(app: &QueueTasks, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let metrics = Metrics::install(app);
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let router = metrics.router();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!("the metrics server stopped: {error}");
        }
    });
    Ok(bound)
}
