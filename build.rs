//! The built-in tool and prompt files are embedded as JSON made here of their YAML: the binary
//! holds each file once, and startup parses JSON, which is many times faster than YAML
//! (issue #8). A built-in file that is not valid YAML fails the build, naming the file.
//!
//! The JSON is deflated (250 KB of text in 50 KB): `registry` inflates it once, at startup,
//! in well under a millisecond. The blob is `folder/name \0 JSON \0` for each file in
//! order; JSON text never holds a NUL byte (serde_json escapes control characters).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=tools.d");
    println!("cargo:rerun-if-changed=prompts.d");
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut blob = Vec::new();
    for dir in ["tools.d", "prompts.d"] {
        for (name, json) in as_json(dir) {
            for part in [format!("{dir}/{name}"), json] {
                blob.extend_from_slice(part.as_bytes());
                blob.push(0);
            }
        }
    }
    let deflated = miniz_oxide::deflate::compress_to_vec(&blob, 10);
    std::fs::write(Path::new(&out).join("builtin.deflate"), deflated).expect("OUT_DIR is writable");
}

/// The spec files of `dir` as (file name, JSON text), sorted by name.
fn as_json(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the built-in folders are readable")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| is_spec_file(p))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 name")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("spec files are UTF-8");
            let value: serde_json::Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            let json = serde_json::to_string(&value).expect("a JSON value serializes");
            (name, json)
        })
        .collect()
}

/// As `registry::is_spec_file`: `*.yaml` / `*.yml`, not hidden.
fn is_spec_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_file() && !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}
