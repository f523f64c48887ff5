//! The PostgreSQL backend of qtasks: broker, storage and global config in the database a team
//! already runs. Turn it on with the `postgres` feature of `qtasks` and reach it as
//! `qtasks::postgres`.
//!
//! ```no_run
//! # async fn demo() -> qtasks::Result<()> {
//! let app = qtasks::postgres::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! app.run_forever().await
//! # }
//! ```
//!
//! What it keeps, and how:
//! - **Tables in a schema of their own** (`qtasks` unless the URL says `?schema=name`), created
//!   and upgraded by the versioned migrations embedded in this crate when an app connects.
//!   Many apps share a schema: every row names its app.
//! - **Tasks are not lost; one outcome per attempt.** A worker takes a batch with `FOR UPDATE
//!   SKIP LOCKED` under a lease on the database's clock, fenced by a token per delivery; every
//!   write of the holder (finish, hand-back, progress, stream item) checks the token, so a
//!   worker that stalled past its lease cannot overwrite the run that took its task over.
//! - **No polling**: idle workers and waiters sleep until a `NOTIFY` (sent by triggers, so a
//!   task added in a caller's transaction wakes a worker when that transaction commits), the
//!   next due task or expired lease, or a slow safety look.
//! - **The live queue apart from the records**: a take reads a partial index that holds the
//!   backlog only, so millions of finished records cost it nothing.
//!
//! This crate uses the core's public API and nothing else.
#![warn(missing_docs)]

mod add_in;
mod batch;
mod broker;
mod global_config;
mod listen;
mod record;
mod schema;
mod storage;
mod unique;

use std::str::FromStr;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use qtasks_core::backend::{BackendError, BackendParts, Connector, redacted_url as redacted};
use qtasks_core::{QueueConfig, QueueTasks};

pub use crate::add_in::{AddInExt, add_task_in};
use crate::broker::PgBroker;
use crate::global_config::PgGlobalConfig;
use crate::listen::{Hub, Listener};
use crate::storage::PgStorage;
/// The sqlx this engine is built on: take transactions for [`AddInExt::add_in`] from its pool
/// types, so that both sides agree on the version.
pub use sqlx;

/// An app on PostgreSQL, named `QueueTasks`, with default options.
///
/// Fails at once, saying so, when the database cannot be reached.
pub async fn connect(url: &str) -> qtasks_core::Result<QueueTasks> {
    connect_with(url, QueueConfig::default(), PostgresOptions::default()).await
}

/// An app on PostgreSQL with this config (its `name` tells its rows from other apps') and
/// these options.
///
/// ```no_run
/// use std::time::Duration;
/// use qtasks::postgres::PostgresOptions;
///
/// # async fn demo() -> qtasks::Result<()> {
/// let options = PostgresOptions { lease: Duration::from_secs(60), ..Default::default() };
/// let app = qtasks::postgres::connect_with(
///     "postgres://postgres@127.0.0.1:5432/app?schema=jobs",
///     qtasks::QueueConfig::default(),
///     options,
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn connect_with(
    url: &str,
    config: QueueConfig,
    options: PostgresOptions,
) -> qtasks_core::Result<QueueTasks> {
    Ok(QueueTasks::builder()
        .config(config)
        .connect(Postgres::new(url).options(options))
        .await?
        .build())
}

/// The PostgreSQL engine as a [`Connector`], for
/// [`AppBuilder::connect`](qtasks_core::AppBuilder::connect) when the app needs other parts
/// replaced too.
///
/// ```no_run
/// # async fn demo() -> qtasks::Result<()> {
/// use qtasks::{QueueConfig, QueueTasks};
/// use qtasks::postgres::Postgres;
///
/// let app = QueueTasks::builder()
///     .config(QueueConfig { name: "billing".into(), ..Default::default() })
///     .connect(Postgres::new("postgres://postgres@127.0.0.1:5432/app"))
///     .await?
///     .build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Postgres {
    url: String,
    options: PostgresOptions,
}

impl Postgres {
    /// The database at `url` (`postgres://user:password@host:port/database`, with an optional
    /// `schema=name` parameter), with default options.
    pub fn new(url: impl Into<String>) -> Self {
        Postgres {
            url: url.into(),
            options: PostgresOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn options(mut self, options: PostgresOptions) -> Self {
        self.options = options;
        self
    }
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &redacted(&self.url))
            .field("options", &self.options)
            .finish()
    }
}

#[qtasks_core::async_trait]
impl Connector for Postgres {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        if self.options.lease < MIN_LEASE {
            return Err(BackendError::new(
                "postgres",
                format!(
                    "a lease of {:?} is too short: workers renew it every third of it, and under {MIN_LEASE:?} a renewal would race the network; use at least {MIN_LEASE:?}",
                    self.options.lease
                ),
            ));
        }
        if config.name.is_empty() {
            return Err(BackendError::new(
                "postgres",
                "the app name is empty: it tells this app's rows from other apps' in the schema",
            ));
        }
        let shared = Shared::get(&self.url, &self.options).await?;
        let hub = shared.hub(&config.name).await?;
        let app = Arc::new(App {
            shared,
            hub,
            name: config.name.clone(),
            options: self.options.clone(),
        });
        Ok(BackendParts::new(
            Arc::new(PgBroker::new(Arc::clone(&app))),
            Arc::new(PgStorage::new(Arc::clone(&app), config.result_interval())),
            Arc::new(PgGlobalConfig::new(app)),
        ))
    }
}

// `postgres://` and `postgresql://` reach this engine through `QueueTasks::connect(url)` and
// the command line's `--url`.
fn url_connector(
    url: &qtasks_core::backend::EngineUrl<'_>,
) -> Result<Box<dyn Connector>, BackendError> {
    Ok(Box::new(Postgres::new(url.url)))
}

qtasks_core::url_engine!(qtasks_core::backend::UrlEngine::new(
    "postgres",
    &["postgres", "postgresql"],
    url_connector
));

/// The shortest lease [`PostgresOptions::lease`] accepts.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// Settings of the PostgreSQL backend.
///
/// See [`connect_with`]. Apps of one process that connect to the same URL and schema share one
/// pool and one listening connection: `max_connections`, `connect_timeout` and `migrate` are
/// those of the first of them to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The schema the tables live in, when the URL has no `schema=` parameter. Default
    /// `qtasks`. Lowercase letters, digits and `_`, starting with a letter or `_`, at most 40
    /// characters (it names the notification channel too).
    pub schema: String,
    /// How long a taken task stays with its worker without a renewal. The worker renews it
    /// every third of this while it lives; when a worker dies, its tasks run again on a live
    /// worker after at most this long. Default 30 s; at least [`MIN_LEASE`].
    pub lease: Duration,
    /// Finished task records are deleted this long after they end, unless their task sets its
    /// own (`#[qtasks::task(result_ttl = ..)]`). Default one day; `None` keeps them.
    pub result_ttl: Option<Duration>,
    /// How many dead letters are kept per app: the newest this many. Default 10,000.
    pub dead_letters_max: usize,
    /// The most connections the pool opens (one of them listens for notifications). Default 10.
    pub max_connections: u32,
    /// The timeout of one connection attempt, and of waiting for a pooled connection.
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Create or upgrade the schema when connecting. Default on; off, connecting fails unless
    /// the schema is at this build's version already (a database whose migrations are run by
    /// a deploy step).
    pub migrate: bool,
}

impl PostgresOptions {
    /// How long finished records are kept unless told otherwise: one day.
    pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "qtasks".to_owned(),
            lease: Duration::from_secs(30),
            result_ttl: Some(Self::DEFAULT_RESULT_TTL),
            dead_letters_max: 10_000,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

/// One app's view of a [`Shared`] database: what the broker, storage and global config of the
/// app share.
pub(crate) struct App {
    pub(crate) shared: Arc<Shared>,
    /// The app's wake-ups.
    pub(crate) hub: Arc<Hub>,
    /// The app's name, `app` in every row.
    pub(crate) name: String,
    pub(crate) options: PostgresOptions,
}

impl App {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.shared.pool
    }
}

/// A database and schema as this process reaches them: one pool and one listener, whatever
/// number of apps connect to them (a test suite connects hundreds; the server allows about
/// 100 connections).
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    /// The URL without its password, for logs and the command line.
    pub(crate) shown_url: String,
    /// The statements that name the schema.
    pub(crate) statements: unique::Statements,
    listener: Listener,
}

/// The databases this process reaches, by URL and schema; an entry lives while an app uses it.
static SHARED: LazyLock<Mutex<SharedByDatabase>> = LazyLock::new(Mutex::default);

/// The [`Shared`] of each (URL, schema).
type SharedByDatabase = std::collections::HashMap<(String, String), Weak<Shared>>;

/// Serialises connects, so that two apps connecting at once share one pool.
static CONNECTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Shared {
    async fn get(url: &str, options: &PostgresOptions) -> Result<Arc<Shared>, BackendError> {
        let (url_without_schema, url_schema) = split_schema(url);
        let schema = url_schema.unwrap_or_else(|| options.schema.clone());
        schema::check_name(&schema)?;
        let key = (url_without_schema.clone(), schema.clone());
        let _connecting = CONNECTING.lock().await;
        if let Some(shared) = SHARED.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        let shown_url = redacted(&url_without_schema);
        let connect_options = PgConnectOptions::from_str(&url_without_schema)
            .map_err(|e| failure(format!("invalid PostgreSQL URL `{shown_url}`"), e))?
            .application_name(&format!("qtasks/{schema}"))
            // Every statement names its tables unqualified: the schema is the search path.
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.connect_timeout)
            // A broken connection shows on use, and the call is tried again; a ping per
            // acquire would cost a round trip on every statement.
            .test_before_acquire(false)
            .connect_with(connect_options)
            .await
            .map_err(|e| failure(format!("cannot connect to PostgreSQL at {shown_url}"), e))?;
        schema::migrate(&pool, &schema, options.migrate).await?;
        let listener = Listener::start(&pool, &schema).await?;
        let shared = Arc::new(Shared {
            pool,
            statements: unique::Statements::new(&schema),
            schema,
            shown_url,
            listener,
        });
        SHARED.lock().insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }

    /// The wake-ups of the app named `app`.
    async fn hub(&self, app: &str) -> Result<Arc<Hub>, BackendError> {
        let hash: String = sqlx::query_scalar("SELECT left(md5($1), 16)")
            .bind(app)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| failure("reading the app's hash failed", e))?;
        Ok(self.listener.hub(&hash))
    }
}

/// The URL without its `schema=` parameter (not PostgreSQL's: sqlx would warn of it), and the
/// schema it named.
fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema)
}

/// A PostgreSQL failure: what was being done, and the driver's error as the source.
pub(crate) fn failure(message: impl Into<String>, error: sqlx::Error) -> BackendError {
    BackendError::new("postgres", message).with_source(error)
}

/// Whether a failed call may succeed when sent again: the connection broke, the server is
/// restarting, or the transaction lost a serialisation race. Every write is safe to repeat
/// (adds by uuid, finishes by token, renewals).
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// The pauses between tries of a call whose connection broke: a try at once (the pool opens
/// a new connection), then after a pause that doubles from 50 ms to 2 s, with jitter.
pub(crate) fn reconnect_pauses() -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
        .flat_map(|pause| [Duration::ZERO, pause])
}

/// `text` as a PostgreSQL `text` value holds it: a NUL character (which `text` refuses) as
/// U+FFFD. For reasons and labels; JSON documents escape NUL themselves.
pub(crate) fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// Refuses a value PostgreSQL `text` cannot hold (a NUL character), naming what it was.
pub(crate) fn no_nul(what: &str, text: &str) -> Result<(), BackendError> {
    if text.contains('\0') {
        return Err(BackendError::new(
            "postgres",
            format!("{what} contains a NUL character (\\0), which PostgreSQL text cannot hold"),
        ));
    }
    Ok(())
}

/// Seconds as a PostgreSQL interval's seconds, kept finite and within what an interval holds.
pub(crate) fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64().min(1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            split_schema("postgres://u:p@h/db?schema=jobs"),
            ("postgres://u:p@h/db".to_owned(), Some("jobs".to_owned()))
        );
        assert_eq!(
            split_schema("postgres://h/db?sslmode=disable&schema=jobs&application_name=x"),
            (
                "postgres://h/db?sslmode=disable&application_name=x".to_owned(),
                Some("jobs".to_owned())
            )
        );
        assert_eq!(
            split_schema("postgres://h/db"),
            ("postgres://h/db".to_owned(), None)
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
    }

    #[test]
    fn lost_connections_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&io));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
