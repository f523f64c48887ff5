//! The global config: entries, the heartbeat, the workers list, claims and workflows, in the
//! schema's tables. Expiring rows carry their expiry on the database's clock; reads skip the
//! expired ones, and the maintenance deletes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;

use qtasks_core::backend::BackendError;
use qtasks_core::components::GlobalConfig;
use qtasks_core::stats::WorkerInfo;

use crate::{App, failure, secs};

pub(crate) struct PgGlobalConfig {
    app: Arc<App>,
}

impl PgGlobalConfig {
    pub(crate) fn new(app: Arc<App>) -> Self {
        PgGlobalConfig { app }
    }
}

/// A glob (`*` any run, `?` one character) as a `LIKE` pattern with `\` as the escape.
fn glob_to_like(pattern: &str) -> String {
    let mut like = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for PgGlobalConfig {
    fn name(&self) -> &str {
        "PostgresGlobalConfig"
    }
}

#[qtasks_core::async_trait]
impl GlobalConfig for PgGlobalConfig {
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError> {
        for (what, text) in [
            ("the entry's name", name),
            ("its key", key),
            ("its value", value),
        ] {
            crate::no_nul(&format!("global config `{name}.{key}`: {what}"), text)?;
        }
        sqlx::query(
            "INSERT INTO entries (app, name, key, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT (app, name, key) DO UPDATE SET value = excluded.value",
        )
        .bind(&self.app.name)
        .bind(name)
        .bind(key)
        .bind(value)
        .execute(self.app.pool())
        .await
        .map_err(|e| failure(format!("writing global config `{name}.{key}` failed"), e))?;
        Ok(())
    }

    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError> {
        sqlx::query_scalar("SELECT value FROM entries WHERE app = $1 AND name = $2 AND key = $3")
            .bind(&self.app.name)
            .bind(name)
            .bind(key)
            .fetch_optional(self.app.pool())
            .await
            .map_err(|e| failure(format!("reading global config `{name}.{key}` failed"), e))
    }

    async fn get_all(&self, name: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let rows = sqlx::query("SELECT key, value FROM entries WHERE app = $1 AND name = $2")
            .bind(&self.app.name)
            .bind(name)
            .fetch_all(self.app.pool())
            .await
            .map_err(|e| failure(format!("reading global config `{name}` failed"), e))?;
        Ok(rows
            .iter()
            .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
            .collect())
    }

    async fn get_match(&self, pattern: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let rows = sqlx::query(
            "SELECT name || ':' || key, value FROM entries
             WHERE app = $1 AND name || ':' || key LIKE $2 ESCAPE '\\'",
        )
        .bind(&self.app.name)
        .bind(glob_to_like(pattern))
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure(format!("reading global config `{pattern}` failed"), e))?;
        Ok(rows
            .iter()
            .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
            .collect())
    }

    async fn set_status(&self, ttl: Duration) -> Result<(), BackendError> {
        sqlx::query(
            "INSERT INTO heartbeats (app, expires_at)
             VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (app) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(&self.app.name)
        .bind(secs(ttl.max(Duration::from_secs(1))))
        .execute(self.app.pool())
        .await
        .map_err(|e| failure("writing the worker heartbeat failed", e))?;
        Ok(())
    }

    async fn clear_status(&self) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM heartbeats WHERE app = $1")
            .bind(&self.app.name)
            .execute(self.app.pool())
            .await
            .map_err(|e| failure("clearing the worker heartbeat failed", e))?;
        Ok(())
    }

    async fn status(&self) -> Result<bool, BackendError> {
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM heartbeats WHERE app = $1 AND expires_at > clock_timestamp())",
        )
        .bind(&self.app.name)
        .fetch_one(self.app.pool())
        .await
        .map_err(|e| failure("reading the worker heartbeat failed", e))?;
        Ok(alive)
    }

    async fn set_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), BackendError> {
        let json = serde_json::to_string(info).map_err(|e| {
            BackendError::new("postgres", "encoding the worker's description failed").with_source(e)
        })?;
        sqlx::query(
            "INSERT INTO workers (app, id, info, expires_at)
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
             ON CONFLICT (app, id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at",
        )
        .bind(&self.app.name)
        .bind(&info.id)
        .bind(json)
        .bind(secs(ttl.max(Duration::from_secs(1))))
        .execute(self.app.pool())
        .await
        .map_err(|e| failure("writing the worker's description failed", e))?;
        Ok(())
    }

    async fn remove_worker(&self, id: &str) -> Result<(), BackendError> {
        sqlx::query("DELETE FROM workers WHERE app = $1 AND id = $2")
            .bind(&self.app.name)
            .bind(id)
            .execute(self.app.pool())
            .await
            .map_err(|e| failure("removing the worker's description failed", e))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let described: Vec<String> = sqlx::query_scalar(
            "SELECT info FROM workers WHERE app = $1 AND expires_at > clock_timestamp()",
        )
        .bind(&self.app.name)
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure("listing the workers failed", e))?;
        let mut workers: Vec<WorkerInfo> = described
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        workers.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        Ok(workers)
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        // A row back: this caller inserted the claim, or took over one that had expired.
        let won = sqlx::query(
            "INSERT INTO claims (app, key, expires_at)
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
             ON CONFLICT (app, key) DO UPDATE SET expires_at = excluded.expires_at
             WHERE claims.expires_at <= clock_timestamp()
             RETURNING 1",
        )
        .bind(&self.app.name)
        .bind(key)
        .bind(secs(ttl.max(Duration::from_millis(1))))
        .fetch_optional(self.app.pool())
        .await
        .map_err(|e| failure(format!("claiming `{key}` failed"), e))?;
        Ok(won.is_some())
    }

    async fn workflow_write(
        &self,
        id: &str,
        fields: &[(&str, &str)],
        only_if_absent: bool,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let Some((first, _)) = fields.first() else {
            return Ok(false);
        };
        for (field, value) in fields {
            crate::no_nul(&format!("workflow {id}: field `{field}`"), field)?;
            crate::no_nul(&format!("workflow {id}: the value of `{field}`"), value)?;
        }
        let what = |e| failure(format!("writing workflow {id} failed"), e);
        let app = &self.app.name;
        let mut tx = self.app.pool().begin().await.map_err(what)?;
        // The state row, locked: writes of one workflow go one at a time.
        sqlx::query(
            "INSERT INTO workflows (app, id, expires_at)
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
             ON CONFLICT (app, id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(app)
        .bind(id)
        .bind(secs(ttl.max(Duration::from_secs(1))))
        .execute(&mut *tx)
        .await
        .map_err(what)?;
        if only_if_absent {
            let present: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM workflow_fields WHERE app = $1 AND id = $2 AND field = $3)",
            )
            .bind(app)
            .bind(id)
            .bind(*first)
            .fetch_one(&mut *tx)
            .await
            .map_err(what)?;
            if present {
                tx.commit().await.map_err(what)?;
                return Ok(false);
            }
        }
        let names: Vec<&str> = fields.iter().map(|(field, _)| *field).collect();
        let values: Vec<&str> = fields.iter().map(|(_, value)| *value).collect();
        sqlx::query(
            "INSERT INTO workflow_fields (app, id, field, value)
             SELECT $1, $2, field, value FROM unnest($3::text[], $4::text[]) AS f(field, value)
             ON CONFLICT (app, id, field) DO UPDATE SET value = excluded.value",
        )
        .bind(app)
        .bind(id)
        .bind(&names)
        .bind(&values)
        .execute(&mut *tx)
        .await
        .map_err(what)?;
        tx.commit().await.map_err(what)?;
        Ok(true)
    }

    async fn workflow_read(
        &self,
        id: &str,
        fields: &[&str],
    ) -> Result<Vec<Option<String>>, BackendError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT f.field, f.value FROM workflow_fields f
             JOIN workflows w ON w.app = f.app AND w.id = f.id
             WHERE f.app = $1 AND f.id = $2 AND f.field = ANY($3)
               AND w.expires_at > clock_timestamp()",
        )
        .bind(&self.app.name)
        .bind(id)
        .bind(fields)
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure(format!("reading workflow {id} failed"), e))?;
        let found: BTreeMap<String, String> = rows
            .iter()
            .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
            .collect();
        Ok(fields
            .iter()
            .map(|field| found.get(*field).cloned())
            .collect())
    }

    async fn workflow_join(
        &self,
        id: &str,
        join: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u64, BackendError> {
        let what = |e| failure(format!("joining workflow {id} failed"), e);
        let app = &self.app.name;
        let mut tx = self.app.pool().begin().await.map_err(what)?;
        // Locks the state row: joins of one workflow go one at a time, so the count each reads
        // (in a statement after its insert) includes every join before it.
        let alive: Option<i32> = sqlx::query_scalar(
            "UPDATE workflows SET expires_at = greatest(expires_at, clock_timestamp() + make_interval(secs => $3))
             WHERE app = $1 AND id = $2 AND expires_at > clock_timestamp() RETURNING 1",
        )
        .bind(app)
        .bind(id)
        .bind(secs(ttl))
        .fetch_optional(&mut *tx)
        .await
        .map_err(what)?;
        if alive.is_none() {
            tx.commit().await.map_err(what)?;
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO workflow_joins (app, id, join_name, member) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(app)
        .bind(id)
        .bind(join)
        .bind(member)
        .execute(&mut *tx)
        .await
        .map_err(what)?;
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM workflow_joins WHERE app = $1 AND id = $2 AND join_name = $3",
        )
        .bind(app)
        .bind(id)
        .bind(join)
        .fetch_one(&mut *tx)
        .await
        .map_err(what)?;
        tx.commit().await.map_err(what)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn workflow_running(&self, id: &str, running: bool) -> Result<(), BackendError> {
        // Listed before its first write too (kept a week then, as a written state would be).
        sqlx::query(
            "INSERT INTO workflows (app, id, expires_at, running)
             VALUES ($1, $2, clock_timestamp() + interval '7 days', $3)
             ON CONFLICT (app, id) DO UPDATE SET running = excluded.running",
        )
        .bind(&self.app.name)
        .bind(id)
        .bind(running)
        .execute(self.app.pool())
        .await
        .map_err(|e| failure(format!("listing workflow {id} failed"), e))?;
        Ok(())
    }

    async fn workflows_running(&self) -> Result<Vec<String>, BackendError> {
        sqlx::query_scalar(
            "SELECT id FROM workflows WHERE app = $1 AND running AND expires_at > clock_timestamp()
             ORDER BY id",
        )
        .bind(&self.app.name)
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure("reading the running workflows failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::glob_to_like;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("sched*:a?"), "sched%:a_");
        assert_eq!(glob_to_like("100%_\\"), "100\\%\\_\\\\");
    }
}
