//! The Redis global config: entries in `N:GlobalConfig:{name}` hashes and the worker heartbeat
//! in `N:GlobalConfig:main` (`name`, `status=running`, with a time to live), as the original
//! writes them, so a Python client's `ping` sees a Rust worker and the other way round.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::link::Link;

use super::storage::{is_transient, scan};

/// How many times the heartbeat is written again when its connection drops.
const HEARTBEAT_RETRIES: usize = 3;
use super::{Keys, failure, glob_escape};
use qtasks_core::backend::BackendError;
use qtasks_core::components::GlobalConfig;
use qtasks_core::stats::WorkerInfo;

pub(crate) struct RedisGlobalConfig {
    keys: Keys,
    commands: Link,
}

impl RedisGlobalConfig {
    pub(super) fn new(keys: Keys, commands: Link) -> Self {
        RedisGlobalConfig { keys, commands }
    }

    /// Checks that the app is spread over `count` partitions, as every process that spread it
    /// said in `marker` (the app's own key by default; a partitioned app passes its unspread
    /// name's), and says so there when `count` is more than one and no process did yet.
    pub(crate) async fn agree_on_partitions(
        &self,
        marker: Option<&str>,
        count: u16,
    ) -> Result<(), BackendError> {
        let marker = marker.unwrap_or(&self.keys.partitions);
        let mut con = self.commands.clone();
        let read = |e| failure(format!("reading `{marker}` failed"), e);
        let mut found: Option<String> = redis::cmd("GET")
            .arg(marker)
            .query_async(&mut con)
            .await
            .map_err(read)?;
        if found.is_none() && count > 1 {
            // The first to spread the app: refused while it has tasks or workers in one
            // partition (they would be stranded there).
            let prefix = marker.strip_suffix(":qtasks:partitions").unwrap_or(marker);
            let unspread = [
                "task_queue",
                "qtasks:ready",
                "qtasks:incoming",
                "qtasks:leases",
                "qtasks:delayed",
                "GlobalConfig:main",
            ]
            .map(|key| format!("{prefix}:{key}"));
            let live: i64 = redis::cmd("EXISTS")
                .arg(&unspread)
                .query_async(&mut con)
                .await
                .map_err(read)?;
            if live > 0 {
                return Err(BackendError::new(
                    "redis",
                    format!(
                        "the app has tasks waiting or running, or workers, in one partition (under `{prefix}`), and this process asks for {count} partitions: they would be stranded there. Drain the app and stop its workers first, or keep partitions = 1"
                    ),
                ));
            }
            let set: Option<String> = redis::cmd("SET")
                .arg(marker)
                .arg(count)
                .arg("NX")
                .query_async(&mut con)
                .await
                .map_err(|e| failure(format!("writing `{marker}` failed"), e))?;
            if set.is_none() {
                // Another process said it first: its number counts.
                found = redis::cmd("GET")
                    .arg(marker)
                    .query_async(&mut con)
                    .await
                    .map_err(read)?;
            }
        }
        match found {
            Some(said) if said.trim() != count.to_string() => Err(BackendError::new(
                "redis",
                format!(
                    "the app is spread over {said} partitions (`{marker}` says so, written by a process with `RedisOptions::partitions = {said}`), and this process asks for {count}: its tasks would go where no worker looks. Use partitions = {said}; to change the number, drain the app's tasks first and delete `{marker}`"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The key whose presence says the app's workers publish their results (the heartbeat
    /// keeps it).
    pub(crate) fn publishing_key(&self) -> &str {
        &self.keys.publishing
    }

    fn hash(&self, name: &str) -> String {
        format!("{}:GlobalConfig:{name}", self.keys.prefix)
    }

    /// A workflow's state (HASH): its document, end, and the results of its steps.
    fn workflow(&self, id: &str) -> String {
        format!("{}:qtasks:workflow:{id}", self.keys.prefix)
    }

    /// The running workflows (SET of ids).
    fn running_workflows(&self) -> String {
        format!("{}:qtasks:workflows", self.keys.prefix)
    }
}

/// Writes a workflow's fields (all, or none when ARGV[2] is `1` and the first is there), and
/// keeps the state ARGV[1] ms. KEYS: the state. ARGV: ttl ms, only-if-absent, then field/value
/// pairs. Returns 1 when written.
const WORKFLOW_WRITE: &str = r#"
if ARGV[2] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// Adds a member to a workflow's join and answers how many it holds: a field per member
/// (`j:{join}:{member}`) and a count (`n:{join}`) raised only for a new one, in the state's
/// own hash, so the join lives and expires with the state. A state that is gone counts none.
/// KEYS: the state. ARGV: join, member.
const WORKFLOW_JOIN: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'j:' .. ARGV[1] .. ':' .. ARGV[2], 1) == 1 then
  return redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
end
return tonumber(redis.call('HGET', KEYS[1], 'n:' .. ARGV[1]) or '0')
"#;

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for RedisGlobalConfig {
    fn name(&self) -> &str {
        "RedisGlobalConfig"
    }
}

#[qtasks_core::async_trait]
impl GlobalConfig for RedisGlobalConfig {
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError> {
        let mut con = self.commands.clone();
        redis::cmd("HSET")
            .arg(self.hash(name))
            .arg(key)
            .arg(value)
            .exec_async(&mut con)
            .await
            .map_err(|e| failure(format!("writing global config `{name}.{key}` failed"), e))
    }

    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError> {
        let mut con = self.commands.clone();
        redis::cmd("HGET")
            .arg(self.hash(name))
            .arg(key)
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("reading global config `{name}.{key}` failed"), e))
    }

    async fn get_all(&self, name: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let mut con = self.commands.clone();
        redis::cmd("HGETALL")
            .arg(self.hash(name))
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("reading global config `{name}` failed"), e))
    }

    async fn get_match(&self, pattern: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let hash_prefix = self.hash("");
        let keys = scan(
            &self.commands,
            &format!("{}{pattern}", glob_escape(&hash_prefix)),
        )
        .await?;
        let mut found = BTreeMap::new();
        for key in keys {
            let name = key.strip_prefix(&hash_prefix).unwrap_or(&key).to_owned();
            let mut con = self.commands.clone();
            let entries: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .map_err(|e| failure(format!("reading global config `{name}` failed"), e))?;
            for (field, value) in entries {
                found.insert(format!("{name}:{field}"), value);
            }
        }
        Ok(found)
    }

    async fn set_status(&self, ttl: Duration) -> Result<(), BackendError> {
        use backon::Retryable;
        let write = || async {
            let mut con = self.commands.clone();
            redis::pipe()
                .hset_multiple(
                    &self.keys.heartbeat,
                    &[("name", self.keys.name.as_str()), ("status", "running")],
                )
                .expire(
                    &self.keys.heartbeat,
                    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
                )
                // Rust workers publish every result; while this key lives, waiters rely on
                // the messages and need not read records periodically (Python workers do
                // not publish, and do not write it).
                .set_ex(&self.keys.publishing, 1, ttl.as_secs().max(1))
                .exec_async(&mut con)
                .await
        };
        write
            .retry(crate::reconnect_pauses().take(HEARTBEAT_RETRIES))
            .when(is_transient)
            .await
            .map_err(|e| failure("writing the worker heartbeat failed".to_owned(), e))
    }

    async fn clear_status(&self) -> Result<(), BackendError> {
        use backon::Retryable;
        let clear = || async {
            let mut con = self.commands.clone();
            redis::cmd("DEL")
                .arg(&self.keys.heartbeat)
                .exec_async(&mut con)
                .await
        };
        clear
            .retry(crate::reconnect_pauses().take(HEARTBEAT_RETRIES))
            .when(is_transient)
            .await
            .map_err(|e| failure("clearing the worker heartbeat failed".to_owned(), e))
    }

    async fn set_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), BackendError> {
        let json = serde_json::to_string(info).map_err(|e| {
            BackendError::new("redis", "encoding the worker's description failed").with_source(e)
        })?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1000);
        let mut con = self.commands.clone();
        // By Redis's clock (`scripts::SET_WORKER`), which also drops the descriptions of
        // workers that died without removing theirs.
        redis::Script::new(super::scripts::SET_WORKER)
            .key(self.keys.worker(&info.id))
            .key(&self.keys.workers)
            .arg(json)
            .arg(ttl_ms)
            .arg(&info.id)
            .invoke_async::<i64>(&mut con)
            .await
            .map(drop)
            .map_err(|e| failure("writing the worker's description failed".to_owned(), e))
    }

    async fn workflow_write(
        &self,
        id: &str,
        fields: &[(&str, &str)],
        only_if_absent: bool,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        if fields.is_empty() {
            return Ok(false);
        }
        let mut con = self.commands.clone();
        let script = redis::Script::new(WORKFLOW_WRITE);
        let mut invocation = script.key(self.workflow(id));
        invocation
            .arg(ttl_ms(ttl))
            .arg(if only_if_absent { "1" } else { "0" });
        for (field, value) in fields {
            invocation.arg(*field).arg(*value);
        }
        let written: i64 = invocation
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("writing workflow {id} failed"), e))?;
        Ok(written == 1)
    }

    async fn workflow_read(
        &self,
        id: &str,
        fields: &[&str],
    ) -> Result<Vec<Option<String>>, BackendError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.commands.clone();
        redis::cmd("HMGET")
            .arg(self.workflow(id))
            .arg(fields)
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("reading workflow {id} failed"), e))
    }

    async fn workflow_join(
        &self,
        id: &str,
        join: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64, BackendError> {
        // The state's time to live covers the join (the step's result, written just before,
        // renewed it).
        let _ = ttl;
        let mut con = self.commands.clone();
        redis::Script::new(WORKFLOW_JOIN)
            .key(self.workflow(id))
            .arg(join)
            .arg(member)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failure(format!("joining workflow {id} failed"), e))
    }

    async fn workflow_running(&self, id: &str, running: bool) -> Result<(), BackendError> {
        let mut con = self.commands.clone();
        let command = if running { "SADD" } else { "SREM" };
        redis::cmd(command)
            .arg(self.running_workflows())
            .arg(id)
            .exec_async(&mut con)
            .await
            .map_err(|e| failure(format!("listing workflow {id} failed"), e))
    }

    async fn workflows_running(&self) -> Result<Vec<String>, BackendError> {
        let mut con = self.commands.clone();
        redis::cmd("SMEMBERS")
            .arg(self.running_workflows())
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the running workflows failed".to_owned(), e))
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut con = self.commands.clone();
        let won: Option<String> = redis::cmd("SET")
            .arg(format!("{}:qtasks:claim:{key}", self.keys.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut con)
            .await
            .map_err(|e| failure(format!("claiming `{key}` failed"), e))?;
        Ok(won.is_some())
    }

    async fn remove_worker(&self, id: &str) -> Result<(), BackendError> {
        let mut con = self.commands.clone();
        redis::pipe()
            .del(self.keys.worker(id))
            .ignore()
            .zrem(&self.keys.workers, id)
            .ignore()
            .exec_async(&mut con)
            .await
            .map_err(|e| failure("removing the worker's description failed".to_owned(), e))
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let mut con = self.commands.clone();
        // Every listed worker; a description that ran out (by Redis's clock, not this
        // process's) is gone, and its worker with it.
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.keys.workers)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .map_err(|e| failure("listing the workers failed".to_owned(), e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.worker(id)).collect();
        let described: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the workers failed".to_owned(), e))?;
        let mut workers: Vec<WorkerInfo> = described
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        workers.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        Ok(workers)
    }

    async fn status(&self) -> Result<bool, BackendError> {
        let mut con = self.commands.clone();
        let status: Option<String> = redis::cmd("HGET")
            .arg(&self.keys.heartbeat)
            .arg("status")
            .query_async(&mut con)
            .await
            .map_err(|e| failure("reading the worker heartbeat failed".to_owned(), e))?;
        Ok(status.is_some())
    }
}
