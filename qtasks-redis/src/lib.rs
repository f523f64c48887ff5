//! The Redis backend of qtasks: broker, storage and the worker heartbeat on one Redis,
//! wire-compatible with Python QTasks 1.7.3. Turn it on with the `redis` feature of `qtasks`
//! and reach it as `qtasks::redis`.
//!
//! ```no_run
//! # async fn demo() -> qtasks::Result<()> {
//! let app = qtasks::redis::connect("redis://127.0.0.1:6379/0").await?;
//! app.run_forever().await
//! # }
//! ```
//!
//! This crate uses the core's public API and nothing else: it is also the worked example of an
//! engine written out of tree (see `qtasks::backend`).
//!
//! What it adds to the original, and how:
//! - **Tasks are not lost; one outcome per attempt.** A worker takes a task under a lease
//!   (`RedisOptions::lease`) fenced by a delivery token, and renews it while it lives; a task
//!   whose worker died (or stalled past the lease) is taken again by a live worker once the
//!   lease runs out, and the old holder's late write is refused. RELIABILITY.md states it all.
//! - **Priorities work across the queue**: waiting tasks sit in a sorted set, lowest priority
//!   number first, FIFO among equals, whichever process pushed them.
//! - **No polling**: idle workers block on Redis (`BLMOVE`); `wait` wakes on a pub/sub message
//!   sent with the result.
//! - **Few round trips**: add = 1 (one script: the record and the entry), take = 1 per batch of
//!   up to 8 tasks and 2 for a bigger one (one script leases and marks them and returns the
//!   records of a small batch; a bigger batch's records are read with one pipelined call; an
//!   entry not in canonical form costs a mark call of its own), finish = 1 (one script: the
//!   lease released and the outcome written only while the delivery's token holds).
//! - **Failovers followed**: with a `redis+sentinel://host:port,host:port/master-name/db` URL
//!   every connection asks the Sentinels for the master again when it loses it, and moves to
//!   the new one (`link`, `server`).
//! - **Redis Cluster**: with a `redis+cluster://host:port,host:port` URL every key of an app
//!   carries the app's name as its hash tag (`{billing}:...`), so each script's keys share one
//!   slot and apps spread over the shards. Python QTasks cannot read that layout.
//!
//! The key layout is in [`scripts`].
#![warn(missing_docs)]

mod batch;
mod broker;
mod global_config;
mod link;
mod listing;
pub mod partitions;
mod scripts;
mod server;
mod stats;
mod storage;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use qtasks_core::backend::{
    BackendError, BackendParts, Connector, RecordStore, RecordStoreConnector,
    redacted_url as redacted,
};
use qtasks_core::components::GlobalConfig;
use qtasks_core::{QueueConfig, QueueTasks};

use crate::broker::RedisBroker;
use crate::global_config::RedisGlobalConfig;
use crate::link::Link;
use crate::server::{CLUSTER_SCHEME, ClusterNodes, SENTINEL_SCHEME, SentinelUrl, Server, Timeouts};
use crate::storage::RedisStorage;

/// An app on Redis, named `QueueTasks` (the key prefix), with default options. The queue,
/// records and worker heartbeat use Python QTasks' keys, so Rust and Python clients and
/// workers can share them.
///
/// Fails at once, saying so, when Redis cannot be reached.
pub async fn connect(url: &str) -> qtasks_core::Result<QueueTasks> {
    connect_with(url, QueueConfig::default(), RedisOptions::default()).await
}

/// An app on Redis with this config (its `name` is the key prefix) and these options.
///
/// ```no_run
/// use std::time::Duration;
/// use qtasks::redis::RedisOptions;
///
/// # async fn demo() -> qtasks::Result<()> {
/// let options = RedisOptions { result_ttl: Some(Duration::from_secs(7 * 24 * 3600)), ..Default::default() };
/// let app = qtasks::redis::connect_with("redis://127.0.0.1:6379/0", qtasks::QueueConfig::default(), options).await?;
/// # Ok(()) }
/// ```
pub async fn connect_with(
    url: &str,
    config: QueueConfig,
    options: RedisOptions,
) -> qtasks_core::Result<QueueTasks> {
    Ok(QueueTasks::builder()
        .config(config)
        .connect(Redis::new(url).options(options))
        .await?
        .build())
}

/// The Redis engine as a [`Connector`], for [`AppBuilder::connect`](qtasks_core::AppBuilder::connect)
/// when the app needs other parts replaced too.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::{QueueConfig, QueueTasks};
/// use qtasks::redis::Redis;
///
/// let app = QueueTasks::builder()
///     .config(QueueConfig { name: "billing".into(), ..Default::default() })
///     .routers(["billing"])
///     .connect(Redis::new("redis://127.0.0.1:6379/0"))
///     .await?
///     .build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    url: String,
    options: RedisOptions,
}

impl Redis {
    /// The Redis at `url` (`redis://`, `rediss://` with the `redis-tls` feature, `unix://`),
    /// the master that Sentinels name, followed through failovers
    /// (`redis+sentinel://[user:password@]host:port,host:port/master-name/db`), or a Redis
    /// Cluster (`redis+cluster://[user:password@]host:port,host:port`: the app's keys then
    /// share its name as their hash tag), with default options. Any of them takes
    /// `?partitions=k` ([`RedisOptions::partitions`]).
    pub fn new(url: impl Into<String>) -> Self {
        Redis {
            url: url.into(),
            options: RedisOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: RedisOptions) -> Self {
        self.options = options;
        self
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redacted(&self.url))
            .field("options", &self.options)
            .finish()
    }
}

impl Redis {
    /// The broker, storage and global config for the app's config, after checking the options.
    async fn connect_concrete(&self, config: &QueueConfig) -> Result<Parts, BackendError> {
        self.check(config)?;
        let parts = connect_parts(
            &self.url,
            &config.name,
            &self.options,
            config.result_interval(),
        )
        .await?;
        parts.global_config.agree_on_partitions(None, 1).await?;
        Ok(parts)
    }

    /// This engine with the URL's `partitions=k` parameter, if it has one, moved into the
    /// options (so the command line and `QueueTasks::connect(url)` reach a partitioned app).
    fn with_url_partitions(&self) -> Result<Redis, BackendError> {
        let (url, from_url) = partitions::split_url(&self.url).map_err(|why| {
            BackendError::new(
                "redis",
                format!("invalid Redis URL `{}`: {why}", redacted(&self.url)),
            )
        })?;
        let mut options = self.options.clone();
        match from_url {
            None => {}
            Some(count) if options.partitions == 1 || options.partitions == count => {
                options.partitions = count;
            }
            Some(count) => {
                return Err(BackendError::new(
                    "redis",
                    format!(
                        "the URL says partitions={count} and the options {}: say it once",
                        options.partitions
                    ),
                ));
            }
        }
        Ok(Redis { url, options })
    }

    /// Refuses options and app names this engine cannot work with, saying why.
    fn check(&self, config: &QueueConfig) -> Result<(), BackendError> {
        if !(1..=partitions::MAX_PARTITIONS).contains(&self.options.partitions) {
            return Err(BackendError::new(
                "redis",
                format!(
                    "partitions = {}: use 1 (the default, one partition) to {}",
                    self.options.partitions,
                    partitions::MAX_PARTITIONS
                ),
            ));
        }
        if self.options.lease < MIN_LEASE {
            return Err(BackendError::new(
                "redis",
                format!(
                    "a lease of {:?} is too short: workers renew it every third of it, and under {MIN_LEASE:?} a renewal would race the network; use at least {MIN_LEASE:?}",
                    self.options.lease
                ),
            ));
        }
        if let Some(wait) = self.options.wait_for_replicas
            && (wait.replicas == 0
                || wait.timeout < Duration::from_millis(1)
                || wait.timeout >= self.options.response_timeout)
        {
            return Err(BackendError::new(
                "redis",
                format!(
                    "wait_for_replicas asks {} replicas within {:?}: ask at least 1 replica, within at least 1 ms and less than response_timeout ({:?}, or the connection gives up on the WAIT first)",
                    wait.replicas, wait.timeout, self.options.response_timeout
                ),
            ));
        }
        if config.name.is_empty() || config.name.contains(':') {
            return Err(BackendError::new(
                "redis",
                format!(
                    "the app name `{}` is the Redis key prefix: it must be non-empty and contain no `:`",
                    config.name
                ),
            ));
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Connector for Redis {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        let this = self.with_url_partitions()?;
        if this.options.partitions > 1 {
            this.check(config)?;
            return partitions::connect(&this.url, &config.name, &this.options, config).await;
        }
        let parts = this.connect_concrete(config).await?;
        Ok(BackendParts::new(
            Arc::new(parts.broker),
            Arc::new(parts.storage),
            Arc::new(parts.global_config),
        ))
    }
}

/// Redis keeps the records of a broker that keeps only the queue (RabbitMQ, as Python QTasks
/// pairs them): its storage writes every step of a task's life conditionally.
#[qtasks_core::async_trait]
impl RecordStoreConnector for Redis {
    async fn connect_records(
        &self,
        config: &QueueConfig,
    ) -> Result<(Arc<dyn RecordStore>, Arc<dyn GlobalConfig>), BackendError> {
        let this = self.with_url_partitions()?;
        if this.options.wait_for_replicas.is_some() {
            return Err(BackendError::new(
                "redis",
                "wait_for_replicas applies to the writes of the Redis broker; the records Redis keeps for another broker (RabbitMQ) do not wait for replicas yet: leave it None here",
            ));
        }
        if this.options.partitions != 1 {
            return Err(BackendError::new(
                "redis",
                "partitions spread the Redis broker's queues; the records Redis keeps for another broker (RabbitMQ) live in one partition: leave partitions at 1 here",
            ));
        }
        let parts = this.connect_concrete(config).await?;
        Ok((Arc::new(parts.storage), Arc::new(parts.global_config)))
    }
}

// `redis://`, `rediss://` (with the `tls` feature's rustls), `unix://` and `redis+unix://`
// reach this engine through `QueueTasks::connect(url)` and the command line's `--url`; Redis
// keeps another engine's records too (`amqp://` with `QTASKS_STORAGE_URL=redis://...`).
fn url_connector(
    url: &qtasks_core::backend::EngineUrl<'_>,
) -> Result<Box<dyn Connector>, BackendError> {
    Ok(Box::new(Redis::new(url.url)))
}

fn url_records(url: &str) -> Arc<dyn RecordStoreConnector> {
    Arc::new(Redis::new(url))
}

/// The schemes this build connects to: `rediss://` only with TLS compiled in (the `tls`
/// feature), so that a build without it says so instead of failing to connect.
const URL_SCHEMES: &[&str] = if cfg!(feature = "tls") {
    &[
        "redis",
        "rediss",
        "unix",
        "redis+unix",
        "redis+sentinel",
        "redis+cluster",
    ]
} else {
    &[
        "redis",
        "unix",
        "redis+unix",
        "redis+sentinel",
        "redis+cluster",
    ]
};

qtasks_core::url_engine!(
    qtasks_core::backend::UrlEngine::new("redis", URL_SCHEMES, url_connector).records(url_records)
);

/// The shortest lease [`RedisOptions::lease`] accepts.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// Settings of the Redis backend.
///
/// See [`connect_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// How long a taken task stays with its worker without a renewal. The worker renews it
    /// every third of this while it lives; when a worker dies, its tasks run again on a live
    /// worker after at most this long. Default 30 s; at least [`MIN_LEASE`] (1 s), or
    /// connecting fails saying so.
    pub lease: Duration,
    /// Finished task records expire after this, unless their task sets its own
    /// (`#[qtasks::task(result_ttl = ..)]`). Default one day
    /// ([`DEFAULT_RESULT_TTL`](Self::DEFAULT_RESULT_TTL), as Celery's `result_expires`), so
    /// records do not pile up forever; `None` keeps them, as the original does.
    pub result_ttl: Option<Duration>,
    /// How many dead letters (queue entries that could not run, with the reason) are kept in
    /// `N:qtasks:dead`: the newest this many. Default 10,000.
    pub dead_letters_max: usize,
    /// The dead-letter list expires this long after its last entry. Default 7 days; `None`
    /// keeps it.
    pub dead_letters_ttl: Option<Duration>,
    /// The timeout of one connection attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// The timeout of one command. Default 10 s.
    pub response_timeout: Duration,
    /// Keep an index of the records by the time they were added (`N:qtasks:records:index`),
    /// so that a page of [`Records::list`](qtasks_core::records::Records::list) (the
    /// dashboard's task list, `qtasks tasks`) costs the same on a million records as on ten.
    /// Default on. Off, adds run about 15 % faster and listing reads every record instead
    /// (BENCHMARKS.md has the figures). Every process of an app should agree.
    pub records_index: bool,

    /// For `rediss://` URLs: the PEM certificate of the authority that signed the server's
    /// certificate, when it is not in the system's trust store (a private CA). `None` trusts
    /// the system's roots.
    #[cfg(feature = "tls")]
    pub tls_root_certificate: Option<Vec<u8>>,
    /// Durability across a failover (Sentinel, or a replica promoted by hand): after each add
    /// and each finish, wait until this many replicas have the write (`WAIT`). Default `None`:
    /// Redis replicates asynchronously, so a failover can lose the last writes the master
    /// acknowledged: a task added then is gone, and a finished one runs again. See
    /// [`WaitForReplicas`] for what each side is told when the replicas are late.
    pub wait_for_replicas: Option<WaitForReplicas>,
    /// Spreads the app over this many partitions, each with its own hash tag on a Redis
    /// Cluster, so its drain rate grows with the shards (see [`partitions`](crate::partitions)).
    /// Default 1: one partition, the keys Python QTasks reads. Each task lives in one
    /// partition, with its record and its attempts; workers take from the partitions in turn.
    /// Unique tasks and task limits need one partition. Every process of an app must agree.
    pub partitions: u16,
}

/// How many replicas must have an add or a finish before it counts as done, and how long to
/// wait for them ([`RedisOptions::wait_for_replicas`]).
///
/// An add whose replicas are late fails (`adding task ... failed: ... reached 0 of 1
/// replicas`), though the master has it and a worker may run it: add it again under the same
/// uuid ([`TaskCall::uuid`](qtasks_core::TaskCall::uuid)) to be sure, which adds nothing if it
/// is there. A finish whose replicas are late is logged as a warning, and the worker goes on:
/// the outcome is stored on the master, and only a failover before the replicas catch up would
/// lose it (the task would then run again). `WAIT` holds the connection it is sent on, so every
/// command of the app's process waits behind it: its cost is measured in BENCHMARKS.md.
///
/// ```
/// use std::time::Duration;
/// use qtasks::redis::{RedisOptions, WaitForReplicas};
///
/// let options = RedisOptions {
///     wait_for_replicas: Some(WaitForReplicas { replicas: 1, timeout: Duration::from_millis(500) }),
///     ..Default::default()
/// };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForReplicas {
    /// How many replicas must acknowledge the write: at least 1.
    pub replicas: u32,
    /// How long to wait for them: at least 1 ms (`WAIT`'s 0 would wait for ever), and less
    /// than [`RedisOptions::response_timeout`].
    pub timeout: Duration,
}

impl WaitForReplicas {
    /// `WAIT replicas timeout_ms`.
    pub(crate) fn command(&self) -> redis::Cmd {
        let mut command = redis::cmd("WAIT");
        command
            .arg(self.replicas)
            .arg(self.timeout_ms().to_string());
        command
    }

    fn timeout_ms(&self) -> u128 {
        self.timeout.as_millis().clamp(1, u128::from(u32::MAX))
    }

    /// Why `acknowledged` replicas are too few for `what`; `None` when they are enough.
    pub(crate) fn late(&self, acknowledged: i64, what: &str) -> Option<String> {
        (acknowledged < i64::from(self.replicas)).then(|| {
            format!(
                "{what} reached {acknowledged} of {} replicas within {} ms (wait_for_replicas): the master has it, and a failover before the replicas catch up would lose it",
                self.replicas,
                self.timeout_ms()
            )
        })
    }

    /// Sends `WAIT` on `con`: `Ok(None)` when enough replicas acknowledged every write sent on
    /// it so far, `Ok(Some(why))` when not.
    pub(crate) async fn wait(
        &self,
        con: &mut Link,
        what: &str,
    ) -> redis::RedisResult<Option<String>> {
        let acknowledged: i64 = self.command().query_async(con).await?;
        Ok(self.late(acknowledged, what))
    }
}

impl RedisOptions {
    /// How long finished records are kept unless told otherwise: one day.
    pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            lease: Duration::from_secs(30),
            result_ttl: Some(Self::DEFAULT_RESULT_TTL),
            dead_letters_max: 10_000,
            dead_letters_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            records_index: true,
            #[cfg(feature = "tls")]
            tls_root_certificate: None,
            wait_for_replicas: None,
            partitions: 1,
        }
    }
}

/// The keys of one app (prefix = the app name, as in the original).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// What every key starts with: the app's name, or on a cluster its hash tag `{name}`.
    prefix: String,
    /// The app's name (the heartbeat shows it).
    name: String,
    queue: String,
    incoming: String,
    ready: String,
    sequence: String,
    leases: String,
    recovered: String,
    delayed: String,
    dead: String,
    done_channel: String,
    cancel_channel: String,
    cancel_requests: String,
    /// Deleted records of cancelled tasks whose entries still wait (see `scripts::DELETE`).
    gone: String,
    publishing: String,
    /// How many partitions the app is spread over, once a process spread it (see
    /// [`partitions`]): a process with another number refuses to connect.
    partitions: String,
    heartbeat: String,
    stats: String,
    workers: String,
    records_stats: String,
    records_waiting: String,
    /// Every record's uuid, scored by when it was added (ms): the index pages are read from;
    /// `None` when [`RedisOptions::records_index`] is off.
    records_index: Option<String>,
    /// The paused queues (SET of names).
    paused: String,
    /// The named queues tasks were added to (SET of names), for stats and flushes.
    queues: String,
    /// Announces entries pushed to named queues (the queue's name): idle workers that serve
    /// named queues wait on it (the default queue's list wakes them by itself).
    added_channel: String,
}

/// The keys of one named queue: where its entries are pushed, parked, sorted and delayed, and
/// the counters of its unsorted entries. The default queue's are the app's own (Python QTasks'
/// `task_queue` among them); another queue `q` has `N:qtasks:q:{q}:*`.
#[derive(Debug, Clone)]
pub(crate) struct QueueKeys<'a> {
    list: std::borrow::Cow<'a, str>,
    incoming: std::borrow::Cow<'a, str>,
    ready: std::borrow::Cow<'a, str>,
    delayed: std::borrow::Cow<'a, str>,
    stats: std::borrow::Cow<'a, str>,
    /// The name the take script tags the queue's members with (`` for the default queue).
    tag: &'a str,
}

impl Keys {
    fn new(prefix: &str, name: &str, records_index: bool) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            name: name.to_owned(),
            queue: format!("{prefix}:task_queue"),
            incoming: format!("{prefix}:qtasks:incoming"),
            ready: format!("{prefix}:qtasks:ready"),
            sequence: format!("{prefix}:qtasks:seq"),
            leases: format!("{prefix}:qtasks:leases"),
            recovered: format!("{prefix}:qtasks:recovered"),
            delayed: format!("{prefix}:qtasks:delayed"),
            dead: format!("{prefix}:qtasks:dead"),
            done_channel: format!("{prefix}:qtasks:done"),
            cancel_channel: format!("{prefix}:qtasks:cancel"),
            cancel_requests: format!("{prefix}:qtasks:cancel_requests"),
            gone: format!("{prefix}:qtasks:gone"),
            heartbeat: format!("{prefix}:GlobalConfig:main"),
            publishing: format!("{prefix}:qtasks:publishing"),
            partitions: format!("{prefix}:qtasks:partitions"),
            stats: format!("{prefix}:qtasks:stats"),
            workers: format!("{prefix}:qtasks:workers"),
            records_stats: format!("{prefix}:qtasks:records:stats"),
            records_waiting: format!("{prefix}:qtasks:records:waiting"),
            records_index: records_index.then(|| format!("{prefix}:qtasks:records:index")),
            paused: format!("{prefix}:qtasks:paused"),
            queues: format!("{prefix}:qtasks:queues"),
            added_channel: format!("{prefix}:qtasks:added"),
        }
    }

    /// The keys of a queue (`None`, or `default`: the default queue).
    fn queue_keys<'a>(&'a self, queue: Option<&'a str>) -> QueueKeys<'a> {
        use std::borrow::Cow::{Borrowed, Owned};
        match queue {
            None | Some(qtasks_core::queues::DEFAULT_QUEUE) => QueueKeys {
                list: Borrowed(&self.queue),
                incoming: Borrowed(&self.incoming),
                ready: Borrowed(&self.ready),
                delayed: Borrowed(&self.delayed),
                stats: Borrowed(&self.stats),
                tag: "",
            },
            Some(name) => {
                let base = format!("{}:qtasks:q:{name}", self.prefix);
                QueueKeys {
                    list: Owned(format!("{base}:list")),
                    incoming: Owned(format!("{base}:incoming")),
                    ready: Owned(format!("{base}:ready")),
                    delayed: Owned(format!("{base}:delayed")),
                    stats: Owned(format!("{base}:stats")),
                    tag: name,
                }
            }
        }
    }

    fn worker(&self, id: &str) -> String {
        format!("{}:qtasks:worker:{id}", self.prefix)
    }

    fn record(&self, uuid: uuid::Uuid) -> String {
        format!("{}:{uuid}", self.prefix)
    }

    /// The lock of a unique key: which task took it, and when.
    fn unique(&self, key: &str) -> String {
        format!("{}:qtasks:unique:{key}", self.prefix)
    }

    /// The state of a rate limit: the next start and the turns given (`scripts::ADMIT`).
    fn rate(&self, key: &str) -> String {
        format!("{}:qtasks:limits:rate:{key}", self.prefix)
    }

    /// The runs of a task with `max_running` that hold a slot.
    fn running(&self, task: &str) -> String {
        format!("{}:qtasks:limits:running:{task}", self.prefix)
    }

    /// The tasks parked for a slot of a task with `max_running`.
    fn parked(&self, task: &str) -> String {
        format!("{}:qtasks:limits:parked:{task}", self.prefix)
    }

    /// The pattern every limit key matches, for a flush (the prefix's glob characters escaped).
    fn limits_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 20);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":qtasks:limits:*");
        pattern
    }

    /// The live items of a running stream task.
    fn items(&self, uuid: uuid::Uuid) -> String {
        format!("{}:qtasks:items:{uuid}", self.prefix)
    }
}

/// The three parts of one app, before they are shared.
struct Parts {
    broker: RedisBroker,
    storage: RedisStorage,
    global_config: RedisGlobalConfig,
}

/// Says so when the server may evict keys under memory pressure: a queued entry, a lease or a
/// record could then vanish, and a task with it. Only `noeviction` (Redis's default) keeps
/// them; with it a full Redis refuses writes instead, which qtasks reports and retries. A
/// server that refuses `CONFIG` (a managed Redis renames it) is not judged.
async fn warn_if_keys_may_be_evicted(commands: &Link, shown: &str) {
    let mut con = commands.clone();
    let mut command = redis::cmd("CONFIG");
    command.arg("GET").arg("maxmemory*");
    let asked = command.query_async::<std::collections::HashMap<String, String>>(&mut con);
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(answer)) => match answer.get("maxmemory-policy").map(String::as_str) {
            Some("noeviction") | None => {}
            // No memory limit: nothing is evicted.
            Some(_) if answer.get("maxmemory").map(String::as_str) == Some("0") => {}
            Some(policy) => tracing::warn!(
                redis = %shown,
                policy,
                "Redis at {shown} evicts keys when its memory is full (maxmemory-policy {policy}): a queued task, a lease or a record may vanish with them; set `maxmemory-policy noeviction` (a full Redis then refuses writes, which qtasks reports and retries)"
            ),
        },
        Ok(Err(error)) => {
            tracing::debug!(redis = %shown, "could not read maxmemory-policy: {error}");
        }
        Err(_) => tracing::debug!(redis = %shown, "reading maxmemory-policy timed out"),
    }
}

/// Connects the broker, storage and global config of the app named `prefix`.
/// `fallback_check` is how often a waiter looks at a record that no message announces.
async fn connect_parts(
    url: &str,
    prefix: &str,
    options: &RedisOptions,
    fallback_check: Duration,
) -> Result<Parts, BackendError> {
    let server = open_server(url, options)?;
    connect_parts_on(
        &server,
        &redacted(url),
        prefix,
        options,
        fallback_check,
        &Shared::new(),
    )
    .await
}

/// What the keys of the app named `prefix` start with on `server`: its name, or on a cluster
/// its name as their hash tag (`{billing}`), so the app lives on one slot and every script's
/// keys share it.
fn key_prefix_on(server: &Server, prefix: &str) -> Result<String, BackendError> {
    if !server.is_cluster() {
        return Ok(prefix.to_owned());
    }
    if prefix.contains(['{', '}']) {
        return Err(BackendError::new(
            "redis",
            format!(
                "the app name `{prefix}` is the hash tag of its keys on a Redis Cluster: it must contain no `{{` or `}}`"
            ),
        ));
    }
    Ok(format!("{{{prefix}}}"))
}

/// What the parts of one process's app share, across its partitions too: the cancel requests
/// from other processes, and the wake-ups of idle takes.
struct Shared {
    cancels: tokio::sync::broadcast::Sender<qtasks_core::backend::CancelRequest>,
    added: Arc<Announcements>,
    /// The key the heartbeat keeps to say the workers publish their results, when it is not
    /// the app's own: a partitioned app's heartbeat is in its first partition.
    publishing: Option<String>,
}

impl Shared {
    fn new() -> Self {
        let (cancels, _) = tokio::sync::broadcast::channel(4096);
        Shared {
            cancels,
            added: Arc::new(Announcements::default()),
            publishing: None,
        }
    }
}

/// [`connect_parts`] on a server opened already; `shown` is its URL without a password.
async fn connect_parts_on(
    server: &Server,
    shown: &str,
    prefix: &str,
    options: &RedisOptions,
    fallback_check: Duration,
    shared: &Shared,
) -> Result<Parts, BackendError> {
    if server.is_cluster() && options.wait_for_replicas.is_some() {
        return Err(BackendError::new(
            "redis",
            "wait_for_replicas is not supported on a Redis Cluster yet: leave it None there",
        ));
    }
    let tagged = key_prefix_on(server, prefix)?;
    let connect = |response: Duration| {
        let timeouts = Timeouts {
            connect: options.connect_timeout,
            response,
        };
        server.link(timeouts, &tagged)
    };
    let unreachable = |e| failure(format!("cannot connect to Redis at {shown}"), e);
    let commands = connect(options.response_timeout)
        .await
        .map_err(unreachable)?;
    warn_if_keys_may_be_evicted(&commands, shown).await;
    // Blocking waits need a connection of their own, with room for the longest wait.
    let blocking = connect(broker::idle_wait(options) + options.response_timeout)
        .await
        .map_err(unreachable)?;
    // The writes that wait for replicas get a connection of their own (see `RedisBroker`).
    let waited = match options.wait_for_replicas {
        Some(_) => Some(
            connect(options.response_timeout)
                .await
                .map_err(unreachable)?,
        ),
        None => None,
    };
    let mut keys = Keys::new(&tagged, prefix, options.records_index);
    if let Some(publishing) = &shared.publishing {
        keys.publishing.clone_from(publishing);
    }
    // Cancel requests from other processes arrive on the storage's subscription, and so do
    // the announcements of entries pushed to queues.
    let (cancels, added) = (shared.cancels.clone(), Arc::clone(&shared.added));
    let storage = RedisStorage::connect(
        server.clone(),
        keys.clone(),
        commands.clone(),
        fallback_check,
        cancels.clone(),
        Arc::clone(&added),
        options.result_ttl,
    )
    .await?;
    let global_config = RedisGlobalConfig::new(keys.clone(), commands.clone());
    let broker = RedisBroker::new(
        keys,
        broker::Connections {
            commands,
            blocking,
            waited,
        },
        options.clone(),
        cancels,
        added,
        shown.to_string(),
    );
    Ok(Parts {
        broker,
        storage,
        global_config,
    })
}

/// Escapes glob characters, so an app named `a*` matches only its own keys.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The app's Redis as its URL names it: one server, or the master of a Sentinel set.
fn open_server(url: &str, options: &RedisOptions) -> Result<Server, BackendError> {
    let shown = redacted(url);
    if url.starts_with(SENTINEL_SCHEME) {
        let parsed = SentinelUrl::parse(url).map_err(|why| {
            BackendError::new(
                "redis",
                format!("invalid Redis Sentinel URL `{shown}`: {why}"),
            )
        })?;
        let master = parsed
            .open(options.connect_timeout)
            .map_err(|e| failure(format!("invalid Redis Sentinel URL `{shown}`"), e))?;
        return Ok(Server::Sentinel(Arc::new(master)));
    }
    if url.starts_with(CLUSTER_SCHEME) {
        let nodes = ClusterNodes::parse(url).map_err(|why| {
            BackendError::new(
                "redis",
                format!("invalid Redis Cluster URL `{shown}`: {why}"),
            )
        })?;
        return Ok(Server::Cluster(Arc::new(nodes)));
    }
    open_client(url, options)
        .map(|client| Server::Direct(Box::new(client)))
        .map_err(|e| failure(format!("invalid Redis URL `{shown}`"), e))
}

#[cfg(feature = "tls")]
fn open_client(url: &str, options: &RedisOptions) -> redis::RedisResult<redis::Client> {
    match &options.tls_root_certificate {
        Some(root) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            },
        ),
        None => redis::Client::open(url),
    }
}

#[cfg(not(feature = "tls"))]
fn open_client(url: &str, _options: &RedisOptions) -> redis::RedisResult<redis::Client> {
    if url.starts_with("rediss://") {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "`rediss://` (TLS) needs the `redis-tls` feature of qtasks",
        )));
    }
    redis::Client::open(url)
}

/// The pauses between tries of a command whose connection dropped: a try at once (the
/// connection manager has a new connection by then), then after a pause that doubles from 50 ms
/// to 2 s, with jitter, each pause followed by another immediate try. Connections cut faster
/// than a pause (a flapping network, `CLIENT KILL`) are thereby always tried fresh.
fn reconnect_pauses() -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
        .flat_map(|pause| [Duration::ZERO, pause])
}

/// A Redis failure: what was being done, and the client's error as the source.
#[allow(clippy::needless_pass_by_value)] // called with `format!` results
fn failure(message: String, error: redis::RedisError) -> BackendError {
    BackendError::new("redis", message).with_source(error)
}

/// Wake-ups of idle takes, by queue: an add's announcement (its queue's name, on the added
/// channel) wakes only the takes that serve that queue.
#[derive(Default)]
pub(crate) struct Announcements {
    by_queue: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Announcements {
    /// The wake-up of `queue`'s takes.
    pub(crate) fn of(&self, queue: &str) -> Arc<tokio::sync::Notify> {
        Arc::clone(self.by_queue.lock().entry(queue.to_owned()).or_default())
    }

    /// The wake-ups of the queues `take` serves.
    pub(crate) fn of_take(
        &self,
        take: &qtasks_core::queues::Take<'_>,
    ) -> Vec<Arc<tokio::sync::Notify>> {
        take.queues
            .iter()
            .map(|queue| self.of(queue.name))
            .collect()
    }

    /// Wakes the takes that serve `queue`.
    pub(crate) fn announce(&self, queue: &str) {
        if let Some(notify) = self.by_queue.lock().get(queue) {
            notify.notify_waiters();
        }
    }

    /// Wakes every take (announcements may have been missed).
    pub(crate) fn announce_all(&self) {
        for notify in self.by_queue.lock().values() {
            notify.notify_waiters();
        }
    }
}

/// How long a unique key's lock lives: its window, and at least a week (the lock must outlive
/// the task that waits or runs under it; a task that waits longer loses its key).
pub(crate) fn unique_lock_ttl_ms(unique: &qtasks_core::unique::UniqueKey) -> u64 {
    unique.window_ms().max(7 * 24 * 3600 * 1000)
}

/// What a unique add's script answered.
pub(crate) enum UniqueAnswer {
    Added,
    Held(uuid::Uuid),
    Changed,
}

impl UniqueAnswer {
    fn read(answer: &str) -> Result<Self, String> {
        match answer {
            "added" => Ok(UniqueAnswer::Added),
            "changed" => Ok(UniqueAnswer::Changed),
            other => other
                .strip_prefix("holder:")
                .and_then(|uuid| uuid::Uuid::parse_str(uuid).ok())
                .map(UniqueAnswer::Held)
                .ok_or_else(|| format!("the unique add answered `{other}`")),
        }
    }
}

/// Runs a unique add: reads the key's holder, then the script (`invoke`, given the holder),
/// again while the lock moved in between (a few times: each move is another add winning).
pub(crate) async fn unique_add<F, Fut>(
    keys: &Keys,
    commands: &Link,
    unique: &qtasks_core::unique::UniqueKey,
    mut invoke: F,
) -> Result<Option<uuid::Uuid>, BackendError>
where
    F: FnMut(String, Option<uuid::Uuid>) -> Fut,
    Fut: Future<Output = redis::RedisResult<String>>,
{
    let lock = keys.unique(&unique.key);
    for _ in 0..16 {
        let mut con = commands.clone();
        let holder: Option<String> = redis::cmd("HGET")
            .arg(&lock)
            .arg("uuid")
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("reading unique key `{}` failed", unique.key), e))?;
        let holder = holder.and_then(|uuid| uuid::Uuid::parse_str(&uuid).ok());
        let answer = invoke(lock.clone(), holder).await.map_err(|e| {
            failure(
                format!("adding under unique key `{}` failed", unique.key),
                e,
            )
        })?;
        match UniqueAnswer::read(&answer).map_err(|why| BackendError::new("redis", why))? {
            UniqueAnswer::Added => return Ok(None),
            UniqueAnswer::Held(holder) => return Ok(Some(holder)),
            UniqueAnswer::Changed => {}
        }
    }
    Err(BackendError::new(
        "redis",
        format!(
            "unique key `{}` kept changing hands; the add was not made",
            unique.key
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redacted("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redacted("redis://secret@host"), "redis://:***@host");
        assert_eq!(
            redacted("rediss://u:p%40ss@host:6380/1"),
            "rediss://u:***@host:6380/1"
        );
        assert_eq!(
            redacted("unix:///run/redis.sock?db=2&pass=secret"),
            "unix:///run/redis.sock?db=2&pass=***"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?password=secret&db=0"),
            "redis+unix:///run/redis.sock?password=***&db=0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redacted("redis+sentinel://:m@a:1,b:2/m/0?sentinel_password=s"),
            "redis+sentinel://:***@a:1,b:2/m/0?sentinel_password=***"
        );
        assert_eq!(
            redacted("redis+sentinel://:m@a:1/m?sentinel_password=p@ss"),
            "redis+sentinel://:***@a:1/m?sentinel_password=***"
        );
        assert_eq!(redacted("redis://u:pa?ss@h:1/0"), "redis://u:***@h:1/0");
    }
}
