//! Durable workflows: chains, groups and chords that the workers run, not the caller.
//!
//! A [`Flow`] is a tree of task calls: [`flow`] and [`Flow::then`] chain steps (each given the
//! previous one's result as its last argument), [`parallel`] runs flows side by side (each
//! given the same input; their results gathered in order), and a chord is a parallel flow
//! followed by a callback. Flows nest: a chain inside a group, a group inside a chain, a
//! chord whose callback is a chain.
//!
//! [`Flow::add`] stores the tree in the backend and adds the first tasks; from then on the
//! worker that ends a step adds the next ones, so the caller may exit: any process makes the
//! handle again from the workflow's id ([`QueueTasks::workflow`]). Every task's id is fixed
//! when the flow is added, so a step moved on twice (its worker died half-way, a worker that
//! starts resumes the running workflows) adds nothing twice. A group completes when the count
//! of its ended members reaches its size (a set: a member that ends twice counts once); only
//! then are the members' results read, once. A step that fails for good (its retries spent)
//! ends the workflow `error`, and its [`on_error`](Flow::on_error) callback is added once. The
//! workflow's state expires a day after it ended (a week after its last step while it runs);
//! [`WorkflowHandle::cancel`] cancels every task of it and adds no more.
//!
//! ```rust,standalone_crate
//! use std::time::Duration;
//! use qtasks::workflow::{flow, parallel};
//!
//! #[qtasks::task]
//! async fn fetch(page: u32) -> String { format!("page {page}") }
//!
//! #[qtasks::task]
//! async fn count_words(text: String) -> usize { text.split_whitespace().count() }
//!
//! #[qtasks::task]
//! async fn total(counts: Vec<usize>) -> usize { counts.iter().sum() }
//!
//! #[tokio::main]
//! async fn main() -> qtasks::Result<()> {
//!     let app = qtasks::QueueTasks::new();
//!     app.start().await?;
//!     // Three chains side by side (fetch a page, then count its words), then the total.
//!     let pages = parallel((1..=3).map(|page| flow(fetch::call(page)).then(count_words::call_with())));
//!     let handle = pages.then(total::call_with()).add(&app).await?;
//!     let words: usize = handle.result(Duration::from_secs(5)).await.unwrap();
//!     assert_eq!(words, 6);
//!     // From its id, in any process:
//!     let again = app.workflow::<usize>(handle.id());
//!     assert_eq!(again.result(Duration::from_secs(1)).await.unwrap(), 6);
//!     app.stop().await
//! }
//! ```

mod engine;
pub(crate) mod state;

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Error, QueueTasks, Result, TaskCall, TaskFailure, TaskHandle, TaskStatus};
use state::{Doc, Node, Step, result_field};

/// A workflow to add: task calls chained, side by side, nested; its result a `T`. See the
/// [module](self).
#[derive(Debug, Clone)]
pub struct Flow<T> {
    /// The workflow's id, when the caller chose it ([`uuid`](Flow::uuid)).
    id: Option<Uuid>,
    node: Node,
    on_error: Option<Step>,
    /// The first call whose arguments did not encode, reported by `add`.
    invalid: Option<(String, String)>,
    result: PhantomData<fn() -> T>,
}

/// What a workflow's error callback is given (its last argument), and what
/// [`WorkflowHandle::failed_step`] reads: the step that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepFailure {
    /// The workflow's id.
    pub workflow: Uuid,
    /// The failed task's id (a retried task's last attempt).
    pub uuid: Uuid,
    /// Its task's name.
    pub task_name: String,
    /// Where it is in the workflow (`0.2.1`: indexes from the root).
    pub step: String,
    /// How it ended: `error` or `cancel`.
    pub status: TaskStatus,
    /// Its traceback or cancel reason.
    pub reason: String,
}

impl From<StepFailure> for TaskFailure {
    /// The failure of a step whose record is gone (expired, deleted), from what the workflow
    /// kept of it.
    fn from(failure: StepFailure) -> Self {
        if failure.status == TaskStatus::Cancel {
            return TaskFailure::Cancelled {
                uuid: failure.uuid,
                reason: failure.reason,
            };
        }
        let (error_type, message) = match failure.reason.split_once(": ") {
            Some((kind, message)) => (kind.to_owned(), message.to_owned()),
            None => (String::new(), failure.reason.clone()),
        };
        TaskFailure::Error {
            uuid: failure.uuid,
            error_type,
            message,
            traceback: failure.reason,
            payload: None,
        }
    }
}

impl<T> From<TaskCall<TaskHandle<T>>> for Flow<T> {
    fn from(call: TaskCall<TaskHandle<T>>) -> Self {
        let invalid = call
            .invalid
            .clone()
            .map(|reason| (call.task_name.clone(), reason));
        Flow {
            id: None,
            node: Node::Task(step_of(&call.untyped())),
            on_error: None,
            invalid,
            result: PhantomData,
        }
    }
}

impl Flow<Value> {
    /// A chain of untyped calls (`qtasks::chain`), with the ids its steps will have.
    pub(crate) fn of_calls(calls: &[TaskCall]) -> (Self, Vec<Uuid>) {
        let mut invalid = None;
        let steps: Vec<Node> = calls
            .iter()
            .map(|call| {
                if let Some(reason) = &call.invalid {
                    invalid = invalid
                        .take()
                        .or_else(|| Some((call.task_name.clone(), reason.clone())));
                }
                let mut step = step_of(call);
                if step.uuid.is_nil() {
                    step.uuid = Uuid::new_v4();
                }
                Node::Task(step)
            })
            .collect();
        let ids = steps
            .iter()
            .filter_map(|node| match node {
                Node::Task(step) => Some(step.uuid),
                _ => None,
            })
            .collect();
        let flow = Flow {
            id: None,
            node: Node::Chain { steps },
            on_error: None,
            invalid,
            result: PhantomData,
        };
        (flow, ids)
    }
}

pub(crate) fn step_of(call: &TaskCall) -> Step {
    Step {
        uuid: call.uuid.unwrap_or(Uuid::nil()),
        task_name: call.task_name.clone(),
        args: call.args.clone(),
        kwargs: call.kwargs.clone(),
        priority: call.priority,
        queue: call.queue.clone(),
        rate_key: call.rate_key.clone(),
    }
}

/// A workflow that starts with `first` (a task call, or a flow); chain more with
/// [`Flow::then`].
pub fn flow<T>(first: impl Into<Flow<T>>) -> Flow<T> {
    first.into()
}

/// Flows side by side, each given the same input (the previous step's result, in a chain);
/// the list of their results, in order, is the result. With a callback after it
/// (`parallel(..).then(callback)`) it is a chord. Empty, `add` refuses it.
pub fn parallel<T, F: Into<Flow<T>>>(flows: impl IntoIterator<Item = F>) -> Flow<Vec<T>> {
    let mut invalid = None;
    let members = flows
        .into_iter()
        .map(|member| {
            let member = member.into();
            invalid = invalid.take().or(member.invalid);
            member.node
        })
        .collect();
    Flow {
        id: None,
        node: Node::Group { members },
        on_error: None,
        invalid,
        result: PhantomData,
    }
}

impl<T> Flow<T> {
    /// Runs `next` once this flow succeeded, given this flow's result as its last argument
    /// (each of its first tasks, for a parallel `next`).
    pub fn then<U>(self, next: impl Into<Flow<U>>) -> Flow<U> {
        let next = next.into();
        let mut steps = match self.node {
            Node::Chain { steps } => steps,
            other => vec![other],
        };
        match next.node {
            Node::Chain { steps: more } => steps.extend(more),
            other => steps.push(other),
        }
        Flow {
            id: self.id.or(next.id),
            node: Node::Chain { steps },
            on_error: self.on_error.or(next.on_error),
            invalid: self.invalid.or(next.invalid),
            result: PhantomData,
        }
    }

    /// Adds the workflow under this id rather than a new one: an add of an id stored already
    /// adds nothing new, and finishes what an earlier add of it left undone (an add tried
    /// again after an error that hid whether it landed). Give the steps ids of their own too
    /// (`call.uuid(..)`), or the second add's steps are the first add's, as stored.
    #[must_use]
    pub fn uuid(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Adds `callback` once, with the [`StepFailure`] as its last argument, when a step fails
    /// for good (`callback` is usually `my_task::call_with(..)`).
    pub fn on_error<H>(mut self, callback: TaskCall<H>) -> Self {
        if let Some(reason) = callback.invalid.clone() {
            self.invalid = self.invalid.or(Some((callback.task_name.clone(), reason)));
        }
        self.on_error = Some(step_of(&callback.untyped()));
        self
    }

    /// Stores the workflow and adds its first tasks; the workers do the rest. Fails with
    /// [`Error::InvalidArguments`] for a call whose arguments did not encode, or an empty
    /// `parallel`.
    pub async fn add(self, app: &QueueTasks) -> Result<WorkflowHandle<T>> {
        if let Some((task, reason)) = self.invalid {
            return Err(Error::InvalidArguments { task, reason });
        }
        if has_empty_group(&self.node) {
            return Err(Error::InvalidArguments {
                task: "parallel".to_owned(),
                reason: "a parallel flow, or a chain, needs at least one member".to_owned(),
            });
        }
        let mut doc = Doc {
            root: self.node,
            on_error: self.on_error,
        };
        doc.root.assign_ids();
        if let Some(callback) = &mut doc.on_error
            && callback.uuid.is_nil()
        {
            callback.uuid = Uuid::new_v4();
        }
        // Two steps under one id would be one task: the second add adds nothing, and the
        // workflow would wait for it for ever.
        let mut seen = std::collections::HashSet::new();
        let steps = doc.root.tasks();
        let ids = steps
            .iter()
            .map(|(_, step)| (step.uuid, step.task_name.as_str()))
            .chain(doc.on_error.iter().map(|c| (c.uuid, c.task_name.as_str())));
        for (uuid, task) in ids {
            if !seen.insert(uuid) {
                return Err(Error::InvalidArguments {
                    task: task.to_owned(),
                    reason: format!(
                        "two steps of the workflow have the id {uuid}; give each its own (or none)"
                    ),
                });
            }
        }
        let id = self.id.unwrap_or_else(Uuid::new_v4);
        app.start_workflow(id, &doc).await?;
        Ok(app.workflow(id))
    }
}

fn has_empty_group(node: &Node) -> bool {
    match node {
        Node::Task(_) => false,
        Node::Group { members: nodes } | Node::Chain { steps: nodes } if nodes.is_empty() => true,
        Node::Chain { steps: nodes } | Node::Group { members: nodes } => {
            nodes.iter().any(has_empty_group)
        }
    }
}

/// A workflow that was added: its result, its failure, its cancel. Made from the id in any
/// process with [`QueueTasks::workflow`].
#[derive(Debug, Clone)]
pub struct WorkflowHandle<T> {
    id: Uuid,
    app: QueueTasks,
    result: PhantomData<fn() -> T>,
}

impl QueueTasks {
    /// The handle of workflow `id` (added here or in another process), its result read as `T`.
    pub fn workflow<T>(&self, id: Uuid) -> WorkflowHandle<T> {
        WorkflowHandle {
            id,
            app: self.clone(),
            result: PhantomData,
        }
    }
}

impl<T> WorkflowHandle<T> {
    /// The workflow's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// How the workflow ended (`success`, `error` or `cancel`), `None` while it runs.
    pub async fn status(&self) -> Result<Option<TaskStatus>> {
        let [end] = self.app.workflow_fields(self.id, ["end"]).await?;
        Ok(end.and_then(|end| end.parse().ok()))
    }

    /// The step that failed for good, if one did.
    pub async fn failed_step(&self) -> Result<Option<StepFailure>> {
        let [failed] = self.app.workflow_fields(self.id, ["failed"]).await?;
        Ok(failed.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Cancels the workflow as a whole: it ends `cancel` (unless it ended already), no step
    /// is added any more, and every task of it that waits or runs is cancelled. `false` when
    /// it had ended already.
    pub async fn cancel(&self, reason: &str) -> Result<bool> {
        let global = &self.app.components().global_config;
        let key = self.id.to_string();
        let [doc] = self.app.workflow_fields(self.id, ["doc"]).await?;
        let Some(doc) = doc.and_then(|json| serde_json::from_str::<Doc>(&json).ok()) else {
            return Ok(false);
        };
        let first = global
            .workflow_write(
                &key,
                &[("end", "cancel"), ("reason", reason)],
                true,
                engine::ENDED_TTL,
            )
            .await?;
        global.workflow_running(&key, false).await?;
        if first {
            self.app.cancel_steps(&doc, reason).await?;
        }
        Ok(first)
    }
}

impl<T: DeserializeOwned> WorkflowHandle<T> {
    /// Waits up to `timeout` for the workflow to end and returns its result: the failed
    /// step's failure (`TaskFailure::Error` or `Cancelled` of that task) when a step failed,
    /// `Cancelled` with the workflow's id when it was cancelled as a whole, `NotFound` when no
    /// such workflow is stored (or it expired).
    pub async fn result(&self, timeout: Duration) -> std::result::Result<T, TaskFailure> {
        let backend = |error: Error| TaskFailure::Backend(Box::new(error));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let mut resumed = false;
        let mut looked = false;
        loop {
            // The tree (large for a large workflow) only at the first look: is there one?
            let first = if looked { "end" } else { "doc" };
            let first_look = !looked;
            looked = true;
            let [doc, end, failed, reason, result] = self
                .app
                .workflow_fields(
                    self.id,
                    [first, "end", "failed", "reason", &result_field(&[])],
                )
                .await
                .map_err(backend)?;
            match end.as_deref() {
                Some("success") => {
                    let value: Value = result
                        .and_then(|json| serde_json::from_str(&json).ok())
                        .unwrap_or(Value::Null);
                    return serde_json::from_value(value.clone()).map_err(|error| {
                        TaskFailure::Decode {
                            uuid: self.id,
                            expected: std::any::type_name::<T>(),
                            value: value.to_string().chars().take(200).collect(),
                            reason: error.to_string(),
                        }
                    });
                }
                Some(_) => {
                    if let Some(failure) =
                        failed.and_then(|json| serde_json::from_str::<StepFailure>(&json).ok())
                    {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let step = self.app.handle::<Value>(failure.uuid);
                        return match step.result(left.max(Duration::from_millis(100))).await {
                            Err(TaskFailure::NotFound { .. }) | Ok(_) => Err(failure.into()),
                            Err(failure) => Err(failure),
                        };
                    }
                    return Err(TaskFailure::Cancelled {
                        uuid: self.id,
                        reason: reason.unwrap_or_else(|| "cancelled".to_owned()),
                    });
                }
                None if first_look && doc.is_none() => {
                    return Err(TaskFailure::NotFound { uuid: self.id });
                }
                None => {}
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let no_worker = !self.app.ping().await.unwrap_or(true);
                return Err(TaskFailure::Timeout {
                    uuid: self.id,
                    timeout,
                    no_worker,
                });
            }
            // Half-way through the wait, a step whose worker died before it moved the
            // workflow on is moved on from here.
            if !resumed && left < timeout / 2 {
                resumed = true;
                if let Err(error) = self.app.resume_workflow(self.id).await {
                    tracing::debug!(workflow = %self.id, "resuming from a waiter failed: {error}");
                }
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}
