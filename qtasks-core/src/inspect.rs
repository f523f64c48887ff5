//! `app.inspect()`: what an app is made of and which tasks it knows, as text and as JSON.

use std::fmt;

use serde::Serialize;

use crate::{QueueConfig, TaskDefinition};

/// An app's stats and tasks (the original's `InspectStats`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// The app.
    pub app: AppStats,
    /// Every registered task, by name.
    pub tasks: Vec<TaskStats>,
    /// The schedules this app runs (registered with `schedule`, or `#[task(cron = ..)]`),
    /// with their next slot.
    pub schedules: Vec<crate::schedule::ScheduleInfo>,
}

/// The app part of an [`Inspection`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AppStats {
    /// The app name.
    pub name: String,
    /// The qtasks version.
    pub version: &'static str,
    /// The configuration.
    pub config: QueueConfig,
    /// How many tasks are registered.
    pub tasks_count: usize,
    /// How many plugins: `#[qtasks::plugin]` handlers plus runtime plugins.
    pub plugins_count: usize,
    /// How many event callbacks are registered.
    pub events_count: usize,
    /// The broker's name.
    pub broker: String,
    /// The storage's name.
    pub storage: String,
    /// The global config's name.
    pub global_config: String,
    /// The worker's name.
    pub worker: String,
    /// The starter's name.
    pub starter: String,
    /// The app's executor's name.
    pub executor: String,
}

/// One task of an [`Inspection`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TaskStats {
    /// The task name.
    pub name: &'static str,
    /// Its priority, if it sets one.
    pub priority: Option<i64>,
    /// Its description.
    pub description: Option<&'static str>,
    /// Its tags.
    pub tags: &'static [&'static str],
    /// Its parameters as `name: Type`.
    pub params: Vec<String>,
    /// Whether it receives its context.
    pub echo: bool,
    /// Whether it runs on the blocking pool (a plain `fn`).
    pub blocking: bool,
    /// Its retries.
    pub retry: Option<u32>,
    /// Its own executor, if any.
    pub executor: Option<String>,
    /// Where it is declared.
    pub location: String,
}

impl TaskStats {
    pub(crate) fn of(definition: &TaskDefinition) -> Self {
        TaskStats {
            name: definition.parts.name,
            priority: definition.parts.priority,
            description: definition.parts.description,
            tags: definition.parts.tags,
            params: definition
                .parts
                .params
                .iter()
                .map(|p| format!("{}: {}", p.name, p.type_name))
                .collect(),
            echo: definition.parts.echo,
            blocking: definition.parts.blocking,
            retry: definition.parts.retry,
            executor: definition.parts.runner.map(|e| e.name().to_owned()),
            location: definition.location(),
        }
    }
}

impl Inspection {
    /// The inspection as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("inspections are plain data")
    }
}

const RULE: &str = "--------------------------------------------------";

fn line(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "{label:<26}: {value}")
}

impl fmt::Display for Inspection {
    /// The original's layout: `label: value` lines, a rule after each block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let app = &self.app;
        line(f, "Name", &app.name)?;
        line(f, "Version", app.version)?;
        line(f, "Config", format_args!("{:?}", app.config))?;
        line(f, "Tasks Count", app.tasks_count)?;
        line(f, "Plugins Count", app.plugins_count)?;
        line(f, "Init Count", app.events_count)?;
        line(f, "Broker", &app.broker)?;
        line(f, "Storage", &app.storage)?;
        line(f, "GlobalConfig", &app.global_config)?;
        line(f, "Worker", &app.worker)?;
        line(f, "Starter", &app.starter)?;
        line(f, "Executor", &app.executor)?;
        writeln!(f, "{RULE}")?;
        if self.tasks.is_empty() {
            return writeln!(f, "No registered tasks.");
        }
        for task in &self.tasks {
            line(f, "Task name", task.name)?;
            line(
                f,
                "Priority",
                task.priority
                    .map_or_else(|| "default".to_owned(), |p| p.to_string()),
            )?;
            line(f, "Description", task.description.unwrap_or("—"))?;
            line(
                f,
                "Tags",
                if task.tags.is_empty() {
                    "—".to_owned()
                } else {
                    task.tags.join(", ")
                },
            )?;
            line(
                f,
                "Args",
                if task.params.is_empty() {
                    "—".to_owned()
                } else {
                    task.params.join(", ")
                },
            )?;
            line(f, "Task Self", task.echo)?;
            line(f, "Blocking", task.blocking)?;
            if let Some(retry) = task.retry {
                line(f, "Retry Count", retry)?;
            }
            if let Some(executor) = &task.executor {
                line(f, "Executor", executor)?;
            }
            line(f, "Location", &task.location)?;
            writeln!(f, "{RULE}")?;
        }
        Ok(())
    }
}
