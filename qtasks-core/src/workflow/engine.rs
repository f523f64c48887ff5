//! How workers move a workflow on: each task of it, once ended, starts what comes next.
//!
//! The state (see [`GlobalConfig::workflow_write`](crate::components::GlobalConfig)) holds the
//! tree (`doc`), the result of each node that ended (`r:{path}`), how it ended (`end`: written
//! once) and, for a failure, which step failed (`failed`). A group counts its ended members in
//! a join (a set, so a member that ends twice counts once): the member that completes the
//! count gathers the results and moves on. Every task is added under an id fixed when the
//! workflow was added, so a step moved on twice (a worker that died half-way, a resume)
//! adds nothing twice.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::StepFailure;
use super::state::{Doc, Node, Step, parse_step_ref, path_text, result_field, step_ref};
use crate::task::Outcome;
use crate::{AddOptions, Error, QueueTasks, Result, TaskStatus};

/// How long a running workflow's state is kept after its last step moved it on.
pub(crate) const RUNNING_TTL: Duration = Duration::from_secs(7 * 86_400);

/// How long a workflow's state is kept once it ended: as long as Redis keeps records.
pub(crate) const ENDED_TTL: Duration = Duration::from_secs(86_400);

/// How long a worker keeps trying to move a workflow on through backend errors.
const PATIENCE: Duration = Duration::from_secs(300);

impl QueueTasks {
    /// Fields of workflow `id`'s state, in the order asked (`None` where absent).
    pub(crate) async fn workflow_fields<const N: usize>(
        &self,
        id: Uuid,
        names: [&str; N],
    ) -> Result<[Option<String>; N]> {
        let read = self
            .components()
            .global_config
            .workflow_read(&id.to_string(), &names)
            .await?;
        Ok(std::array::from_fn(|i| read.get(i).cloned().flatten()))
    }

    /// The stored results of the nodes at `paths`, in order (`None` where none is stored, or
    /// it is not JSON).
    async fn workflow_results(&self, id: Uuid, paths: &[Vec<usize>]) -> Result<Vec<Option<Value>>> {
        let fields: Vec<String> = paths.iter().map(|path| result_field(path)).collect();
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        let read = self
            .components()
            .global_config
            .workflow_read(&id.to_string(), &names)
            .await?;
        Ok(read
            .into_iter()
            .map(|value| value.and_then(|json| serde_json::from_str(&json).ok()))
            .collect())
    }

    /// Stores a new workflow and adds its first tasks. A workflow stored already under `id`
    /// (an add tried again after an error that hid whether it landed) is started as stored:
    /// its first tasks, added under their fixed ids, are added once.
    pub(crate) async fn start_workflow(&self, id: Uuid, doc: &Doc) -> Result<()> {
        let global = &self.components().global_config;
        let json = serde_json::to_string(doc).expect("a workflow always serializes");
        let key = id.to_string();
        // Listed first: an adder that dies before its first tasks are added leaves a workflow
        // the next worker to start finds (one listed without a state is taken off the list).
        global.workflow_running(&key, true).await?;
        let new = global
            .workflow_write(&key, &[("doc", &json)], true, RUNNING_TTL)
            .await?;
        let stored;
        let doc = if new {
            doc
        } else {
            match self.live_doc(id).await? {
                Some(earlier) => {
                    stored = earlier;
                    &stored
                }
                // Ended already: nothing to start.
                None => return Ok(()),
            }
        };
        self.start_node(id, &doc.root, &mut Vec::new(), None).await
    }

    /// Adds the tasks that start `node` (at `path`), each given `input` as its last argument.
    fn start_node<'a>(
        &'a self,
        id: Uuid,
        node: &'a Node,
        path: &'a mut Vec<usize>,
        input: Option<Value>,
    ) -> crate::plugin::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match node {
                Node::Task(step) => self.add_step(id, step, path, input).await,
                Node::Chain { steps } => {
                    let Some(first) = steps.first() else {
                        return Ok(());
                    };
                    path.push(0);
                    let started = self.start_node(id, first, path, input).await;
                    path.pop();
                    started
                }
                Node::Group { members } => {
                    for (i, member) in members.iter().enumerate() {
                        path.push(i);
                        let started = self.start_node(id, member, path, input.clone()).await;
                        path.pop();
                        started?;
                    }
                    Ok(())
                }
            }
        })
    }

    /// Adds one step's task under its fixed id, once: the state marks the step started
    /// (`s:{path}`) after the add, and a step marked is not added again, so a move repeated
    /// long after (the task's record expired, and with it what made a second add a no-op)
    /// does not run it twice. A mover that dies between the add and the mark leaves it
    /// unmarked: the next one adds it again under its id, which adds nothing.
    async fn add_step(
        &self,
        id: Uuid,
        step: &Step,
        path: &[usize],
        input: Option<Value>,
    ) -> Result<()> {
        let global = &self.components().global_config;
        let key = id.to_string();
        let marker = format!("s:{}", path_text(path));
        let [marked] = self.workflow_fields(id, [marker.as_str()]).await?;
        if marked.is_some() {
            return Ok(());
        }
        let mut args = step.args.clone();
        args.extend(input);
        let mut options = AddOptions::default().uuid(step.uuid);
        options.priority = step.priority;
        options.queue = step.queue.clone();
        options.rate_key = step.rate_key.clone();
        options.workflow = Some(step_ref(id, path));
        self.add_task_with(&step.task_name, &args, &step.kwargs, options)
            .await?;
        global
            .workflow_write(&key, &[(marker.as_str(), "1")], false, RUNNING_TTL)
            .await?;
        Ok(())
    }

    /// Reads a workflow's tree, unless it ended (or expired): then `None`.
    async fn live_doc(&self, id: Uuid) -> Result<Option<Doc>> {
        match self.workflow_fields(id, ["doc", "end"]).await? {
            [Some(doc), None] => Ok(serde_json::from_str(&doc)
                .inspect_err(|e| tracing::error!(workflow = %id, "the workflow's state is not one ({e}); it is not moved on"))
                .ok()),
            _ => Ok(None),
        }
    }

    /// The worker's part once a workflow's task ended: tried again through backend errors
    /// (an outage as the task ended) for a few minutes; a worker that starts later resumes
    /// what is left (see [`resume_workflows`](Self::resume_workflows)).
    pub(crate) async fn advance_workflow_patiently(
        &self,
        step: String,
        uuid: Uuid,
        task_name: String,
        outcome: Outcome,
    ) {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .advance_workflow(&step, uuid, &task_name, &outcome)
                .await
            {
                Ok(()) => return,
                Err(error) if started.elapsed() < PATIENCE => {
                    tracing::debug!(
                        step,
                        "moving the workflow on failed, trying again in {pause:?}: {error}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::warn!(
                        step,
                        "moving the workflow on failed for {PATIENCE:?}; a worker that starts resumes it: {error}"
                    );
                    return;
                }
            }
        }
    }

    /// Moves a workflow on from the end of its task `uuid` at `step` (`{id}/{path}`).
    pub(crate) async fn advance_workflow(
        &self,
        step: &str,
        uuid: Uuid,
        task_name: &str,
        outcome: &Outcome,
    ) -> Result<()> {
        let Some((id, path)) = parse_step_ref(step) else {
            tracing::warn!(uuid = %uuid, "task {uuid} names workflow step `{step}`, which is not one; nothing follows it");
            return Ok(());
        };
        let Some(doc) = self.live_doc(id).await? else {
            return Ok(());
        };
        // Only a task of the tree's step moves it (not a stale task of a reused id, nor a
        // `workflow` field another producer wrote).
        if !matches!(doc.root.at(&path), Some(Node::Task(node)) if node.task_name == task_name) {
            tracing::warn!(workflow = %id, uuid = %uuid, "task {uuid} (`{task_name}`) names step `{}`, which is not one of its tasks; the workflow is not moved", path_text(&path));
            return Ok(());
        }
        match outcome {
            Outcome::Success(result) => self.node_done(id, &doc, path, result.clone()).await,
            Outcome::Error(reason) | Outcome::Cancel(reason) => {
                let failure = StepFailure {
                    workflow: id,
                    uuid,
                    task_name: task_name.to_owned(),
                    step: path_text(&path),
                    status: outcome.status(),
                    reason: reason.clone(),
                };
                self.fail_workflow(id, &doc, failure).await
            }
            Outcome::Retry { .. } => Ok(()),
        }
    }

    /// A node ended with `result`: its parent moves on (the next step of a chain, or a group's
    /// count), and so on up while nodes complete.
    async fn node_done(
        &self,
        id: Uuid,
        doc: &Doc,
        mut path: Vec<usize>,
        mut result: Value,
    ) -> Result<()> {
        let global = &self.components().global_config;
        let key = id.to_string();
        loop {
            // The result first: a group's last member reads its siblings' once it counted.
            let json = result.to_string();
            global
                .workflow_write(&key, &[(&result_field(&path), &json)], false, RUNNING_TTL)
                .await?;
            let Some(index) = path.pop() else {
                return self.end_workflow(id, TaskStatus::Success).await;
            };
            match doc.root.at(&path) {
                Some(Node::Chain { steps }) if index + 1 < steps.len() => {
                    path.push(index + 1);
                    self.start_node(id, &steps[index + 1], &mut path, Some(result))
                        .await?;
                    return self.undo_if_ended(id, doc).await;
                }
                Some(Node::Chain { .. }) => {} // the chain's last step: the chain is done
                Some(Node::Group { members }) => {
                    let counted = global
                        .workflow_join(&key, &path_text(&path), &index.to_string(), RUNNING_TTL)
                        .await?;
                    if counted < members.len() as u64 {
                        return Ok(());
                    }
                    let member_paths: Vec<Vec<usize>> = (0..members.len())
                        .map(|i| [path.as_slice(), &[i]].concat())
                        .collect();
                    let stored = self.workflow_results(id, &member_paths).await?;
                    let Some(results) = stored.into_iter().collect::<Option<Vec<Value>>>() else {
                        // Expired meanwhile, or written by another version: not complete.
                        tracing::warn!(workflow = %id, "a result of group `{}` is missing; the group does not move on", path_text(&path));
                        return Ok(());
                    };
                    result = Value::Array(results);
                }
                Some(Node::Task(_)) | None => {
                    tracing::error!(workflow = %id, "the workflow's tree has no node at `{}`; it stops there", path_text(&path));
                    return Ok(());
                }
            }
        }
    }

    /// A step failed for good (its retries spent, or cancelled): the workflow ends so, once,
    /// and its error callback is added.
    async fn fail_workflow(&self, id: Uuid, doc: &Doc, failure: StepFailure) -> Result<()> {
        let global = &self.components().global_config;
        let key = id.to_string();
        let status = failure.status.as_str();
        let json = serde_json::to_string(&failure).expect("a failure always serializes");
        let first = global
            .workflow_write(&key, &[("end", status), ("failed", &json)], true, ENDED_TTL)
            .await?;
        global.workflow_running(&key, false).await?;
        if first {
            tracing::info!(workflow = %id, task = %failure.uuid, "the workflow ended {status}: step {} ({}) failed", failure.step, failure.task_name);
        }
        // Added however often this runs: under its fixed id it is added once.
        if let Some(callback) = &doc.on_error {
            let mut args = callback.args.clone();
            args.push(serde_json::to_value(&failure).expect("a failure always serializes"));
            let mut options = AddOptions::default().uuid(callback.uuid);
            options.priority = callback.priority;
            options.queue = callback.queue.clone();
            options.rate_key = callback.rate_key.clone();
            self.add_task_with(&callback.task_name, &args, &callback.kwargs, options)
                .await?;
        }
        Ok(())
    }

    /// The workflow's last node ended: it ended so.
    async fn end_workflow(&self, id: Uuid, status: TaskStatus) -> Result<()> {
        let global = &self.components().global_config;
        let key = id.to_string();
        global
            .workflow_write(&key, &[("end", status.as_str())], true, ENDED_TTL)
            .await?;
        global
            .workflow_running(&key, false)
            .await
            .map_err(Error::from)
    }

    /// A cancel that came while the next tasks were added: they are cancelled too.
    async fn undo_if_ended(&self, id: Uuid, doc: &Doc) -> Result<()> {
        if let [Some(end), Some(reason)] = self.workflow_fields(id, ["end", "reason"]).await?
            && end == "cancel"
        {
            self.cancel_steps(doc, &reason).await?;
        }
        Ok(())
    }

    /// Cancels every task of the workflow that waits or runs (a retried one in its last
    /// attempt).
    pub(crate) async fn cancel_steps(&self, doc: &Doc, reason: &str) -> Result<()> {
        for (_, step) in doc.root.tasks() {
            // Its last attempt (a retried step lives on in it). Quietly: the workflow ended
            // already, and hearing of these cancels would only come back here.
            if let Some(last) = self.last_attempt(step.uuid).await?
                && matches!(last.status, TaskStatus::New | TaskStatus::Process)
            {
                match self.cancel_quietly(last.uuid, reason).await {
                    Ok(_) | Err(Error::TaskNotFound(_)) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// At a worker's start: moves on the running workflows whose step ended without moving
    /// them (its worker died in between), and adds the first tasks of one whose adder died
    /// before it added them. Every add is under a fixed id, so what was done is not redone.
    pub(crate) async fn resume_workflows(&self) {
        let ids = match self.components().global_config.workflows_running().await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!("reading the running workflows failed: {error}");
                return;
            }
        };
        for id in ids.iter().filter_map(|id| id.parse::<Uuid>().ok()) {
            if let Err(error) = self.resume_workflow(id).await {
                tracing::warn!(workflow = %id, "resuming the workflow failed: {error}");
            }
        }
    }

    /// See [`resume_workflows`](Self::resume_workflows).
    pub(crate) async fn resume_workflow(&self, id: Uuid) -> Result<()> {
        let Some(doc) = self.live_doc(id).await? else {
            // Ended, or expired: off the list.
            return self
                .components()
                .global_config
                .workflow_running(&id.to_string(), false)
                .await
                .map_err(Error::from);
        };
        self.start_node(id, &doc.root, &mut Vec::new(), None)
            .await?;
        let tasks = doc.root.tasks();
        let paths: Vec<Vec<usize>> = tasks.iter().map(|(path, _)| path.clone()).collect();
        let results = self.workflow_results(id, &paths).await?;
        for ((path, step), result) in tasks.into_iter().zip(results) {
            // Ended and stored: moved on again from its stored result (what came after it is
            // marked started, so nothing runs twice), whatever became of its record.
            if let Some(result) = result {
                self.node_done(id, &doc, path, result).await?;
                continue;
            }
            let Some(record) = self.last_attempt(step.uuid).await? else {
                continue;
            };
            let outcome = match record.status {
                TaskStatus::Success => {
                    Outcome::Success(record.returning.clone().unwrap_or(Value::Null))
                }
                TaskStatus::Error => Outcome::Error(record.traceback.clone().unwrap_or_default()),
                TaskStatus::Cancel => {
                    Outcome::Cancel(record.cancel_reason.clone().unwrap_or_default())
                }
                _ => continue,
            };
            self.advance_workflow(&step_ref(id, &path), record.uuid, &step.task_name, &outcome)
                .await?;
        }
        Ok(())
    }
}
