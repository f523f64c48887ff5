//! The tasks registered with `#[qtasks::task]`, collected once per process from inventory.

use std::sync::OnceLock;

use crate::__private::TaskRegistration;
use crate::{Error, TaskDefinition};

/// Every registered task, sorted by name. Looked up by binary search: no string hashing.
pub(crate) struct TaskTable {
    by_name: Vec<&'static TaskDefinition>,
}

impl TaskTable {
    /// The process-wide table, built on first use. Two tasks with one name are an error
    /// naming both places.
    pub(crate) fn global() -> Result<&'static TaskTable, Error> {
        static TABLE: OnceLock<Result<TaskTable, (&'static str, String, String)>> = OnceLock::new();
        match TABLE
            .get_or_init(|| TaskTable::build(inventory::iter::<TaskRegistration>().map(|r| r.0)))
        {
            Ok(table) => Ok(table),
            Err((name, first, second)) => Err(Error::DuplicateTask {
                name,
                first: first.clone(),
                second: second.clone(),
            }),
        }
    }

    fn build(
        definitions: impl Iterator<Item = &'static TaskDefinition>,
    ) -> Result<TaskTable, (&'static str, String, String)> {
        let mut by_name: Vec<&'static TaskDefinition> = definitions.collect();
        by_name.sort_by(|a, b| (a.name, a.file, a.line).cmp(&(b.name, b.file, b.line)));
        if let Some(pair) = by_name.windows(2).find(|pair| pair[0].name == pair[1].name) {
            return Err((pair[0].name, pair[0].location(), pair[1].location()));
        }
        Ok(TaskTable { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'static TaskDefinition> {
        self.by_name
            .binary_search_by(|d| d.name.cmp(name))
            .ok()
            .map(|i| self.by_name[i])
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.iter().map(|d| d.name)
    }

    pub(crate) fn definitions(&self) -> &[&'static TaskDefinition] {
        &self.by_name
    }
}
