//! Groups and chords: many calls run in parallel with their results gathered in order
//! ([`group`]), and a callback that runs with those results once every member succeeded
//! ([`chord`]).
//!
//! Each is a [workflow](crate::workflow) (a parallel step; for a chord, then the callback),
//! so its state lives in the backend, not in the caller's memory: the worker whose member
//! completes the group's count adds the callback (under its own id, so it is added once),
//! trying again through a backend outage, and a worker that starts resumes what a dead one
//! left. So a chord completes across worker restarts, and a handle can be made again from the
//! group's id in another process ([`QueueTasks::chord_handle`]). The state expires a day
//! after the chord ended. ([`crate::workflow`] nests them and types their results.)
//!
//! With a global config that keeps no workflows (a custom one), they are kept the older way:
//! the members and callback in the global config's `qtasks_groups`, each member carrying its
//! group's id (`group_uuid`) and the worker that finishes one checking every member.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::handle::outcome_of;
use crate::workflow::state::{Doc, Node};
use crate::workflow::step_of;

/// How long a worker keeps checking a chord through backend errors.
const CHORD_PATIENCE: Duration = Duration::from_secs(300);
use crate::{QueueTasks, Result, TaskCall, TaskFailure, TaskHandle, TaskRecord, TaskStatus};

/// The global-config name under which group states are kept.
pub(crate) const GROUPS: &str = "qtasks_groups";

/// Calls that run in parallel; their results are gathered in order.
///
/// ```rust,standalone_crate
/// use std::time::Duration;
///
/// #[qtasks::task]
/// async fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> qtasks::Result<()> {
///     let app = qtasks::QueueTasks::new();
///     app.start().await?;
///     let squares = qtasks::group((1..=4).map(square::call)).add(&app).await?;
///     let results: Vec<i64> = squares.results(Duration::from_secs(5)).await?;
///     assert_eq!(results, [1, 4, 9, 16]);
///     app.stop().await
/// }
/// ```
///
/// The calls are of one type: put calls of tasks with different result types in one group
/// with [`TaskCall::untyped`].
pub fn group<H>(calls: impl IntoIterator<Item = TaskCall<H>>) -> Group {
    Group {
        calls: calls.into_iter().map(TaskCall::untyped).collect(),
    }
}

/// A group whose results, once every member succeeded, are handed to `callback` as its last
/// positional argument (a list, in the members' order).
///
/// ```rust,standalone_crate
/// use std::time::Duration;
///
/// #[qtasks::task]
/// async fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// #[qtasks::task]
/// async fn total(label: String, parts: Vec<i64>) -> String {
///     format!("{label}: {}", parts.iter().sum::<i64>())
/// }
///
/// #[tokio::main]
/// async fn main() -> qtasks::Result<()> {
///     let app = qtasks::QueueTasks::new();
///     app.start().await?;
///     let squares = qtasks::group((1..=4).map(square::call));
///     let chord = qtasks::chord(squares, total::call_with("sum of squares".into())).add(&app).await?;
///     let sum: String = chord.result(Duration::from_secs(5)).await?;
///     assert_eq!(sum, "sum of squares: 30");
///     app.stop().await
/// }
/// ```
pub fn chord<H>(group: Group, callback: TaskCall<H>) -> Chord {
    Chord {
        group,
        callback: callback.untyped(),
    }
}

/// Calls that run in parallel; see [`group`].
#[derive(Debug, Clone)]
pub struct Group {
    calls: Vec<TaskCall>,
}

/// A group and its callback; see [`chord`].
#[derive(Debug, Clone)]
pub struct Chord {
    group: Group,
    callback: TaskCall,
}

/// What the backend keeps of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupState {
    pub(crate) members: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) callback: Option<Callback>,
}

/// A chord's callback, as kept: added as the task `uuid` when the chord completes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Callback {
    pub(crate) uuid: Uuid,
    pub(crate) task_name: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<i64>,
}

/// The members of a group as a workflow's parallel node, each under a new id.
fn members_node(calls: &[TaskCall]) -> Result<(Vec<Uuid>, Node)> {
    let mut members = Vec::with_capacity(calls.len());
    let mut nodes = Vec::with_capacity(calls.len());
    for call in calls {
        call.check()?;
        let mut step = step_of(call);
        step.uuid = Uuid::new_v4();
        members.push(step.uuid);
        nodes.push(Node::Task(step));
    }
    Ok((members, Node::Group { members: nodes }))
}

/// Whether an error says the global config keeps no workflows (a custom one with the trait's
/// defaults): then a group is kept the older way.
fn keeps_no_workflows(error: &crate::Error) -> bool {
    matches!(error, crate::Error::Backend(e) if e.message().ends_with(crate::components::NO_WORKFLOWS))
}

impl Group {
    /// Adds every member, as a [workflow](crate::workflow) of one parallel step: its state is
    /// stored first, so a member that ends at once already finds it.
    pub async fn add(self, app: &QueueTasks) -> Result<GroupHandle> {
        let id = Uuid::new_v4();
        let (members, node) = members_node(&self.calls)?;
        let doc = Doc {
            root: node,
            on_error: None,
        };
        match app.start_workflow(id, &doc).await {
            Ok(()) => Ok(GroupHandle {
                id,
                members,
                app: app.clone(),
            }),
            Err(error) if keeps_no_workflows(&error) => {
                let state = GroupState {
                    members,
                    callback: None,
                };
                add_group(app, id, state, &self.calls).await
            }
            Err(error) => Err(error),
        }
    }
}

impl Chord {
    /// Adds every member of the group, as a [workflow](crate::workflow) (the group, then the
    /// callback): the worker whose member completes the group's count adds the callback.
    pub async fn add(self, app: &QueueTasks) -> Result<ChordHandle> {
        self.callback.check()?;
        let id = Uuid::new_v4();
        let (members, group) = members_node(&self.group.calls)?;
        let mut callback = step_of(&self.callback);
        callback.uuid = Uuid::new_v4();
        let callback_uuid = callback.uuid;
        // An empty group completes at once: the callback runs with no results.
        let root = if members.is_empty() {
            callback.args.push(Value::Array(Vec::new()));
            Node::Task(callback)
        } else {
            Node::Chain {
                steps: vec![group, Node::Task(callback)],
            }
        };
        let doc = Doc {
            root,
            on_error: None,
        };
        match app.start_workflow(id, &doc).await {
            Ok(()) => {
                return Ok(ChordHandle {
                    group: GroupHandle {
                        id,
                        members,
                        app: app.clone(),
                    },
                    callback: callback_uuid,
                });
            }
            Err(error) if keeps_no_workflows(&error) => {}
            Err(error) => return Err(error),
        }
        // The older way, for a global config that keeps no workflows.
        let callback = Callback {
            uuid: Uuid::new_v4(),
            task_name: self.callback.task_name.clone(),
            args: self.callback.args.clone(),
            kwargs: self.callback.kwargs.clone(),
            priority: self.callback.priority,
        };
        let state = GroupState {
            members: self.group.calls.iter().map(|_| Uuid::new_v4()).collect(),
            callback: Some(callback.clone()),
        };
        let group = add_group(app, id, state, &self.group.calls).await?;
        Ok(ChordHandle {
            group,
            callback: callback.uuid,
        })
    }
}

async fn add_group(
    app: &QueueTasks,
    id: Uuid,
    state: GroupState,
    calls: &[TaskCall],
) -> Result<GroupHandle> {
    for call in calls {
        call.check()?;
    }
    let json = serde_json::to_string(&state).expect("a group state always serializes");
    app.components()
        .global_config
        .set(GROUPS, &id.to_string(), &json)
        .await?;
    for (call, member) in calls.iter().zip(&state.members) {
        call.add_placed(app, Some(*member), Some(id)).await?;
    }
    Ok(GroupHandle {
        id,
        members: state.members,
        app: app.clone(),
    })
}

/// A group that was added: its members' results, in order.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    id: Uuid,
    members: Vec<Uuid>,
    app: QueueTasks,
}

impl GroupHandle {
    /// The group's id: [`QueueTasks::group_handle`] makes the handle again from it.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The members' task ids, in order.
    pub fn members(&self) -> &[Uuid] {
        &self.members
    }

    /// A handle on each member, read as `T`.
    pub fn handles<T>(&self) -> Vec<TaskHandle<T>> {
        self.members.iter().map(|m| self.app.handle(*m)).collect()
    }

    /// Waits for every member and returns their results as `T`, in order; the first member
    /// (in order) that did not succeed is the error. `timeout` bounds the whole wait.
    pub async fn results<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> std::result::Result<Vec<T>, TaskFailure> {
        self.outcomes(timeout).await.into_iter().collect()
    }

    /// Waits for every member and returns how each ended, in order.
    pub async fn outcomes<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Vec<std::result::Result<T, TaskFailure>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcomes = Vec::with_capacity(self.members.len());
        for member in &self.members {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            outcomes.push(self.app.handle::<T>(*member).result(left).await);
        }
        outcomes
    }
}

/// A chord that was added: its members, and the callback's result.
#[derive(Debug, Clone)]
pub struct ChordHandle {
    group: GroupHandle,
    callback: Uuid,
}

impl ChordHandle {
    /// The chord's group.
    pub fn group(&self) -> &GroupHandle {
        &self.group
    }

    /// The callback's task id (its record exists once every member succeeded).
    pub fn callback_uuid(&self) -> Uuid {
        self.callback
    }

    /// Waits for the members and then the callback, and returns the callback's result as `T`.
    /// A member that did not succeed is the error (the callback never runs then); `timeout`
    /// bounds the whole wait.
    pub async fn result<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> std::result::Result<T, TaskFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.group.results::<Value>(timeout).await?;
        // The callback is added right after the last member's outcome is stored: look until
        // its record exists (and, should the worker that owed it have died, add it).
        let app = &self.group.app;
        let mut nudged = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match app.get(self.callback).await {
                Ok(Some(_)) => return app.handle::<T>(self.callback).result(left).await,
                Ok(None) => {}
                Err(error) => return Err(TaskFailure::Backend(Box::new(error))),
            }
            if left.is_zero() {
                return Err(TaskFailure::Timeout {
                    uuid: self.callback,
                    timeout,
                    no_worker: false,
                });
            }
            if !nudged && left < timeout / 2 {
                nudged = true;
                app.complete_chord(self.group.id).await;
                if let Err(error) = app.resume_workflow(self.group.id).await {
                    tracing::debug!(group = %self.group.id, "resuming the chord failed: {error}");
                }
            }
            tokio::time::sleep(Duration::from_millis(20).min(left)).await;
        }
    }
}

impl QueueTasks {
    /// The handle of a group added earlier (here or in another process), from its id; `None`
    /// if the backend has no such group.
    pub async fn group_handle(&self, id: Uuid) -> Result<Option<GroupHandle>> {
        if let Some((members, _)) = self.workflow_group(id).await? {
            return Ok(Some(GroupHandle {
                id,
                members,
                app: self.clone(),
            }));
        }
        Ok(self.group_state(id).await?.map(|state| GroupHandle {
            id,
            members: state.members,
            app: self.clone(),
        }))
    }

    /// The handle of a chord added earlier (here or in another process), from its group's id;
    /// `None` if the backend has no such chord.
    pub async fn chord_handle(&self, id: Uuid) -> Result<Option<ChordHandle>> {
        if let Some((members, callback)) = self.workflow_group(id).await? {
            return Ok(callback.map(|callback| ChordHandle {
                group: GroupHandle {
                    id,
                    members,
                    app: self.clone(),
                },
                callback,
            }));
        }
        Ok(self.group_state(id).await?.and_then(|state| {
            let callback = state.callback?.uuid;
            Some(ChordHandle {
                group: GroupHandle {
                    id,
                    members: state.members,
                    app: self.clone(),
                },
                callback,
            })
        }))
    }

    /// A group or chord added as a workflow: its members, and its callback for a chord.
    async fn workflow_group(&self, id: Uuid) -> Result<Option<(Vec<Uuid>, Option<Uuid>)>> {
        // A global config without workflows: the older state, if any.
        let [stored] = self.workflow_fields(id, ["doc"]).await.unwrap_or_default();
        let Some(doc) = stored.and_then(|json| serde_json::from_str::<Doc>(&json).ok()) else {
            return Ok(None);
        };
        let members_of = |nodes: &[Node]| -> Option<Vec<Uuid>> {
            nodes
                .iter()
                .map(|node| match node {
                    Node::Task(step) => Some(step.uuid),
                    _ => None,
                })
                .collect()
        };
        Ok(match &doc.root {
            Node::Group { members } => members_of(members).map(|members| (members, None)),
            Node::Chain { steps } => match steps.as_slice() {
                [Node::Group { members }, Node::Task(callback)] => {
                    members_of(members).map(|members| (members, Some(callback.uuid)))
                }
                _ => None,
            },
            // A chord of no members: its callback alone.
            Node::Task(callback) => Some((Vec::new(), Some(callback.uuid))),
        })
    }

    async fn group_state(&self, id: Uuid) -> Result<Option<GroupState>> {
        let stored = self
            .components()
            .global_config
            .get(GROUPS, &id.to_string())
            .await?;
        Ok(stored.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Adds the chord's callback if every member succeeded and nobody added it yet; called by
    /// the worker that finishes a member, at a worker's start for every chord, and by a
    /// waiting handle that finds the callback late. Failures are logged: the next caller tries
    /// again.
    pub(crate) async fn complete_chord(&self, id: Uuid) {
        if let Err(error) = self.try_complete_chord(id).await {
            tracing::warn!(group = %id, "checking the chord failed: {error}");
        }
    }

    /// [`complete_chord`](Self::complete_chord), tried again through backend errors (an
    /// outage as the last member ended) for up to [`CHORD_PATIENCE`]: the worker's check, run
    /// in the background. (Found by the fault harness: a callback never added when the check
    /// met a paused Redis.)
    pub(crate) async fn complete_chord_patiently(&self, id: Uuid) {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match self.try_complete_chord(id).await {
                Ok(()) => return,
                Err(error) if started.elapsed() < CHORD_PATIENCE => {
                    tracing::debug!(group = %id, "checking the chord failed, trying again in {pause:?}: {error}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::warn!(group = %id, "checking the chord failed for {CHORD_PATIENCE:?}; a worker that starts, or a waiter of the chord, adds its callback: {error}");
                    return;
                }
            }
        }
    }

    async fn try_complete_chord(&self, id: Uuid) -> Result<()> {
        let Some(state) = self.group_state(id).await? else {
            return Ok(());
        };
        let Some(callback) = state.callback else {
            return Ok(());
        };
        // Added and taken already. A callback still `new` is added again: on a broker that
        // writes the record before the message (RabbitMQ), an adder that died in between
        // left a record that no message will ever start; an add of a known id that still
        // waits only queues it again (harmless), and adds nothing anywhere else.
        if self
            .components()
            .storage
            .get(callback.uuid)
            .await?
            .is_some_and(|record| record.status != TaskStatus::New)
        {
            return Ok(());
        }
        // Members tend to end in order, so looking from the last one finds an unfinished
        // member at once while the chord runs: each member's check is cheap until the end.
        let mut results = Vec::with_capacity(state.members.len());
        for member in state.members.iter().rev() {
            let Some(record) = self.last_attempt(*member).await? else {
                return Ok(());
            };
            if record.status != TaskStatus::Success {
                return Ok(()); // not yet, or never: the callback does not run
            }
            results.push(outcome_of::<Value>(record).unwrap_or(Value::Null));
        }
        results.reverse();
        // Added under its own id: a second add (another worker's check, a waiter's) adds
        // nothing, so no claim is needed, and a check that failed half-way can run again.
        let mut args = callback.args;
        args.push(Value::Array(results));
        let mut call = TaskCall::new(callback.task_name, args, callback.kwargs);
        call.priority = callback.priority;
        call.add_as(self, Some(callback.uuid)).await?;
        tracing::debug!(group = %id, callback = %callback.uuid, "the chord is complete; its callback is added");
        Ok(())
    }

    /// A task's last attempt: its record, or its retries' last one.
    pub(crate) async fn last_attempt(&self, uuid: Uuid) -> Result<Option<TaskRecord>> {
        let mut current = uuid;
        loop {
            let Some(record) = self.components().storage.get(current).await? else {
                return Ok(None);
            };
            match (record.status, record.retry_child_uuid) {
                (TaskStatus::Retry, Some(child)) => current = child,
                _ => return Ok(Some(record)),
            }
        }
    }

    /// At a worker's start: completes the chords whose callback is due and missing.
    pub(crate) async fn complete_pending_chords(&self) {
        let groups = match self.components().global_config.get_all(GROUPS).await {
            Ok(groups) => groups,
            Err(error) => {
                tracing::warn!("reading the groups failed: {error}");
                return;
            }
        };
        for (id, state) in groups {
            let chord = serde_json::from_str::<GroupState>(&state)
                .is_ok_and(|state| state.callback.is_some());
            if let (true, Ok(id)) = (chord, id.parse()) {
                self.complete_chord_patiently(id).await;
            }
        }
    }
}
