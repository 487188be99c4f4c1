//! The crate's layering, checked on its source: the modules below the
//! layers — what a call carries (`call`), credentials (`auth`), response
//! headers (`headers`), SSE framing, redaction, the vocabulary (`chat`,
//! `error`), the transport, the providers and the mock server — import
//! nothing from a layer's module, neither by its path nor through a name the
//! crate root re-exports. The arrows go one way: layers over providers over
//! transports (see "Map of the crate" in the crate docs).

use std::fs;
use std::path::{Path, PathBuf};

/// The middleware: each may use what is below it, and nothing below may
/// use them.
const LAYERS: &[&str] = &[
    "engine",
    "retry",
    "refresh",
    "rate_limit",
    "timeout",
    "limit",
    "fallback",
    "trace",
    "pool",
];

/// Files and folders under `src/` that sit below every layer.
const BELOW: &[&str] = &[
    "call.rs",
    "auth.rs",
    "headers",
    "sse.rs",
    "redact.rs",
    "chat",
    "error",
    "transport.rs",
    "provider",
    "mock",
    "redis",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The source without its comments (doc links may point anywhere).
fn code(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The names `lib.rs` re-exports from a layer's module.
fn layer_names() -> Vec<String> {
    let lib = code(&src().join("lib.rs"));
    let mut names = Vec::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        if !LAYERS.contains(&ident(rest)) {
            continue;
        }
        let list = rest.split_once("::").map_or("", |(_, list)| list);
        names.extend(
            list.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    names
}

/// Every module path or root name that `code` reaches through `crate::`.
fn crate_references(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, D}`: the first segment of each item.
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut item_start = true;
            let mut depth = 0;
            for (i, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        found.push(ident(&group[i..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest).to_owned());
        }
    }
    found
}

#[test]
fn nothing_below_the_layers_imports_a_layer() {
    let names = layer_names();
    assert!(
        names.iter().any(|n| n == "RetryPolicy"),
        "the root's re-exports were read: {names:?}"
    );
    let mut files = Vec::new();
    for below in BELOW {
        let path = src().join(below);
        assert!(path.exists(), "{} is gone: update BELOW", path.display());
        rust_files(&path, &mut files);
    }
    assert!(files.len() > 10, "{files:?}");
    let mut violations = Vec::new();
    for file in &files {
        for name in crate_references(&code(file)) {
            if LAYERS.contains(&name.as_str()) || names.contains(&name) {
                violations.push(format!(
                    "{}: crate::{name}",
                    file.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports from a layer below the layers:\n{}",
        violations.join("\n")
    );
}

/// Providers are generic over their transport: only the default transport
/// knows reqwest, and tells the rest what a failure was through
/// `transport::TransportError`.
#[test]
fn only_the_default_transport_names_reqwest() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let named: Vec<_> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "transport.rs"))
        .filter(|f| code(f).contains("reqwest::"))
        .map(|f| f.strip_prefix(src()).unwrap().display().to_string())
        .collect();
    assert!(
        named.is_empty(),
        "reqwest named outside transport.rs: {named:?}"
    );
    assert!(code(&src().join("transport.rs")).contains("reqwest::"));
}

#[test]
fn every_module_is_placed() {
    // A new module must be put above or below the line, so that the check
    // above covers it.
    let lib = code(&src().join("lib.rs"));
    for line in lib.lines() {
        let line = line.trim();
        let Some(module) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|m| m.strip_suffix(';'))
        else {
            continue;
        };
        let placed = LAYERS.contains(&module)
            || BELOW
                .iter()
                .any(|b| b.strip_suffix(".rs").unwrap_or(b) == module);
        assert!(placed, "module {module} is neither a layer nor below them");
    }
}

#[test]
fn the_reference_finder_sees_groups_and_paths() {
    let text =
        "use crate::{a::b, Error, c::{d, e}};\nlet x = crate::retry::Policy;\n$crate::engine::X";
    assert_eq!(
        crate_references(text),
        ["a", "Error", "c", "retry", "engine"]
    );
}
