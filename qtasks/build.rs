//! Makes the README the crate's documentation, doc-tested in every build: a Rust block that
//! uses an optional part (`qtasks::redis`, `qtasks::rabbitmq`, ...) is compiled when that
//! feature is on and shown as plain text when it is off (not as an ignored test, which
//! `--include-ignored`, the flag the service tests run with, would try to run). The README's
//! picture (a relative path that only the repository serves) is left out.

use std::path::PathBuf;

/// The optional modules a README block may use, and the features that provide them.
const OPTIONAL: [(&str, &str); 9] = [
    ("qtasks::redis", "REDIS"),
    ("qtasks::postgres", "POSTGRES"),
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
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("README.md"), for_rustdoc(&text)).expect("OUT_DIR is writable");
    write_guide(&manifest, &out_dir);
}

/// The guide's pages (`docs/guide/*.md`), prepared as the README is, and `guide.rs`: one
/// doc-test module per page, which `lib.rs` includes under `cfg(doctest)` so that every Rust
/// block of the guide is compiled (and run, unless `no_run`) by `cargo test`. A published
/// package has no guide: `guide.rs` is then empty.
fn write_guide(manifest: &std::path::Path, out_dir: &std::path::Path) {
    let guide = manifest.join("../docs/guide");
    let mut modules = String::new();
    if let Ok(entries) = std::fs::read_dir(&guide) {
        println!("cargo:rerun-if-changed={}", guide.display());
        let mut pages: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "md"))
            .collect();
        pages.sort();
        std::fs::create_dir_all(out_dir.join("guide")).expect("OUT_DIR is writable");
        for page in pages {
            println!("cargo:rerun-if-changed={}", page.display());
            let stem = page
                .file_stem()
                .expect("a page has a name")
                .to_string_lossy();
            let module = stem.replace('-', "_").to_lowercase();
            let text = std::fs::read_to_string(&page).expect("the page reads");
            let prepared = out_dir.join("guide").join(format!("{stem}.md"));
            std::fs::write(&prepared, for_rustdoc(&text)).expect("OUT_DIR is writable");
            modules.push_str(&format!(
                "#[doc = include_str!({:?})]\nmod {module} {{}}\n",
                prepared.display().to_string()
            ));
        }
    }
    std::fs::write(out_dir.join("guide.rs"), modules).expect("OUT_DIR is writable");
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
