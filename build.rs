//! The built-in tool and prompt files are embedded as JSON made here of their YAML: the binary
//! holds each file once, and startup parses JSON, which is many times faster than YAML
//! (issue #8). A built-in file that is not valid YAML fails the build, naming the file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=tools.d");
    println!("cargo:rerun-if-changed=prompts.d");
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    for (dir, dest) in [
        ("tools.d", "builtin_tools_json.rs"),
        ("prompts.d", "builtin_prompts_json.rs"),
    ] {
        std::fs::write(Path::new(&out).join(dest), as_json(dir)).expect("OUT_DIR is writable");
    }
}

/// The spec files of `dir` as a Rust slice of (file name, JSON text).
fn as_json(dir: &str) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the built-in folders are readable")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| is_spec_file(p))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name");
        let text = std::fs::read_to_string(&path).expect("spec files are UTF-8");
        let value: serde_json::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
        let json = serde_json::to_string(&value).expect("a JSON value serializes");
        writeln!(out, "    ({name:?}, {json:?}),").expect("writing to a String");
    }
    out.push(']');
    out
}

/// As `registry::is_spec_file`: `*.yaml` / `*.yml`, not hidden.
fn is_spec_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_file() && !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}
