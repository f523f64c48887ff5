//! `AppBuilder`: an app with replaced parts.

use std::sync::Arc;

use crate::app::Parts;
use crate::backend::{Broker, Connector, MemoryBroker, MemoryStorage, Storage};
use crate::components::{
    ConcurrentWorker, DefaultRunner, DefaultStarter, GlobalConfig, MemoryGlobalConfig, Starter,
    TaskRunner, Worker,
};
use crate::{Middleware, QueueConfig, QueueTasks};

/// Builds a [`QueueTasks`] with replaced parts; what is not set is the default (in-memory
/// backend and global config, [`ConcurrentWorker`], [`DefaultStarter`], [`DefaultRunner`]).
///
/// ```
/// use std::sync::Arc;
/// use qtasks::components::ConcurrentWorker;
/// use qtasks::{QueueConfig, QueueTasks};
///
/// let app = QueueTasks::builder()
///     .config(QueueConfig { name: "billing".into(), ..Default::default() })
///     .worker(Arc::new(ConcurrentWorker))
///     .build();
/// assert_eq!(app.name(), "billing");
/// ```
#[derive(Default)]
#[must_use]
pub struct AppBuilder {
    config: Option<QueueConfig>,
    backend: Option<(Arc<dyn Broker>, Arc<dyn Storage>)>,
    global_config: Option<Arc<dyn GlobalConfig>>,
    worker: Option<Arc<dyn Worker>>,
    starter: Option<Arc<dyn Starter>>,
    runner: Option<Arc<dyn TaskRunner>>,
    middlewares: Vec<Arc<dyn Middleware>>,
    routers: Option<Vec<String>>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The parts are trait objects: show which are set, by their names.
        f.debug_struct("AppBuilder")
            .field("config", &self.config)
            .field("broker", &self.backend.as_ref().map(|(b, _)| b.name()))
            .field("storage", &self.backend.as_ref().map(|(_, s)| s.name()))
            .field(
                "global_config",
                &self.global_config.as_ref().map(|g| g.name()),
            )
            .field("worker", &self.worker.as_ref().map(|w| w.name()))
            .field("starter", &self.starter.as_ref().map(|s| s.name()))
            .field("runner", &self.runner.as_ref().map(|e| e.name()))
            .field("middlewares", &self.middlewares.len())
            .field("routers", &self.routers)
            .finish()
    }
}

impl AppBuilder {
    /// The configuration.
    pub fn config(mut self, config: QueueConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The broker and the storage it writes to (they come as a pair: the broker owns the write
    /// path of a task, the storage answers reads).
    pub fn backend(mut self, broker: Arc<dyn Broker>, storage: Arc<dyn Storage>) -> Self {
        self.backend = Some((broker, storage));
        self
    }

    /// The global config (entries and the worker heartbeat).
    pub fn global_config(mut self, global_config: Arc<dyn GlobalConfig>) -> Self {
        self.global_config = Some(global_config);
        self
    }

    /// The worker.
    pub fn worker(mut self, worker: Arc<dyn Worker>) -> Self {
        self.worker = Some(worker);
        self
    }

    /// The starter.
    pub fn starter(mut self, starter: Arc<dyn Starter>) -> Self {
        self.starter = Some(starter);
        self
    }

    /// The runner of tasks that do not choose their own (see [`TaskRunner`]).
    pub fn runner(mut self, runner: Arc<dyn TaskRunner>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// A middleware run around every task of the app (see [`Middleware`]); added in order.
    pub fn middleware(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.middlewares.push(middleware);
        self
    }

    /// Serves these queues, with their weights (`"billing:3,default:1"`, as
    /// [`QueueConfig::queues`] reads it); the rest of the config stays as set.
    ///
    /// # Panics
    ///
    /// On a selection that does not parse (a literal in the program): parse one read at run
    /// time with [`QueueSelection`](crate::queues::QueueSelection)'s `FromStr` and set
    /// [`QueueConfig::queues`] instead.
    ///
    /// ```
    /// let app = qtasks::QueueTasks::builder().queues("billing:3,default").build();
    /// assert!(app.config().queues.serves("billing"));
    /// ```
    pub fn queues(mut self, queues: &str) -> Self {
        let selection = match queues.parse() {
            Ok(selection) => selection,
            Err(error) => panic!("`{queues}` is not a queue selection: {error}"),
        };
        self.config.get_or_insert_with(QueueConfig::default).queues = selection;
        self
    }

    /// Runs only the tasks of these routers (`#[qtasks::task(router = "billing")]`); a task of
    /// another router that reaches this app's worker is handed back to its queue for a worker
    /// that runs it (see [`QueueConfig::unknown_task_hand_backs`]). By default an app runs
    /// every task. To keep a router's tasks away from other workers, give them a queue
    /// (`#[qtasks::task(queue = "billing")]`) that only its workers serve.
    pub fn routers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, routers: I) -> Self {
        self.routers = Some(routers.into_iter().map(Into::into).collect());
        self
    }

    /// The backend of an engine (Redis, ...), connected now with the config set so far (set
    /// the config first: engines take their key prefix or queue name from the app name).
    /// Fails at once, saying why, when the engine cannot connect.
    ///
    /// With the `redis` feature of `qtasks`:
    ///
    /// ```text
    /// let app = QueueTasks::builder()
    ///     .config(QueueConfig { name: "billing".into(), ..Default::default() })
    ///     .connect(qtasks::redis::Redis::new("redis://127.0.0.1:6379/0"))
    ///     .await?
    ///     .build();
    /// ```
    ///
    /// [`Connector`] shows an engine of your own.
    pub async fn connect(mut self, connector: impl Connector) -> crate::Result<Self> {
        let config = self.config.get_or_insert_with(QueueConfig::default);
        let parts = connector.connect(config).await?;
        self.backend = Some((parts.broker, parts.storage));
        self.global_config = Some(parts.global_config);
        Ok(self)
    }

    /// The backend of the engine compiled in for `url`'s scheme (`memory://`, and with the
    /// `qtasks` features `redis://`, `amqp://`, ...: see [`UrlEngine`](crate::backend::UrlEngine)),
    /// connected now as [`connect`](Self::connect) does. A scheme no engine of this binary
    /// serves fails at once, naming the schemes it knows.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// use qtasks::{QueueConfig, QueueTasks};
    ///
    /// let app = QueueTasks::builder()
    ///     .config(QueueConfig { name: "billing".into(), ..Default::default() })
    ///     .connect_url("memory://")
    ///     .await?
    ///     .build();
    /// assert_eq!(app.name(), "billing");
    /// # Ok(()) }
    /// ```
    pub async fn connect_url(self, url: &str) -> crate::Result<Self> {
        self.connect_engine_url(crate::backend::EngineUrl::new(url))
            .await
    }

    /// [`connect_url`](Self::connect_url) with a second URL for the records, for an engine
    /// that keeps only the queue (`amqp://` with the records on `redis://`).
    pub async fn connect_engine_url(
        self,
        url: crate::backend::EngineUrl<'_>,
    ) -> crate::Result<Self> {
        let connector = crate::backend::connector_for(url)?;
        self.connect(connector).await
    }

    /// The app.
    pub fn build(self) -> QueueTasks {
        let (broker, storage) = self.backend.unwrap_or_else(|| {
            let storage = Arc::new(MemoryStorage::new());
            (
                Arc::new(MemoryBroker::new(Arc::clone(&storage))) as Arc<dyn Broker>,
                storage as Arc<dyn Storage>,
            )
        });
        QueueTasks::from_parts(Parts {
            config: self.config.unwrap_or_default(),
            broker,
            storage,
            global_config: self
                .global_config
                .unwrap_or_else(|| Arc::new(MemoryGlobalConfig::new())),
            worker: self.worker.unwrap_or_else(|| Arc::new(ConcurrentWorker)),
            starter: self.starter.unwrap_or_else(|| Arc::new(DefaultStarter)),
            runner: self.runner.unwrap_or_else(|| Arc::new(DefaultRunner)),
            middlewares: self.middlewares,
            routers: self.routers,
        })
    }
}
