//! The docs agree with the code: the trigger list in `docs/triggers.md` is the catalogue, the
//! crate table in `docs/architecture.md` is the workspace, the feature tables of the README and
//! of the facade's docs are the facade's features, and the settings table of the guide is
//! every setting and variable (with the defaults the code has).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use qtasks::{QueueConfig, Trigger, TriggerKind};

/// The rows of the table: (trigger, component, kind, payload).
fn documented_triggers() -> Vec<(String, String, String, String)> {
    let text = include_str!("../docs/triggers.md");
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect();
            (
                cells[0].clone(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            )
        })
        .collect()
}

#[test]
fn the_trigger_table_in_the_docs_is_the_catalogue() {
    let documented = documented_triggers();
    let catalogue: Vec<(String, String, String, String)> = Trigger::ALL
        .iter()
        .map(|t| {
            let kind = match t.kind() {
                TriggerKind::Notify => "notify",
                TriggerKind::Replace => "replace",
            };
            (
                t.name().to_owned(),
                format!("{:?}", t.component()),
                kind.to_owned(),
                t.variant_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        documented, catalogue,
        "docs/triggers.md is out of date with qtasks-triggers"
    );
    assert_eq!(documented.len(), 56);
}

#[test]
fn the_readme_names_the_two_setup_commands() {
    let readme = include_str!("../README.md");
    assert!(readme.contains("cargo run -p qtasks-examples --example quickstart"));
    assert!(readme.contains("cargo test --workspace"));
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// `cargo metadata` of the workspace's own packages.
fn metadata() -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata is JSON")
}

/// The first cells of a Markdown table's rows, under the heading `heading` of `text`.
fn first_cells(text: &str, heading: &str) -> Vec<String> {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let section = &text[start + heading.len() + 2..];
    let end = section.find("\n#").unwrap_or(section.len());
    section[..end]
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("|--"))
        .skip(1) // the header
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .collect()
}

/// The backticked names in a cell: "`a`, `b`" is a and b.
fn names(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_crate_table_of_the_architecture_is_the_workspace() {
    let text = std::fs::read_to_string(workspace_root().join("docs/architecture.md")).unwrap();
    let documented: BTreeSet<String> = first_cells(&text, "## The crates")
        .iter()
        .flat_map(|cell| names(cell))
        .collect();
    let metadata = metadata();
    let root = workspace_root();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap());
        let folder = manifest
            .parent()
            .unwrap()
            .strip_prefix(&root)
            .unwrap()
            .to_owned();
        // A crate is named, or its folder, or a folder above it (`examples/` holds the
        // two-process example's crates).
        let named = documented.contains(name)
            || folder.ancestors().any(|dir| {
                !dir.as_os_str().is_empty() && documented.contains(&format!("{}/", dir.display()))
            });
        assert!(
            named,
            "docs/architecture.md's crate table does not name `{name}` ({})",
            folder.display()
        );
    }
    let packages: BTreeSet<&str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in &documented {
        assert!(
            packages.contains(name.as_str()) || (name.ends_with('/') && root.join(name).is_dir()),
            "docs/architecture.md's crate table names `{name}`, which the workspace does not have"
        );
    }
}

#[test]
fn the_feature_table_of_the_readme_is_the_facades_features() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let documented: Vec<String> = first_cells(&readme, "## Feature flags")
        .iter()
        .flat_map(|cell| names(cell))
        .collect();
    check_feature_table(&documented, "the README's feature table");
}

#[test]
fn the_feature_table_of_the_facades_docs_is_its_features() {
    let lib = std::fs::read_to_string(workspace_root().join("qtasks/src/lib.rs")).unwrap();
    // The crate docs' lines, without their `//! ` (the table is in them).
    let docs: String = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    let documented: Vec<String> = first_cells(&docs, "# Engines and surfaces")
        .iter()
        .flat_map(|cell| names(cell))
        .collect();
    check_feature_table(&documented, "the feature table of qtasks/src/lib.rs");
}

/// `documented` (the features a table lists) is every feature of the facade, once each.
fn check_feature_table(documented: &[String], table: &str) {
    let metadata = metadata();
    let facade = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "qtasks")
        .expect("the facade is in the workspace");
    let declared: Vec<String> = facade["features"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|f| *f != "default" && !f.starts_with("__"))
        .cloned()
        .collect();
    let documented_set: BTreeSet<&String> = documented.iter().collect();
    let declared_set: BTreeSet<&String> = declared.iter().collect();
    assert_eq!(
        documented_set, declared_set,
        "{table} and qtasks/Cargo.toml's features differ"
    );
    assert_eq!(
        documented.len(),
        documented_set.len(),
        "a feature listed twice in {table}"
    );
}

/// The settings table of the guide: variable, default.
fn settings_table() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(workspace_root().join("docs/guide/operating.md")).unwrap();
    let start = text
        .find("\n## Settings\n")
        .expect("the guide has its settings table");
    text[start..]
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            (names(cells[0]), cells[1].trim_matches('`').to_owned())
        })
        .collect()
}

/// A default as the table writes it.
fn shown_default(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) if text.is_empty() => "(none)".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .map(shown_default)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

#[test]
fn the_settings_table_is_every_setting_with_its_default() {
    let table = settings_table();
    let documented: Vec<&String> = table.iter().flat_map(|(names, _)| names).collect();
    let defaults = serde_json::to_value(QueueConfig::default()).unwrap();
    let fields = QueueConfig::fields();
    for field in &fields {
        let variable = format!("QTASKS_{}", field.to_ascii_uppercase());
        let (_, default) = table
            .iter()
            .find(|(names, _)| names.contains(&variable))
            .unwrap_or_else(|| panic!("the settings table has no `{variable}`"));
        assert_eq!(
            default,
            &shown_default(&defaults[field]),
            "the settings table's default of `{variable}`"
        );
    }
    // Every variable the command line reads.
    let command = <qtasks::cli::Cli as clap::CommandFactory>::command();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut commands = vec![&command];
    while let Some(command) = commands.pop() {
        for arg in command.get_arguments() {
            if let Some(variable) = arg.get_env() {
                let variable = variable.to_string_lossy().into_owned();
                // Its default as the table shows it, when the command line has one.
                if let Some(default) = arg.get_default_values().first() {
                    let (_, shown) = table
                        .iter()
                        .find(|(names, _)| names.contains(&variable))
                        .unwrap_or_else(|| panic!("the settings table has no `{variable}`"));
                    assert_eq!(
                        shown,
                        &default.to_string_lossy(),
                        "the settings table's default of `{variable}`"
                    );
                }
                read.insert(variable);
            }
        }
        commands.extend(command.get_subcommands());
    }
    // The OTLP endpoint variables the otel crate looks for (a list, not `env::var` calls).
    read.extend(qtasks::otel::ENDPOINT_VARIABLES.map(str::to_owned));
    // Every variable the published crates read by name.
    for crate_dir in std::fs::read_dir(workspace_root()).unwrap().flatten() {
        let name = crate_dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with("qtasks") || name == "qtasks-test-support" {
            continue;
        }
        for file in rust_files(&crate_dir.path().join("src")) {
            let source = std::fs::read_to_string(&file).unwrap();
            for call in ["env::var(\"", "env::var_os(\""] {
                for (at, _) in source.match_indices(call) {
                    let rest = &source[at + call.len()..];
                    read.insert(rest[..rest.find('"').unwrap()].to_owned());
                }
            }
        }
    }
    for variable in &read {
        assert!(
            documented.contains(&variable),
            "`{variable}` is read by the code but not in docs/guide/operating.md's settings table"
        );
    }
    // And no row for a variable nothing reads.
    let known: BTreeSet<String> = fields
        .iter()
        .map(|f| format!("QTASKS_{}", f.to_ascii_uppercase()))
        .chain(read.iter().cloned())
        .collect();
    let read_elsewhere = [
        // Read by tracing-subscriber's filter, opentelemetry-otlp, and the tests' helpers.
        "RUST_LOG",
        "QTASKS_TEST_REDIS_URL",
        "QTASKS_TEST_AMQP_URL",
        "QTASKS_TEST_POSTGRES_URL",
        "QTASKS_TEST_KAFKA_URL",
    ];
    for variable in documented {
        assert!(
            known.contains(variable) || read_elsewhere.contains(&variable.as_str()),
            "docs/guide/operating.md's settings table has `{variable}`, which nothing reads"
        );
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn markdown_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files: Vec<PathBuf> = ["README.md", "RELIABILITY.md", "BENCHMARKS.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    for dir in ["docs", "docs/guide"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "md") {
                files.push(entry.path());
            }
        }
    }
    files
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(anchor_of(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if !anchor.is_empty() && linked.is_file() {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
