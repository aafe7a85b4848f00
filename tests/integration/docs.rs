//! README's configuration table against the definitions it documents (issue #9): every
//! key of the configuration schema with the schema's default (which a unit test in
//! `config` holds equal to the code's), every flag of `--help`, and nothing else; and
//! every flag, argument and subcommand of `--help` has a one-line help under a heading.

use std::collections::BTreeSet;
use std::sync::Arc;

use libtest_mimic::Trial;
use serde_json::Value;

use crate::e2e::bin;
use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "docs::readme_configuration_table_matches_the_schema_and_the_flags",
            configuration_table,
        ),
        trial(
            ctx,
            "docs::every_flag_and_subcommand_has_a_help_line_under_a_heading",
            help_lines,
        ),
        trial(
            ctx,
            "docs::readme_names_the_keys_a_cluster_may_set",
            cluster_keys,
        ),
    ]
}

/// One row of the table: key (None for a flag-only row), flag, default cell.
struct Row {
    key: Option<String>,
    flag: Option<String>,
    default: String,
}

/// `` `x` `` → `x`; `—` → None.
fn code(cell: &str) -> Option<String> {
    let cell = cell.trim();
    (cell != "—").then(|| {
        cell.strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("not one `code` value: {cell}"))
            .to_string()
    })
}

fn readme_rows() -> Vec<Row> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let table = section
        .split("| key | flag | default | meaning |\n|---|---|---|---|\n")
        .nth(1)
        .expect("the Configuration section has the key/flag/default table");
    table
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "a row of four cells: {l}");
            Row {
                key: code(cells[0]),
                flag: code(cells[1]),
                default: cells[2].trim().to_string(),
            }
        })
        .collect()
}

/// Every key a file can set, `section.key` inside a section, with the schema's default.
fn schema_keys() -> Vec<(String, Option<Value>)> {
    let schema: Value = serde_json::from_str(citus_mcp::config::CONFIG_SCHEMA).unwrap();
    let mut out = Vec::new();
    for (key, prop) in schema["properties"].as_object().unwrap() {
        match prop["properties"].as_object() {
            Some(section) => out.extend(
                section
                    .iter()
                    .map(|(k, p)| (format!("{key}.{k}"), p.get("default").cloned())),
            ),
            None => out.push((key.clone(), prop.get("default").cloned())),
        }
    }
    out
}

/// The long flags `--help` lists (without --help and --version).
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-c, ").unwrap_or(l);
            l.starts_with("--")
                .then(|| l.split([' ', '=']).next().unwrap().to_string())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

fn help(args: &[&str]) -> String {
    let out = bin().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn configuration_table(_: &Ctx) {
    let rows = readme_rows();
    let keys = schema_keys();
    // Keys: the same set, each with the schema's default.
    let documented: BTreeSet<&str> = rows.iter().filter_map(|r| r.key.as_deref()).collect();
    let defined: BTreeSet<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        documented, defined,
        "README's keys differ from the schema's"
    );
    for (key, default) in &keys {
        let row = rows.iter().find(|r| r.key.as_deref() == Some(key)).unwrap();
        match default {
            Some(d) => {
                let want = match d {
                    Value::String(s) => format!("`{s}`"),
                    other => format!("`{other}`"),
                };
                assert_eq!(row.default, want, "README's default of `{key}`");
            }
            // A default the code computes is described, not given as one value.
            None => assert!(
                !(row.default.starts_with('`')
                    && row.default.ends_with('`')
                    && row.default.matches('`').count() == 2),
                "README gives `{key}` the default {} that the schema does not have",
                row.default
            ),
        }
        // A key's flag is its kebab-case name (`--http` sets http.listen).
        if let Some(flag) = &row.flag {
            let want = match key.as_str() {
                "http.listen" => "--http".to_string(),
                k => format!("--{}", k.replace(['_', '.'], "-")),
            };
            assert_eq!(flag, &want, "the flag of `{key}`");
        }
    }
    // Flags: the same set as --help, and each flag-only row is a flag.
    let documented: BTreeSet<String> = rows.iter().filter_map(|r| r.flag.clone()).collect();
    let listed = help_flags(&help(&[]));
    assert_eq!(documented, listed, "README's flags differ from --help");
    for r in rows.iter().filter(|r| r.key.is_none()) {
        assert!(r.flag.is_some(), "a row with neither key nor flag");
    }
}

/// The keys README's "Several clusters" says a cluster may set are the schema's.
fn cluster_keys(_: &Ctx) {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n### Several clusters\n")
        .nth(1)
        .expect("README has a Several clusters section");
    let list = section
        .split("with its own `dsn` and\nany of ")
        .nth(1)
        .and_then(|rest| rest.split(". What a cluster").next())
        .expect("the section lists the keys a cluster may set");
    let documented: BTreeSet<&str> = list.split('`').skip(1).step_by(2).collect();
    let schema: Value = serde_json::from_str(citus_mcp::config::CONFIG_SCHEMA).unwrap();
    let defined: BTreeSet<&str> = schema["$defs"]["cluster"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "dsn")
        .collect();
    assert_eq!(
        documented, defined,
        "README's cluster keys differ from the schema's"
    );
}

/// Every entry of a help text's lists (commands, arguments, options) has help text:
/// on its own line after two spaces, or on the next, more indented line.
fn assert_every_entry_has_help(args: &[&str], text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let mut in_list = false;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            // A heading ("Options:", "Connection:") starts a list; anything else ends it.
            in_list = line.ends_with(':') && !line.contains(' ') || line.ends_with("Options:");
            continue;
        }
        let entry = line.trim_start();
        let indent = line.len() - entry.len();
        if !in_list || indent > 6 {
            continue;
        }
        let inline = entry
            .split_once("  ")
            .is_some_and(|(_, h)| !h.trim().is_empty());
        let next = lines.get(i + 1).copied().unwrap_or("");
        let below = next.len() - next.trim_start().len() > indent
            && !next.trim().is_empty()
            && !next.trim_start().starts_with('-');
        assert!(
            inline || below,
            "`citus-mcp {}`: no help for {entry}",
            args.join(" ")
        );
    }
}

fn help_lines(_: &Ctx) {
    let top = help(&[]);
    for heading in [
        "Connection:",
        "Safety:",
        "Limits:",
        "Tools:",
        "HTTP:",
        "Logging:",
    ] {
        assert!(
            top.contains(&format!("\n{heading}\n")),
            "no {heading} in:\n{top}"
        );
    }
    // Only --help and --version stay under the generic heading.
    let generic = top
        .split("\nOptions:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    assert_eq!(help_flags(generic), BTreeSet::new(), "{generic}");
    for args in [
        &[][..],
        &["serve"],
        &["lint"],
        &["approve"],
        &["tools"],
        &["tools", "list"],
        &["tools", "show"],
        &["tools", "call"],
        &["token"],
        &["token", "new"],
        &["token", "hash"],
    ] {
        assert_every_entry_has_help(args, &help(args));
    }
}
