//! The docs agree with the code: the trigger list in `docs/triggers.md` is the catalogue.

use qtasks::{Trigger, TriggerKind};

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
