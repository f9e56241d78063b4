//! The module graph points one way (ARCHITECTURE.md, "Layers"): a module
//! may use modules of lower layers only, never its own layer's siblings
//! or anything above. Checked on the source text: every `crate::NAME`
//! path outside `#[cfg(test)]` code (and every `super::`-free
//! `use crate::…` line) names the module it depends on.

use std::collections::BTreeMap;
use std::path::Path;

/// Layer of each top-level module, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // wire formats and OS plumbing: depend on nothing in the crate
    ("sys", 0),
    ("secret", 0),
    ("signals", 0),
    ("ratelog", 0),
    ("ratelimit", 0),
    ("mqtt", 0),
    ("upgrade", 0),
    // metric families, TLS setup, development certificates
    ("metrics", 1),
    // the access log (uses ratelog)
    ("accesslog", 1),
    ("tls", 1),
    ("certs", 1),
    // PROXY headers (carry TLS facts)
    ("proxy_protocol", 2),
    // pools, selection, health state and checks: pure of config and proxy
    ("balance", 3),
    // parsing and validation into the types the layers below own
    ("config", 4),
    // the two servers
    ("proxy", 5),
    ("broker", 5),
    // what drives them, and the operator tools
    ("admin", 6),
    ("demo", 6),
    ("doctor", 6),
    ("estimate", 6),
    ("check", 6),
    ("bench", 7),
    // the proxy's start-up sequence: starts the admin server beside it
    ("launch", 7),
    // the demo's failover walk-through drives the demo with bench clients
    ("walkthrough", 8),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module:?} has no layer in tests/layering.rs"))
}

/// Top-level module of a file under src/ (`src/balance/health.rs` → balance).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Lines of code before the first `#[cfg(test)]`, comments left out,
/// trimmed at the start.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_start)
        .take_while(|code| !code.starts_with("#[cfg(test)]"))
        .filter(|code| !code.starts_with("//"))
}

/// Every `crate::NAME` outside comments and `#[cfg(test)]` code.
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for code in code_lines(text) {
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.push(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = code.strip_prefix("use crate::{") {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push(name);
                }
            }
        }
    }
    refs
}

/// Inside a folder module, files are rooms with an order of their own,
/// lowest first: a file may use files of lower rank only (`super::NAME`
/// or `crate::MODULE::NAME` naming a sibling file). `mod.rs` declares and
/// re-exports them and is not ranked; what siblings take from it are
/// items, not files.
const ROOMS: &[(&str, &[(&str, u8)])] = &[
    (
        "balance",
        &[
            ("config", 0),
            ("admission", 1),
            ("state", 0),
            ("route", 0),
            ("strategy", 1),
            ("discovery", 1),
            ("health", 1),
            ("rebalance", 2),
            ("nodes", 3),
        ],
    ),
    (
        "tls",
        &[
            ("client_chain", 0),
            ("files", 0),
            ("identity", 0),
            ("sni", 1),
            ("tickets", 1),
            ("session_keys", 2),
            ("acceptor", 2),
        ],
    ),
    (
        "upgrade",
        &[
            ("error", 0),
            ("inherited", 1),
            ("wire", 1),
            ("exchange", 2),
            ("systemd", 2),
        ],
    ),
    (
        "estimate",
        &[
            ("num", 0),
            ("calibration", 0),
            ("fit", 0),
            ("workload", 1),
            ("figures", 1),
            ("relay", 2),
            ("model", 3),
            ("render", 3),
        ],
    ),
    ("proxy/websocket", &[("frame", 0)]),
    ("accesslog", &[("line", 0)]),
    (
        "proxy/conn",
        &[
            ("refusal", 0),
            ("access", 0),
            ("inbound", 1),
            ("admit", 1),
            ("queue", 2),
            ("place", 3),
            ("relay", 4),
        ],
    ),
    ("proxy_protocol", &[("inbound", 0)]),
    // the admin server (mod.rs: routes) and its rooms
    ("admin", &[("origin", 0), ("status", 0)]),
];

/// Sibling files a room's file uses, outside `#[cfg(test)]` code.
fn sibling_refs(text: &str, folder: &str, siblings: &[&str]) -> Vec<String> {
    let path = format!("crate::{}::", folder.replace('/', "::"));
    let mut refs = Vec::new();
    for code in code_lines(text) {
        for prefix in ["super::", path.as_str()] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let after = &rest[i + prefix.len()..];
                // `super::{a, b::c}` groups name several.
                let names: Vec<&str> = match after.strip_prefix('{') {
                    Some(group) => group.split(['}', ',']).map(str::trim).collect(),
                    None => vec![after],
                };
                for n in names {
                    let name: String = n
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if siblings.contains(&name.as_str()) {
                        refs.push(name);
                    }
                }
                rest = after;
            }
        }
    }
    refs
}

#[test]
fn rooms_inside_a_folder_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (folder, rooms) in ROOMS {
        let dir = src.join(folder);
        let names: Vec<&str> = rooms.iter().map(|(n, _)| *n).collect();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("read folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        for file in files {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem == "mod" {
                continue;
            }
            let Some(rank) = rooms.iter().find(|(n, _)| *n == stem).map(|(_, r)| *r) else {
                wrong.push(format!("{folder}/{stem}.rs has no rank in ROOMS"));
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read");
            for dep in sibling_refs(&text, folder, &names) {
                let dep_rank = rooms.iter().find(|(n, _)| *n == dep).map_or(0, |(_, r)| *r);
                if dep != stem && dep_rank >= rank {
                    wrong.push(format!(
                        "{folder}/{stem}.rs (rank {rank}) uses {dep} (rank {dep_rank})"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "rooms that use a sibling of the same or a higher rank:\n  {}",
        wrong.join("\n  ")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dependencies_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        for dep in crate_refs(&text) {
            if dep == module {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(dep.clone());
            if layer(&dep) >= layer(&module) {
                wrong.push(format!(
                    "{}: {module} (layer {}) uses {dep} (layer {})",
                    rel.display(),
                    layer(&module),
                    layer(&dep)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point sideways or up:\n  {}\ngraph: {graph:#?}",
        wrong.join("\n  ")
    );
    // Every module of lib.rs has a layer.
    for (m, _) in LAYERS {
        assert!(
            src.join(format!("{m}.rs")).exists() || src.join(m).join("mod.rs").exists(),
            "{m} is listed in LAYERS but is not a module"
        );
    }
}
