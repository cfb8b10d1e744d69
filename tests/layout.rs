//! The module graph written at the top of `src/lib.rs` holds: every module imports only
//! modules before it in that order.

use std::path::Path;

/// The order of `src/lib.rs`; modules of one rank may not import each other.
const ORDER: &[(&str, u8)] = &[
    ("docs", 0),
    ("spec", 1),
    ("event", 2),
    ("dataflow", 3),
    ("explain", 5),
    ("engine", 6),
    ("store", 7),
    ("io", 8),
    ("server", 9),
    ("replay", 10),
    ("workload", 10),
    ("cli", 11),
];

fn rank(module: &str) -> Option<u8> {
    ORDER.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
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
fn modules_import_only_modules_before_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first.as_os_str().to_string_lossy();
        let module = module.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = rank(module) else {
            panic!(
                "{module} (src/{}) is not in the order of src/lib.rs",
                relative.display()
            );
        };
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used == module || used.is_empty() {
                    continue;
                }
                match rank(&used) {
                    Some(r) if r < own || used == "docs" => {}
                    _ => wrong.push(format!(
                        "src/{}:{}: {module} imports {used}",
                        relative.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the module graph:\n{}",
        wrong.join("\n")
    );
}
