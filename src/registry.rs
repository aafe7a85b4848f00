//! The live set of tools and prompts: an immutable snapshot, rebuilt and swapped whole.
//!
//! A [`Registry`] is built from layers of files: the built-in `tools.d/` and `prompts.d/`
//! embedded in the binary, then each configured folder in order. A later layer overrides
//! an earlier one by name. A file that fails to compile keeps the last good version of
//! its tool (from the previous snapshot) serving, and its diagnostics are kept for
//! `server_info` and the logs. Nobody mutates a registry; the watcher builds a new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compile::{self, CompiledPrompt, CompiledTool, PluginNeeds, SourceFile};
use crate::diagnostic::{Code, Diagnostic};
use crate::spec;

/// The built-in tool files, embedded at build time.
pub fn builtin_tools() -> Vec<SourceFile> {
    embedded("tools.d/")
}

/// The built-in prompt files, embedded at build time.
pub fn builtin_prompts() -> Vec<SourceFile> {
    embedded("prompts.d/")
}

/// The built-in tool and prompt files as build.rs converts their YAML to JSON, deflated
/// (see there): the binary holds each file once, and startup parses JSON, not YAML. A
/// built-in file's text is this JSON, which is also YAML, so `lint` and the tests read it as
/// any file.
static BUILTIN_DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin.deflate"));

/// Every built-in file as (`tools.d/name.yaml`, JSON text), sorted, inflated once per
/// process. Each text is its own allocation, which every `SourceFile` of it shares: the
/// inflated buffer is let go.
fn builtin_files() -> &'static [(String, Arc<str>)] {
    static FILES: std::sync::OnceLock<Vec<(String, Arc<str>)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        // build.rs made these bytes, and a test reads them: a failure here is a broken build.
        let bytes = miniz_oxide::inflate::decompress_to_vec(BUILTIN_DEFLATED)
            .expect("build.rs deflated the built-in files");
        let text = std::str::from_utf8(&bytes).expect("the built-in files are UTF-8");
        let mut parts = text.split('\0');
        std::iter::from_fn(|| Some((parts.next()?.to_string(), Arc::from(parts.next()?)))).collect()
    })
}

/// The JSON of a built-in file, if `file` is one, unchanged.
fn builtin_json(file: &SourceFile) -> Option<&'static str> {
    let path = file.origin.strip_prefix(BUILTIN)?;
    let (_, json) = builtin_files().iter().find(|(p, _)| p == path)?;
    (Arc::ptr_eq(json, &file.text) || **json == *file.text).then_some(&**json)
}

/// How embedded files' origins begin.
const BUILTIN: &str = "builtin:";

fn embedded(folder: &str) -> Vec<SourceFile> {
    builtin_files()
        .iter()
        .filter(|(path, _)| path.starts_with(folder))
        .map(|(path, json)| SourceFile {
            origin: format!("{BUILTIN}{path}"),
            text: json.clone(),
        })
        .collect()
}

/// Whether a path names a spec file: `*.yaml` / `*.yml`, not hidden, not an editor backup.
pub fn is_spec_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The largest tool or prompt file read, in bytes; the largest built-in is about 26 KB.
/// A bigger `*.yaml` in a watched folder (a data dump, a log) is an error, not a file
/// read whole and parsed at every reload.
pub const MAX_SPEC_FILE_BYTES: u64 = 1024 * 1024;

/// One spec file as a [`SourceFile`], or why it is not one (unreadable, too large).
pub fn read_spec_file(path: &Path) -> Result<SourceFile, Diagnostic> {
    use std::io::Read as _;
    let origin = path.display().to_string();
    let problem = |message: String| Diagnostic::new(Code::E001, &origin, message);
    // Opening a FIFO blocks until something writes to it, and a device never ends: only a
    // regular file (or a link to one, as Kubernetes mounts ConfigMaps) is read.
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot read file: {e}")))?;
    if !meta.is_file() {
        return Err(problem("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| problem(format!("cannot read file: {e}")))?;
    // One byte past the limit tells a file that is too large from one that fits, even if
    // it grows while being read.
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > MAX_SPEC_FILE_BYTES {
        return Err(problem(format!(
            "the file is larger than {MAX_SPEC_FILE_BYTES} bytes, more than a tool or prompt file may be"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| problem("cannot read file: it is not UTF-8 text".into()))?;
    Ok(SourceFile {
        origin,
        text: text.into(),
    })
}

/// Reads the spec files of one folder (not recursive), sorted by name.
pub fn read_dir(dir: &Path) -> (Vec<SourceFile>, Vec<Diagnostic>) {
    let label = dir.display().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return (
                vec![],
                vec![Diagnostic::new(
                    Code::E001,
                    &label,
                    format!("cannot read folder: {e}"),
                )],
            );
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_spec_file(p))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        match read_spec_file(&path) {
            Ok(file) => files.push(file),
            Err(d) => problems.push(d),
        }
    }
    (files, problems)
}

/// Everything a registry is built from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Tool files by layer; later layers override earlier ones by name.
    pub tools: Vec<Vec<SourceFile>>,
    pub prompts: Vec<Vec<SourceFile>>,
    /// Problems met while reading the sources (unreadable folders and files).
    pub problems: Vec<Diagnostic>,
    /// Configuration problems that do not stop the server: folders that do not exist
    /// (yet), and whatever the caller adds (worker DSNs that match no node).
    pub warnings: Vec<String>,
}

impl Sources {
    /// Only the built-in tools and prompts.
    pub fn builtin() -> Sources {
        Sources {
            tools: vec![builtin_tools()],
            prompts: vec![builtin_prompts()],
            ..Default::default()
        }
    }

    /// The built-ins plus the files of the given folders, read now.
    pub fn gather(tool_dirs: &[PathBuf], prompt_dirs: &[PathBuf]) -> Sources {
        let mut s = Sources::builtin();
        for (key, dirs) in [("tools_dirs", tool_dirs), ("prompts_dirs", prompt_dirs)] {
            for dir in dirs {
                // A folder that does not exist yet is a warning, not a broken file: the
                // watcher loads it once it is created.
                let (files, problems) = if dir.exists() {
                    read_dir(dir)
                } else {
                    s.warnings.push(format!(
                        "{key}: folder {} does not exist; it is loaded once it is created",
                        dir.display()
                    ));
                    (vec![], vec![])
                };
                match key {
                    "tools_dirs" => s.tools.push(files),
                    _ => s.prompts.push(files),
                }
                s.problems.extend(problems);
            }
        }
        s
    }
}

/// One immutable snapshot of the served tools and prompts.
#[derive(Debug, Default)]
pub struct Registry {
    pub tools: BTreeMap<String, Arc<CompiledTool>>,
    pub prompts: BTreeMap<String, Arc<CompiledPrompt>>,
    /// Every problem found while building this snapshot (warnings included).
    pub diagnostics: Vec<Diagnostic>,
    /// Configuration problems of this snapshot ([`Sources::warnings`], and names in
    /// `disabled_tools` that match no tool or prompt).
    pub warnings: Vec<String>,
    /// The text of each tool file (by origin) that its diagnostics above were found in.
    /// A kept last-good tool's own text may differ from it: the file is broken now.
    compiled: BTreeMap<String, Arc<str>>,
}

impl Registry {
    /// Builds a snapshot. `previous` supplies the last good version of any tool whose
    /// file no longer compiles; `disabled` names tools and prompts to leave out.
    pub fn build(
        sources: &Sources,
        previous: Option<&Registry>,
        disabled: &[String],
        plugins: &'static [PluginNeeds],
    ) -> Registry {
        let mut reg = Registry {
            diagnostics: sources.problems.clone(),
            warnings: sources.warnings.clone(),
            ..Default::default()
        };
        // Disabled tools met in the files (and so never compiled).
        let mut left_out = std::collections::BTreeSet::new();
        for layer in &sources.tools {
            let mut layer_names = BTreeMap::new();
            for file in layer {
                // An unchanged file keeps its compiled tool and its diagnostics: reloading
                // a folder costs only the files that changed. Both must come from this very
                // text: after good → bad → good again, the kept tool matches the text but the
                // previous diagnostics are the broken version's, so that file recompiles.
                let unchanged = previous
                    .filter(|p| p.compiled.get(&file.origin) == Some(&file.text))
                    .and_then(|p| {
                        p.tools
                            .values()
                            .find(|t| t.origin == file.origin && t.source == file.text)
                            .map(|t| (p, t.clone()))
                    });
                let (tool, diags) = match unchanged {
                    Some((p, t)) => (
                        Some(t),
                        p.diagnostics
                            .iter()
                            .filter(|d| d.file == file.origin)
                            .cloned()
                            .collect(),
                    ),
                    None => {
                        // Built-in files are linted in full by the tests; operators' files
                        // are checked in full on every load, as lint would.
                        let depth = if file.origin.starts_with(BUILTIN) {
                            compile::Depth::Serve
                        } else {
                            compile::Depth::Lint
                        };
                        let parsed = match builtin_json(file) {
                            Some(json) => spec::parse_builtin(&file.origin, json),
                            None => spec::parse_tool(&file.origin, &file.text),
                        };
                        match parsed {
                            // A disabled tool is never compiled: its name is all it costs.
                            Ok(spec) if disabled.contains(&spec.name) => {
                                left_out.insert(spec.name);
                                continue;
                            }
                            Ok(spec) => {
                                let (t, d) = compile::compile_spec(file, spec, plugins, depth);
                                (t.map(Arc::new), d)
                            }
                            Err(d) => (None, d),
                        }
                    }
                };
                reg.diagnostics.extend(diags);
                reg.compiled.insert(file.origin.clone(), file.text.clone());
                let tool = match tool {
                    Some(t) => t,
                    None => match previous
                        .and_then(|p| p.tools.values().find(|t| t.origin == file.origin))
                    {
                        Some(last_good) => {
                            tracing::warn!(file = %file.origin, tool = %last_good.spec.name, "keeping the last good version of the tool");
                            last_good.clone()
                        }
                        None => continue,
                    },
                };
                let name = tool.spec.name.clone();
                if let Some(first) = layer_names.insert(name.clone(), file.origin.clone()) {
                    reg.diagnostics.push(
                        Diagnostic::new(
                            Code::E004,
                            &file.origin,
                            format!("tool `{name}` is also declared in {first}"),
                        )
                        .help("tool names are unique within a folder; the first file wins"),
                    );
                    layer_names.insert(name, first);
                    continue;
                }
                reg.tools.insert(name, tool);
            }
        }
        for layer in &sources.prompts {
            for file in layer {
                let (prompt, diags) = match builtin_json(file) {
                    Some(json) => match spec::parse_builtin(&file.origin, json) {
                        Ok(spec) => compile::compile_prompt_spec(file, spec),
                        Err(d) => (None, d),
                    },
                    None => compile::compile_prompt(file),
                };
                reg.diagnostics.extend(diags);
                let prompt = match prompt {
                    Some(p) => Arc::new(p),
                    None => match previous
                        .and_then(|p| p.prompts.values().find(|t| t.origin == file.origin))
                    {
                        Some(last_good) => last_good.clone(),
                        None => continue,
                    },
                };
                reg.prompts.insert(prompt.spec.name.clone(), prompt);
            }
        }
        let mut unknown = Vec::new();
        for name in disabled {
            let tool = reg.tools.remove(name);
            let prompt = reg.prompts.remove(name);
            if tool.is_none()
                && prompt.is_none()
                && !left_out.contains(name)
                && !unknown.contains(&name)
            {
                unknown.push(name);
            }
        }
        if !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|n| format!("`{n}`")).collect();
            reg.warnings.push(format!(
                "disabled_tools: no tool or prompt is named {}",
                names.join(", ")
            ));
        }
        let mut uris: BTreeMap<&str, &str> = BTreeMap::new();
        for tool in reg.tools.values() {
            for r in &tool.spec.resources {
                if let Some(other) = uris.insert(&r.uri, &tool.spec.name) {
                    reg.diagnostics.push(Diagnostic::new(
                        Code::E004,
                        &tool.origin,
                        format!(
                            "resource `{}` is served by both `{other}` and `{}`",
                            r.uri, tool.spec.name
                        ),
                    ));
                }
            }
        }
        reg
    }

    /// The errors (not warnings) of this snapshot.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// Whether `other` serves a different set of tools (names or definitions).
    pub fn tools_differ(&self, other: &Registry) -> bool {
        let key = |t: &CompiledTool| (t.origin.clone(), t.source.clone());
        self.tools.len() != other.tools.len()
            || self
                .tools
                .iter()
                .zip(other.tools.iter())
                .any(|((a, ta), (b, tb))| a != b || key(ta) != key(tb))
    }

    /// The resource URIs (and templates) served, with the tool behind each.
    pub fn resources(&self) -> Vec<(&str, &str)> {
        self.tools
            .values()
            .flat_map(|t| {
                t.spec
                    .resources
                    .iter()
                    .map(|r| (r.uri.as_str(), t.spec.name.as_str()))
            })
            .collect()
    }

    /// Whether `other` serves a different set of prompts.
    pub fn prompts_differ(&self, other: &Registry) -> bool {
        let key = |p: &CompiledPrompt| (p.origin.clone(), p.source.clone());
        self.prompts.len() != other.prompts.len()
            || self
                .prompts
                .iter()
                .zip(other.prompts.iter())
                .any(|((a, pa), (b, pb))| a != b || key(pa) != key(pb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, sql: &str) -> String {
        format!(
            "name: {name}\ndescription: d\nsafety: read_only\nqueries:\n  - name: q\n    sql: {sql}\nexamples:\n  - args: {{}}\n"
        )
    }

    fn src(origin: &str, text: String) -> SourceFile {
        SourceFile {
            origin: origin.into(),
            text: text.into(),
        }
    }

    /// The built-in files as written, read from the checkout: (folder, YAML files).
    fn builtin_yaml() -> Vec<(&'static str, Vec<SourceFile>)> {
        ["tools.d", "prompts.d"]
            .into_iter()
            .map(|dir| {
                let (files, problems) = read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
                assert!(problems.is_empty(), "{problems:?}");
                (dir, files)
            })
            .collect()
    }

    /// A FIFO named on the command line (`lint fifo.yaml`) would block the read forever.
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let e = read_spec_file(&fifo).unwrap_err();
        assert_eq!(e.code, Code::E001);
        assert!(e.message.contains("not a regular file"), "{e:?}");
    }

    #[test]
    fn builtins_compile_without_findings() {
        // Not even warnings, with every check lint makes (the server skips the rendering
        // ones for built-ins, on the strength of this test): on the YAML as written, where
        // a finding has a line, and on the JSON the binary holds.
        let written = builtin_yaml().remove(0).1;
        assert_eq!(written.len(), builtin_tools().len());
        for file in written.into_iter().chain(builtin_tools()) {
            let (tool, diags) = compile::compile_tool(&file, crate::plugins::NEEDS);
            let findings: Vec<_> = diags.iter().map(ToString::to_string).collect();
            assert!(findings.is_empty(), "{}", findings.join("\n"));
            assert!(tool.is_some(), "{}", file.origin);
        }
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let findings: Vec<_> = reg.diagnostics.iter().map(ToString::to_string).collect();
        assert!(findings.is_empty(), "{}", findings.join("\n"));
        for t in reg.tools.values() {
            assert!(t.spec.title.is_some(), "{} has no title", t.spec.name);
            // Every built-in belongs to exactly one built-in toolset (the file holds one
            // `toolset:`), so selecting toolsets never leaves a built-in unreachable.
            assert!(
                t.spec.toolset.is_some(),
                "{} declares no `toolset:` (inspect, monitor, advise or operate)",
                t.spec.name
            );
            assert!(
                t.spec.description.len() >= 80,
                "{} needs a description written for the model",
                t.spec.name
            );
        }
        assert!(reg.tools.len() >= 9);
    }

    /// Tidy: a built-in query whose result has a statement text (a column named `query`,
    /// `statement` or `..._statement`: other sessions' statements, from pg_stat_activity or
    /// citus_lock_waits) names it in `redact`, so its secrets are masked.
    #[test]
    fn statement_texts_are_redacted() {
        let looks_like_statement =
            |c: &str| c == "query" || c == "statement" || c.ends_with("_statement");
        let mut seen = 0;
        for file in builtin_tools() {
            let (Some(tool), _) = compile::compile_tool(&file, crate::plugins::NEEDS) else {
                continue;
            };
            let mut rendered = Vec::new();
            for ex in tool
                .spec
                .examples
                .iter()
                .filter(|e| e.expect.error.is_none())
            {
                rendered.extend(tool.render_example(&ex.args).unwrap());
            }
            // A plugin's queries render with their own `example` variables.
            let run = tool.runnable().unwrap();
            for q in &tool.spec.queries {
                if let Some(vars) = &q.example {
                    let vars = serde_json::Value::Object(vars.clone());
                    rendered.push((
                        q.name.clone(),
                        run.templates.render(&q.name, &vars).unwrap(),
                    ));
                }
            }
            for (query, r) in rendered {
                let q = tool.spec.queries.iter().find(|q| q.name == query).unwrap();
                let names = crate::sql::parse(&r.sql).unwrap().output_names();
                for c in names.iter().filter(|c| looks_like_statement(c)) {
                    seen += 1;
                    assert!(
                        q.redact.contains(c),
                        "{}: query `{query}` returns `{c}` without `redact: [{c}]`",
                        tool.spec.name
                    );
                }
            }
        }
        // citus_activity, citus_lock_inspector (twice), the advisor (twice) at least.
        assert!(seen >= 5, "{seen}");
    }

    /// build.rs's JSON of every built-in file is its YAML, value for value, and what a
    /// built-in `SourceFile` holds.
    #[test]
    fn builtin_json_is_the_yaml() {
        for (dir, written) in builtin_yaml() {
            let embedded = match dir {
                "tools.d" => builtin_tools(),
                _ => builtin_prompts(),
            };
            let names = |files: &[SourceFile]| -> Vec<String> {
                files.iter().map(|f| f.stem().to_string()).collect()
            };
            assert_eq!(names(&written), names(&embedded), "{dir}");
            for (yaml, file) in written.iter().zip(&embedded) {
                let json = builtin_json(file).expect("every built-in file is its JSON");
                assert_eq!(json, &*file.text);
                let from_yaml: serde_json::Value = serde_yaml::from_str(&yaml.text).unwrap();
                let from_json: serde_json::Value = serde_json::from_str(json).unwrap();
                assert_eq!(from_yaml, from_json, "{}", file.origin);
                // The same keys in the same order: tools/list and the manual keep the file's
                // order.
                assert_eq!(
                    from_yaml.to_string(),
                    from_json.to_string(),
                    "{}",
                    file.origin
                );
                // Read as YAML, as lint reads it, the JSON is the same value.
                let as_yaml: serde_json::Value = serde_yaml::from_str(json).unwrap();
                assert_eq!(
                    as_yaml.to_string(),
                    from_json.to_string(),
                    "{}",
                    file.origin
                );
            }
        }
        let changed = SourceFile {
            origin: "builtin:tools.d/list_nodes.yaml".into(),
            text: "name: list_nodes\n".into(),
        };
        assert!(builtin_json(&changed).is_none());
    }

    /// Prompts name tools to call: every `tool` they name must exist, and every
    /// `` `param: ...` `` after it on the same line must be a parameter of that tool.
    #[test]
    fn prompts_name_real_tools_and_parameters() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let tool_ref = regex_lite::Regex::new(r"`([a-z][a-z0-9_]*)`").unwrap();
        let param_ref = regex_lite::Regex::new(r"`([a-z_]+): ").unwrap();
        let mut checked = 0;
        for p in reg.prompts.values() {
            for m in &p.spec.messages {
                for line in m.text.lines() {
                    let Some(c) = tool_ref.captures(line) else {
                        continue;
                    };
                    let name = &c[1];
                    if !(name.starts_with("citus_")
                        || name.starts_with("list_")
                        || name == "server_info"
                        || name == "ping")
                    {
                        continue;
                    }
                    let tool = reg.tools.get(name).unwrap_or_else(|| {
                        panic!("prompt {} names unknown tool `{name}`", p.spec.name)
                    });
                    let props = tool.spec.input_schema["properties"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    for param in param_ref.captures_iter(line) {
                        assert!(
                            props.contains_key(&param[1]),
                            "prompt {}: `{name}` has no parameter `{}`",
                            p.spec.name,
                            &param[1]
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{checked}");
    }

    /// README's tool table lists every built-in tool with exactly its parameters.
    #[test]
    fn readme_lists_every_tool_and_parameter() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let readme = include_str!("../README.md");
        let name_ref = regex_lite::Regex::new(r"^\| `([a-z_]+)` \| ([^|]*) \|").unwrap();
        let param_ref = regex_lite::Regex::new(r"`([a-z_]+)\??`").unwrap();
        let mut listed = BTreeMap::new();
        let mut toolsets = BTreeMap::new();
        for line in readme.lines() {
            if let Some(c) = name_ref.captures(line) {
                let params: Vec<String> = param_ref
                    .captures_iter(&c[2])
                    .map(|p| p[1].to_string())
                    .collect();
                listed.insert(c[1].to_string(), params);
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                if let [_, _, _, _, toolset, ""] = cells[..] {
                    toolsets.insert(c[1].to_string(), toolset.to_string());
                }
            }
        }
        for (name, tool) in &reg.tools {
            assert_eq!(
                toolsets.get(name).map(String::as_str),
                tool.spec.toolset.map(|t| t.as_str()),
                "README's toolset of `{name}`"
            );
            let params = listed
                .get(name)
                .unwrap_or_else(|| panic!("README's tool table lacks `{name}`"));
            let mut declared: Vec<String> = tool.spec.input_schema["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let mut params = params.clone();
            declared.sort();
            params.sort();
            assert_eq!(params, declared, "README parameters of `{name}`");
        }
    }

    #[test]
    fn later_layers_override_and_bad_files_keep_the_last_good_tool() {
        let base = Sources {
            tools: vec![vec![src("a/t.yaml", tool("t", "SELECT 1"))]],
            ..Default::default()
        };
        let first = Registry::build(&base, None, &[], &[]);
        assert_eq!(first.tools["t"].spec.queries[0].sql, "SELECT 1");

        let broken = Sources {
            tools: vec![vec![src("a/t.yaml", "name: t\nsafety: [".into())]],
            ..Default::default()
        };
        let second = Registry::build(&broken, Some(&first), &[], &[]);
        assert!(Arc::ptr_eq(&first.tools["t"], &second.tools["t"]));
        assert_eq!(second.errors().count(), 1);
        assert!(!first.tools_differ(&second));

        let layered = Sources {
            tools: vec![
                vec![src("a/t.yaml", tool("t", "SELECT 1"))],
                vec![src("b/t.yaml", tool("t", "SELECT 2"))],
            ],
            ..Default::default()
        };
        let third = Registry::build(&layered, None, &[], &[]);
        assert_eq!(third.tools["t"].spec.queries[0].sql, "SELECT 2");

        let again = Registry::build(&layered, None, &[], &[]);
        assert!(
            !again.tools_differ(&third),
            "recompiling the same files changes nothing"
        );

        let removed = Registry::build(&Sources::default(), Some(&third), &[], &[]);
        assert!(removed.tools.is_empty());
        assert!(removed.tools_differ(&third));
    }

    /// Issue #6: good → bad → the same good text again must clear the error.
    #[test]
    fn restoring_a_good_file_clears_its_errors() {
        let good = Sources {
            tools: vec![vec![src("a/t.yaml", tool("t", "SELECT 1"))]],
            ..Default::default()
        };
        let bad = Sources {
            tools: vec![vec![src("a/t.yaml", "name: t\nsafety: [".into())]],
            ..Default::default()
        };
        let first = Registry::build(&good, None, &[], &[]);
        let second = Registry::build(&bad, Some(&first), &[], &[]);
        assert_eq!(second.errors().count(), 1);
        let third = Registry::build(&good, Some(&second), &[], &[]);
        let errors: Vec<_> = third.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!third.tools_differ(&first));
        // And an unchanged file still reuses its compiled tool and its (empty) findings.
        let fourth = Registry::build(&good, Some(&third), &[], &[]);
        assert!(Arc::ptr_eq(&third.tools["t"], &fourth.tools["t"]));
        assert_eq!(fourth.errors().count(), 0);
    }

    #[test]
    fn duplicate_names_in_one_folder_are_errors_and_disabled_tools_are_left_out() {
        let s = Sources {
            tools: vec![vec![
                src("a/t.yaml", tool("t", "SELECT 1")),
                src("a/u.yaml", tool("t", "SELECT 2")),
            ]],
            ..Default::default()
        };
        let reg = Registry::build(&s, None, &[], &[]);
        assert_eq!(reg.tools["t"].spec.queries[0].sql, "SELECT 1");
        assert!(reg.errors().any(|d| d.code == Code::E004));
        let reg = Registry::build(&s, None, &["t".to_string()], &[]);
        assert!(reg.tools.is_empty());
        assert!(reg.warnings.is_empty(), "{:?}", reg.warnings);
    }

    /// Issue #8: startup parses the built-in files; their validators and templates
    /// are compiled on first use. Operators' files are compiled in full when loaded.
    #[test]
    fn builtins_compile_on_first_use_and_operators_files_on_load() {
        let mut sources = Sources::builtin();
        sources
            .tools
            .push(vec![src("a/t.yaml", tool("t", "SELECT 1"))]);
        let reg = Registry::build(&sources, None, &[], crate::plugins::NEEDS);
        assert!(reg.tools["t"].is_compiled());
        let inspector = &reg.tools["citus_table_inspector"];
        assert!(!inspector.is_compiled());
        let run = inspector.runnable().expect("built-ins compile");
        assert!(inspector.is_compiled());
        assert!(
            run.argument_errors(&serde_json::json!({"table": "t"}))
                .is_empty()
        );
        assert!(
            !inspector
                .argument_errors(&serde_json::json!({"nope": 1}))
                .is_empty()
        );
    }

    /// A stray large or binary `*.yaml` in a tool folder is a diagnostic, not a file read
    /// whole and parsed; the folder's other files load.
    #[test]
    fn oversized_and_binary_files_are_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), tool("a", "SELECT 1")).unwrap();
        let big = vec![b'#'; MAX_SPEC_FILE_BYTES as usize + 1];
        std::fs::write(dir.path().join("big.yaml"), big).unwrap();
        std::fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let just = vec![b'#'; MAX_SPEC_FILE_BYTES as usize];
        std::fs::write(dir.path().join("just.yaml"), just).unwrap();
        let (files, problems) = read_dir(dir.path());
        let names: Vec<&str> = files
            .iter()
            .map(|f| f.origin.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["a.yaml", "just.yaml"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].message.contains("larger than 1048576 bytes"),
            "{problems:?}"
        );
        assert!(problems[1].message.contains("not UTF-8"), "{problems:?}");
    }

    /// A string PostgreSQL text cannot hold is an argument error, wherever it sits, not
    /// an encoding error from the database.
    #[test]
    fn nul_characters_are_argument_errors() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let inspector = &reg.tools["citus_table_inspector"];
        let problems = inspector.argument_errors(&serde_json::json!({"table": "a\u{0}b"}));
        assert_eq!(
            problems,
            ["/table: contains the character U+0000, which PostgreSQL text cannot hold"]
        );
        let explain = &reg.tools["citus_explain_query"];
        assert!(
            explain
                .argument_errors(&serde_json::json!({"sql": "SELECT 1"}))
                .is_empty()
        );
        assert_eq!(
            explain
                .argument_errors(&serde_json::json!({"sql": "SELECT '\u{0}'"}))
                .len(),
            1
        );
    }

    /// Issue #8: a disabled tool is never compiled, so a broken one reports nothing.
    #[test]
    fn disabled_tools_are_never_compiled() {
        let s = Sources {
            tools: vec![vec![
                src("a/t.yaml", tool("t", "SELECT {{ 1")),
                src("a/u.yaml", tool("u", "SELECT 1")),
            ]],
            ..Default::default()
        };
        let reg = Registry::build(&s, None, &[], &[]);
        assert_eq!(reg.errors().count(), 1, "{:?}", reg.diagnostics);
        let reg = Registry::build(&s, None, &["t".to_string()], &[]);
        assert_eq!(reg.errors().count(), 0, "{:?}", reg.diagnostics);
        assert!(reg.warnings.is_empty(), "{:?}", reg.warnings);
        assert_eq!(reg.tools.keys().collect::<Vec<_>>(), ["u"]);
    }

    /// Issue #6: a misspelt name in disabled_tools disabled nothing, silently.
    #[test]
    fn disabled_names_that_match_nothing_are_warnings() {
        let s = Sources {
            tools: vec![vec![src("a/t.yaml", tool("t", "SELECT 1"))]],
            ..Default::default()
        };
        let disabled = ["t", "nope", "also_nope", "nope"].map(String::from);
        let reg = Registry::build(&s, None, &disabled, &[]);
        assert_eq!(
            reg.warnings,
            vec!["disabled_tools: no tool or prompt is named `nope`, `also_nope`"]
        );
    }

    /// Issue #6: a tools_dirs folder that does not exist is a warning, not an error.
    #[test]
    fn missing_folders_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("later");
        let s = Sources::gather(std::slice::from_ref(&missing), &[]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("tools_dirs: folder") && s.warnings[0].contains("later"));
        let reg = Registry::build(&s, None, &[], crate::plugins::NEEDS);
        assert_eq!(reg.errors().count(), 0);
        assert_eq!(reg.warnings, s.warnings);
    }
}
