//! The rooms import only the rooms below them (ARCHITECTURE.md): every `crate::room` path in
//! `src/`, outside test modules, must be one the importing room may use.

use std::collections::BTreeMap;
use std::path::Path;

/// Each room and the rooms it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("types", &[]),
    ("error", &[]),
    ("platform", &[]),
    ("nn", &["types", "error", "platform"]),
    ("model", &["nn", "types", "error", "platform"]),
    ("hub", &["error", "platform", "types"]),
    ("image", &["error", "types"]),
    ("text", &["error", "types"]),
    ("eval", &["text", "error", "types"]),
    (
        "store",
        &["hub", "model", "nn", "types", "error", "platform"],
    ),
    ("generate", &["model", "types", "error", "platform"]),
    (
        "pipeline",
        &[
            "generate", "store", "hub", "model", "image", "text", "eval", "nn", "types", "error",
            "platform",
        ],
    ),
    (
        "engine",
        &[
            "pipeline", "generate", "hub", "eval", "text", "types", "error", "platform",
        ],
    ),
    (
        "app",
        &[
            "engine", "hub", "image", "text", "eval", "types", "error", "platform",
        ],
    ),
];

fn room_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn rooms_import_only_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let room = room_of(rel);
        let Some(may) = allowed.get(room.as_str()) else {
            continue; // the top rooms (cli, lib, main) may use anything
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let mut target: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // The crate root re-exports the error room's `Error` and `Result`.
                if target == "Error" || target == "Result" {
                    target = "error".into();
                }
                if target != room && !may.contains(&target.as_str()) {
                    wrong.push(format!(
                        "{}:{}: {room} imports {target}",
                        rel.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the arrows:\n{}",
        wrong.join("\n")
    );
}
