//! The in-memory global config: entries and the worker heartbeat of one process.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::GlobalConfig;
use crate::backend::BackendError;
use crate::stats::WorkerInfo;

/// Entries and heartbeat in memory.
#[derive(Debug, Default)]
pub struct MemoryGlobalConfig {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, BTreeMap<String, String>>,
    heartbeat_until: Option<Instant>,
    /// Worker descriptions by id, with when each expires.
    workers: BTreeMap<String, (WorkerInfo, Instant)>,
    /// Claims by key, with when each expires.
    claims: BTreeMap<String, Instant>,
    /// Workflow states by id.
    workflows: std::collections::HashMap<String, Workflow>,
    /// The running workflows.
    running_workflows: std::collections::BTreeSet<String>,
    /// When expired workflow states were last dropped.
    workflows_purged: Option<Instant>,
}

/// The state of one workflow: its fields, its joins, and when it expires.
#[derive(Debug)]
struct Workflow {
    fields: BTreeMap<String, String>,
    joins: std::collections::HashMap<String, std::collections::HashSet<String>>,
    until: Instant,
}

impl State {
    /// The live state of workflow `id`, made when `create`; expired states are dropped (all
    /// of them at most once a second, so a long-lived process keeps only live ones).
    fn workflow(&mut self, id: &str, create: bool) -> Option<&mut Workflow> {
        let now = Instant::now();
        if self
            .workflows_purged
            .is_none_or(|at| now.duration_since(at) > Duration::from_secs(1))
        {
            self.workflows.retain(|_, workflow| workflow.until > now);
            self.workflows_purged = Some(now);
        }
        if self.workflows.get(id).is_some_and(|w| w.until <= now) {
            self.workflows.remove(id);
        }
        if create {
            Some(
                self.workflows
                    .entry(id.to_owned())
                    .or_insert_with(|| Workflow {
                        fields: BTreeMap::new(),
                        joins: std::collections::HashMap::new(),
                        until: now,
                    }),
            )
        } else {
            self.workflows.get_mut(id)
        }
    }
}

impl MemoryGlobalConfig {
    /// No entries, no heartbeat.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

#[crate::async_trait]
impl crate::backend::Lifecycle for MemoryGlobalConfig {
    fn name(&self) -> &str {
        "MemoryGlobalConfig"
    }
}

#[crate::async_trait]
impl GlobalConfig for MemoryGlobalConfig {
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError> {
        self.state()
            .entries
            .entry(name.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError> {
        let value = self
            .state()
            .entries
            .get(name)
            .and_then(|entries| entries.get(key))
            .cloned();
        Ok(value)
    }

    async fn get_all(&self, name: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let entries = self.state().entries.get(name).cloned().unwrap_or_default();
        Ok(entries)
    }

    async fn get_match(&self, pattern: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let mut found = BTreeMap::new();
        for (name, entries) in &self.state().entries {
            if glob_match(pattern, name) {
                for (key, value) in entries {
                    found.insert(format!("{name}:{key}"), value.clone());
                }
            }
        }
        Ok(found)
    }

    async fn set_status(&self, ttl: Duration) -> Result<(), BackendError> {
        self.state().heartbeat_until = Some(Instant::now() + ttl);
        Ok(())
    }

    async fn clear_status(&self) -> Result<(), BackendError> {
        self.state().heartbeat_until = None;
        Ok(())
    }

    async fn set_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), BackendError> {
        self.state()
            .workers
            .insert(info.id.clone(), (info.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        // Expired claims go (a one-second schedule makes one a second).
        state.claims.retain(|_, until| *until > now);
        let won = match state.claims.entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(now + ttl);
                true
            }
        };
        Ok(won)
    }

    async fn remove_worker(&self, id: &str) -> Result<(), BackendError> {
        self.state().workers.remove(id);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        state.workers.retain(|_, (_, until)| *until > now);
        let mut workers: Vec<WorkerInfo> = state
            .workers
            .values()
            .map(|(info, _)| info.clone())
            .collect();
        workers.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        Ok(workers)
    }

    async fn workflow_write(
        &self,
        id: &str,
        fields: &[(&str, &str)],
        only_if_absent: bool,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut state = self.state();
        let workflow = state.workflow(id, true).expect("created");
        if only_if_absent
            && let Some((first, _)) = fields.first()
            && workflow.fields.contains_key(*first)
        {
            return Ok(false);
        }
        for (field, value) in fields {
            workflow
                .fields
                .insert((*field).to_owned(), (*value).to_owned());
        }
        workflow.until = Instant::now() + ttl;
        Ok(true)
    }

    async fn workflow_read(
        &self,
        id: &str,
        fields: &[&str],
    ) -> Result<Vec<Option<String>>, BackendError> {
        let mut state = self.state();
        let workflow = state.workflow(id, false);
        Ok(fields
            .iter()
            .map(|field| {
                workflow
                    .as_ref()
                    .and_then(|w| w.fields.get(*field).cloned())
            })
            .collect())
    }

    async fn workflow_join(
        &self,
        id: &str,
        join: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64, BackendError> {
        let mut state = self.state();
        let workflow = state.workflow(id, true).expect("created");
        workflow.until = workflow.until.max(Instant::now() + ttl);
        let members = workflow.joins.entry(join.to_owned()).or_default();
        members.insert(member.to_owned());
        Ok(members.len() as u64)
    }

    async fn workflow_running(&self, id: &str, running: bool) -> Result<(), BackendError> {
        let mut state = self.state();
        if running {
            state.running_workflows.insert(id.to_owned());
        } else {
            state.running_workflows.remove(id);
        }
        Ok(())
    }

    async fn workflows_running(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.state().running_workflows.iter().cloned().collect())
    }

    async fn status(&self) -> Result<bool, BackendError> {
        let alive = self
            .state()
            .heartbeat_until
            .is_some_and(|until| until > Instant::now());
        Ok(alive)
    }
}

/// Glob matching with `*` (any run) and `?` (any one character), as Redis `MATCH` does.
fn glob_match(pattern: &str, text: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(text)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match("work*", "workers"));
        assert!(glob_match("w?rk", "work"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c", "abd"));
        assert!(!glob_match("work", "workers"));
    }
}
