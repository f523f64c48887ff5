//! The tasks registered with `#[qtasks::task]`, collected once per process from inventory.

use std::sync::OnceLock;

use crate::__private::TaskRegistration;
use crate::{Error, TaskDefinition};

/// The likely cause of a worker that knows none of its queue's tasks, and the fix: said when
/// it starts with no task, and with each unknown task it hands back.
pub(crate) const UNLINKED_TASKS_HINT: &str = "if the `#[qtasks::task]` fns live in a library crate, the binary must name that crate (`use my_tasks as _;`), or the linker leaves it out with its tasks";

/// Why the table cannot be built (kept in the `OnceLock`, so it is plain data).
enum Refused {
    /// Two tasks with one name: the name and both places.
    Duplicate(&'static str, String, String),
    /// A task option that cannot work: the task, its place, why.
    Option(&'static str, String, String),
}

/// The longest `result_ttl`: 100 years.
const MAX_RETENTION_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// Options the macro could not check at compile time (a `const` rather than a literal): a
/// number of seconds must be finite and not negative.
fn check_options(definition: &TaskDefinition) -> Result<(), Refused> {
    let backoff = definition.parts.retry_backoff;
    let seconds = [
        ("retry_delay", backoff.map(|b| b.delay)),
        ("retry_backoff_max", backoff.and_then(|b| b.max)),
        ("max_time", definition.parts.max_time),
        ("result_ttl", definition.parts.result_ttl),
        ("unique_for", definition.parts.unique_for),
    ];
    for (option, value) in seconds {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(Refused::Option(
                definition.parts.name,
                definition.location(),
                format!(
                    "`{option}` is {value}; it must be a finite, non-negative number of seconds"
                ),
            ));
        }
    }
    // A retention of 0 would keep nothing (a waiter could not read the outcome), and Redis
    // reads 0 as "keep": neither is meant. The upper bound keeps every engine's clock in range.
    if let Some(ttl) = definition.parts.result_ttl
        && !(ttl > 0.0 && ttl <= MAX_RETENTION_SECS)
    {
        return Err(Refused::Option(
            definition.parts.name,
            definition.location(),
            format!("`result_ttl` is {ttl} seconds; it must be more than 0 and at most 100 years"),
        ));
    }
    // Checked by the macro, but a period past what a duration holds reads as none.
    if let Some((count, per)) = definition.parts.rate_limit
        && definition.rate_limit().is_none()
    {
        return Err(Refused::Option(
            definition.parts.name,
            definition.location(),
            format!("`rate_limit` is {count} per {per} seconds, which is no rate"),
        ));
    }
    // A `const` count may be 0: a task that could never start.
    if definition.parts.max_running == Some(0) {
        return Err(Refused::Option(
            definition.parts.name,
            definition.location(),
            "`max_running` is 0; it must be at least 1 (a task that may never run?)".to_owned(),
        ));
    }
    if let Some(jitter) = backoff.and_then(|b| b.jitter)
        && !(0.0..=1.0).contains(&jitter)
    {
        return Err(Refused::Option(
            definition.parts.name,
            definition.location(),
            format!("`retry_jitter` is {jitter}; it must be a number from 0 to 1"),
        ));
    }
    Ok(())
}

/// Every registered task, sorted by name. Looked up by binary search: no string hashing.
pub(crate) struct TaskTable {
    by_name: Vec<&'static TaskDefinition>,
}

impl TaskTable {
    /// The process-wide table, built on first use. Two tasks with one name are an error
    /// naming both places.
    pub(crate) fn global() -> Result<&'static TaskTable, Error> {
        static TABLE: OnceLock<Result<TaskTable, Refused>> = OnceLock::new();
        match TABLE
            .get_or_init(|| TaskTable::build(inventory::iter::<TaskRegistration>().map(|r| r.0)))
        {
            Ok(table) => Ok(table),
            Err(Refused::Duplicate(name, first, second)) => Err(Error::DuplicateTask {
                name,
                first: first.clone(),
                second: second.clone(),
            }),
            Err(Refused::Option(task, location, reason)) => Err(Error::InvalidTaskOption {
                task,
                location: location.clone(),
                reason: reason.clone(),
            }),
        }
    }

    fn build(
        definitions: impl Iterator<Item = &'static TaskDefinition>,
    ) -> Result<TaskTable, Refused> {
        let mut by_name: Vec<&'static TaskDefinition> = definitions.collect();
        by_name.sort_by(|a, b| {
            (a.parts.name, a.parts.file, a.parts.line).cmp(&(
                b.parts.name,
                b.parts.file,
                b.parts.line,
            ))
        });
        if let Some(pair) = by_name
            .windows(2)
            .find(|pair| pair[0].parts.name == pair[1].parts.name)
        {
            return Err(Refused::Duplicate(
                pair[0].parts.name,
                pair[0].location(),
                pair[1].location(),
            ));
        }
        for definition in &by_name {
            check_options(definition)?;
        }
        Ok(TaskTable { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'static TaskDefinition> {
        self.by_name
            .binary_search_by(|d| d.parts.name.cmp(name))
            .ok()
            .map(|i| self.by_name[i])
    }

    /// The registered name closest to `name`, for a "did you mean" (the catalogue's one rule).
    pub(crate) fn closest(&self, name: &str) -> Option<&'static str> {
        qtasks_triggers::closest(name, self.names())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.iter().map(|d| d.parts.name)
    }

    pub(crate) fn definitions(&self) -> &[&'static TaskDefinition] {
        &self.by_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::__private::RetryBackoffParts;
    use crate::__private::{TaskArgs, TaskFuture};

    fn never_run(_: crate::TaskContext, _: TaskArgs) -> TaskFuture {
        unreachable!("not run")
    }

    fn leaked(retry_delay: f64, max_time: Option<f64>) -> &'static TaskDefinition {
        let bare = TaskDefinition::bare("checked", never_run);
        Box::leak(Box::new(TaskDefinition {
            parts: crate::__private::TaskDefinitionParts {
                retry: Some(1),
                retry_backoff: Some(RetryBackoffParts {
                    delay: retry_delay,
                    exponential: false,
                    max: None,
                    jitter: None,
                }),
                max_time,
                ..bare.parts
            },
        }))
    }

    #[test]
    fn seconds_that_are_not_finite_or_are_negative_refuse_the_table() {
        assert!(TaskTable::build([leaked(0.5, Some(30.0))].into_iter()).is_ok());
        for (delay, limit) in [(f64::NAN, None), (-1.0, None), (0.5, Some(f64::INFINITY))] {
            match TaskTable::build([leaked(delay, limit)].into_iter()) {
                Err(Refused::Option(task, _, reason)) => {
                    assert_eq!(task, "checked");
                    assert!(reason.contains("finite, non-negative"), "{reason}");
                }
                _ => panic!("{delay} / {limit:?} was accepted"),
            }
        }
    }

    #[test]
    fn a_retention_of_zero_or_past_a_century_refuses_the_table() {
        let with_ttl = |ttl: f64| -> &'static TaskDefinition {
            let bare = TaskDefinition::bare("kept", never_run);
            Box::leak(Box::new(TaskDefinition {
                parts: crate::__private::TaskDefinitionParts {
                    result_ttl: Some(ttl),
                    ..bare.parts
                },
            }))
        };
        assert!(TaskTable::build([with_ttl(0.001)].into_iter()).is_ok());
        for ttl in [0.0, -1.0, f64::NAN, 1e12] {
            match TaskTable::build([with_ttl(ttl)].into_iter()) {
                Err(Refused::Option(task, _, reason)) => {
                    assert_eq!(task, "kept");
                    assert!(reason.contains("result_ttl"), "{reason}");
                }
                _ => panic!("result_ttl = {ttl} was accepted"),
            }
        }
    }
}
