//! One tool or prompt file → a ready-to-serve [`CompiledTool`] / [`CompiledPrompt`],
//! plus every static problem found on the way.
//!
//! These are the checks `lint` reports and the registry enforces: the same function
//! runs in both places, so a file that lints clean loads, and vice versa.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use minijinja::value::Serde;
use serde_json::{Map, Value};

use crate::diagnostic::{Code, Diagnostic};
use crate::spec::{self, Paging, PromptSpec, Role, Safety, Shape, Target, ToolSpec};
use crate::template::{Rendered, Templates};

/// A file to load: where it came from and what it says.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// How diagnostics name the file, e.g. `tools.d/list_nodes.yaml` or an absolute path.
    pub origin: String,
    /// Shared, not copied, by the compiled tool and the registry that keeps it.
    pub text: Arc<str>,
}

impl SourceFile {
    /// The file name without folder and extension.
    pub fn stem(&self) -> &str {
        let name = self
            .origin
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(&self.origin);
        name.rsplit_once('.').map_or(name, |(stem, _)| stem)
    }
}

/// What a plugin reads from the tool file that names it in `plugin:`: the queries its
/// code runs, each the one way it runs it. The compiler holds a file to them, so a file
/// that lacks one, or declares it for another place, is refused when it loads rather
/// than failing a call; the engine holds the plugin to them on every call.
#[derive(Debug)]
pub struct PluginNeeds {
    pub name: &'static str,
    pub queries: &'static [(&'static str, Runs)],
}

/// How a plugin runs one of its queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Read-only on the coordinator (`target: coordinator`).
    Read,
    /// On every node (`target: workers` or `all_nodes`).
    FanOut,
    /// Read-write on the coordinator, under an approval (`safety: execute` tools).
    Execute,
}

impl Runs {
    /// Whether a query declared with `target` can run this way.
    fn fits(self, target: Target) -> bool {
        (self == Runs::FanOut) == (target != Target::Coordinator)
    }
}

/// A tool, validated and compiled, ready for the engine.
///
/// What only a call needs (the argument validator and the SQL templates) is compiled
/// by the tool's first call, so that startup pays for parsing alone and a tool nobody
/// calls costs no memory for them. A file compiled to [`Depth::Lint`] (every operator's
/// file) has it compiled already: its checks need it.
#[derive(Debug)]
pub struct CompiledTool {
    pub spec: ToolSpec,
    pub origin: String,
    /// The file's text, to tell a changed definition from a recompiled same one.
    pub source: Arc<str>,
    /// The input schema as MCP wants it (a JSON object).
    pub input_schema: Arc<Map<String, Value>>,
    pub output_schema: Option<Arc<Map<String, Value>>>,
    /// The queries the tool's plugin runs (none for a SQL tool).
    pub plugin_queries: &'static [(&'static str, Runs)],
    runnable: OnceLock<Result<Runnable, String>>,
}

/// The parts of a tool a call runs: its argument validator and its SQL templates.
#[derive(Debug)]
pub struct Runnable {
    pub validator: jsonschema::Validator,
    /// One SQL template per query (named by the query), plus `when:<query>` conditions.
    pub templates: Templates,
    /// The queries whose SQL reads `results` of earlier queries.
    pub reads_results: BTreeSet<String>,
}

impl Runnable {
    fn new(spec: &ToolSpec, validator: jsonschema::Validator, templates: Templates) -> Runnable {
        let reads_results = spec
            .queries
            .iter()
            .filter(|q| templates.references(&q.name, "results"))
            .map(|q| q.name.clone())
            .collect();
        Runnable {
            validator,
            templates,
            reads_results,
        }
    }

    /// Every problem with `args`, as `path: message` lines; empty when they are valid.
    pub fn argument_errors(&self, args: &Value) -> Vec<String> {
        let mut problems: Vec<String> = self
            .validator
            .iter_errors(args)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        nul_characters(args, &mut String::new(), &mut problems);
        problems
    }
}

/// Strings holding U+0000, which no PostgreSQL text value can: the database would refuse
/// the bind with an encoding error.
fn nul_characters(v: &Value, path: &mut String, problems: &mut Vec<String>) {
    let len = path.len();
    match v {
        Value::String(s) if s.contains('\0') => problems.push(format!(
            "{path}: contains the character U+0000, which PostgreSQL text cannot hold"
        )),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("/{i}"));
                nul_characters(item, path, problems);
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                nul_characters(item, path, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

impl CompiledTool {
    /// The validator and templates, compiled now if no call needed them yet. An error
    /// means the file's schema or a template does not compile: only a file loaded
    /// without its checks ([`Depth::Serve`], the built-ins, which the tests lint in
    /// full) can get that far.
    pub fn runnable(&self) -> Result<&Runnable, &str> {
        self.runnable
            .get_or_init(|| compile_runnable(self))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Whether what a call needs is compiled already.
    pub fn is_compiled(&self) -> bool {
        self.runnable.get().is_some()
    }

    /// The template context for `args`: the arguments with the schema's defaults applied.
    pub fn context(&self, args: &Map<String, Value>) -> Map<String, Value> {
        with_defaults(&self.spec.input_schema, args.clone())
    }

    /// Every problem with `args`, as `path: message` lines; empty when they are valid.
    pub fn argument_errors(&self, args: &Value) -> Vec<String> {
        match self.runnable() {
            Ok(r) => r.argument_errors(args),
            Err(e) => vec![e.to_string()],
        }
    }

    /// Renders every query an example reaches (first page, and a later keyset page).
    pub fn render_example(&self, args: &Value) -> Result<Vec<(String, Rendered)>, String> {
        let run = self.runnable()?;
        ProbeTool {
            spec: &self.spec,
            validator: &run.validator,
            templates: &run.templates,
        }
        .render_all(args)
    }

    /// The query that pages, if any.
    pub fn pager(&self) -> Option<(&spec::QuerySpec, &Paging)> {
        self.spec
            .queries
            .iter()
            .find_map(|q| q.paging.as_ref().map(|p| (q, p)))
    }
}

/// Builds what the process's first tool compile would otherwise build on a call's time:
/// jsonschema's meta-schema validator and its registry of specifications (about 1.5 ms,
/// once per process; later compiles reuse them).
pub fn warm_up() {
    let _ = validator_options().build(&serde_json::json!({"type": "object"}));
}

/// Compiles a tool's validator and templates, for a tool whose file was loaded without
/// them; any problem is an error message.
fn compile_runnable(tool: &CompiledTool) -> Result<Runnable, String> {
    let file = SourceFile {
        origin: tool.origin.clone(),
        text: Arc::from(""),
    };
    let mut ck = Findings {
        file: &file,
        out: Vec::new(),
    };
    let validator = build_validator(&mut ck, &tool.spec);
    let templates = compile_templates(&mut ck, &tool.spec);
    match validator {
        Some(v) if !ck.has_errors() => Ok(Runnable::new(&tool.spec, v, templates)),
        _ => {
            let problems: Vec<String> = ck.out.iter().map(|d| d.message.clone()).collect();
            Err(format!(
                "tool `{}` does not compile: {}",
                tool.spec.name,
                problems.join("; ")
            ))
        }
    }
}

/// A prompt, validated and compiled.
#[derive(Debug)]
pub struct CompiledPrompt {
    pub spec: PromptSpec,
    pub origin: String,
    /// The file's text, to tell a changed definition from a recompiled same one.
    pub source: Arc<str>,
    env: PromptEnv,
}

struct PromptEnv(minijinja::Environment<'static>);

impl std::fmt::Debug for PromptEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PromptEnv")
    }
}

impl CompiledPrompt {
    /// The messages with the arguments filled in.
    pub fn render(&self, args: &Map<String, Value>) -> Result<Vec<(Role, String)>, String> {
        for arg in &self.spec.arguments {
            if arg.required && !args.contains_key(&arg.name) {
                return Err(format!("missing required argument `{}`", arg.name));
            }
        }
        if let Some(unknown) = args
            .keys()
            .find(|k| !self.spec.arguments.iter().any(|a| &a.name == *k))
        {
            return Err(format!("unknown argument `{unknown}`"));
        }
        // MCP's prompt arguments are strings; each is pasted into the prompt's text, which
        // a model reads whole.
        for (name, v) in args {
            let Value::String(text) = v else {
                return Err(format!("argument `{name}` must be a string"));
            };
            if text.chars().count() > MAX_PROMPT_ARGUMENT_CHARS {
                return Err(format!(
                    "argument `{name}` is longer than {MAX_PROMPT_ARGUMENT_CHARS} characters"
                ));
            }
            // Line breaks (a pasted query, from any platform) and tabs are text.
            if text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            {
                return Err(format!("argument `{name}` holds control characters"));
            }
        }
        self.spec
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let t = self
                    .env
                    .0
                    .get_template(&i.to_string())
                    .map_err(|e| e.to_string())?;
                let text = t
                    .render(minijinja::Value::from(Serde(args)))
                    .map_err(|e| e.to_string())?;
                Ok((m.role, text.trim().to_string()))
            })
            .collect()
    }
}

/// The longest prompt argument: a table name, a query's text or a question.
pub const MAX_PROMPT_ARGUMENT_CHARS: usize = 10_000;

/// How much a compile checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything lint checks: examples rendered and parsed, every template branch parsed.
    Lint,
    /// What describing the tool needs (the spec, query names, paging, resources, the
    /// execute guard); the schema and templates are compiled on first use and the
    /// rendering checks are skipped. For built-in files, which the tests lint in full
    /// (`registry::tests::builtins_compile_without_findings`): startup does not pay for it.
    Serve,
}

/// Compiles a tool file; `None` when any error was found (warnings still compile).
pub fn compile_tool(
    file: &SourceFile,
    plugins: &'static [PluginNeeds],
) -> (Option<CompiledTool>, Vec<Diagnostic>) {
    compile_tool_to(file, plugins, Depth::Lint)
}

/// [`compile_tool`] to the given depth.
pub fn compile_tool_to(
    file: &SourceFile,
    plugins: &'static [PluginNeeds],
    depth: Depth,
) -> (Option<CompiledTool>, Vec<Diagnostic>) {
    match spec::parse_tool(&file.origin, &file.text) {
        Ok(spec) => compile_spec(file, spec, plugins, depth),
        Err(d) => (None, d),
    }
}

/// Compiles a tool from its file's parsed `spec` (so that a caller who needed the spec
/// first, to see its name, does not parse the file twice).
pub fn compile_spec(
    file: &SourceFile,
    spec: ToolSpec,
    plugins: &'static [PluginNeeds],
    depth: Depth,
) -> (Option<CompiledTool>, Vec<Diagnostic>) {
    let mut ck = Findings {
        file,
        out: Vec::new(),
    };
    check_header(&mut ck, &spec);
    let plugin_queries = check_plugin(&mut ck, &spec, plugins);
    let mut runnable = None;
    match depth {
        Depth::Lint => {
            let validator = compile_input_schema(&mut ck, &spec);
            let templates = compile_templates(&mut ck, &spec);
            check_paging(&mut ck, &spec);
            check_resources(&mut ck, &spec);
            check_execute_guard(&mut ck, &spec);
            check_branches(&mut ck, &spec);
            // Examples only make sense once the tool itself compiled.
            if let (Some(v), false) = (&validator, ck.has_errors()) {
                check_examples(&mut ck, &spec, v, &templates);
            }
            match validator {
                Some(v) => runnable = Some(Runnable::new(&spec, v, templates)),
                None => return (None, dedup(ck.out)),
            }
        }
        Depth::Serve => {
            check_queries(&mut ck, &spec, None);
            check_paging(&mut ck, &spec);
            check_resources(&mut ck, &spec);
            check_execute_guard(&mut ck, &spec);
        }
    }

    let out = dedup(ck.out);
    if out.iter().any(Diagnostic::is_error) {
        return (None, out);
    }
    let input_schema = Arc::new(spec.input_schema.as_object().cloned().unwrap_or_default());
    let output_schema = spec
        .output_schema
        .as_ref()
        .and_then(|v| v.as_object().cloned())
        .map(Arc::new);
    let tool = CompiledTool {
        origin: file.origin.clone(),
        source: file.text.clone(),
        input_schema,
        output_schema,
        plugin_queries,
        runnable: match runnable {
            Some(r) => OnceLock::from(Ok(r)),
            None => OnceLock::new(),
        },
        spec,
    };
    (Some(tool), out)
}

/// The findings about one file, each pointing into its text.
struct Findings<'a> {
    file: &'a SourceFile,
    out: Vec<Diagnostic>,
}

impl Findings<'_> {
    /// Records a finding at the place a JSON pointer names (or the first that exists).
    fn add(&mut self, code: Code, pointers: &[&str], message: String) -> &mut Diagnostic {
        let at = pointers
            .iter()
            .find_map(|p| spec::locate(&self.file.text, p));
        self.out
            .push(Diagnostic::new(code, &self.file.origin, message).at(at));
        self.out.last_mut().expect("just pushed")
    }

    fn has_errors(&self) -> bool {
        self.out.iter().any(Diagnostic::is_error)
    }
}

/// The file name and examples.
fn check_header(ck: &mut Findings, spec: &ToolSpec) {
    let stem = ck.file.stem().to_string();
    if stem != spec.name {
        let d = ck.add(
            Code::W001,
            &["/name"],
            format!("tool `{}` lives in a file named `{stem}`", spec.name),
        );
        d.help = Some(format!("rename the file to `{}.yaml`", spec.name));
    }
    if spec.examples.is_empty() {
        let d = ck.add(
            Code::W002,
            &["/examples", "/name"],
            format!("tool `{}` has no examples", spec.name),
        );
        d.help =
            Some("add `examples: [{args: {...}}]`; the generic test runs every example".into());
    }
}

/// The plugin a file names exists, and the file declares the queries it runs, each
/// where the plugin runs it; returns them for the engine.
fn check_plugin(
    ck: &mut Findings,
    spec: &ToolSpec,
    plugins: &'static [PluginNeeds],
) -> &'static [(&'static str, Runs)] {
    let Some(p) = &spec.plugin else {
        return &[];
    };
    let Some(needs) = plugins.iter().find(|n| n.name == p) else {
        let d = ck.add(Code::E002, &["/plugin"], format!("unknown plugin `{p}`"));
        let known: Vec<&str> = plugins.iter().map(|n| n.name).collect();
        d.help = Some(format!("known plugins: {}", known.join(", ")));
        return &[];
    };
    let runs: Vec<&str> = needs.queries.iter().map(|(q, _)| *q).collect();
    let runs_text = if runs.is_empty() {
        "the plugin runs no query".to_string()
    } else {
        format!("the plugin runs: {}", runs.join(", "))
    };
    if let Some((name, _)) = needs.queries.iter().find(|(_, how)| *how == Runs::Execute)
        && spec.safety != Safety::Execute
    {
        let d = ck.add(
            Code::E016,
            &["/safety", "/plugin"],
            format!("plugin `{p}` changes the cluster (query `{name}`), but the tool is not `safety: execute`"),
        );
        d.help =
            Some("declare `safety: execute`: the engine then asks for an approval token".into());
    }
    for &(name, how) in needs.queries {
        let Some(qi) = spec.queries.iter().position(|q| q.name == name) else {
            let d = ck.add(
                Code::E016,
                &["/queries", "/plugin"],
                format!("plugin `{p}` runs query `{name}`, which the file does not declare"),
            );
            d.help = Some(format!(
                "add a query named `{name}`{}; {runs_text}",
                if how == Runs::FanOut {
                    " with `target: workers` or `all_nodes`"
                } else {
                    ""
                },
            ));
            continue;
        };
        let target = spec.queries[qi].target.unwrap_or(spec.target);
        if !how.fits(target) {
            let at = format!("/queries/{qi}/target");
            let d = ck.add(
                Code::E016,
                &[&at, &format!("/queries/{qi}")],
                format!(
                    "plugin `{p}` runs query `{name}` {}, but the file's target for it is {}",
                    if how == Runs::FanOut {
                        "on every node"
                    } else {
                        "on the coordinator"
                    },
                    target.as_str()
                ),
            );
            d.help = Some(if how == Runs::FanOut {
                "declare it `target: workers` or `target: all_nodes`".into()
            } else {
                "remove its `target:` (the coordinator is the default)".into()
            });
        }
    }
    for (qi, q) in spec.queries.iter().enumerate() {
        if !runs.contains(&q.name.as_str()) {
            let d = ck.add(
                Code::W005,
                &[&format!("/queries/{qi}/name")],
                format!("plugin `{p}` never runs query `{}`", q.name),
            );
            d.help = Some(format!("remove it, or fix its name; {runs_text}"));
        }
    }
    needs.queries
}

/// The input schema must itself be a valid JSON Schema (of type object, which the
/// meta-schema already checked); so must an output schema.
fn compile_input_schema(ck: &mut Findings, spec: &ToolSpec) -> Option<jsonschema::Validator> {
    if let Some(out_schema) = &spec.output_schema
        && let Err(e) = jsonschema::meta::validate(out_schema)
    {
        ck.add(
            Code::E003,
            &["/output_schema"],
            format!("output_schema is not a valid JSON Schema: {e}"),
        );
    }
    if let Err(e) = jsonschema::meta::validate(&spec.input_schema) {
        let pointer = format!("/input_schema{}", e.instance_path());
        ck.add(
            Code::E003,
            &[&pointer, "/input_schema"],
            format!("input_schema is not a valid JSON Schema: {e}"),
        );
        return None;
    }
    build_validator(ck, spec)
}

/// How every tool's arguments are checked: formats too (`format: date-time` is a check,
/// not a note).
fn validator_options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options().should_validate_formats(true)
}

/// The argument validator of a tool whose input schema is a JSON Schema.
fn build_validator(ck: &mut Findings, spec: &ToolSpec) -> Option<jsonschema::Validator> {
    match validator_options().build(&spec.input_schema) {
        Ok(v) => Some(v),
        Err(e) => {
            ck.add(
                Code::E003,
                &["/input_schema"],
                format!("input_schema does not compile: {e}"),
            );
            None
        }
    }
}

/// Every query's SQL and `when` compile (into `templates`, when given); names are
/// unique; `on_empty` fits the shape.
fn check_queries(ck: &mut Findings, spec: &ToolSpec, mut templates: Option<&mut Templates>) {
    let mut names = BTreeSet::new();
    for (i, q) in spec.queries.iter().enumerate() {
        if !names.insert(q.name.as_str()) {
            ck.add(
                Code::E004,
                &[&format!("/queries/{i}/name")],
                format!("two queries are named `{}`", q.name),
            );
        }
        if crate::engine::shape::RESULT_KEYS.contains(&q.name.as_str()) {
            ck.add(
                Code::E004,
                &[&format!("/queries/{i}/name")],
                format!(
                    "query `{}` is named like a key every result has, which would replace its rows; name it otherwise",
                    q.name
                ),
            );
        }
        let Some(templates) = templates.as_deref_mut() else {
            check_on_empty(ck, i, q);
            continue;
        };
        if let Err(e) = templates.add_sql(&q.name, &q.sql) {
            ck.add(
                Code::E005,
                &[&format!("/queries/{i}/sql")],
                format!("query `{}` does not compile: {e}", q.name),
            );
        }
        if let Some(when) = &q.when
            && let Err(e) = templates.add_condition(&format!("when:{}", q.name), when)
        {
            let message = format!("`when` of query `{}` does not compile: {e}", q.name);
            ck.add(Code::E005, &[&format!("/queries/{i}/when")], message);
        }
        check_on_empty(ck, i, q);
    }
}

/// Every query's SQL and `when`, compiled into one set of templates.
fn compile_templates(ck: &mut Findings, spec: &ToolSpec) -> Templates {
    let mut templates = Templates::new();
    check_queries(ck, spec, Some(&mut templates));
    templates
}

/// `on_empty` applies to a query that returns one row or one value.
fn check_on_empty(ck: &mut Findings, i: usize, q: &spec::QuerySpec) {
    if q.on_empty.is_some() && q.shape == Shape::Many {
        let message = format!("query `{}` has on_empty but shape many", q.name);
        let d = ck.add(Code::E002, &[&format!("/queries/{i}/on_empty")], message);
        d.help = Some("on_empty applies to `shape: one` or `shape: value`".into());
    }
}

/// A resource URI's `{variables}` are arguments of the tool.
fn check_resources(ck: &mut Findings, spec: &ToolSpec) {
    let props = spec
        .input_schema
        .get("properties")
        .and_then(Value::as_object);
    for (i, r) in spec.resources.iter().enumerate() {
        for var in r.variables() {
            if !props.is_some_and(|p| p.contains_key(var)) {
                let message = format!(
                    "resource `{}` uses `{{{var}}}`, which is not a property of input_schema",
                    r.uri
                );
                ck.add(Code::E002, &[&format!("/resources/{i}/uri")], message);
            }
        }
    }
}

/// An execute tool takes a required `approval_token`.
fn check_execute_guard(ck: &mut Findings, spec: &ToolSpec) {
    if spec.safety != Safety::Execute {
        return;
    }
    let declared = spec
        .input_schema
        .pointer("/properties/approval_token")
        .is_some();
    let required = spec
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v == "approval_token"));
    if !(declared && required) {
        let message = format!(
            "execute tool `{}` does not require an approval_token",
            spec.name
        );
        let d = ck.add(Code::E010, &["/input_schema", "/safety"], message);
        d.help = Some("add a required `approval_token: {type: string}` property".into());
    }
}

/// Every example validates and renders, and what it renders keeps its binds out of
/// literals, does not write (unless the tool executes) and, for fan-out, has no binds.
/// Most branch combinations read per query; past it, the first ones are read.
const MAX_VARIANTS: usize = 4096;

/// Every branch of every query, not only those the examples take, read by
/// PostgreSQL's grammar: none may hold more than one statement, and none of a read-only
/// or plan tool may write. A combination that does not parse is skipped (branches can
/// depend on each other in ways the template's tags do not show); examples must parse.
fn check_branches(ck: &mut Findings, spec: &ToolSpec) {
    for (qi, q) in spec.queries.iter().enumerate() {
        let sql_at = format!("/queries/{qi}/sql");
        let Some(variants) = crate::branches::variants(&q.sql, MAX_VARIANTS) else {
            continue;
        };
        let mut reported = (false, false);
        for text in variants {
            let Ok(parsed) = crate::sql::parse(&text) else {
                continue;
            };
            if parsed.len() > 1 && !reported.0 {
                reported.0 = true;
                let d = ck.add(
                    Code::E014,
                    &[&sql_at],
                    format!(
                        "a branch of query `{}` holds {} statements: {}",
                        q.name,
                        parsed.len(),
                        excerpt(&text)
                    ),
                );
                d.help = Some("one query, one statement, whatever the arguments".into());
            }
            if spec.safety != Safety::Execute
                && !reported.1
                && let Some(word) = parsed.writes()
            {
                reported.1 = true;
                let d = ck.add(
                    Code::E009,
                    &[&sql_at],
                    format!(
                        "a branch of {} query `{}` writes ({word}): {}",
                        safety_name(spec.safety),
                        q.name,
                        excerpt(&text)
                    ),
                );
                d.help = Some("every branch of a read-only or plan tool must only read".into());
            }
        }
    }
}

/// The start of a statement, on one line, for a message: its secrets masked first (a
/// tool file's SQL may hold a password, and its errors reach `server_info` and the log).
fn excerpt(sql: &str) -> String {
    let masked = crate::redact::secrets(sql);
    let flat = masked.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn check_examples(
    ck: &mut Findings,
    spec: &ToolSpec,
    validator: &jsonschema::Validator,
    templates: &Templates,
) {
    let probe = ProbeTool {
        spec,
        validator,
        templates,
    };
    let mut checked = std::collections::HashSet::new();
    if spec.plugin.is_some() {
        // A plugin's queries take what the plugin gives them, not the tool's arguments.
        for (qi, q) in spec.queries.iter().enumerate() {
            let at = format!("/queries/{qi}");
            let Some(vars) = &q.example else {
                let d = ck.add(
                    Code::E008,
                    &[&at],
                    format!(
                        "plugin query `{}` has no `example` to render it with",
                        q.name
                    ),
                );
                d.help =
                    Some("add `example:` with the template variables the plugin passes".into());
                continue;
            };
            match templates.render(&q.name, &Value::Object(vars.clone())) {
                Ok(r) => check_rendered(ck, spec, &q.name, &r),
                Err(e) => {
                    ck.add(
                        Code::E008,
                        &[&at],
                        format!("plugin query `{}` does not render its example: {e}", q.name),
                    );
                }
            }
        }
    }
    for (i, ex) in spec.examples.iter().enumerate() {
        let here = format!("/examples/{i}");
        let errors: Vec<String> = validator
            .iter_errors(&ex.args)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            if ex.expect.error.as_deref() != Some("INVALID_ARGUMENT") {
                let message = format!(
                    "example {} does not match input_schema: {}",
                    i + 1,
                    errors.join("; ")
                );
                ck.add(Code::E007, &[&here], message);
            }
            continue;
        }
        match probe.render_all(&ex.args) {
            Err(e) => {
                ck.add(
                    Code::E008,
                    &[&here],
                    format!("example {} does not render: {e}", i + 1),
                );
            }
            Ok(rendered) => {
                for (query, r) in rendered {
                    // Examples often render the same text; check each text once.
                    if checked.insert((query.clone(), r.sql.clone())) {
                        check_rendered(ck, spec, &query, &r);
                    }
                }
            }
        }
    }
}

fn check_rendered(ck: &mut Findings, spec: &ToolSpec, query: &str, r: &Rendered) {
    let qi = spec
        .queries
        .iter()
        .position(|q| q.name == query)
        .unwrap_or(0);
    let sql_at = format!("/queries/{qi}/sql");
    if spec.queries[qi].target.unwrap_or(spec.target) != Target::Coordinator && !r.binds.is_empty()
    {
        let d = ck.add(
            Code::E013,
            &[&sql_at],
            format!("query `{query}` runs on every node but takes bind parameters"),
        );
        d.help = Some("fan-out queries reach the nodes through run_command_on_workers, which takes no parameters: filter on the coordinator in a later query over `results`".into());
    }
    let bad = crate::sql::placeholders_outside_code(&r.sql);
    if !bad.is_empty() {
        let d = ck.add(
            Code::E006,
            &[&sql_at],
            format!(
                "query `{query}` renders {} inside a literal or comment",
                bad.join(", ")
            ),
        );
        d.help = Some("put `{{ value }}` where a value goes, never inside quotes: it is always a bind parameter".into());
    }
    let parsed = match crate::sql::parse(&r.sql) {
        Ok(p) if p.len() == 1 => p,
        Ok(p) => {
            let d = ck.add(
                Code::E014,
                &[&sql_at],
                format!("query `{query}` holds {} statements", p.len()),
            );
            d.help = Some("one query, one statement: split it into several queries".into());
            return;
        }
        Err(e) => {
            let d = ck.add(Code::E014, &[&sql_at], format!("query `{query}`: {e}"));
            d.help = Some("the rendered SQL must be one statement PostgreSQL accepts".into());
            return;
        }
    };
    if spec.safety != Safety::Execute
        && let Some(word) = parsed.writes()
    {
        let message = format!(
            "{} query `{query}` contains `{word}`, which writes",
            safety_name(spec.safety)
        );
        let d = ck.add(Code::E009, &[&sql_at], message);
        d.help = Some(
            "read-only and plan tools run in READ ONLY transactions; make it an execute tool"
                .into(),
        );
    }
    // Where the statement itself names its columns (an alias, a column reference); `lint
    // --db` also sees the names PostgreSQL gives the rest.
    let names = parsed.output_names();
    let known = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "?column?");
    if let Some(name) = named_twice(known) {
        let d = ck.add(Code::W004, &[&sql_at], named_twice_message(query, name));
        d.help = Some(NAMED_TWICE_HELP.into());
    }
}

/// The first result column name that comes twice (W004): a row's object keeps one of them.
pub(crate) fn named_twice<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// W004's message, from the SQL or from the prepared statement.
pub(crate) fn named_twice_message(query: &str, name: &str) -> String {
    format!(
        "query `{query}` returns two columns named `{name}`: each row keeps only the later one's value"
    )
}

pub(crate) const NAMED_TWICE_HELP: &str = "give each column its own name with AS";

fn dedup(mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = BTreeSet::new();
    d.retain(|x| seen.insert((x.code.as_str(), x.message.clone())));
    d
}

fn safety_name(s: Safety) -> &'static str {
    match s {
        Safety::ReadOnly => "read_only",
        Safety::Plan => "plan",
        Safety::Execute => "execute",
    }
}

/// Renders every query of a spec that is not yet a [`CompiledTool`].
struct ProbeTool<'a> {
    spec: &'a ToolSpec,
    validator: &'a jsonschema::Validator,
    templates: &'a Templates,
}

impl ProbeTool<'_> {
    /// Renders every query the example reaches, on a first page and (for keyset
    /// paging) on a later page too, so both branches of `page.after` are checked.
    fn render_all(&self, args: &Value) -> Result<Vec<(String, Rendered)>, String> {
        debug_assert!(self.validator.is_valid(args));
        if self.spec.plugin.is_some() {
            // A plugin's queries are rendered with their own `example`, not with the
            // tool's arguments (see check_examples).
            return Ok(Vec::new());
        }
        let args = with_defaults(
            &self.spec.input_schema,
            args.as_object().cloned().unwrap_or_default(),
        );
        let mut out = Vec::new();
        let pages: &[bool] = match self.spec.queries.iter().find_map(|q| q.paging.as_ref()) {
            Some(Paging::Keyset(_)) => &[false, true],
            _ => &[false],
        };
        for &later in pages {
            out.extend(self.render_page(&args, later)?);
        }
        Ok(out)
    }

    fn render_page(
        &self,
        args: &Map<String, Value>,
        later: bool,
    ) -> Result<Vec<(String, Rendered)>, String> {
        let mut ctx = args.clone();
        if let Some(paging) = self.spec.queries.iter().find_map(|q| q.paging.as_ref()) {
            let mut page = Map::new();
            page.insert("size".into(), Value::from(10));
            match paging {
                Paging::Offset => {
                    page.insert("offset".into(), Value::from(0));
                }
                Paging::Keyset(cols) if later => {
                    let after = cols
                        .iter()
                        .map(|c| (c.clone(), Value::from("probe")))
                        .collect();
                    page.insert("after".into(), Value::Object(after));
                }
                Paging::Keyset(_) => {}
            }
            ctx.insert("page".into(), Value::Object(page));
        }
        // Later queries may read the rows of earlier ones.
        let results = self
            .spec
            .queries
            .iter()
            .map(|q| (q.name.clone(), Value::Array(vec![])))
            .collect();
        ctx.insert("results".into(), Value::Object(results));
        let ctx = Value::Object(ctx);
        let mut out = Vec::new();
        for q in &self.spec.queries {
            if q.when.is_some()
                && !self
                    .templates
                    .check(&format!("when:{}", q.name), &ctx)
                    .map_err(|e| e.to_string())?
            {
                continue;
            }
            out.push((
                q.name.clone(),
                self.templates
                    .render(&q.name, &ctx)
                    .map_err(|e| e.to_string())?,
            ));
        }
        Ok(out)
    }
}

/// `args` with the `default` of every top-level property of `schema` filled in.
pub fn with_defaults(schema: &Value, mut args: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            if let Some(default) = prop.get("default") {
                args.entry(name.clone()).or_insert_with(|| default.clone());
            }
        }
    }
    args
}

/// At most one query pages, it has shape many, and the tool takes the paging arguments.
fn check_paging(ck: &mut Findings, spec: &ToolSpec) {
    let pagers: Vec<usize> = spec
        .queries
        .iter()
        .enumerate()
        .filter(|(_, q)| q.paging.is_some())
        .map(|(i, _)| i)
        .collect();
    for &i in pagers.iter().skip(1) {
        ck.add(
            Code::E012,
            &[&format!("/queries/{i}/paging")],
            "only one query of a tool may page".into(),
        );
    }
    let Some(&i) = pagers.first() else { return };
    let q = &spec.queries[i];
    let at = format!("/queries/{i}/paging");
    if q.shape != Shape::Many {
        ck.add(
            Code::E012,
            &[&at],
            format!("query `{}` pages but is not `shape: many`", q.name),
        );
    }
    let needed: &[&str] = match q.paging {
        Some(Paging::Offset) => &["limit", "offset"],
        _ => &["limit", "cursor"],
    };
    for p in needed {
        if spec
            .input_schema
            .pointer(&format!("/properties/{p}"))
            .is_none()
        {
            let d = ck.add(
                Code::E012,
                &[&at],
                format!(
                    "query `{}` pages but input_schema has no `{p}` property",
                    q.name
                ),
            );
            d.help = Some("paging tools take `limit` and `offset` (offset paging) or `limit` and `cursor` (keyset paging)".into());
        }
    }
}

/// Compiles a prompt file.
pub fn compile_prompt(file: &SourceFile) -> (Option<CompiledPrompt>, Vec<Diagnostic>) {
    match spec::parse_prompt(&file.origin, &file.text) {
        Ok(spec) => compile_prompt_spec(file, spec),
        Err(d) => (None, d),
    }
}

/// Compiles a prompt from its file's parsed `spec`.
pub fn compile_prompt_spec(
    file: &SourceFile,
    spec: PromptSpec,
) -> (Option<CompiledPrompt>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    for (i, m) in spec.messages.iter().enumerate() {
        if let Err(e) = env.add_template_owned(i.to_string(), m.text.clone()) {
            out.push(
                Diagnostic::new(
                    Code::E005,
                    &file.origin,
                    format!("message {} does not compile: {e}", i + 1),
                )
                .at(spec::locate(&file.text, &format!("/messages/{i}/text"))),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, a) in spec.arguments.iter().enumerate() {
        if !seen.insert(a.name.as_str()) {
            out.push(
                Diagnostic::new(
                    Code::E004,
                    &file.origin,
                    format!("argument `{}` is declared twice", a.name),
                )
                .at(spec::locate(&file.text, &format!("/arguments/{i}/name"))),
            );
        }
    }
    if file.stem() != spec.name {
        out.push(
            Diagnostic::new(
                Code::W001,
                &file.origin,
                format!(
                    "prompt `{}` lives in a file named `{}`",
                    spec.name,
                    file.stem()
                ),
            )
            .help(format!("rename the file to `{}.yaml`", spec.name)),
        );
    }
    if out.iter().any(Diagnostic::is_error) {
        return (None, out);
    }
    (
        Some(CompiledPrompt {
            origin: file.origin.clone(),
            source: file.text.clone(),
            spec,
            env: PromptEnv(env),
        }),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> SourceFile {
        SourceFile {
            origin: format!("tools.d/{name}.yaml"),
            text: text.into(),
        }
    }

    const TOOL: &str = r#"
name: demo
description: A demo.
safety: read_only
input_schema:
  type: object
  additionalProperties: false
  properties:
    table: {type: string}
    limit: {type: integer, default: 5}
queries:
  - name: rows
    sql: SELECT * FROM t WHERE name = {{ table }} LIMIT {{ limit }}
examples:
  - args: {table: x}
"#;

    /// A plugin tool is held to the queries its plugin runs: each declared, each where
    /// the plugin runs it, and an execute-class tool where the plugin writes.
    #[test]
    fn a_plugin_tool_declares_what_its_plugin_runs() {
        const NEEDS: &[PluginNeeds] = &[PluginNeeds {
            name: "demo",
            queries: &[
                ("one", Runs::Read),
                ("all", Runs::FanOut),
                ("act", Runs::Execute),
            ],
        }];
        let tool = |safety: &str, queries: &str| {
            let text = format!(
                "name: demo\ndescription: d\nsafety: {safety}\ninput_schema: {{type: object, properties: {{approval_token: {{type: string}}}}, required: [approval_token]}}\nplugin: demo\nqueries:\n{queries}examples:\n  - args: {{approval_token: x}}\n"
            );
            let (t, d) = compile_tool(&file("demo", &text), NEEDS);
            let found: Vec<String> = d
                .iter()
                .map(|d| format!("{} {}", d.code.as_str(), d.message))
                .collect();
            (t, found)
        };
        let q = |name: &str, target: &str| {
            format!("  - name: {name}\n    example: {{}}\n{target}    sql: SELECT 1 AS x\n")
        };
        let all = format!(
            "{}{}{}",
            q("one", ""),
            q("all", "    target: workers\n"),
            q("act", "")
        );
        let (t, found) = tool("execute", &all);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(t.unwrap().plugin_queries, NEEDS[0].queries);

        let (t, found) = tool("execute", &format!("{}{}", q("one", ""), q("act", "")));
        assert!(t.is_none());
        assert_eq!(
            found,
            ["E016 plugin `demo` runs query `all`, which the file does not declare"]
        );

        let (t, found) = tool(
            "execute",
            &format!(
                "{}{}{}",
                q("one", "    target: all_nodes\n"),
                q("all", ""),
                q("act", "")
            ),
        );
        assert!(t.is_none());
        assert_eq!(
            found,
            [
                "E016 plugin `demo` runs query `one` on the coordinator, but the file's target for it is all_nodes",
                "E016 plugin `demo` runs query `all` on every node, but the file's target for it is coordinator",
            ]
        );

        let (t, found) = tool("plan", &all);
        assert!(t.is_none());
        assert_eq!(
            found,
            [
                "E016 plugin `demo` changes the cluster (query `act`), but the tool is not `safety: execute`"
            ]
        );

        // A query the plugin never runs is only a warning: the tool still loads.
        let (t, found) = tool("execute", &format!("{all}{}", q("spare", "")));
        assert!(t.is_some());
        assert_eq!(found, ["W005 plugin `demo` never runs query `spare`"]);
    }

    /// A refused statement is quoted in the finding, which reaches `server_info` and the
    /// log: whatever secret its text holds is masked there.
    #[test]
    fn a_quoted_statement_keeps_its_secrets() {
        let text = r#"
name: demo
description: d
safety: read_only
input_schema: {type: object}
queries:
  - name: q
    sql: "INSERT INTO audit SELECT * FROM dblink('host=h user=app password=FilePW1', 'select 1') AS t(x int)"
  - name: q2
    sql: "ALTER ROLE app PASSWORD 'FilePW2'"
  - name: q3
    sql: "SELECT 'password=FilePW3' AS x; SELECT 2"
examples:
  - args: {}
"#;
        let (_, diags) = compile_tool(&file("demo", text), &[]);
        let found: Vec<String> = diags
            .iter()
            .map(|d| format!("{} {}", d.code.as_str(), d.message))
            .collect();
        assert_eq!(
            found
                .iter()
                .filter(|f| f.starts_with("E009") || f.starts_with("E014"))
                .count(),
            3,
            "{found:#?}"
        );
        assert!(found.iter().all(|f| !f.contains("FilePW")), "{found:#?}");
    }

    #[test]
    fn a_good_tool_compiles_clean() {
        let (tool, diags) = compile_tool(&file("demo", TOOL), &[]);
        assert!(diags.is_empty(), "{diags:?}");
        let tool = tool.unwrap();
        let ctx = tool.context(serde_json::json!({"table": "x"}).as_object().unwrap());
        assert_eq!(ctx["limit"], 5);
    }

    fn codes(text: &str) -> Vec<&'static str> {
        compile_tool(&file("demo", text), &[])
            .1
            .iter()
            .map(|d| d.code.as_str())
            .collect()
    }

    #[test]
    fn two_columns_of_one_name_are_w004() {
        let sql = "SELECT * FROM t WHERE name = {{ table }} LIMIT {{ limit }}";
        for twice in [
            "SELECT a.id, b.id FROM a, b WHERE a.name = {{ table }} LIMIT {{ limit }}",
            "SELECT 1 AS n, name AS n FROM t WHERE name = {{ table }} LIMIT {{ limit }}",
        ] {
            assert_eq!(codes(&TOOL.replace(sql, twice)), vec!["W004"], "{twice}");
        }
        // Names the statement does not give (stars, expressions) are left to `lint --db`.
        for once in [
            "SELECT a.*, b.* FROM a, b WHERE a.name = {{ table }} LIMIT {{ limit }}",
            "SELECT 1 + 1, 2 + 2, a.id AS x, b.id AS y FROM a, b WHERE a.name = {{ table }} LIMIT {{ limit }}",
        ] {
            assert!(codes(&TOOL.replace(sql, once)).is_empty(), "{once}");
        }
    }

    #[test]
    fn a_query_named_like_a_key_of_every_result_is_e004() {
        for key in crate::engine::shape::RESULT_KEYS {
            let named = TOOL.replace("  - name: rows", &format!("  - name: {key}"));
            assert_eq!(codes(&named), vec!["E004"], "{key}");
        }
    }

    #[test]
    fn binds_inside_quotes_are_e006() {
        assert_eq!(
            codes(&TOOL.replace("name = {{ table }}", "name = '{{ table }}'")),
            vec!["E006"]
        );
    }

    #[test]
    fn writes_in_read_only_tools_are_e009() {
        let sql = "SELECT * FROM t WHERE name = {{ table }} LIMIT {{ limit }}";
        for writing in [
            "DELETE FROM t WHERE name = {{ table }} AND {{ limit }} > 0",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d WHERE name = {{ table }} LIMIT {{ limit }}",
            "SELECT * FROM t WHERE name = {{ table }} LIMIT {{ limit }} FOR UPDATE",
            "SELECT * INTO t2 FROM t WHERE name = {{ table }} LIMIT {{ limit }}",
        ] {
            assert_eq!(
                codes(&TOOL.replace(sql, writing)),
                vec!["E009"],
                "{writing}"
            );
        }
        // A write in a branch that no example takes is found too.
        let branchy = TOOL.replace(
            sql,
            "WITH x AS (SELECT 1) {% if table == 'zap' %}DELETE FROM t WHERE name = {{ table }} AND {{ limit }} > 0{% else %}SELECT * FROM t WHERE name = {{ table }} LIMIT {{ limit }}{% endif %}",
        );
        assert_eq!(codes(&branchy), vec!["E009"]);
        let split = TOOL.replace(
            sql,
            &format!("{sql}{{% if table == 'zap' %}}; DELETE FROM t{{% endif %}}"),
        );
        assert_eq!(codes(&split), vec!["E014", "E009"]);
        // Not one statement: E014 (and E009 when one of them writes).
        assert_eq!(
            codes(&TOOL.replace(sql, &format!("{sql}; SELECT 2"))),
            vec!["E014"]
        );
        assert_eq!(codes(&TOOL.replace(sql, "SELEC {{ table }}")), vec!["E014"]);
        // A word inside a literal or comment is not a write.
        assert!(codes(&TOOL.replace("SELECT *", "SELECT 'delete' AS x, * /* drop */")).is_empty());
    }

    #[test]
    fn bad_examples_and_templates_are_reported() {
        assert_eq!(
            codes(&TOOL.replace("args: {table: x}", "args: {table: 3}")),
            vec!["E007"]
        );
        assert_eq!(
            codes(&TOOL.replace("{{ limit }}", "{{ limit }")),
            vec!["E005"]
        );
        assert_eq!(
            codes(&TOOL.replace("{{ limit }}", "{{ nope }}")),
            vec!["E008"]
        );
        assert_eq!(
            codes(&TOOL.replace("type: object\n", "type: objekt\n")),
            vec!["E002"]
        );
    }

    #[test]
    fn name_must_match_file_and_execute_needs_a_token() {
        let (tool, d) = compile_tool(&file("other", TOOL), &[]);
        assert!(tool.is_some());
        assert_eq!(d[0].code, Code::W001);
        assert!(codes(&TOOL.replace("read_only", "execute")).contains(&"E010"));
    }

    #[test]
    fn prompts_render_arguments() {
        let text = "name: demo\ndescription: d\narguments: [{name: table, required: true}]\nmessages:\n  - role: user\n    text: Look at {{ table }}.\n";
        let (p, d) = compile_prompt(&SourceFile {
            origin: "prompts.d/demo.yaml".into(),
            text: text.into(),
        });
        assert!(d.is_empty(), "{d:?}");
        let p = p.unwrap();
        let args = serde_json::json!({"table": "orders"});
        assert_eq!(
            p.render(args.as_object().unwrap()).unwrap()[0].1,
            "Look at orders."
        );
        assert!(p.render(&Map::new()).is_err());
    }
}
