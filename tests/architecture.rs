//! The house rules of `src/`, checked on the source text (`docs/architecture.md`
//! describes the layers):
//!
//! * every module imports only from layers below its own (no cycle, no upward
//!   import);
//! * only `transport` names fred;
//! * `unsafe` code lives in the ring (`local/ring/`) and its `sync` shim only;
//! * a source file over 800 lines is one cohesive thing that says so.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `src/`, lowest first. A module may use modules of lower
/// layers; modules of one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    // Std/loom shim, clocks, errors: depend on nothing.
    &["sync", "clock", "error"],
    // The vocabulary: events, ids, names, where reading starts.
    &["event"],
    // Configuration (it names the vocabulary: `StartAt`).
    &["config"],
    // Bytes (MessagePack within limits); receipts of durable publishes.
    &["codec", "receipt"],
    // The stream entry: the one parser and encoder of its fields (id, src,
    // ts, data, h), whoever reads or writes them.
    &["wire"],
    // The local bus (lock-free ring, topics, subscribers); JSON views of payloads.
    &["local", "json"],
    // Recordings (export, import); Redis: the only place that imports fred or
    // names a Redis command.
    &["recording", "transport"],
    // The I/O thread, back-off, clock helpers.
    &["io"],
    // What talks to Redis: the live layer, consumer groups, replay, the cache,
    // the rate limiters.
    &["live", "group", "replay", "cache", "rate"],
    // Views over them: health, metrics, the read-only admin queries.
    &["admin", "health", "metrics"],
    // The `Bus` handle and its builder.
    &["bus"],
    // What is built on a `Bus`; the crate root; the test harness.
    &["backtest", "lib", "test_util"],
];

/// Files with more than 800 lines of code (a trailing `#[cfg(test)] mod tests`
/// does not count) must say, in their first 40 lines, why they stay one file,
/// with this marker.
const LONG_FILE_MARKER: &str = "One file:";

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The library's source files (not the CLI binary), with their top-level module.
fn library() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| !path.starts_with(src.join("bin")))
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let text = fs::read_to_string(&path).unwrap();
            (module, path, text)
        })
        .collect()
}

/// The code of a file: every line with its `//` comment removed (doc comments
/// included: a doc link is not an import).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/architecture.rs"))
}

#[test]
fn modules_import_only_from_lower_layers() {
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (module, path, text) in library() {
        let own = layer_of(&module);
        let code = code(&text);
        for (at, _) in code.match_indices("crate::") {
            let used: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if used.is_empty() || used == module {
                continue; // a type at the crate root, or itself
            }
            if layer_of(&used) >= own {
                upward
                    .entry(format!("{} ({module})", path.display()))
                    .or_default()
                    .push(used);
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from the same or a higher layer: {upward:#?}"
    );
}

#[test]
fn only_transport_names_fred() {
    for (module, path, text) in library() {
        if module == "transport" {
            continue;
        }
        let code = code(&text);
        assert!(
            !code.contains("fred::") && !code.contains("use fred"),
            "{} uses fred: only `transport` may",
            path.display()
        );
    }
}

#[test]
fn unsafe_code_lives_in_the_ring_and_its_shim_only() {
    for (_, path, text) in library() {
        let allowed = path.to_string_lossy().contains("local/ring/")
            || path.to_string_lossy().contains("src/sync/");
        let code = code(&text);
        let uses_unsafe = code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == "unsafe");
        assert!(
            allowed || !uses_unsafe,
            "{} holds `unsafe` code: only local/ring/ and sync/ may",
            path.display()
        );
        if uses_unsafe {
            // Every `unsafe` block or impl has its SAFETY comment.
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let line_code = code_line(line);
                if !(line_code.contains("unsafe {") || line_code.contains("unsafe impl")) {
                    continue;
                }
                let window = &lines[n.saturating_sub(12)..=n];
                assert!(
                    window.iter().any(|l| l.contains("SAFETY:")),
                    "{}:{}: `unsafe` without a `// SAFETY:` comment above it",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}

fn code_line(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

#[test]
fn long_files_say_why_they_are_one() {
    let mut long = Vec::new();
    for (_, path, text) in library() {
        let lines = text
            .lines()
            .take_while(|line| !(line.starts_with("#[cfg(") && line.contains("test")))
            .count();
        if lines > 800 && !text.lines().take(40).any(|l| l.contains(LONG_FILE_MARKER)) {
            long.push(format!("{} ({lines} lines)", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over 800 lines that do not say why they are one (`//! {LONG_FILE_MARKER} ...`): {long:#?}"
    );
}
