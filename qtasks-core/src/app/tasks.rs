//! Adding tasks and reading them back: `add_task`, `get`, `get_all`, `wait`, `flush_all`.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::dispatch::chain;
use crate::handle::FromTaskHandle;
use crate::registry::TaskTable;
use crate::triggers::{
    BrokerAddAfter, BrokerAddBefore, BrokerFlushAll, BrokerGet, QtasksAddTaskAfterBroker,
    QtasksAddTaskBeforeBroker, QtasksFlushAll, QtasksGet, StorageAdd, StorageFlushAll, StorageGet,
    StorageGetAll,
};
use crate::{
    Error, QueueTasks, QueuedTask, Result, TaskCall, TaskDefinition, TaskHandle, TaskRecord,
    TaskStatus, Trigger, backend::unix_now,
};

/// How many calls of one [`QueueTasks::add_many`] are prepared, then stored, together: a
/// Redis script call's worth (512); few enough to bound the memory of a long iterator.
const ADD_MANY_CHUNK: usize = 512;

/// How many unique adds of one [`QueueTasks::add_many`] are under way at once: each is a
/// round trip or two of its own (a check of the key, then the add), and on PostgreSQL a
/// transaction that holds a pooled connection.
const UNIQUE_ADDS_AT_ONCE: usize = 16;

/// A task made from a call and ready to store: its unique key, if it has one, decided.
pub(crate) struct Prepared {
    task: QueuedTask,
    unique: Option<crate::unique::UniqueKey>,
}

impl QueueTasks {
    /// Adds a task by name with JSON-serializable arguments (the original's `add_task`).
    ///
    /// `args` must serialize to an array (a tuple, a `Vec`, `json!([..])`) or to nothing
    /// (`()`); `kwargs` to an object (a struct, a map, `json!({..})`) or to nothing. The typed
    /// handle the `#[task]` macro generates (`my_task::add_task(&app, ..)`) checks the
    /// argument types at compile time instead.
    ///
    /// A name no worker knows is accepted here (the worker may be another program) and ends
    /// `error` on the worker, naming it.
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task]
    /// async fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     let app = qtasks::QueueTasks::new();
    ///     app.start().await?;
    ///     let task = app.add_task("add", (2,), serde_json::json!({ "b": 3 })).await?;
    ///     let done = task.wait(std::time::Duration::from_secs(5)).await?;
    ///     assert_eq!(done.returning, Some(serde_json::json!(5)));
    ///     app.stop().await
    /// }
    /// ```
    pub async fn add_task(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
    ) -> Result<TaskHandle> {
        self.add_task_with(task_name, args, kwargs, AddOptions::default())
            .await
    }

    /// [`add_task`](Self::add_task) with options, such as a priority for this call.
    ///
    /// ```
    /// # async fn demo(app: &qtasks::QueueTasks) -> qtasks::Result<()> {
    /// let urgent = qtasks::AddOptions::default().priority(-10);
    /// app.add_task_with("report", (2026,), (), urgent).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_task_with(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: AddOptions,
    ) -> Result<TaskHandle> {
        self.add_task_to(task_name, args, kwargs, options, None)
            .await
    }

    /// [`add_task_with`](Self::add_task_with), written through `target` instead of the app's
    /// broker (an engine's handle on a transaction of the caller's own; see
    /// [`AddTarget`](crate::backend::AddTarget)).
    pub async fn add_task_via(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: AddOptions,
        target: &mut dyn crate::backend::AddTarget,
    ) -> Result<TaskHandle> {
        self.add_task_to(task_name, args, kwargs, options, Some(target))
            .await
    }

    async fn add_task_to(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: AddOptions,
        target: Option<&mut dyn crate::backend::AddTarget>,
    ) -> Result<TaskHandle> {
        let prepared = self.prepare_call(task_name, args, kwargs, options).await?;
        self.store(prepared, target).await
    }

    /// A call by name made into the task it adds, every step of an add but the store: the
    /// arguments encoded, the name checked, the defaults applied, the plugin triggers fired.
    pub(crate) async fn prepare_call(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: AddOptions,
    ) -> Result<Prepared> {
        let invalid = |reason: String| Error::InvalidArguments {
            task: task_name.to_owned(),
            reason,
        };
        let args = match serde_json::to_value(args)
            .map_err(|e| invalid(format!("args do not encode as JSON: {e}")))?
        {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => {
                return Err(invalid(format!(
                    "args must be a list (a tuple or a Vec), not {}",
                    json_kind(&other)
                )));
            }
        };
        let kwargs = match serde_json::to_value(kwargs)
            .map_err(|e| invalid(format!("kwargs do not encode as JSON: {e}")))?
        {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(invalid(format!(
                    "kwargs must be an object (a struct or a map), not {}",
                    json_kind(&other)
                )));
            }
        };
        let table = TaskTable::global().ok();
        let definition = table.and_then(|table| table.get(task_name));
        // An in-process queue is served by this process's workers alone, which all know the
        // same tasks: a name none of them knows would only fail later, so it fails now.
        // (A name with `:` gets its own error below.)
        if let (None, Some(table), None, false) = (
            definition,
            table,
            self.components().broker.location(),
            task_name.contains(':'),
        ) {
            let hint = match table.closest(task_name) {
                Some(known) => format!("; did you mean `{known}`?"),
                None => {
                    let names: Vec<&str> = table.names().take(10).collect();
                    if names.is_empty() {
                        format!(
                            "; no tasks are registered ({})",
                            crate::registry::UNLINKED_TASKS_HINT
                        )
                    } else {
                        format!("; registered: {}", names.join(", "))
                    }
                }
            };
            return Err(Error::UnknownTask {
                task: task_name.to_owned(),
                hint,
            });
        }
        let priority = options
            .priority
            .or_else(|| definition.and_then(|d| d.parts.priority))
            .unwrap_or(self.config().task_default_priority);
        let run_at = options.run_at.map(system_secs);
        self.prepare(
            task_name.to_owned(),
            priority,
            args,
            kwargs,
            definition,
            Placement {
                run_at,
                uuid: options.uuid,
                group: options.group,
                retry_parent: None,
                expires_at: options.expires_at.map(system_secs),
                max_time: options.max_time.map(|limit| limit.as_secs_f64()),
                queue: options.queue,
                unique: options.unique,
                rate_key: options.rate_key,
                workflow: options.workflow,
            },
        )
        .await
    }

    /// Adds many tasks at once, each as [`TaskCall::add`] would, and returns their handles in
    /// the order of the calls. The adds go out together: on Redis they are written by a few
    /// script calls (up to 512 tasks each) rather than one call each, the need Celery's
    /// `chunks` and Sidekiq's `push_bulk` serve. The task's typed handle has the same with the
    /// argument types checked: `my_task::add_many(&app, [(1,), (2,)])`.
    ///
    /// The tasks are queued in the order of the calls, within each queue, on an engine that
    /// keeps an order (memory, Redis, PostgreSQL); unique calls next to each other may be
    /// queued in another order among themselves (they are added a few at once). The first call that cannot be added (an
    /// argument that does not encode, a broker that cannot be reached) fails the whole call;
    /// some of the others may have been added by then.
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task]
    /// async fn double(x: u64) -> u64 {
    ///     x * 2
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     let app = qtasks::QueueTasks::new();
    ///     app.start().await?;
    ///     let handles = app.add_many((0..100).map(double::call)).await?;
    ///     let last: u64 = handles[99].result(std::time::Duration::from_secs(5)).await?;
    ///     assert_eq!(last, 198);
    ///     app.stop().await
    /// }
    /// ```
    pub async fn add_many<H: FromTaskHandle>(
        &self,
        calls: impl IntoIterator<Item = TaskCall<H>>,
    ) -> Result<Vec<H>> {
        use futures_util::StreamExt;
        let mut calls = calls.into_iter();
        let mut handles = Vec::new();
        // The chunks being stored, in their order; the next chunk is prepared while they are
        // (the server's work overlaps this process's: encoding, triggers, the request). As many
        // at once as the broker keeps in order (Redis: two, so that it writes one while this
        // process builds and sends the next).
        let at_once = self.components().broker.add_many_chunks_at_once().max(1);
        let mut storing = futures_util::stream::FuturesOrdered::new();
        let mut before_all_plain = true;
        let mut stored_one = false;
        // The first failure in the calls' order, and whether it is a chunk's preparation (the
        // chunks being stored then come before it in that order).
        let mut failed: Option<(Error, bool)> = None;
        'chunks: loop {
            let prepared = {
                let prepare = self.prepare_many(&mut calls);
                tokio::pin!(prepare);
                loop {
                    tokio::select! {
                        biased;
                        Some(stored) = storing.next(), if !storing.is_empty() => {
                            let stored: Result<Vec<TaskHandle>> = stored;
                            match stored {
                                Ok(stored) => {
                                    stored_one = true;
                                    handles.extend(stored.into_iter().map(H::from_task_handle));
                                }
                                Err(error) => {
                                    failed = Some((error, false));
                                    break 'chunks;
                                }
                            }
                        }
                        prepared = &mut prepare => match prepared {
                            Ok(prepared) => break prepared,
                            Err(error) => {
                                failed = Some((error, true));
                                break 'chunks;
                            }
                        },
                    }
                }
            };
            if prepared.is_empty() {
                break;
            }
            // Room first: a chunk is handed over (and first polled) only once fewer than
            // `at_once` are being stored; only once the chunk before is stored whole if it
            // had unique calls (its adds after the first go out later, so the next chunk's
            // must wait for them to keep the calls' order); and never beside the first chunk
            // (a server that lost its scripts learns them from it, before a second chunk could
            // meet the same unknown script and be sent again behind the one after it).
            let room = if before_all_plain && stored_one {
                at_once
            } else {
                1
            };
            before_all_plain = prepared.iter().all(|call| call.unique.is_none());
            while storing.len() >= room {
                match storing.next().await {
                    Some(Ok(stored)) => {
                        stored_one = true;
                        handles.extend(stored.into_iter().map(H::from_task_handle));
                    }
                    Some(Err(error)) => {
                        failed = Some((error, false));
                        break 'chunks;
                    }
                    None => break,
                }
            }
            storing.push_back(self.store_many(prepared));
        }
        // Every chunk handed over runs to its end (its adds and their after-add triggers),
        // even after a failure; the first failure in the calls' order is the answer.
        while let Some(stored) = storing.next().await {
            match (stored, &failed) {
                (Ok(stored), None) => {
                    handles.extend(stored.into_iter().map(H::from_task_handle));
                }
                (Err(error), None | Some((_, true))) => failed = Some((error, false)),
                _ => {}
            }
        }
        match failed {
            Some((error, _)) => Err(error),
            None => Ok(handles),
        }
    }

    /// The next [`ADD_MANY_CHUNK`] calls of `calls`, prepared.
    async fn prepare_many<H: FromTaskHandle>(
        &self,
        calls: &mut impl Iterator<Item = TaskCall<H>>,
    ) -> Result<Vec<Prepared>> {
        let mut prepared = Vec::new();
        for call in calls.take(ADD_MANY_CHUNK) {
            prepared.push(call.prepare(self).await?);
        }
        Ok(prepared)
    }

    /// Stores prepared tasks in their order, a run at a time: each run of plain ones with one
    /// [`Broker::add_many`](crate::backend::Broker::add_many); each run of unique ones with
    /// different keys and uuids [`UNIQUE_ADDS_AT_ONCE`] at a time (each may find its key held),
    /// a key or uuid met again waiting for the run before it; then each one's after-add
    /// triggers.
    async fn store_many(&self, prepared: Vec<Prepared>) -> Result<Vec<TaskHandle>> {
        use futures_util::StreamExt;
        use std::collections::HashSet;
        let mut handles = Vec::with_capacity(prepared.len());
        let mut rest = prepared.into_iter().peekable();
        while let Some(first) = rest.peek() {
            if first.unique.is_none() {
                let mut plain = Vec::new();
                while let Some(next) = rest.next_if(|p| p.unique.is_none()) {
                    plain.push(next.task);
                }
                handles.extend(self.store_plain(plain).await?);
            } else {
                // A key or a uuid met again waits for the run before it.
                let (mut keys, mut uuids) = (HashSet::new(), HashSet::new());
                let mut run = Vec::new();
                while let Some(next) = rest.next_if(|p| {
                    p.unique.as_ref().is_some_and(|unique| {
                        !keys.contains(&unique.key) && !uuids.contains(&p.task.uuid)
                    })
                }) {
                    if let Some(unique) = &next.unique {
                        keys.insert(unique.key.clone());
                    }
                    uuids.insert(next.task.uuid);
                    run.push(next);
                }
                let stored: Vec<Result<TaskHandle>> = futures_util::stream::iter(run)
                    .map(|prepared| self.store(prepared, None))
                    .buffered(UNIQUE_ADDS_AT_ONCE)
                    .collect()
                    .await;
                for handle in stored {
                    handles.push(handle?);
                }
            }
        }
        Ok(handles)
    }

    /// Adds tasks without a unique key through the broker at once, then fires each one's
    /// after-add triggers.
    async fn store_plain(&self, tasks: Vec<QueuedTask>) -> Result<Vec<TaskHandle>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.components().broker.add_many(&tasks).await?;
        let mut handles = Vec::with_capacity(tasks.len());
        for task in &tasks {
            self.added(task).await;
            handles.push(TaskHandle::new(task.uuid, self.clone()));
        }
        Ok(handles)
    }

    pub(crate) async fn enqueue_defined(
        &self,
        definition: &'static TaskDefinition,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<TaskHandle> {
        let priority = definition
            .parts
            .priority
            .unwrap_or(self.config().task_default_priority);
        self.enqueue(
            definition.parts.name.to_owned(),
            priority,
            args,
            kwargs,
            Some(definition),
            Placement::default(),
        )
        .await
    }

    /// Adds a task: `qtasks_add_task_before_broker`, `broker_add_before` and `storage_add` may
    /// change it, then the broker stores and queues it.
    pub(super) async fn enqueue(
        &self,
        task_name: String,
        priority: i64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        definition: Option<&'static TaskDefinition>,
        placement: Placement,
    ) -> Result<TaskHandle> {
        let prepared = self
            .prepare(task_name, priority, args, kwargs, definition, placement)
            .await?;
        self.store(prepared, None).await
    }

    /// Every step of an add before the store: the task made, checked, and changed by the
    /// `qtasks_add_task_before_broker`, `broker_add_before` and `storage_add` triggers; its
    /// unique key decided.
    async fn prepare(
        &self,
        task_name: String,
        priority: i64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        definition: Option<&'static TaskDefinition>,
        placement: Placement,
    ) -> Result<Prepared> {
        let Placement {
            run_at,
            uuid,
            group,
            retry_parent,
            expires_at,
            max_time,
            queue,
            unique,
            rate_key,
            workflow,
        } = placement;
        if let Some(key) = &rate_key {
            crate::limits::check_rate_key(key).map_err(|reason| Error::InvalidArguments {
                task: task_name.clone(),
                reason,
            })?;
        }
        // The call's queue, else the task's; the default queue is stored as none (the
        // original's records have no queue field).
        let queue = match queue.or_else(|| {
            definition
                .and_then(TaskDefinition::queue)
                .map(str::to_owned)
        }) {
            Some(queue) => {
                crate::queues::check_queue_name(&queue).map_err(|reason| Error::InvalidQueue {
                    queue: queue.clone(),
                    reason,
                })?;
                if queue != crate::queues::DEFAULT_QUEUE
                    && !self.components().broker.supports_queues()
                {
                    return Err(Error::InvalidQueue {
                        reason: format!(
                            "the {} keeps no named queues; add the task to the default queue, or use an engine that has them (memory, Redis)",
                            self.components().broker.name()
                        ),
                        queue,
                    });
                }
                (queue != crate::queues::DEFAULT_QUEUE).then_some(queue)
            }
            None => None,
        };
        let uuid_given = uuid.is_some();
        let mut task = QueuedTask {
            uuid: uuid.unwrap_or_else(Uuid::new_v4),
            task_name,
            priority,
            args,
            kwargs,
            created_at: unix_now(),
            retry: None,
            retry_parent_uuid: retry_parent,
            run_at,
            traceparent: self
                .inner
                .trace_context
                .get()
                .and_then(|context| context.current()),
            group_uuid: group,
            expires_at,
            max_time,
            queue,
            hand_backs: 0,
            rate_key,
            workflow,
            definition,
        };
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.components().broker, &*self.components().storage);
        chain!(
            dispatch,
            Trigger::QtasksAddTaskBeforeBroker,
            QtasksAddTaskBeforeBroker {
                app: self,
                broker,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        chain!(
            dispatch,
            Trigger::BrokerAddBefore,
            BrokerAddBefore {
                broker,
                storage,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        chain!(
            dispatch,
            Trigger::StorageAdd,
            StorageAdd {
                storage,
                uuid: task.uuid,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        if task.task_name.contains(':') {
            return Err(Error::InvalidArguments {
                task: task.task_name,
                reason:
                    "task names cannot contain `:`, which separates the fields of queue entries"
                        .to_owned(),
            });
        }
        // A unique call: by its key, else by its arguments when the task says `unique_for`.
        // Not a call whose id is given (the id decides: a group's member, a chord's callback,
        // a schedule's slot) nor a retry by hand (the failed attempt must not answer for it).
        let own_id = uuid_given || group.is_some() || retry_parent.is_some();
        let unique = unique.filter(|_| !own_id).or_else(|| {
            if own_id {
                return None;
            }
            let window = definition.and_then(TaskDefinition::unique_for)?;
            Some(crate::unique::UniqueKey::of_call(
                &task.task_name,
                &task.args,
                &task.kwargs,
                window,
            ))
        });
        if let Some(unique) = &unique {
            unique.check().map_err(|reason| Error::InvalidArguments {
                task: task.task_name.clone(),
                reason,
            })?;
        }
        Ok(Prepared { task, unique })
    }

    /// Stores a prepared task (through `target` if given, else the broker), then fires the
    /// after-add triggers. A unique task whose key is held adds nothing and answers the
    /// holder's handle.
    async fn store(
        &self,
        prepared: Prepared,
        target: Option<&mut dyn crate::backend::AddTarget>,
    ) -> Result<TaskHandle> {
        let Prepared { task, unique } = prepared;
        let broker = &*self.components().broker;
        if let Some(unique) = unique {
            let holder = match target {
                Some(target) => target.add_unique(&task, &unique).await?,
                None => broker.add_unique(task.clone(), &unique).await?,
            };
            if let Some(holder) = holder {
                tracing::debug!(uuid = %holder, key = %unique.key, "a task holds its unique key already; nothing added");
                return Ok(TaskHandle::new(holder, self.clone()));
            }
        } else {
            match target {
                Some(target) => target.add(&task).await?,
                None => broker.add(task.clone()).await?,
            }
        }
        self.added(&task).await;
        Ok(TaskHandle::new(task.uuid, self.clone()))
    }

    /// The triggers of a task just added: `broker_add_after`, `qtasks_add_task_after_broker`.
    async fn added(&self, task: &QueuedTask) {
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.components().broker, &*self.components().storage);
        dispatch
            .fire(&BrokerAddAfter {
                broker,
                storage,
                task,
            })
            .await;
        dispatch
            .fire(&QtasksAddTaskAfterBroker {
                app: self,
                broker,
                task,
            })
            .await;
    }

    /// A task's record as it is now; `None` for an unknown id. `storage_get`, `broker_get` and
    /// `qtasks_get` may change what is returned.
    pub async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>> {
        let mut record = self.components().storage.get(uuid).await?;
        self.adjust_read(&mut record).await;
        Ok(record)
    }

    async fn adjust_read(&self, record: &mut Option<TaskRecord>) {
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.components().broker, &*self.components().storage);
        if let Some(found) = record.as_mut() {
            chain!(
                dispatch,
                Trigger::StorageGet,
                StorageGet {
                    storage,
                    record: found
                },
                |update| update.apply_to(found)
            );
        }
        chain!(
            dispatch,
            Trigger::BrokerGet,
            BrokerGet {
                broker,
                task: record.as_ref()
            },
            |update| {
                if let Some(found) = record.as_mut() {
                    update.apply_to(found);
                }
            }
        );
        chain!(
            dispatch,
            Trigger::QtasksGet,
            QtasksGet {
                app: self,
                broker,
                task: record.as_ref()
            },
            |update| {
                if let Some(found) = record.as_mut() {
                    update.apply_to(found);
                }
            }
        );
    }

    /// Every record of this app, oldest first. `storage_get_all` may change the list.
    pub async fn get_all(&self) -> Result<Vec<TaskRecord>> {
        let mut records = self.components().storage.get_all().await?;
        let storage = &*self.components().storage;
        chain!(
            self.dispatch(),
            Trigger::StorageGetAll,
            StorageGetAll {
                storage,
                records: &records
            },
            |replaced| { records = replaced }
        );
        Ok(records)
    }

    /// A handle on a task added earlier (its uuid kept somewhere), read as `T`: `T` is
    /// `serde_json::Value` for any task, or the task's own output type.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let app = qtasks::QueueTasks::new();
    /// let handle = app.handle::<u32>(qtasks::Uuid::new_v4());
    /// let failure = handle.result(std::time::Duration::from_millis(10)).await.unwrap_err();
    /// assert!(matches!(failure, qtasks::TaskFailure::NotFound { .. }));
    /// # }
    /// ```
    pub fn handle<T>(&self, uuid: Uuid) -> TaskHandle<T> {
        TaskHandle::new(uuid, self.clone()).typed()
    }

    /// Waits until a task ends and returns its record; see [`TaskHandle::wait`]. A retried
    /// task is followed to its last attempt.
    pub async fn wait(&self, uuid: Uuid, timeout: Duration) -> Result<TaskRecord> {
        let ends = self.config().result_statuses_end.clone();
        let follow = async {
            let mut current = uuid;
            loop {
                let Some(record) = self.components().storage.wait_finished(current).await? else {
                    return Err(Error::TaskNotFound(current));
                };
                match (record.status, record.retry_child_uuid) {
                    (TaskStatus::Retry, Some(child)) => current = child,
                    (status, _) if ends.contains(&status) || status.is_final() => {
                        let mut record = Some(record);
                        self.adjust_read(&mut record).await;
                        return Ok(record.expect("present"));
                    }
                    _ => unreachable!("wait_finished returns ended records"),
                }
            }
        };
        match tokio::time::timeout(timeout, follow).await {
            Ok(result) => result,
            Err(_elapsed) => {
                // Say why, when it is that nobody runs the app's tasks.
                let no_worker = matches!(self.components().global_config.status().await, Ok(false));
                Err(Error::WaitTimeout {
                    uuid,
                    timeout,
                    no_worker,
                })
            }
        }
    }

    /// Deletes this app's queued tasks and records, and nothing of other apps.
    pub async fn flush_all(&self) -> Result<()> {
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.components().broker, &*self.components().storage);
        dispatch.fire(&QtasksFlushAll { app: self, broker }).await;
        dispatch.fire(&BrokerFlushAll { broker }).await;
        broker.flush_all().await?;
        dispatch.fire(&StorageFlushAll { storage }).await;
        storage.flush_all().await?;
        Ok(())
    }
}

/// Options of one [`QueueTasks::add_task_with`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddOptions {
    /// The priority of this task (lower runs first); `None` takes the task's, then the app's
    /// default.
    pub priority: Option<i64>,
    /// When the task may run, if later than now: it stays `new` and no worker takes it before.
    pub run_at: Option<std::time::SystemTime>,
    /// The task's id, when the caller must know it beforehand ([`AddOptions::uuid`]).
    pub(crate) uuid: Option<Uuid>,
    /// The group the task is a member of.
    pub(crate) group: Option<Uuid>,
    /// When the task is not started any more ([`AddOptions::expires`]).
    pub(crate) expires_at: Option<std::time::SystemTime>,
    /// This call's time limit per run ([`AddOptions::max_time`]).
    pub(crate) max_time: Option<Duration>,
    /// The queue this call waits in ([`AddOptions::queue`]).
    pub(crate) queue: Option<String>,
    /// The key at most one task holds ([`AddOptions::unique`]).
    pub(crate) unique: Option<crate::unique::UniqueKey>,
    /// The key the task's rate limit is kept by ([`AddOptions::rate_key`]).
    pub(crate) rate_key: Option<String>,
    /// The workflow step the task is (set by the workflow that adds it).
    pub(crate) workflow: Option<String>,
}

impl AddOptions {
    /// Adds the task under this id rather than a new one. An add whose id is known already
    /// adds nothing, whatever the task's status (waiting, running or ended): the handle names
    /// the task the first add made. So an add retried after an error that hid whether it
    /// landed (a timeout, a dropped connection), or a request delivered twice, runs the task
    /// once. Schedules and chords add their tasks this way.
    ///
    /// ```
    /// # #[qtasks::task]
    /// # async fn charge(order: u64) -> u64 { order }
    /// # #[tokio::main]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// let id = qtasks::Uuid::new_v4();
    /// let once = qtasks::AddOptions::default().uuid(id);
    /// let first = app.add_task_with("charge", (42,), (), once.clone()).await?;
    /// let again = app.add_task_with("charge", (42,), (), once).await?;
    /// assert_eq!((first.uuid(), again.uuid()), (id, id));
    /// let waiting = app.stats().await?.queue.map(|queue| queue.waiting_total());
    /// assert_eq!(waiting, Some(1));
    /// # app.stop().await
    /// # }
    /// ```
    #[must_use]
    pub fn uuid(mut self, uuid: Uuid) -> Self {
        self.uuid = Some(uuid);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the task no sooner than `delay` from now (the original's countdown). A cancel
    /// before then removes it.
    ///
    /// ```
    /// # async fn demo(app: &qtasks::QueueTasks) -> qtasks::Result<()> {
    /// let later = qtasks::AddOptions::default().delay(std::time::Duration::from_secs(90));
    /// app.add_task_with("remind", ("Ann",), (), later).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(std::time::SystemTime::now() + delay);
        self
    }

    /// Runs the task no sooner than `time` (an ETA).
    #[must_use]
    pub fn at(mut self, time: std::time::SystemTime) -> Self {
        self.run_at = Some(time);
        self
    }

    /// Drops the task if no worker has started it within `expires` from now (Celery's
    /// `expires`): a worker that takes it later ends it `cancel`, with a reason saying when it
    /// expired, and does not run it. Each attempt of a retried task is held to the same time.
    ///
    /// ```rust,standalone_crate
    /// # use std::time::Duration;
    /// #[qtasks::task]
    /// async fn quote(symbol: String) -> f64 { 1.0 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new(); // no worker yet
    /// let stale = qtasks::AddOptions::default().expires(Duration::from_millis(10));
    /// let handle = app.add_task_with("quote", ("ACME",), (), stale).await?;
    /// tokio::time::sleep(Duration::from_millis(50)).await;
    /// app.start().await?; // too late: the quote is not fetched
    /// let record = handle.wait(Duration::from_secs(5)).await?;
    /// assert_eq!(record.status, qtasks::TaskStatus::Cancel);
    /// # app.stop().await }
    /// ```
    #[must_use]
    pub fn expires(mut self, expires: Duration) -> Self {
        // Past what a time holds, it never expires.
        self.expires_at = std::time::SystemTime::now().checked_add(expires);
        self
    }

    /// Drops the task if no worker has started it by `time` (see [`expires`](Self::expires)).
    #[must_use]
    pub fn expires_at(mut self, time: std::time::SystemTime) -> Self {
        self.expires_at = Some(time);
        self
    }

    /// The time limit of each run of this call, instead of the task's `max_time`: a run past
    /// it ends `error` with a `TimeoutError`.
    #[must_use]
    pub fn max_time(mut self, limit: Duration) -> Self {
        self.max_time = Some(limit);
        self
    }

    /// Puts the task in the named queue `queue` instead of the task's own
    /// (`#[task(queue = "..")]`, else [`DEFAULT_QUEUE`](crate::queues::DEFAULT_QUEUE)): only
    /// workers that serve it take it. The add fails with [`Error::InvalidQueue`] when the name
    /// is not a queue name (see [`check_queue_name`](crate::queues::check_queue_name)).
    ///
    /// ```
    /// # async fn demo(app: &qtasks::QueueTasks) -> qtasks::Result<()> {
    /// let billing = qtasks::AddOptions::default().queue("billing");
    /// app.add_task_with("charge", (42,), (), billing).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Makes the task unique by `key`: while a task added with `key` waits or runs (a retry of
    /// it included), or for `window` after its add, this add queues nothing and returns that
    /// task's handle. Decided by the engine in one step, so adds racing from several processes
    /// make one task. (Instead of the task's own `unique_for`.)
    ///
    /// ```rust,standalone_crate
    /// # use std::time::Duration;
    /// #[qtasks::task]
    /// async fn rebuild_index(shard: u32) -> u32 { shard }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// let once = || qtasks::AddOptions::default().unique("index:7", Duration::from_secs(60));
    /// let first = app.add_task_with("rebuild_index", (7,), (), once()).await?;
    /// let second = app.add_task_with("rebuild_index", (7,), (), once()).await?;
    /// assert_eq!(first.uuid(), second.uuid(), "one rebuild of shard 7 at a time");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.unique = Some(crate::unique::UniqueKey::new(key, window));
        self
    }

    /// Keeps the task's rate limit (`#[task(rate_limit = "10/s")]`) for this key apart: each
    /// key gets the whole rate, so one customer's burst does not slow another's calls. A
    /// retry keeps its call's key. Without a key, every call of the task shares one rate.
    /// Without a `rate_limit` on the task, the key does nothing. The add fails with
    /// [`Error::InvalidArguments`] for an empty key or one over
    /// [`MAX_RATE_KEY_LEN`](crate::limits::MAX_RATE_KEY_LEN) bytes.
    ///
    /// ```
    /// # async fn demo(app: &qtasks::QueueTasks) -> qtasks::Result<()> {
    /// let for_acme = qtasks::AddOptions::default().rate_key("customer:acme");
    /// app.add_task_with("send_webhook", ("order.paid",), (), for_acme).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn rate_key(mut self, key: impl Into<String>) -> Self {
        self.rate_key = Some(key.into());
        self
    }
}

/// Where a new task goes: when it may run (now if `None`) and its id (a new one if `None`).
#[derive(Default)]
pub(super) struct Placement {
    pub(super) run_at: Option<f64>,
    pub(super) uuid: Option<Uuid>,
    pub(super) group: Option<Uuid>,
    /// The attempt this task retries (a retry by hand).
    pub(super) retry_parent: Option<Uuid>,
    /// When the task is not started any more.
    pub(super) expires_at: Option<f64>,
    /// This call's time limit per run, in seconds.
    pub(super) max_time: Option<f64>,
    /// The queue (`None`: the task's, else the default one).
    pub(super) queue: Option<String>,
    /// The unique key (`None`: the task's `unique_for`, if any, by its arguments).
    pub(super) unique: Option<crate::unique::UniqueKey>,
    /// The key the task's rate limit is kept by (`None`: the task's one rate).
    pub(super) rate_key: Option<String>,
    /// The workflow step the task is.
    pub(crate) workflow: Option<String>,
}

/// A time as Unix seconds (the clock of `run_at` and records).
fn system_secs(time: std::time::SystemTime) -> f64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
