//! `citus-mcp lint`: check tool and prompt files statically and, with `--db`, against
//! a live cluster.
//!
//! The static checks are exactly the ones the registry runs when it loads files
//! (`compile`); lint adds cross-file checks, `--db` prepare checks, and renderers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::compile::{self, SourceFile};
use crate::db::Db;
use crate::diagnostic::{Code, Diagnostic, Severity};
use crate::registry;

/// Every diagnostic code with a one-line explanation, for `--explain` and the docs.
pub const CODES: &[(Code, &str)] = &[
    (
        Code::E001,
        "the file is not valid YAML, cannot be read, or a value has the wrong type",
    ),
    (
        Code::E002,
        "the file breaks the tool-spec / prompt-spec schema (unknown key, missing key, bad value)",
    ),
    (
        Code::E003,
        "input_schema or output_schema is not a valid JSON Schema",
    ),
    (
        Code::E004,
        "a name is declared twice (tools in one folder, queries in one tool, prompt arguments)",
    ),
    (
        Code::E005,
        "a SQL template, `when` expression or prompt message does not compile",
    ),
    (
        Code::E006,
        "a bind placeholder lands inside a quoted literal or comment ('{{ x }}'): values must stand where a value goes",
    ),
    (
        Code::E007,
        "an example's arguments do not validate against input_schema",
    ),
    (
        Code::E008,
        "an example does not render (e.g. an undefined variable)",
    ),
    (
        Code::E009,
        "a read_only or plan tool contains a statement that writes",
    ),
    (
        Code::E010,
        "an execute tool does not require an approval_token argument",
    ),
    (
        Code::E011,
        "lint --db: a rendered statement does not prepare on the cluster (unknown relation, column, function)",
    ),
    (
        Code::E012,
        "paging is declared inconsistently (more than one pager, not shape many, missing limit/offset/cursor)",
    ),
    (
        Code::E013,
        "a fan-out query (target workers or all_nodes) takes bind parameters; filter in a later coordinator query over `results`",
    ),
    (
        Code::E014,
        "a rendered query is not exactly one statement that PostgreSQL's grammar accepts",
    ),
    (
        Code::E015,
        "lint --db: a query's `redact` names a column its statement does not return",
    ),
    (
        Code::E016,
        "a plugin tool lacks a query its plugin runs, declares it for another place, or is not `safety: execute` where the plugin writes",
    ),
    (Code::W001, "the file name does not match the declared name"),
    (Code::W002, "the tool has no examples"),
    (
        Code::W003,
        "lint --db: a result column has a type the engine cannot turn into JSON; cast it to ::text",
    ),
    (
        Code::W004,
        "a query returns two columns of one name; its rows keep the later one's value",
    ),
    (
        Code::W005,
        "a plugin tool declares a query its plugin never runs",
    ),
];

/// The files named on the command line (files or folders); none means the built-ins.
pub fn gather(paths: &[PathBuf]) -> (Vec<SourceFile>, Vec<Diagnostic>) {
    if paths.is_empty() {
        let mut files = registry::builtin_tools();
        files.extend(registry::builtin_prompts());
        return (files, vec![]);
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        if p.is_dir() {
            let (f, d) = registry::read_dir(p);
            files.extend(f);
            problems.extend(d);
        } else {
            match registry::read_spec_file(p) {
                Ok(file) => files.push(file),
                Err(d) => problems.push(d),
            }
        }
    }
    (files, problems)
}

fn is_prompt(file: &SourceFile) -> bool {
    match serde_yaml::from_str::<Value>(&file.text) {
        Ok(Value::Object(m)) => {
            m.contains_key("messages") && !m.contains_key("queries") && !m.contains_key("plugin")
        }
        _ => file.origin.contains("prompts.d"),
    }
}

/// Lints files; with a database, also prepares every example's statements there.
pub async fn run(files: &[SourceFile], db: Option<&Db>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        if is_prompt(file) {
            let (p, d) = compile::compile_prompt(file);
            out.extend(d);
            if let Some(p) = p
                && let Some(first) =
                    names.insert(format!("prompt:{}", p.spec.name), file.origin.clone())
            {
                out.push(Diagnostic::new(
                    Code::E004,
                    &file.origin,
                    format!("prompt `{}` is also declared in {first}", p.spec.name),
                ));
            }
            continue;
        }
        let (tool, d) = compile::compile_tool(file, crate::plugins::NEEDS);
        out.extend(d);
        let Some(tool) = tool else { continue };
        if let Some(first) = names.insert(tool.spec.name.clone(), file.origin.clone()) {
            out.push(Diagnostic::new(
                Code::E004,
                &file.origin,
                format!("tool `{}` is also declared in {first}", tool.spec.name),
            ));
        }
        let Some(db) = db else { continue };
        for (i, ex) in tool.spec.examples.iter().enumerate() {
            if ex.expect.error.is_some() {
                continue;
            }
            let Ok(rendered) = tool.render_example(&ex.args) else {
                continue;
            };
            for (query, r) in rendered {
                let qi = tool
                    .spec
                    .queries
                    .iter()
                    .position(|q| q.name == query)
                    .unwrap_or(0);
                let at = crate::spec::locate(&file.text, &format!("/queries/{qi}/sql"));
                match db.describe(&r.sql).await {
                    Err(e) => out.push(
                        Diagnostic::new(Code::E011, &file.origin, format!("query `{query}` (example {}) does not prepare: {e}", i + 1))
                            .at(at)
                            .help("check relation, column and function names against the cluster's catalog"),
                    ),
                    Ok(columns) => {
                        let redact = tool.spec.queries.get(qi).map_or(&[][..], |q| &q.redact[..]);
                        for missing in redact.iter().filter(|r| !columns.iter().any(|(c, _)| &c.name == *r)) {
                            out.push(
                                Diagnostic::new(Code::E015, &file.origin, format!("query `{query}` has `redact: [{missing}]`, but no column `{missing}`: its secrets would not be masked"))
                                    .at(crate::spec::locate(&file.text, &format!("/queries/{qi}/redact")).or(at))
                                    .help("name the column as the SQL returns it (its alias)"),
                            );
                        }
                        // Every name PostgreSQL gave, `?column?` included: two such are one key.
                        if let Some(name) = compile::named_twice(columns.iter().map(|(c, _)| c.name.as_str())) {
                            out.push(
                                Diagnostic::new(Code::W004, &file.origin, compile::named_twice_message(&query, name))
                                    .at(at)
                                    .help(compile::NAMED_TWICE_HELP),
                            );
                        }
                        for (c, _) in columns.into_iter().filter(|(_, decodable)| !decodable) {
                            out.push(
                                Diagnostic::new(Code::W003, &file.origin, format!("query `{query}` returns column `{}` of type {}, which cannot become JSON", c.name, c.type_name))
                                    .at(at)
                                    .help(format!("select `{}::text` instead", c.name)),
                            );
                        }
                    }
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|d| seen.insert(d.to_string()));
    out
}

/// Human output: rustc-style, with the source line and a caret.
pub fn render_human(diags: &[Diagnostic], files: &[SourceFile]) -> String {
    let mut s = String::new();
    for d in diags {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        s.push_str(&format!("{sev}[{}]: {}\n", d.code.as_str(), d.message));
        match d.position {
            Some(p) => {
                s.push_str(&format!("  --> {}:{}:{}\n", d.file, p.line, p.column));
                let line = files
                    .iter()
                    .find(|f| f.origin == d.file)
                    .and_then(|f| f.text.lines().nth(p.line - 1));
                if let Some(line) = line {
                    // The line as the file has it, its secrets masked: lint output lands in
                    // CI logs (the caret may then point a few columns off).
                    let line = crate::redact::secrets(line);
                    let n = p.line.to_string();
                    let pad = " ".repeat(n.len());
                    s.push_str(&format!(
                        "{pad} |\n{n} | {line}\n{pad} | {}^\n",
                        " ".repeat(p.column.saturating_sub(1))
                    ));
                }
            }
            None => s.push_str(&format!("  --> {}\n", d.file)),
        }
        if let Some(h) = &d.help {
            s.push_str(&format!("  = help: {h}\n"));
        }
        s.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    s.push_str(&format!(
        "{} file(s) checked: {errors} error(s), {warnings} warning(s)\n",
        files.len()
    ));
    s
}

/// JSON output: `{"files": n, "errors": n, "warnings": n, "diagnostics": [...]}`.
pub fn render_json(diags: &[Diagnostic], files: &[SourceFile]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    serde_json::json!({"files": files.len(), "errors": errors, "warnings": diags.len() - errors, "diagnostics": diags}).to_string()
}

/// The exit code: 0 clean (warnings allowed), 1 when any error was found.
pub fn exit_code(diags: &[Diagnostic]) -> i32 {
    i32::from(diags.iter().any(Diagnostic::is_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted line of a finding keeps its secrets, as the message does: lint output
    /// lands in CI logs.
    #[test]
    fn the_quoted_line_is_masked() {
        let file = SourceFile {
            origin: "t/leak.yaml".into(),
            text: "name: leak\ndescription: d\nsafety: read_only\ninput_schema: {type: object}\nqueries:\n  - name: q\n    sql: \"ALTER ROLE app PASSWORD 'FramePw1'\"\nexamples:\n  - args: {}\n".into(),
        };
        let (_, diags) = compile::compile_tool(&file, &[]);
        assert!(!diags.is_empty());
        let out = render_human(&diags, std::slice::from_ref(&file));
        assert!(out.contains("ALTER ROLE app PASSWORD '***'"), "{out}");
        assert!(!out.contains("FramePw1"), "{out}");
    }
}
