//! Makes the README the crate's documentation, doc-tested in every build: a Rust block that
//! uses an optional part (`qtasks::redis`, `qtasks::rabbitmq`, ...) is compiled when that
//! feature is on and shown as plain text when it is off (not as an ignored test, which
//! `--include-ignored`, the flag the service tests run with, would try to run). The README's
//! picture (a relative path that only the repository serves) is left out.

use std::path::PathBuf;

/// The optional modules a README block may use, and the features that provide them.
const OPTIONAL: [(&str, &str); 8] = [
    ("qtasks::redis", "REDIS"),
    ("qtasks::rabbitmq", "RABBITMQ"),
    ("qtasks::grpc", "GRPC"),
    ("qtasks::cli", "CLI"),
    ("qtasks::web", "WEB"),
    ("qtasks::metrics", "METRICS"),
    ("qtasks::otel", "OTEL"),
    ("qtasks::testing::conformance", "CONFORMANCE"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // In the repository the README is the workspace's; in a published package, cargo copies
    // it next to the manifest.
    let readme = ["README.md", "../README.md"]
        .iter()
        .map(|path| manifest.join(path))
        .find(|path| path.exists())
        .expect("the README is next to the manifest or above it");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).expect("the README reads");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("README.md");
    std::fs::write(out, for_rustdoc(&text)).expect("OUT_DIR is writable");
}

fn for_rustdoc(readme: &str) -> String {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("![") {
            i += 1;
            continue;
        }
        if line.starts_with("```rust") {
            let end = (i + 1..lines.len())
                .find(|&j| lines[j].starts_with("```"))
                .unwrap_or(lines.len());
            let body = lines[i + 1..end].join("\n");
            let missing = OPTIONAL.iter().any(|(module, feature)| {
                body.contains(module)
                    && std::env::var_os(format!("CARGO_FEATURE_{feature}")).is_none()
            });
            out.push(if missing { "```text" } else { line });
            out.extend(&lines[i + 1..end.min(lines.len())]);
            if end < lines.len() {
                out.push(lines[end]);
            }
            i = end + 1;
            continue;
        }
        out.push(line);
        i += 1;
    }
    out.join("\n") + "\n"
}
