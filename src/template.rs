//! SQL templates where every value is a bind parameter.
//!
//! A tool's SQL is a minijinja template. The formatter is replaced so that every
//! `{{ expr }}` writes a placeholder `$n` and records the value; there is no way to
//! paste a value into SQL text. Identifiers can only be placed through the `ident`
//! filter, which validates and double-quotes them. This module is the only producer
//! of SQL text in the project.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

/// A rendered statement: SQL with `$1..$n` and the values that go with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub sql: String,
    pub binds: Vec<serde_json::Value>,
}

/// Why a template did not render.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

/// The bind values collected while one template renders.
#[derive(Default)]
struct Binds(Vec<serde_json::Value>);

/// What one render may spend: minijinja's instructions and the values it builds (about
/// 64 bytes each), so at most a few million steps and tens of MB.
const MAX_RENDER_FUEL: u64 = 1_000_000;

/// A set of named templates compiled in one environment (one per tool).
pub struct Templates {
    env: Environment<'static>,
    /// SQL without template syntax, kept as text: it renders to itself with no binds, and
    /// a compiled template costs about 10 KB however short its source (issue #8).
    plain: BTreeMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An empty set with the bind-parameter formatter and the `ident` filter.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_recursion_limit(32);
        // A render is a few hundred instructions; loops over a caller's array a few per
        // element. Nested loops over `range` could otherwise spin for hours on the one
        // thread that serves stdio.
        env.set_fuel(Some(MAX_RENDER_FUEL));
        env.set_formatter(bind_formatter);
        env.add_filter("ident", ident);
        Templates {
            env,
            plain: BTreeMap::new(),
        }
    }

    /// Compiles a SQL template under `name`.
    pub fn add_sql(&mut self, name: &str, sql: &str) -> Result<(), RenderError> {
        if !["{{", "{%", "{#"].iter().any(|open| sql.contains(open)) {
            self.plain.insert(name.to_string(), sql.trim().to_string());
            return Ok(());
        }
        self.env
            .add_template_owned(name.to_string(), sql.to_string())
            .map_err(describe)
    }

    /// Compiles a boolean expression (such as a query's `when`) under `name`.
    pub fn add_condition(&mut self, name: &str, expr: &str) -> Result<(), RenderError> {
        // A condition is a template that prints a marker when the expression is true:
        // it compiles once, and evaluating it never produces a bind.
        self.add_sql(name, &format!("{{% if {expr} %}}1{{% endif %}}"))
    }

    /// Renders a SQL template with `context` (a JSON object of arguments).
    pub fn render(&self, name: &str, context: &serde_json::Value) -> Result<Rendered, RenderError> {
        if let Some(sql) = self.plain.get(name) {
            return Ok(Rendered {
                sql: sql.clone(),
                binds: Vec::new(),
            });
        }
        let template = self.env.get_template(name).map_err(describe)?;
        let captured = template
            .render_captured(Value::from(Serde(context)))
            .map_err(describe)?;
        let binds = captured
            .state()
            .get_extension::<Binds>()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        Ok(Rendered {
            sql: captured.into_output().trim().to_string(),
            binds,
        })
    }

    /// Whether the template `name` reads the top-level variable `var`.
    pub fn references(&self, name: &str, var: &str) -> bool {
        !self.plain.contains_key(name)
            && self
                .env
                .get_template(name)
                .is_ok_and(|t| t.undeclared_variables(false).contains(var))
    }

    /// Evaluates a condition added with [`Templates::add_condition`].
    pub fn check(&self, name: &str, context: &serde_json::Value) -> Result<bool, RenderError> {
        Ok(self.render(name, context)?.sql == "1")
    }
}

/// Prints a value into SQL: an [`Ident`] as its quoted text, anything else as the next bind
/// parameter `$n`. A string that minijinja calls safe (`| safe`, `| escape`, `| tojson`,
/// a block `set`) is a value like any other: nothing but `ident` ever becomes SQL text.
fn bind_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    if let Some(ident) = value.downcast_object_ref::<Ident>() {
        return out
            .write_str(&ident.0)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"));
    }
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let binds = state.get_or_insert_extension(Binds::default());
    binds.0.push(json);
    let n = binds.0.len();
    write!(out, "${n}").map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
}

/// What `ident` returns: a validated, double-quoted identifier, the one value the formatter
/// prints as SQL text. A type of its own, so that no other filter can make one.
#[derive(Debug)]
struct Ident(String);

impl minijinja::value::Object for Ident {
    fn render(self: &std::sync::Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `{{ name | ident }}`: a validated, double-quoted identifier, optionally schema-qualified.
fn ident(value: String) -> Result<Value, Error> {
    let mut quoted = String::with_capacity(value.len() + 4);
    for (i, part) in value.split('.').enumerate() {
        let valid = !part.is_empty()
            && part.len() <= 63
            && part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !valid || i > 1 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("`{value}` is not a valid identifier"),
            ));
        }
        if i > 0 {
            quoted.push('.');
        }
        let _ = write!(quoted, "\"{part}\"");
    }
    Ok(Value::from_object(Ident(quoted)))
}

fn describe(e: Error) -> RenderError {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail()
        && !msg.contains(detail)
    {
        msg = format!("{msg}: {detail}");
    }
    RenderError(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(sql: &str, ctx: serde_json::Value) -> Result<Rendered, RenderError> {
        let mut t = Templates::new();
        t.add_sql("q", sql)?;
        t.render("q", &ctx)
    }

    #[test]
    fn a_render_has_a_budget() {
        // 10^10 iterations unbounded; refused within the budget.
        let started = std::time::Instant::now();
        let e = render(
            "SELECT 1{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            json!({}),
        )
        .unwrap_err();
        assert!(e.0.contains("fuel"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        // A loop over a large array of the caller's still renders.
        let ids: Vec<u32> = (0..10_000).collect();
        let r = render(
            "SELECT x FROM t WHERE x IN ({% for i in ids %}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %})",
            json!({ "ids": ids }),
        )
        .unwrap();
        assert_eq!(r.binds.len(), 10_000);
    }

    #[test]
    fn sql_without_template_syntax_renders_to_itself() {
        let sql = "\n  SELECT '{1,2}'::int[], '{}'::jsonb -> 'a', $x$ } $x$\n";
        let mut t = Templates::new();
        t.add_sql("q", sql).unwrap();
        assert!(t.plain.contains_key("q"), "kept as text, not compiled");
        let r = t.render("q", &json!({"a": 1})).unwrap();
        assert_eq!(r.sql, sql.trim());
        assert!(r.binds.is_empty());
        assert!(!t.references("q", "results"));
        // Any opening of template syntax makes it a template, comments included.
        for sql in [
            "SELECT {{ a }}",
            "SELECT 1 {% if a %}{% endif %}",
            "SELECT 1 {# x #}",
        ] {
            let mut t = Templates::new();
            t.add_sql("q", sql).unwrap();
            assert!(t.plain.is_empty(), "{sql}");
            assert!(
                t.render("q", &json!({"a": 1}))
                    .unwrap()
                    .sql
                    .starts_with("SELECT")
            );
        }
    }

    #[test]
    fn templates_cannot_pull_in_sql_the_branch_check_does_not_see() {
        for sql in [
            "SELECT 1 {% include 'other' %}",
            "{% macro m() %}DELETE FROM t{% endmacro %}SELECT 1",
            "{% import 'other' as o %}SELECT 1",
            "{% extends 'other' %}",
        ] {
            let mut t = Templates::new();
            assert!(t.add_sql("q", sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn every_expression_becomes_a_bind() {
        let r = render(
            "SELECT * FROM t WHERE a = {{ a }} AND b = ANY({{ b }}) LIMIT {{ n + 1 }}",
            json!({"a": "x", "b": [1, 2], "n": 10}),
        )
        .unwrap();
        assert_eq!(
            r.sql,
            "SELECT * FROM t WHERE a = $1 AND b = ANY($2) LIMIT $3"
        );
        assert_eq!(r.binds, vec![json!("x"), json!([1, 2]), json!(11)]);
    }

    #[test]
    fn hostile_strings_stay_data() {
        for hostile in [
            "x'; DROP TABLE t; --",
            "$1",
            "/* c */ 1; SELECT 2",
            "\"quoted\"",
            "ünï©ødé \u{0}",
            "{{ 7*7 }}",
        ] {
            let r = render("SELECT {{ v }}::text", json!({"v": hostile})).unwrap();
            assert_eq!(r.sql, "SELECT $1::text");
            assert_eq!(r.binds, vec![json!(hostile)]);
        }
    }

    #[test]
    fn undefined_variables_are_errors_and_optionals_use_is_defined() {
        assert!(render("SELECT {{ missing }}", json!({})).is_err());
        let sql = "SELECT 1{% if s is defined %} WHERE s = {{ s }}{% endif %}";
        assert_eq!(render(sql, json!({})).unwrap().sql, "SELECT 1");
        assert_eq!(
            render(sql, json!({"s": "a"})).unwrap().sql,
            "SELECT 1 WHERE s = $1"
        );
    }

    #[test]
    fn ident_quotes_valid_identifiers_and_rejects_others() {
        let r = render(
            "SELECT {{ c | ident }} FROM {{ t | ident }}",
            json!({"c": "name", "t": "public.orders"}),
        )
        .unwrap();
        assert_eq!(r.sql, "SELECT \"name\" FROM \"public\".\"orders\"");
        assert!(r.binds.is_empty());
        for bad in ["a b", "x\"; drop", "", "a.b.c", "1abc"] {
            assert!(
                render("SELECT {{ c | ident }}", json!({"c": bad})).is_err(),
                "{bad}"
            );
        }
    }

    /// Filters that mark a string safe (`safe`, `escape`, `tojson`), a block `set` and
    /// string concatenation with an identifier all leave a caller's value a bind: only
    /// `ident` itself prints SQL text.
    #[test]
    fn nothing_but_ident_becomes_sql_text() {
        let attack = "(SELECT rolpassword FROM pg_authid)";
        for sql in [
            "SELECT {{ x | safe }}",
            "SELECT {{ x | escape }}",
            "SELECT {{ x | e }}",
            "SELECT {{ x | tojson }}",
            "{% set y = x | safe %}SELECT {{ y }}",
            "SELECT {{ (x | safe) ~ '' }}",
            "SELECT {{ ('a' | ident) ~ x }}",
            "SELECT {{ x | string | safe | lower }}",
        ] {
            match render(sql, json!({"x": attack})) {
                Ok(r) => {
                    assert!(!r.sql.contains("pg_authid"), "{sql}: {}", r.sql);
                    assert!(r.sql.ends_with("$1"), "{sql}: {}", r.sql);
                }
                // A filter minijinja lacks here is an error, which is as good.
                Err(e) => assert!(!e.to_string().contains("pg_authid"), "{sql}: {e}"),
            }
        }
        let block = render(
            "{% set y %}{{ x }}{% endset %}SELECT {{ y }}",
            json!({"x": attack}),
        );
        if let Ok(r) = block {
            assert!(!r.sql.contains("pg_authid"), "{}", r.sql);
        }
    }

    #[test]
    fn conditions_evaluate_without_binds() {
        let mut t = Templates::new();
        t.add_condition("w", "include_shards and limit > 3")
            .unwrap();
        assert!(
            t.check("w", &json!({"include_shards": true, "limit": 4}))
                .unwrap()
        );
        assert!(
            !t.check("w", &json!({"include_shards": false, "limit": 4}))
                .unwrap()
        );
    }
}
