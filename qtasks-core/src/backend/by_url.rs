//! Engines found by the scheme of a URL: the registry behind [`QueueTasks::connect`] and
//! [`AppBuilder::connect_url`], and so behind the command line's `--url` / `QTASKS_URL`.
//!
//! Every engine compiled into a binary joins with one [`url_engine!`](crate::url_engine) line
//! (collected by `inventory`, like tasks), so a binary knows the schemes of exactly the
//! engines it links: the in-memory engine's `memory://`, and with the `qtasks` features
//! `redis://`, `rediss://`, `unix://`, `amqp://`, `amqps://`, `postgres://` and
//! `postgresql://`. An engine of your own joins
//! the same way:
//!
//! ```
//! use qtasks::backend::{BackendError, Connector, EngineUrl, UrlEngine};
//!
//! fn connector(url: &EngineUrl<'_>) -> Result<Box<dyn Connector>, BackendError> {
//!     // Parse `url.url` and return the engine's connector; here, the in-memory engine's.
//!     Ok(Box::new(qtasks::backend::MemoryEngine))
//! }
//!
//! qtasks::url_engine!(UrlEngine::new("my-engine", &["mine"], connector));
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> qtasks::Result<()> {
//! let app = qtasks::QueueTasks::connect("mine://anything").await?;
//! # Ok(()) }
//! ```
//!
//! [`QueueTasks::connect`]: crate::QueueTasks::connect
//! [`AppBuilder::connect_url`]: crate::AppBuilder::connect_url

use std::sync::Arc;

use super::{
    BackendError, BackendParts, Connector, MemoryBroker, MemoryStorage, RecordStoreConnector,
};
use crate::QueueConfig;
use crate::components::{GlobalConfig, MemoryGlobalConfig};

/// How an engine makes its connector for a URL.
pub type MakeConnector = fn(&EngineUrl<'_>) -> Result<Box<dyn Connector>, BackendError>;

/// How an engine that can keep another engine's records makes that store for a URL.
pub type MakeRecordStore = fn(&str) -> Arc<dyn RecordStoreConnector>;

/// An engine that connects by URL: its schemes and how to make its [`Connector`] from a URL.
/// Registered with [`url_engine!`](crate::url_engine).
#[derive(Debug)]
pub struct UrlEngine {
    name: &'static str,
    schemes: &'static [&'static str],
    connector: MakeConnector,
    records: Option<MakeRecordStore>,
}

impl UrlEngine {
    /// The engine `name` (as messages show it), serving URLs of these `schemes` (without
    /// `://`), connected by `connector`.
    pub const fn new(
        name: &'static str,
        schemes: &'static [&'static str],
        connector: MakeConnector,
    ) -> Self {
        UrlEngine {
            name,
            schemes,
            connector,
            records: None,
        }
    }

    /// The engine can also keep the records of another engine's broker (one that keeps only
    /// the queue, as RabbitMQ does): `records` makes that store for a URL of its schemes.
    #[must_use]
    pub const fn records(mut self, records: fn(&str) -> Arc<dyn RecordStoreConnector>) -> Self {
        self.records = Some(records);
        self
    }

    /// The engine's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The URL schemes it serves.
    pub fn schemes(&self) -> &'static [&'static str] {
        self.schemes
    }
}

/// What an engine's connector is made from: the app's URL, and for an engine that keeps only
/// the queue, the URL of the store that keeps the records.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct EngineUrl<'a> {
    /// The URL the app was given (`redis://127.0.0.1:6379/0`).
    pub url: &'a str,
    /// Where the records are kept, when the app was given a second URL for them (the command
    /// line's `--storage-url` / `QTASKS_STORAGE_URL`).
    pub records_url: Option<&'a str>,
}

impl<'a> EngineUrl<'a> {
    /// The app's `url`, with no second URL for the records.
    pub fn new(url: &'a str) -> Self {
        EngineUrl {
            url,
            records_url: None,
        }
    }

    /// The same, with the records kept at `records_url`.
    #[must_use]
    pub fn with_records(mut self, records_url: Option<&'a str>) -> Self {
        self.records_url = records_url;
        self
    }

    /// The record store at [`records_url`](Self::records_url), made by the engine of its
    /// scheme; `needed_by` names the asking engine in the error when there is none.
    pub fn record_store(
        &self,
        needed_by: &'static str,
    ) -> Result<Arc<dyn RecordStoreConnector>, BackendError> {
        let Some(records_url) = self.records_url else {
            return Err(BackendError::new(
                needed_by,
                format!(
                    "`{}` keeps only the queue: name where the records are kept too (the command line's --storage-url or QTASKS_STORAGE_URL, e.g. redis://127.0.0.1:6379/0)",
                    super::redacted_url(self.url)
                ),
            ));
        };
        let engine =
            engine_for(records_url).map_err(|message| BackendError::new(needed_by, message))?;
        match engine.records {
            Some(records) => Ok(records(records_url)),
            None => Err(BackendError::new(
                needed_by,
                format!(
                    "the {} engine (`{}`) cannot keep another engine's records; {} can",
                    engine.name,
                    super::redacted_url(records_url),
                    record_keepers()
                ),
            )),
        }
    }
}

inventory::collect!(UrlEngine);

/// Every engine compiled into this binary that connects by URL.
pub fn url_engines() -> impl Iterator<Item = &'static UrlEngine> {
    inventory::iter::<UrlEngine>()
}

/// The schemes this binary knows, as messages list them: `memory://, redis://, ...`.
pub fn known_schemes() -> String {
    let mut schemes: Vec<&str> = url_engines()
        .flat_map(|e| e.schemes.iter().copied())
        .collect();
    schemes.sort_unstable();
    schemes.dedup();
    schemes
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn record_keepers() -> String {
    let keepers: Vec<String> = url_engines()
        .filter(|engine| engine.records.is_some())
        .flat_map(|engine| engine.schemes.iter().map(|s| format!("{s}://")))
        .collect();
    if keepers.is_empty() {
        "no engine compiled in".to_owned()
    } else {
        keepers.join(", ")
    }
}

/// The engine that serves `url`'s scheme, or why there is none (naming the schemes this
/// binary knows).
fn engine_for(url: &str) -> Result<&'static UrlEngine, String> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(format!(
            "`{}` is not a URL (scheme://...); this binary knows {}",
            super::redacted_url(url),
            known_schemes()
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let mut serving = url_engines().filter(|engine| engine.schemes.contains(&scheme.as_str()));
    let engine = serving.next().ok_or_else(|| {
        format!(
            "no engine for `{scheme}://` is compiled into this binary; it knows {} (turn on the `qtasks` feature of the engine you need, e.g. `redis`)",
            known_schemes()
        )
    })?;
    // Two engines claiming one scheme would be picked by link order: refuse, naming both.
    if let Some(other) = serving.next() {
        return Err(format!(
            "`{scheme}://` is claimed by two engines compiled into this binary, {} and {}: build with one of them",
            engine.name, other.name
        ));
    }
    Ok(engine)
}

/// The connector for `url`, made by the engine compiled in for its scheme. A scheme that no
/// engine serves is [`Error::BackendUrl`](crate::Error::BackendUrl); an engine that refuses
/// the URL, [`Error::Backend`](crate::Error::Backend).
///
/// ```
/// let connector = qtasks::backend::connector_for(qtasks::backend::EngineUrl::new("memory://")).unwrap();
/// let error = qtasks::backend::connector_for(qtasks::backend::EngineUrl::new("nosuch://x")).err().unwrap();
/// assert!(error.to_string().contains("no engine for `nosuch://`"), "{error}");
/// ```
pub fn connector_for(url: EngineUrl<'_>) -> crate::Result<Box<dyn Connector>> {
    let engine = engine_for(url.url).map_err(crate::Error::BackendUrl)?;
    Ok((engine.connector)(&url)?)
}

/// The in-memory engine as a [`Connector`]: a broker, storage and global config of this
/// process alone (what [`QueueTasks::new`](crate::QueueTasks::new) uses). Its URL is
/// `memory://`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryEngine;

#[async_trait::async_trait]
impl Connector for MemoryEngine {
    async fn connect(&self, _config: &QueueConfig) -> Result<BackendParts, BackendError> {
        let storage = Arc::new(MemoryStorage::new());
        let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
        let global_config: Arc<dyn GlobalConfig> = Arc::new(MemoryGlobalConfig::new());
        Ok(BackendParts::new(broker, storage, global_config))
    }
}

fn memory_connector(url: &EngineUrl<'_>) -> Result<Box<dyn Connector>, BackendError> {
    match url.url.split_once("://") {
        Some((_, "")) => Ok(Box::new(MemoryEngine)),
        _ => Err(BackendError::new(
            "memory",
            format!(
                "`{}`: the in-memory engine's URL is `memory://`, with nothing after it",
                super::redacted_url(url.url)
            ),
        )),
    }
}

crate::url_engine!(UrlEngine::new("memory", &["memory"], memory_connector));

/// Registers an engine that connects by URL (see [`UrlEngine`]): one line in the engine's
/// crate, at module level.
#[macro_export]
macro_rules! url_engine {
    ($engine:expr) => {
        $crate::__private::inventory::submit! { $engine }
    };
}
