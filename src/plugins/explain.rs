//! `citus_explain_query`: EXPLAIN of one caller-supplied statement, run read-only, with
//! the distributed plan classified from the JSON plan (router or multi-shard, tasks).
//!
//! This is the one tool that takes SQL text from the caller, so it is read with
//! PostgreSQL's own grammar (`sql`) before the database sees it: exactly one statement
//! that EXPLAIN takes. ANALYZE runs the statement, so it takes only a query that writes
//! nothing by its syntax and whose every reachable function — called, or behind an
//! operator, a cast, a view, a domain, a row-level-security policy, an argument's default
//! or a SQL function's body — the live catalog calls non-volatile (or the tool file lists
//! as harmless). A plain EXPLAIN of a write passes the same check, its tables' column
//! defaults, domains and rules included: Citus
//! computes an INSERT's values on the coordinator even to plan it. Any other plain EXPLAIN
//! is checked for what planning runs: the functions that act whatever their label says
//! (it evaluates stable functions on constants), operators whose estimator runs them on a
//! column's statistics, partition keys' operator classes (pruning), input functions and the
//! CHECKs of domains inside an array, row or range literal. The catalog query lives
//! in the tool file (`reach`); this file only decides. Whatever passes still runs in a
//! READ ONLY transaction that is rolled back, on a connection closed afterwards.

use serde_json::{Map, Value, json};

use crate::engine::{ErrorCode, Plugin, PluginCall, PluginFuture, ToolError, ToolOutput};
use crate::sql::{self, Kind, Parsed, Reach};

/// The `explain` plugin.
pub struct Explain;

impl Plugin for Explain {
    fn name(&self) -> &'static str {
        "explain"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(run(call))
    }
}

/// How many times views, policies and domains are followed into what they reach.
const MAX_DEPTH: usize = 8;

async fn run(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let args = call.args;
    let text = args
        .get("sql")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    let flag = |k: &str, default: bool| args.get(k).and_then(Value::as_bool).unwrap_or(default);
    let (analyze, verbose, costs) = (
        flag("analyze", false),
        flag("verbose", false),
        flag("costs", true),
    );

    let (statement, parsed) = check(text)?;
    let mode = match (analyze, parsed.writes().is_some()) {
        (true, _) => Run::Analyze,
        (false, true) => Run::PlanWrite,
        (false, false) => Run::Plan,
    };
    let refusal = match mode {
        Run::Analyze => match write_refusal(&parsed) {
            Some(e) => Some(e),
            None => reach_refusal(&call, &parsed, mode).await?,
        },
        _ => reach_refusal(&call, &parsed, mode).await?,
    };
    // A statement the rules refuse runs only with a person's approval of this exact call.
    let approved = match refusal {
        None => false,
        Some(refused) => {
            approve(&call, refused, mode).await?;
            true
        }
    };
    // The options are fixed keywords chosen by booleans; the statement is the caller's,
    // read by the parser above, and the whole text is read again below.
    let explain = format!(
        "EXPLAIN (FORMAT JSON, ANALYZE {}, VERBOSE {}, COSTS {}{}) {statement}",
        on_off(analyze),
        on_off(verbose),
        on_off(costs),
        if analyze { ", BUFFERS ON" } else { "" },
    );
    match sql::parse(&explain) {
        Ok(p) if p.len() == 1 && p.kind().1 == "ExplainStmt" => {}
        _ => {
            return Err(invalid(
                "`sql` does not stay one statement inside EXPLAIN".into(),
                "pass one complete statement",
            ));
        }
    }
    let kind = parsed.kind().0;
    // Even a plain EXPLAIN runs functions (the planner evaluates immutable ones on
    // constants, and a label can lie): caller statements run on a connection closed
    // afterwards.
    let run = async {
        if approved {
            call.approved_caller_statement(explain, 1).await
        } else {
            call.caller_statement(explain, 1).await
        }
    };
    let rows = run
        .await
        .map_err(|e| match (&e.code, kind) {
            (ErrorCode::PermissionDenied, Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge) => e.hint(
                "PostgreSQL checks the privileges of a write even to plan it; citus-mcp's read-only role has none: explain the SELECT part instead",
            ),
            _ => e,
        })?;
    let plan = rows
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or(Value::Null);
    let mut out = summarize(plan, analyze, parsed.kind().0);
    out["approved"] = Value::Bool(approved);
    // A plan of a large query can be huge; the summary above is what matters most.
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > call.limits.max_bytes {
        out["plan"] = Value::Null;
        out["truncated"] = Value::Bool(true);
        out["hint"] = Value::from(
            "the full plan is larger than the result limit; call with verbose: false, or raise limits.max_bytes",
        );
    } else {
        out["truncated"] = Value::Bool(false);
    }
    // The model reads a plan tree far more easily than nested JSON.
    Ok(ToolOutput {
        text: text_of(&out),
        structured: out,
    })
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

fn invalid(message: String, hint: &str) -> ToolError {
    ToolError::new(ErrorCode::InvalidArgument, message).hint(hint)
}

/// What the database does with the statement, and so what of it runs.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// Plans a query: PostgreSQL evaluates immutable and stable functions on constants (to
    /// fold and to estimate), runs operators on a column's statistics to estimate them,
    /// prunes partitions and reads literals; it runs no volatile function of the statement
    /// itself. What it does run is refused when it acts: the tool file's `refused_fn`,
    /// estimators' volatile operators, partition keys' operator classes, input functions
    /// and domain CHECKs (see `reach`).
    Plan,
    /// Plans a write: Citus computes an INSERT's values, and the defaults of the columns
    /// it leaves out, on the coordinator to route its rows. Checked as ANALYZE is.
    PlanWrite,
    /// Runs it to measure it.
    Analyze,
}

impl Run {
    /// What would run the refused name, for a refusal's message.
    fn what(self) -> &'static str {
        match self {
            Run::Analyze => "EXPLAIN ANALYZE",
            Run::PlanWrite => "planning this write (Citus computes its values on the coordinator)",
            Run::Plan => {
                "planning it (PostgreSQL evaluates stable functions on constants and estimates comparisons with the operators' own functions)"
            }
        }
    }

    /// How to do without what was refused.
    fn instead(self) -> &'static str {
        match self {
            Run::Analyze => "call again with analyze: false to see the plan without running it",
            Run::PlanWrite => {
                "write the values into the statement as literals, or explain its SELECT part"
            }
            Run::Plan => "leave the function out, or write its value into the statement",
        }
    }
}

/// Lets a statement the read-only rules refused run, when the call carries a token a
/// person approved for exactly it (admin mode); otherwise returns the refusal.
async fn approve(call: &PluginCall<'_>, refused: ToolError, run: Run) -> Result<(), ToolError> {
    let token = call.args.get("approval_token").and_then(Value::as_str);
    let approvals = call.engine.approvals();
    match (token, approvals) {
        (None, None) => Err(refused),
        (None, Some(_)) => Err(refused.hint(format!(
            "{}; or ask a person to \
             approve this exact call (citus_request_approval_token with action citus_explain_query \
             and these arguments, or `citus-mcp approve citus_explain_query --args ...`) and pass \
             the token as approval_token: it then runs in a transaction that is rolled back",
            run.instead()
        ))),
        (Some(_), None) => Err(ToolError::new(
            ErrorCode::ExecuteDisabled,
            format!(
                "{} (this server checks no approval tokens)",
                refused.message
            ),
        )
        .hint(format!(
            "approval tokens are checked in admin mode only; {}",
            run.instead()
        ))),
        (Some(_), Some(gate)) => gate
            .verify(&call.tool.spec.name, call.args, call.caller)
            .await
            .map(|_| ()),
    }
}

/// Why EXPLAIN ANALYZE of this statement is refused by its syntax alone, if it is.
fn write_refusal(parsed: &Parsed) -> Option<ToolError> {
    parsed.writes().map(|word| {
        invalid(
            format!("EXPLAIN ANALYZE runs the statement, and this one writes or locks ({word})"),
            Run::Analyze.instead(),
        )
    })
}

/// The refusal [`refuse_unsafe_reach`] finds, if any; other errors (the catalog query
/// failed) end the call.
async fn reach_refusal(
    call: &PluginCall<'_>,
    parsed: &Parsed,
    run: Run,
) -> Result<Option<ToolError>, ToolError> {
    match refuse_unsafe_reach(call, parsed, run).await {
        Ok(()) => Ok(None),
        Err(e) if e.code == ErrorCode::InvalidArgument => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

/// The statement to explain and its parse, or why it is refused.
fn check(text: &str) -> Result<(&str, Parsed), ToolError> {
    let statement = text.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let parsed = sql::parse(statement).map_err(|e| {
        invalid(
            format!("`sql` is not valid SQL: {e}"),
            "pass one SQL statement as PostgreSQL accepts it",
        )
    })?;
    match parsed.len() {
        0 => return Err(invalid("`sql` is empty".into(), "pass one SQL statement")),
        1 => {}
        n => {
            return Err(invalid(
                format!("`sql` holds {n} statements; EXPLAIN takes exactly one"),
                "pass a single statement without `;` between statements",
            ));
        }
    }
    if parsed.has_params() {
        return Err(invalid(
            "`sql` has parameters ($1, ...), which EXPLAIN here gets no values for".into(),
            "write the values into the statement as literals",
        ));
    }
    let (kind, node) = parsed.kind();
    if kind == Kind::Other {
        let what = if node == "ExplainStmt" {
            "`sql` is already an EXPLAIN".to_string()
        } else {
            format!("EXPLAIN does not take this statement ({node})")
        };
        return Err(invalid(
            what,
            "pass a SELECT, VALUES, TABLE, WITH, INSERT, UPDATE, DELETE or MERGE statement; the tool adds EXPLAIN and its options",
        ));
    }
    Ok((statement, parsed))
}

/// Asks the catalog about everything the statement reaches, following views, policies
/// and domains into what they reach; refuses at the first name that could change
/// anything when run.
///
/// Names come in two classes: those the statement reaches, checked as `run` says, and
/// those a domain's CHECK reaches, which run whenever a value is checked against the
/// domain: a literal of an array, row or range over it is checked as the statement is
/// parsed, so even planning runs them. Those are always checked as ANALYZE would be.
async fn refuse_unsafe_reach(
    call: &PluginCall<'_>,
    parsed: &Parsed,
    run: Run,
) -> Result<(), ToolError> {
    // Planning a write computes its columns' defaults: ask about them too. (ANALYZE reaches
    // this only for a statement that does not write.)
    let defaults = run == Run::PlanWrite;
    let mut seen = [Reach::default(), Reach::default()];
    let mut todo = [parsed.reach(), Reach::default()];
    // The domains whose CHECKs the second class holds, and what each class's names of
    // this round were read from (views, defaults, rules...), for a refusal's message.
    let mut domains: Vec<String> = Vec::new();
    let mut via: [Vec<String>; 2] = Default::default();
    for round in 0..MAX_DEPTH {
        todo[0] = todo[0].minus(&seen[0]).minus(&seen[1]);
        todo[1] = todo[1].minus(&seen[1]);
        // The first round asks even with no names: the database-wide rules still apply.
        if round > 0 && todo.iter().all(Reach::is_empty) {
            return Ok(());
        }
        let mut next = [Reach::default(), Reach::default()];
        let mut next_via: [Vec<String>; 2] = Default::default();
        for class in [0, 1] {
            let first = round == 0 && class == 0;
            if todo[class].is_empty() && !first {
                continue;
            }
            let ask = Ask {
                database_wide: first,
                defaults,
                plan_only: run == Run::Plan && class == 0,
                // Only the statement's own literals are read now: views, policies and
                // defaults were read when they were made.
                container_literals: first && parsed.has_container_literal(),
            };
            let rows = call.query("reach", reach_vars(&todo[class], ask)).await?;
            seen[class].extend(std::mem::take(&mut todo[class]));
            // Planning reaches a domain's CHECK only through a literal.
            let (what, instead) = if class == 1 && run == Run::Plan {
                (
                    format!(
                        "reading a literal over domain {} (PostgreSQL checks each element, column or bound as it reads the statement, even to plan it)",
                        listed(&domains)
                    ),
                    "explain the statement without that literal",
                )
            } else {
                (run.what().to_string(), run.instead())
            };
            for row in rows.rows {
                let field = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
                let (verdict, kind, name, detail) = (field(0), field(1), field(2), field(3));
                if verdict == "refuse" {
                    let through = match via[class].as_slice() {
                        [] => String::new(),
                        v => format!(" (reached through {})", listed(v)),
                    };
                    return Err(invalid(
                        format!(
                            "{what} would run {kind} `{name}` ({detail}){through}, which may change the cluster"
                        ),
                        instead,
                    ));
                }
                let inner = sql::parse(detail).map_err(|e| {
                    invalid(format!("cannot read the {kind} `{name}`: {e}"), instead)
                })?;
                // A rule's actions write (they join a write's plan), and a function's body
                // may (a volatile function, refused where it would run; a body given as
                // `BEGIN ATOMIC` is read as the CREATE FUNCTION around it). Any other text
                // that writes would run a write where the statement only reads.
                let may_write = matches!(kind, "rule" | "function body");
                if let Some(word) = inner.writes().filter(|_| !may_write) {
                    return Err(invalid(
                        format!("{what} would reach {kind} `{name}`, which writes ({word})"),
                        instead,
                    ));
                }
                let to = if kind == "domain" {
                    let domain = format!("`{name}`");
                    if !domains.contains(&domain) {
                        domains.push(domain);
                    }
                    1
                } else {
                    class
                };
                next_via[to].push(format!("{kind} `{name}`"));
                next[to].extend(inner.reach());
            }
        }
        todo = next;
        via = next_via;
    }
    Err(invalid(
        format!(
            "the statement reaches views, policies, rules, defaults or function bodies nested deeper than {MAX_DEPTH} levels"
        ),
        run.instead(),
    ))
}

/// Up to three items, and how many more.
fn listed(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 3 {
        s.push_str(&format!(" or one of {} more", items.len() - 3));
    }
    s
}

/// What a `reach` query asks about besides the names.
#[derive(Clone, Copy)]
struct Ask {
    /// What the whole database runs unasked (the first round only).
    database_wide: bool,
    /// The defaults, domains and rules of the relations' columns (a statement that writes).
    defaults: bool,
    /// Only what acts when the statement is planned.
    plan_only: bool,
    /// The statement has a literal an array, row or range could be read from.
    container_literals: bool,
}

/// The `reach` query's variables: each kind of name as aligned arrays (schemas, names and,
/// for types, whether named as an array), and what `ask` says.
fn reach_vars(r: &Reach, ask: Ask) -> Value {
    let mut vars = Map::new();
    vars.insert("database_wide".into(), Value::Bool(ask.database_wide));
    vars.insert("defaults".into(), Value::Bool(ask.defaults));
    vars.insert("plan_only".into(), Value::Bool(ask.plan_only));
    vars.insert(
        "container_literals".into(),
        Value::Bool(ask.container_literals),
    );
    for (kind, names) in [
        ("function", &r.functions),
        ("operator", &r.operators),
        ("relation", &r.relations),
    ] {
        let (schemas, names): (Vec<&str>, Vec<&str>) =
            names.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
        vars.insert(format!("{kind}_schemas"), json!(schemas));
        vars.insert(format!("{kind}_names"), json!(names));
    }
    // Types, then the same names as arrays (`t[]`).
    let types = r.types.iter().map(|t| (t, false));
    let arrays = r.array_types.iter().map(|t| (t, true));
    let (mut schemas, mut names, mut arrayed) = (Vec::new(), Vec::new(), Vec::new());
    for ((s, n), a) in types.chain(arrays) {
        schemas.push(s.as_str());
        names.push(n.as_str());
        arrayed.push(a);
    }
    vars.insert("type_schemas".into(), json!(schemas));
    vars.insert("type_names".into(), json!(names));
    vars.insert("type_arrays".into(), json!(arrayed));
    Value::Object(vars)
}

/// The plan plus what matters about its distribution.
fn summarize(plan: Value, analyze: bool, kind: Kind) -> Value {
    let mut scans = Vec::new();
    collect_citus_scans(&plan, &mut scans);
    let top = plan.get(0).cloned().unwrap_or(Value::Null);
    let task_count: u64 = scans.iter().filter_map(|s| s["task_count"].as_u64()).sum();
    let insert_select = scans.iter().any(|s| {
        s["executor"]
            .as_str()
            .is_some_and(|e| e.contains("INSERT ... SELECT"))
    });
    let plan_type = match (scans.len(), task_count) {
        _ if insert_select => "insert_select",
        (0, _) => "local",
        (1, 1) => "router",
        // A Citus scan that shows no task count does not say where it runs.
        (_, 0) => "distributed",
        _ => "multi_shard",
    };
    let mut nodes: Vec<Value> = scans
        .iter()
        .flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default())
        .collect();
    nodes.sort_by_key(ToString::to_string);
    nodes.dedup();
    let mut out = json!({
        "plan_type": plan_type,
        "distributed": !scans.is_empty(),
        "task_count": task_count,
        "nodes_shown": nodes,
        "citus_scans": scans,
        "statement": match kind {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::Query | Kind::Other => "select",
        },
        "analyzed": analyze,
        "explanation": match plan_type {
            "router" => "router query: Citus sends it to a single shard on one node (fast path for queries filtered by the distribution column)",
            "multi_shard" => "multi-shard query: Citus runs a task per shard in parallel and combines the results on the coordinator",
            "insert_select" => "INSERT ... SELECT: Citus runs the SELECT and inserts its rows into the target shards (pushed down, repartitioned, or through the coordinator, as the plan's executor says)",
            "distributed" => "distributed plan: Citus runs it on the workers; the plan does not show a task count",
            _ => "no Citus scan in the plan: the statement runs on the coordinator only (local or reference-only data, or plain PostgreSQL)",
        },
    });
    for key in ["Planning Time", "Execution Time"] {
        if let Some(v) = top.get(key) {
            out[key.to_ascii_lowercase().replace(' ', "_") + "_ms"] = v.clone();
        }
    }
    out["plan"] = top.get("Plan").cloned().unwrap_or(plan);
    out
}

/// Every Citus custom scan in a JSON plan, outermost first, with its task count and
/// the nodes of the tasks it shows.
fn collect_citus_scans(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_citus_scans(i, out)),
        Value::Object(m) => {
            if let Some(provider) = m
                .get("Custom Plan Provider")
                .and_then(Value::as_str)
                .filter(|p| p.starts_with("Citus"))
            {
                let job = m.get("Distributed Query").and_then(|d| d.get("Job"));
                let nodes: Vec<Value> = job
                    .and_then(|j| j.get("Tasks"))
                    .and_then(Value::as_array)
                    .map(|tasks| {
                        tasks
                            .iter()
                            .filter_map(|t| t.get("Node").and_then(Value::as_str))
                            .map(node_name)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!({
                    "executor": provider,
                    "task_count": job.and_then(|j| j.get("Task Count")).cloned().unwrap_or(Value::Null),
                    "tasks_shown": job.and_then(|j| j.get("Tasks Shown")).cloned().unwrap_or(Value::Null),
                    "nodes": nodes,
                }));
                // Subplans (CTEs, subqueries pulled up by Citus) carry their own scans.
                if let Some(sub) = m.get("Distributed Query").and_then(|d| d.get("Subplans")) {
                    collect_citus_scans(sub, out);
                }
                return;
            }
            for (k, child) in m {
                if k != "Remote Plan" {
                    collect_citus_scans(child, out);
                }
            }
        }
        _ => {}
    }
}

/// The compact text of a result: the summary, then the plan as an indented tree.
fn text_of(out: &Value) -> String {
    let mut s = format!(
        "plan_type: {}\ntask_count: {}\nnodes_shown: {}\n{}\n",
        out["plan_type"].as_str().unwrap_or("?"),
        out["task_count"],
        out["nodes_shown"]
            .as_array()
            .map(|n| n
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        out["explanation"].as_str().unwrap_or_default(),
    );
    for key in ["planning_time_ms", "execution_time_ms"] {
        if let Some(v) = out.get(key) {
            s.push_str(&format!("{key}: {v}\n"));
        }
    }
    if out["plan"].is_object() {
        s.push_str("plan:\n");
        plan_tree(&out["plan"], 1, &mut s);
    } else if let Some(h) = out["hint"].as_str() {
        s.push_str(&format!("plan: (omitted) {h}\n"));
    }
    s.trim_end().to_string()
}

/// One line per plan node: type, relation or index, and the numbers that matter;
/// Citus tasks show their node and remote plan underneath.
fn plan_tree(node: &Value, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let mut line = node["Node Type"].as_str().unwrap_or("?").to_string();
    if let Some(p) = node["Custom Plan Provider"].as_str() {
        line = format!("{line} ({p})");
    }
    if let Some(r) = node["Relation Name"].as_str() {
        line.push_str(&format!(" on {r}"));
    }
    if let Some(i) = node["Index Name"].as_str() {
        line.push_str(&format!(" using {i}"));
    }
    let num = |k: &str| {
        node.get(k)
            .filter(|v| !v.is_null())
            .map(ToString::to_string)
    };
    let mut facts = Vec::new();
    if let Some(v) = num("Actual Rows") {
        facts.push(format!("rows={v}"));
    } else if let Some(v) = num("Plan Rows") {
        facts.push(format!("est_rows={v}"));
    }
    if let Some(v) = num("Actual Total Time") {
        facts.push(format!("ms={v}"));
    } else if let Some(v) = num("Total Cost") {
        facts.push(format!("cost={v}"));
    }
    for k in ["Index Cond", "Filter", "Hash Cond", "Join Filter"] {
        if let Some(c) = node[k].as_str() {
            facts.push(format!("{}: {c}", k.to_ascii_lowercase()));
        }
    }
    if !facts.is_empty() {
        line = format!("{line}  [{}]", facts.join(", "));
    }
    s.push_str(&format!("{pad}{line}\n"));
    if let Some(job) = node.get("Distributed Query").and_then(|d| d.get("Job")) {
        s.push_str(&format!(
            "{pad}  tasks: {} ({})\n",
            job["Task Count"],
            job["Tasks Shown"].as_str().unwrap_or("")
        ));
        for task in job["Tasks"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{pad}  task on {}\n",
                task["Node"]
                    .as_str()
                    .map(node_name)
                    .unwrap_or(Value::Null)
                    .as_str()
                    .unwrap_or("?")
            ));
            for remote in task["Remote Plan"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            {
                plan_tree(&remote["Plan"], depth + 2, s);
            }
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        plan_tree(child, depth + 1, s);
    }
}

/// `host=10.0.0.1 port=5432 dbname=citus` → `10.0.0.1:5432`.
fn node_name(conninfo: &str) -> Value {
    let field = |k: &str| {
        conninfo
            .split_whitespace()
            .find_map(|p| p.strip_prefix(k))
            .unwrap_or("?")
    };
    Value::from(format!("{}:{}", field("host="), field("port=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function of Citus 13.2 that its label calls non-volatile was read for what it
    /// does: the reach check trusts that label. Pure ones are named here; those whose label
    /// understates them are in the tool file's `refused_fn` list. A Citus that adds one
    /// fails this test until someone reads it.
    #[test]
    fn every_non_volatile_citus_function_was_read() {
        const PURE: &[&str] = &[
            // Cluster clock type: I/O, comparisons, the logical part; a comparison of two.
            "cluster_clock_cmp",
            "cluster_clock_eq",
            "cluster_clock_ge",
            "cluster_clock_gt",
            "cluster_clock_in",
            "cluster_clock_le",
            "cluster_clock_logical",
            "cluster_clock_lt",
            "cluster_clock_ne",
            "cluster_clock_out",
            "cluster_clock_recv",
            "cluster_clock_send",
            "citus_is_clock_after",
            // Lookups in the metadata or of the version.
            "citus_coordinator_nodeid",
            "citus_nodeid_for_gpid",
            "citus_nodename_for_nodeid",
            "citus_nodeport_for_nodeid",
            "citus_pid_for_gpid",
            "citus_table_is_visible",
            "citus_text_send_as_jsonb",
            "citus_version",
            "shard_name",
            // Aggregates: what runs are their support functions, which the check reads.
            "any_value",
            "any_value_agg",
            "array_cat_agg",
            "coord_combine_agg",
            "json_cat_agg",
            "jsonb_cat_agg",
            "worker_partial_agg",
        ];
        let tsv = include_str!("../../tests/fixtures/citus/catalog-functions.tsv");
        let tool = crate::registry::builtin_tools()
            .into_iter()
            .find(|f| f.stem() == "citus_explain_query")
            .expect("the explain tool file");
        let mut refused = Vec::new();
        for line in tsv.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            let (schema, name, volatility, extension) = (f[0], f[1], f[4], f[8]);
            if extension != "citus" || volatility == "volatile" || PURE.contains(&name) {
                continue;
            }
            refused.push(name);
            assert!(
                tool.text.contains(&format!("('{schema}', '{name}', ")),
                "{schema}.{name} is {volatility} but not known to be pure: read what it does, \
                 then name it in PURE or in the tool file's `refused_fn` list"
            );
        }
        assert_eq!(
            refused,
            [
                "adjust_local_clock_to_remote",
                "citus_internal_adjust_local_clock_to_remote",
                "master_run_on_worker"
            ]
        );
    }

    #[test]
    fn refuses_what_it_must() {
        let analyze =
            |sql: &str| check(sql).and_then(|(_, p)| write_refusal(&p).map_or(Ok(()), Err));
        assert!(analyze("SELECT 1").is_ok());
        assert_eq!(check("SELECT 1;").unwrap().0, "SELECT 1");
        assert_eq!(
            check("SELECT 1; SELECT 2").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(check("  ").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(
            analyze("DELETE FROM orders").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert!(
            check("DELETE FROM orders").is_ok(),
            "a plan without running it is fine"
        );
        assert!(analyze("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d").is_err());
        assert!(analyze("SELECT 'a;b' -- ; x").is_ok());
        assert!(check("EXPLAIN SELECT 1").is_err());
    }

    #[test]
    fn classifies_router_and_multi_shard_plans() {
        let router = json!([{"Plan": {"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive",
            "Distributed Query": {"Job": {"Task Count": 1, "Tasks Shown": "All",
              "Tasks": [{"Node": "host=127.0.0.1 port=9702 dbname=citus", "Remote Plan": [[{"Plan": {"Node Type": "Seq Scan"}}]]}]}}}}]);
        let s = summarize(router, false, Kind::Query);
        assert_eq!(s["plan_type"], "router");
        assert_eq!(s["nodes_shown"], json!(["127.0.0.1:9702"]));
        let multi = json!([{"Plan": {"Node Type": "Aggregate", "Plans": [{"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive",
            "Distributed Query": {"Job": {"Task Count": 32, "Tasks Shown": "One of 32", "Tasks": []}}}]}, "Execution Time": 1.5}]);
        let s = summarize(multi, true, Kind::Query);
        assert_eq!(s["plan_type"], "multi_shard");
        assert_eq!(s["task_count"], 32);
        assert_eq!(s["execution_time_ms"], 1.5);
        let local = json!([{"Plan": {"Node Type": "Seq Scan"}}]);
        assert_eq!(summarize(local, false, Kind::Query)["plan_type"], "local");
    }

    #[test]
    fn text_shows_the_plan_as_a_tree() {
        let router = json!([{"Plan": {"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive", "Plan Rows": 0, "Total Cost": 0.0,
            "Distributed Query": {"Job": {"Task Count": 1, "Tasks Shown": "All",
              "Tasks": [{"Node": "host=127.0.0.1 port=9702 dbname=citus", "Remote Plan": [[{"Plan": {"Node Type": "Index Scan",
                "Relation Name": "orders_102043", "Index Name": "orders_pkey_102043", "Index Cond": "(customer_id = 1)", "Plan Rows": 15}}]]}]}}}}]);
        let t = text_of(&summarize(router, false, Kind::Query));
        assert!(
            t.starts_with("plan_type: router\ntask_count: 1\nnodes_shown: 127.0.0.1:9702"),
            "{t}"
        );
        assert!(t.contains("  Custom Scan (Citus Adaptive)  [est_rows=0, cost=0.0]\n    tasks: 1 (All)\n    task on 127.0.0.1:9702\n      Index Scan on orders_102043 using orders_pkey_102043  [est_rows=15, index cond: (customer_id = 1)]"), "{t}");
    }
}
