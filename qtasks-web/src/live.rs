//! Live updates: one sampler per server reads the app's stats every [`SAMPLE_EVERY`] and keeps
//! the throughput of the last 15 minutes; every open page listens by server-sent events and
//! gets the parts of its page that changed, rendered on the server (so the browser never
//! polls, and all escaping stays in [`html`](crate::html)).
//!
//! The throughput history is counted by the dashboard from the finished counts it reads, and
//! kept in the engine's global config ([`HISTORY`]: one entry per bar, a ring of 30), so a
//! dashboard restarted, or a second one, shows what was counted before it; the chart starts
//! where the oldest kept bar does (and says so). Minutes in which no dashboard ran have no bars.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use qtasks_core::QueueTasks;
use qtasks_core::backend::{ErrorChain, unix_now};
use qtasks_core::stats::Stats;
use tokio::sync::watch;

/// How often the sampler reads the stats.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The width of one bar of the throughput chart, in seconds.
pub(crate) const BUCKET_SECS: u64 = 30;
/// How far back the chart goes, in buckets (15 minutes).
pub(crate) const BUCKETS: usize = 30;
/// The global config entries the throughput history is kept in: key `{bucket index % BUCKETS}`,
/// value `{bucket start}:{finished}`.
pub(crate) const HISTORY: &str = "qtasks:dashboard:throughput";

/// What the sampler last read.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The stats, or why they could not be read.
    pub(crate) stats: Result<Stats, String>,
    /// Tasks finished per bucket, oldest first: `(bucket start, count)`.
    pub(crate) throughput: Vec<(u64, u64)>,
    /// When this process began counting (the chart's history starts there).
    pub(crate) since: f64,
    /// Whether the stats were read at all yet.
    pub(crate) read: bool,
}

/// The sampler's latest snapshot, shared by every listener.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    latest: watch::Receiver<Arc<Snapshot>>,
}

impl Live {
    /// Starts the sampler of `app`; it stops when the last `Live` is dropped.
    pub(crate) fn start(app: QueueTasks) -> Self {
        let first = Snapshot {
            stats: Err("not read yet".to_owned()),
            throughput: Vec::new(),
            since: unix_now(),
            read: false,
        };
        let (sender, latest) = watch::channel(Arc::new(first));
        tokio::spawn(sample(app, sender));
        Live { latest }
    }

    /// The latest snapshot.
    pub(crate) fn now(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.borrow())
    }

    /// Waits for the first real read (a page rendered at once shows numbers, not "not read").
    pub(crate) async fn ready(&self) -> Arc<Snapshot> {
        let mut latest = self.latest.clone();
        let wait = latest.wait_for(|snapshot| snapshot.read);
        match tokio::time::timeout(Duration::from_secs(3), wait).await {
            Ok(Ok(snapshot)) => Arc::clone(&snapshot),
            _ => self.now(),
        }
    }

    /// A stream of `regions` events: after each new snapshot, `render` makes the page's live
    /// regions (`id` → HTML), and they are sent when they differ from the last ones sent.
    pub(crate) fn events<F, Fut>(
        &self,
        render: F,
    ) -> impl Stream<Item = Result<Event, Infallible>> + use<F, Fut>
    where
        F: Fn(Arc<Snapshot>) -> Fut + Send + 'static,
        Fut: Future<Output = Regions> + Send,
    {
        let latest = self.latest.clone();
        futures_util::stream::unfold(
            (latest, render, String::new()),
            |(mut latest, render, mut last)| async move {
                loop {
                    latest.changed().await.ok()?;
                    let snapshot = Arc::clone(&latest.borrow_and_update());
                    let data = regions_json(&render(snapshot).await);
                    if data != last {
                        last.clone_from(&data);
                        let event = Event::default().event("regions").data(data);
                        return Some((Ok(event), (latest, render, last)));
                    }
                }
            },
        )
    }
}

/// A page's live regions: the id of each element, and its new HTML.
pub(crate) type Regions = Vec<(&'static str, maud::Markup)>;

/// The `regions` event's data: `{"id": "html", ...}`.
pub(crate) fn regions_json(regions: &Regions) -> String {
    let map: serde_json::Map<String, serde_json::Value> = regions
        .iter()
        .map(|(id, html)| ((*id).to_owned(), serde_json::Value::String(html.0.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The events of one task's page: its live region each time the record changes, until the
/// task ends. The record is read again each second at most (a stream task's items show as
/// they arrive); the end is seen at once (the app's wait wakes on it).
pub(crate) fn task_events(
    app: QueueTasks,
    uuid: qtasks_core::Uuid,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        (app, String::new(), false),
        move |(app, mut last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let (data, done) = match app.get(uuid).await {
                    Ok(Some(record)) => {
                        let done = record.status.is_final();
                        let regions: Regions =
                            vec![("region-task", crate::pages::task_region(&record))];
                        (regions_json(&regions), done)
                    }
                    Ok(None) => {
                        let gone = maud::html! {
                            p.problem { "The record is gone (deleted, or expired)." }
                        };
                        (regions_json(&vec![("region-task", gone)]), true)
                    }
                    Err(_) => {
                        // The backend is down: look again later, keep the page as it is.
                        tokio::time::sleep(SAMPLE_EVERY).await;
                        continue;
                    }
                };
                if data != last || done {
                    last.clone_from(&data);
                    let event = Event::default().event("regions").data(data);
                    return Some((Ok(event), (app, last, done)));
                }
                let _ = app.wait(uuid, SAMPLE_EVERY / 2).await;
            }
        },
    )
}

/// An event stream as the browser gets it: kept alive while idle, and ended when the server
/// shuts down (`closing` turns true), so that a graceful shutdown does not wait for browsers
/// that keep a page open.
pub(crate) fn serve_events(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    mut closing: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let closed = async move {
        // No server handle (a router mounted elsewhere, or `serve`'s, dropped): never.
        if closing.wait_for(|closing| *closing).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Sse::new(futures_util::StreamExt::take_until(
        stream,
        Box::pin(closed),
    ))
    .keep_alive(KeepAlive::default())
}

/// Total tasks finished, all statuses.
fn finished_total(stats: &Stats) -> Option<u64> {
    let queue = stats.queue.as_ref()?;
    Some(
        queue
            .finished
            .by_status()
            .iter()
            .map(|(_, count)| count)
            .sum(),
    )
}

/// The bars kept in the engine that are still within the chart's 15 minutes, oldest first.
async fn kept_history(app: &QueueTasks, now: u64) -> VecDeque<(u64, u64)> {
    let oldest = now.saturating_sub(BUCKET_SECS * BUCKETS as u64);
    let mut kept: Vec<(u64, u64)> = match app.global_config().get_all(HISTORY).await {
        Ok(entries) => entries
            .values()
            .filter_map(|value| {
                let (start, count) = value.split_once(':')?;
                Some((start.parse().ok()?, count.parse().ok()?))
            })
            .filter(|(start, _)| *start > oldest && *start <= now)
            .collect(),
        Err(error) => {
            tracing::debug!("no throughput history read: {}", ErrorChain(&error));
            Vec::new()
        }
    };
    kept.sort_unstable();
    kept.into()
}

/// Keeps one bar in the engine (best effort: the chart goes on without it).
async fn keep_bar(app: &QueueTasks, (start, count): (u64, u64)) {
    let slot = (start / BUCKET_SECS) % BUCKETS as u64;
    let kept = app
        .global_config()
        .set(HISTORY, &slot.to_string(), &format!("{start}:{count}"))
        .await;
    if let Err(error) = kept {
        tracing::debug!(
            "the throughput history was not kept: {}",
            ErrorChain(&error)
        );
    }
}

async fn sample(app: QueueTasks, sender: watch::Sender<Arc<Snapshot>>) {
    let mut buckets = kept_history(&app, unix_now() as u64).await;
    let since = buckets
        .front()
        .map_or_else(unix_now, |(start, _)| *start as f64);
    let mut last_total: Option<u64> = None;
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if sender.is_closed() {
            return;
        }
        let stats = app
            .stats()
            .await
            .map_err(|error| ErrorChain(&error).to_string());
        let now = unix_now() as u64;
        let bucket = now - now % BUCKET_SECS;
        if let Ok(total) = stats.as_ref().map(finished_total) {
            if let (Some(total), Some(last)) = (total, last_total) {
                // A flush resets the counts: nothing finished then, as far as the chart goes.
                let finished = total.saturating_sub(last);
                match buckets.back_mut() {
                    Some((start, count)) if *start == bucket => *count += finished,
                    _ => buckets.push_back((bucket, finished)),
                }
            } else if buckets.back().is_none_or(|(start, _)| *start != bucket) {
                buckets.push_back((bucket, 0));
            }
            last_total = total.or(last_total);
            if let Some(bar) = buckets.back() {
                keep_bar(&app, *bar).await;
            }
        }
        while buckets
            .front()
            .is_some_and(|(start, _)| *start + BUCKET_SECS * BUCKETS as u64 <= bucket)
        {
            buckets.pop_front();
        }
        let snapshot = Snapshot {
            stats,
            throughput: buckets.iter().copied().collect(),
            since,
            read: true,
        };
        sender.send_replace(Arc::new(snapshot));
    }
}
