//! The schema's tables, made and upgraded by versioned migrations embedded in the crate.
//!
//! Each migration runs once per schema, in a transaction, under an advisory lock (so workers
//! starting together do not race), and is recorded in `{schema}.qtasks_migrations`. A database
//! at a newer version than this build knows is used as it is: migrations only add, so an older
//! binary keeps working during a rolling deploy.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Executor};

use qtasks_core::backend::BackendError;

use crate::failure;

/// The migrations, oldest first: (version, what it does, its SQL with `{schema}` to replace).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tables, indexes and triggers",
        include_str!("../migrations/0001_init.sql"),
    ),
    (
        2,
        "finished tasks announced in batches",
        include_str!("../migrations/0002_batched_done_notifications.sql"),
    ),
    (
        3,
        "triggers linear in their rows; one token per leased row",
        include_str!("../migrations/0003_linear_triggers.sql"),
    ),
];

/// The newest version this build knows.
pub(crate) const VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The longest schema name: `qtasks_{schema}` names the notification channel, which
/// PostgreSQL cuts at 63 bytes.
const NAME_MAX: usize = 40;

/// Checks a schema name: lowercase letters, digits and `_`, not starting with a digit, at most
/// 40 characters. (It is put in SQL text and a channel name, so nothing else passes.)
pub(crate) fn check_name(schema: &str) -> Result<(), BackendError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= NAME_MAX {
        Ok(())
    } else {
        Err(BackendError::new(
            "postgres",
            format!(
                "the schema name `{schema}` is not allowed: use lowercase letters, digits and `_`, starting with a letter or `_`, at most {NAME_MAX} characters"
            ),
        ))
    }
}

/// A migration's SQL for `schema` (checked by [`check_name`]: quoting it is enough).
fn templated(sql: &str, schema: &str) -> String {
    sql.replace("{schema}", &format!("\"{schema}\""))
}

/// Brings `schema` to [`VERSION`], or with `migrate` off, checks that it is there.
pub(crate) async fn migrate(
    pool: &PgPool,
    schema: &str,
    migrate: bool,
) -> Result<(), BackendError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| failure("starting the schema migration failed", e))?;
    // One migrating process per schema at a time; the others wait, then find it done.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('qtasks migrations ' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(|e| failure("locking the schema for its migration failed", e))?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'qtasks_migrations')",
    )
    .bind(schema)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| failure("reading the schema's version failed", e))?;
    let current: i64 = if exists {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(max(version), 0) FROM \"{schema}\".qtasks_migrations"
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| failure("reading the schema's version failed", e))?
    } else {
        0
    };
    if current >= VERSION {
        return Ok(());
    }
    if !migrate {
        return Err(BackendError::new(
            "postgres",
            format!(
                "schema `{schema}` is at version {current}, and this build needs {VERSION}; run the migrations (connect once with `PostgresOptions::migrate` on)"
            ),
        ));
    }
    (&mut *tx)
        .execute(AssertSqlSafe(templated(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.qtasks_migrations (
                 version bigint PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
            schema,
        )))
        .await
        .map_err(|e| failure(format!("creating schema `{schema}` failed"), e))?;
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > current) {
        (&mut *tx)
            .execute(AssertSqlSafe(templated(sql, schema)))
            .await
            .map_err(|e| {
                failure(
                    format!("migration {version} ({description}) of schema `{schema}` failed"),
                    e,
                )
            })?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".qtasks_migrations (version, description) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(|e| failure("recording the schema's version failed", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| failure(format!("committing the migration of `{schema}` failed"), e))?;
    tracing::info!(schema, version = VERSION, "PostgreSQL schema migrated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["qtasks", "_jobs", "app_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Jobs", "2x", "a-b", "a\"b", "a;drop", &"x".repeat(41)] {
            let error = check_name(bad).expect_err(bad).to_string();
            assert!(error.contains("lowercase letters"), "{error}");
        }
    }

    #[test]
    fn migrations_name_the_schema_quoted() {
        let sql = templated(MIGRATIONS[0].2, "jobs");
        assert!(sql.contains("CREATE TABLE \"jobs\".records"));
        assert!(!sql.contains("{schema}"));
    }
}
