//! Configuration: the app's own [`QueueConfig`], and the global config entries shared by every
//! process of the app (through its [`GlobalConfig`](crate::components::GlobalConfig)).

use std::sync::Arc;

use serde_json::Value;

use crate::dispatch::chain;
use crate::triggers::{GlobalConfigGet, GlobalConfigGetAll, GlobalConfigGetMatch, GlobalConfigSet};
use crate::{ConfigError, QueueConfig, QueueTasks, Result, Trigger};

type ConfigSubscriber = Arc<dyn Fn(&QueueConfig, &str, &Value) + Send + Sync>;

/// The app's config as it is now, and who is told when it changes.
pub(super) struct ConfigState {
    current: parking_lot::RwLock<Arc<QueueConfig>>,
    subscribers: parking_lot::Mutex<Vec<ConfigSubscriber>>,
}

impl ConfigState {
    pub(super) fn new(config: QueueConfig) -> Self {
        ConfigState {
            current: parking_lot::RwLock::new(Arc::new(config)),
            subscribers: parking_lot::Mutex::default(),
        }
    }
}

impl QueueTasks {
    /// The app name.
    pub fn name(&self) -> String {
        self.config().name.clone()
    }

    /// The app's config, as it is now.
    pub fn config(&self) -> Arc<QueueConfig> {
        Arc::clone(&self.inner.config.current.read())
    }

    /// Changes one config field from its text form (as an environment variable would) and
    /// tells the subscribers. The app name cannot change.
    pub fn set_config(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        self.update_config(|config| config.set_field(field, value))
    }

    /// Changes the config with a closure and tells the subscribers which fields changed.
    ///
    /// Settings read at start (`max_tasks_process`, the heartbeat timings) take effect at the
    /// next start.
    pub fn update_config(
        &self,
        change: impl FnOnce(&mut QueueConfig) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let before = self.config();
        let mut after = (*before).clone();
        change(&mut after)?;
        if after.name != before.name {
            return Err(ConfigError {
                source_name: "name".to_owned(),
                value: after.name,
                expected: "the app's name: it cannot change while the app exists".to_owned(),
            });
        }
        let after = Arc::new(after);
        *self.inner.config.current.write() = Arc::clone(&after);
        let (Value::Object(old), Value::Object(new)) = (
            serde_json::to_value(&*before).unwrap_or_default(),
            serde_json::to_value(&*after).unwrap_or_default(),
        ) else {
            return Ok(());
        };
        let subscribers = self.inner.config.subscribers.lock().clone();
        for (field, value) in &new {
            if old.get(field) != Some(value) {
                for subscriber in &subscribers {
                    subscriber(&after, field, value);
                }
            }
        }
        Ok(())
    }

    /// Calls `callback(config, field, new_value)` for every field a later change sets to a new
    /// value (the original's `config.subscribe`).
    pub fn subscribe_config(
        &self,
        callback: impl Fn(&QueueConfig, &str, &Value) + Send + Sync + 'static,
    ) {
        self.inner
            .config
            .subscribers
            .lock()
            .push(Arc::new(callback));
    }

    /// The global config entries (`name → key → value` strings shared by every process of the
    /// app; the original's `app.config` of `GlobalConfig`). Plugins of the `global_config_*`
    /// triggers see and may change every read and write.
    ///
    /// ```
    /// # async fn demo() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// app.global_config().set("limits", "reports", "10").await?;
    /// assert_eq!(app.global_config().get("limits", "reports").await?.as_deref(), Some("10"));
    /// # Ok(()) }
    /// ```
    pub fn global_config(&self) -> GlobalEntries<'_> {
        GlobalEntries { app: self }
    }
}

/// The global config entries of an app, from [`QueueTasks::global_config`].
#[derive(Debug, Clone, Copy)]
pub struct GlobalEntries<'a> {
    app: &'a QueueTasks,
}

impl GlobalEntries<'_> {
    /// Writes a global config entry (`global_config_set` may change it).
    pub async fn set(self, name: &str, key: &str, value: &str) -> Result<()> {
        let global_config = &*self.app.components().global_config;
        let (mut name, mut key, mut value) = (name.to_owned(), key.to_owned(), value.to_owned());
        chain!(
            self.app.dispatch(),
            Trigger::GlobalConfigSet,
            GlobalConfigSet {
                global_config,
                name: &name,
                key: &key,
                value: &value
            },
            |update| {
                if let Some(new) = update.name {
                    name = new;
                }
                if let Some(new) = update.key {
                    key = new;
                }
                if let Some(new) = update.value {
                    value = new;
                }
            }
        );
        Ok(global_config.set(&name, &key, &value).await?)
    }

    /// Reads a global config entry (`global_config_get` may change it).
    pub async fn get(self, name: &str, key: &str) -> Result<Option<String>> {
        let global_config = &*self.app.components().global_config;
        let mut value = global_config.get(name, key).await?;
        chain!(
            self.app.dispatch(),
            Trigger::GlobalConfigGet,
            GlobalConfigGet {
                global_config,
                name,
                key,
                value: value.as_deref()
            },
            |replaced| value = Some(replaced)
        );
        Ok(value)
    }

    /// Reads all global config entries of a name (`global_config_get_all` may change them).
    pub async fn get_all(self, name: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let global_config = &*self.app.components().global_config;
        let mut values = global_config.get_all(name).await?;
        chain!(
            self.app.dispatch(),
            Trigger::GlobalConfigGetAll,
            GlobalConfigGetAll {
                global_config,
                name,
                values: &values
            },
            |replaced| values = replaced
        );
        Ok(values)
    }

    /// Reads the entries of every name matching a glob pattern, keyed `name:key`
    /// (`global_config_get_match` may change them).
    pub async fn get_match(
        self,
        pattern: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let global_config = &*self.app.components().global_config;
        let mut values = global_config.get_match(pattern).await?;
        chain!(
            self.app.dispatch(),
            Trigger::GlobalConfigGetMatch,
            GlobalConfigGetMatch {
                global_config,
                pattern,
                values: &values
            },
            |replaced| values = replaced
        );
        Ok(values)
    }
}
