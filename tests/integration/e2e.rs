//! End to end: the built binary, driven over stdio as an MCP client would, and the CLI.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{Value, json};

use crate::mcp::McpClient;
use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "e2e::initialize_and_list_tools",
            initialize_and_list_tools,
        ),
        trial(
            ctx,
            "e2e::every_tool_answers_its_examples",
            every_tool_answers_its_examples,
        ),
        trial(
            ctx,
            "e2e::invalid_call_lists_every_problem_and_the_server_keeps_serving",
            invalid_call,
        ),
        trial(ctx, "e2e::unknown_tool_is_a_protocol_error", unknown_tool),
        trial(
            ctx,
            "e2e::stdio_writes_the_result_the_engine_builds",
            stdio_writes_what_the_engine_builds,
        ),
        trial(
            ctx,
            "e2e::every_request_line_gets_one_answer",
            every_line_answered,
        ),
        trial(
            ctx,
            "e2e::a_reused_request_id_gets_an_error_not_silence",
            reused_id,
        ),
        trial(
            ctx,
            "e2e::errors_cap_the_values_they_echo",
            errors_cap_echoed_values,
        ),
        trial(
            ctx,
            "e2e::hot_reload_updates_the_list_and_sends_list_changed",
            hot_reload,
        ),
        trial(
            ctx,
            "e2e::config_problems_are_warnings_in_the_log_and_server_info",
            config_warnings,
        ),
        trial(
            ctx,
            "e2e::a_missing_tools_dir_is_loaded_once_created",
            missing_tools_dir,
        ),
        trial(
            ctx,
            "e2e::secrets_never_reach_output_or_logs",
            secrets_never_leak,
        ),
        trial(
            ctx,
            "e2e::cancelled_request_cancels_its_query",
            cancelled_request,
        ),
        trial(
            ctx,
            "e2e::a_client_that_goes_away_leaves_nothing_running",
            vanished_client,
        ),
        trial(
            ctx,
            "e2e::a_call_waiting_on_the_database_holds_up_no_other",
            slow_call_holds_up_no_other,
        ),
        trial(
            ctx,
            "e2e::execute_tools_are_listed_only_in_admin_mode",
            execute_tools_hidden,
        ),
        trial(
            ctx,
            "e2e::approval_token_issued_when_the_person_accepts_runs_once",
            approval_accepted,
        ),
        trial(
            ctx,
            "e2e::approval_declined_or_cancelled_issues_no_token",
            approval_declined,
        ),
        trial(
            ctx,
            "e2e::approval_without_elicitation_names_the_cli",
            approval_without_elicitation,
        ),
        trial(
            ctx,
            "e2e::the_person_approving_sees_every_character",
            approval_shows_everything,
        ),
        trial(ctx, "e2e::prompts_are_listed_and_rendered", prompts),
        trial(ctx, "e2e::resources_are_listed_and_read_as_json", resources),
        trial(
            ctx,
            "e2e::completions_come_from_the_cluster_and_declared_values",
            completions,
        ),
        trial(
            ctx,
            "e2e::prompt_files_hot_reload_with_list_changed",
            prompt_hot_reload,
        ),
        trial(
            ctx,
            "e2e::protocol_2026_07_28_listen_receives_list_changed",
            listen_2026,
        ),
        trial(
            ctx,
            "e2e::resources_hot_reload_with_list_changed",
            resource_hot_reload,
        ),
        trial(
            ctx,
            "e2e::toolsets_limit_what_is_listed_callable_and_prompted",
            toolsets,
        ),
        trial(
            ctx,
            "e2e::every_served_tool_has_a_markdown_manual",
            tool_manuals,
        ),
        trial(
            ctx,
            "cli::invalid_configuration_exits_2_naming_key_and_source",
            invalid_config,
        ),
        trial(ctx, "cli::lint_reports_positions_and_exit_codes", lint_cli),
        trial(ctx, "cli::lint_db_prepares_every_example", lint_db),
        trial(
            ctx,
            "cli::tools_call_runs_a_tool_without_a_client",
            tools_call,
        ),
        trial(
            ctx,
            "cli::approve_prints_a_token_the_server_accepts_once",
            approve_cli,
        ),
        trial(
            ctx,
            "e2e::an_approved_rebalance_sends_progress_for_a_progress_token",
            rebalance_progress,
        ),
        trial(
            ctx,
            "cli::admin_mode_without_a_valid_approval_secret_does_not_start",
            admin_needs_secret,
        ),
    ]
}

fn client(ctx: &Ctx, args: &[&str], env: &[(&str, &str)]) -> McpClient {
    let dsn = ctx.dsn();
    let mut all: Vec<(&str, &str)> = vec![("CITUS_MCP_COORDINATOR_DSN", dsn.as_str())];
    all.extend_from_slice(env);
    McpClient::start(args, &all)
}

/// A tool's entry in `tools/list`.
fn listed_tool(c: &mut McpClient, name: &str) -> Value {
    let r = c.request("tools/list", json!({}));
    r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {r}"))
        .clone()
}

fn tool_names(c: &mut McpClient) -> Vec<String> {
    let r = c.request("tools/list", json!({}));
    r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

const INSPECTION_TOOLS: &[&str] = &[
    "ping",
    "server_info",
    "list_nodes",
    "list_distributed_tables",
    "list_shards",
    "citus_cluster_summary",
    "citus_list_distributed_tables",
    "citus_table_inspector",
    "citus_colocation_inspector",
];

fn initialize_and_list_tools(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let r = c.request("tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().unwrap();
    for t in tools {
        // MCP reads these only when readOnlyHint is false: a read-only tool leaves them out.
        let a = &t["annotations"];
        assert_eq!(a["readOnlyHint"], true, "{}", t["name"]);
        assert!(
            a.get("idempotentHint").is_none() && a.get("destructiveHint").is_none(),
            "{t}"
        );
    }
    for name in INSPECTION_TOOLS {
        let t = tools
            .iter()
            .find(|t| t["name"] == *name)
            .unwrap_or_else(|| panic!("{name} is not listed"));
        assert_eq!(t["inputSchema"]["type"], "object", "{name}");
        assert!(
            t["description"].as_str().unwrap().len() > 40,
            "{name} needs a real description"
        );
        assert_eq!(t["annotations"]["readOnlyHint"], true, "{name}");
    }
    assert!(
        c.garbage.is_empty(),
        "stdout carried non-JSON-RPC lines: {:?}",
        c.garbage
    );
}

fn every_tool_answers_its_examples(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let registry = citus_mcp::registry::Registry::build(
        &citus_mcp::registry::Sources {
            tools: vec![citus_mcp::registry::builtin_tools()],
            ..Default::default()
        },
        None,
        &[],
        citus_mcp::plugins::NEEDS,
    );
    for tool in registry.tools.values() {
        for ex in &tool.spec.examples {
            let r = c.call(&tool.spec.name, ex.args.clone());
            let is_error = r["isError"] == true;
            assert_eq!(
                is_error,
                ex.expect.error.is_some(),
                "{} {}: {r}",
                tool.spec.name,
                ex.args
            );
            assert!(
                r["structuredContent"].is_object(),
                "{}: {r}",
                tool.spec.name
            );
            let text = r["content"][0]["text"].as_str().unwrap();
            if let Some(code) = &ex.expect.error {
                assert!(text.contains(code.as_str()), "{text}");
            }
        }
    }
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

/// Rows with what JSON must escape, every shape in one result, cut to fit.
const ODD_ROWS_TOOL: &str = r#"
name: odd_rows
description: Rows whose text JSON must escape, in every shape.
safety: read_only
input_schema: {type: object, properties: {n: {type: integer}}}
queries:
  - name: rows
    sql: |
      SELECT g, repeat(E'q"b\\s\tt\nn\r\u0001 é ✓ 🐘 ', g % 4) AS text, NULL::int AS nothing,
             (g * 1.5)::numeric AS num, 9007199254740993::int8 + g AS big,
             jsonb_build_object('k', g, 'a', ARRAY[g, NULL]) AS doc, ARRAY['x', 'y"z'] AS arr,
             g AS "quoted ""name"""
      FROM generate_series(1, {{ n }}) g
  - name: first
    shape: one
    sql: SELECT E'tab\there' AS t, 2::int2 AS small
  - name: total
    shape: value
    sql: SELECT {{ n }}::int8 * 2
examples:
  - args: {n: 3}
"#;

/// Over stdio a SQL tool's structured result is serialized from its rows (the server's
/// `Outbox`); it must be the JSON the engine's built value is, cut or not, and the text
/// the same.
fn stdio_writes_what_the_engine_builds(ctx: &Ctx) {
    use citus_mcp::compile::SourceFile;
    use citus_mcp::engine::{Engine, Settings};
    use citus_mcp::registry::{Registry, Sources};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("odd_rows.yaml"), ODD_ROWS_TOOL).unwrap();
    let env = [
        ("CITUS_MCP_ENABLE_CACHING", "false"),
        ("CITUS_MCP_MAX_TEXT_BYTES", "4000"),
    ];
    let mut c = client(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &env);
    let registry = Registry::build(
        &Sources {
            tools: vec![vec![SourceFile {
                origin: "odd_rows.yaml".into(),
                text: ODD_ROWS_TOOL.into(),
            }]],
            ..Default::default()
        },
        None,
        &[],
        citus_mcp::plugins::NEEDS,
    );
    let settings = Settings {
        enable_caching: false,
        max_bytes: 4000,
        ..Settings::default()
    };
    let engine = Engine::new(registry, Some(ctx.pool(&ctx.dsn())), settings);
    for n in [0, 1, 7, 200] {
        let args = json!({"n": n});
        let sent = c.call("odd_rows", args.clone());
        let built = ctx
            .rt
            .block_on(engine.call("odd_rows", args, &Default::default()))
            .unwrap();
        assert_eq!(sent["isError"], false, "{sent}");
        assert_eq!(sent["structuredContent"], built.structured, "n = {n}");
        assert_eq!(sent["content"][0]["text"], built.text, "n = {n}");
        let cut = n == 200;
        assert_eq!(sent["structuredContent"]["truncated"], cut, "n = {n}");
        assert_eq!(
            sent["structuredContent"]["how_to_get_more"].is_string(),
            cut,
            "{sent}"
        );
    }
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

fn invalid_call(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let r = c.call(
        "list_nodes",
        json!({"limit": "many", "offset": -1, "bogus": true}),
    );
    assert_eq!(r["isError"], true);
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("INVALID_ARGUMENT"), "{text}");
    let problems = r["structuredContent"]["error"]["problems"]
        .as_array()
        .unwrap();
    assert_eq!(problems.len(), 3, "every problem is listed: {problems:?}");
    let r = c.call("citus_table_inspector", json!({}));
    assert_eq!(r["structuredContent"]["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(
        c.call("ping", json!({"message": "still here"}))["structuredContent"]["message"],
        "still here"
    );
}

fn unknown_tool(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let r = c.request(
        "tools/call",
        json!({"name": "no_such_tool", "arguments": {}}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(c.call("ping", json!({}))["isError"], false);
}

/// Issue #6: rmcp's stdio transport dropped unreadable lines, and the client hung.
fn every_line_answered(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let answer = |c: &mut McpClient, line: &str, id: Value, code: i64| {
        c.send_line(line);
        let r = c
            .wait_reply(&id, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to {line:.80}"));
        assert_eq!(r["error"]["code"], code, "{line:.80}: {r}");
    };
    answer(
        &mut c,
        "{\"jsonrpc\": \"2.0\", \"id\": 1",
        Value::Null,
        -32700,
    );
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":900,"method":"tools/call","params":{{"name":"ping","arguments":{{"message":{}1{}}}}}}}"#,
        "[".repeat(129),
        "]".repeat(129)
    );
    answer(&mut c, &deep, Value::Null, -32700);
    answer(
        &mut c,
        r#"{"jsonrpc":"2.0","id":901,"method":"tools/call","params":5}"#,
        json!(901),
        -32602,
    );
    answer(
        &mut c,
        r#"{"jsonrpc":"2.0","id":902,"method":"tools/call","params":{"name":7}}"#,
        json!(902),
        -32602,
    );
    assert_eq!(
        c.call("ping", json!({"message": "still here"}))["structuredContent"]["message"],
        "still here"
    );
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

/// Issue #6: a second request with the id of one still running took over its id in
/// rmcp, and one of the two replies was lost.
fn reused_id(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_tool("slow", "e2e_slow_marker", 120);
    std::fs::write(dir.path().join("slow.yaml"), slow).unwrap();
    let mut c = client(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
    let slow_call = json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call", "params": {"name": "slow", "arguments": {}}});
    c.send(slow_call);
    c.send(json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call", "params": {"name": "ping", "arguments": {}}}));
    let r = c
        .wait_reply(&json!(500), Duration::from_secs(10))
        .expect("the second request with id 500 is answered");
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("500"),
        "{r}"
    );
    // Once the first is cancelled, its id may be used again, even at once: the cancel and
    // the new request in one write (the cancelled call's late answer must not take the id).
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 500}});
    let again = json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call", "params": {"name": "ping", "arguments": {}}});
    c.send_line(&format!("{cancel}\n{again}"));
    let r = c
        .wait_reply(&json!(500), Duration::from_secs(10))
        .expect("a reply after the cancel");
    assert_eq!(r["result"]["structuredContent"]["message"], "pong", "{r}");
}

/// Issue #6: an 8 MB bad argument was quoted back whole, twice (text and structured).
fn errors_cap_echoed_values(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let huge = "x".repeat(8 << 20);
    let r = c.call("list_nodes", json!({"limit": huge}));
    let size = r.to_string().len();
    assert!(size < 4096, "the error result is {size} bytes");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("INVALID_ARGUMENT") && text.contains("(8388608 bytes)"),
        "{text}"
    );
    assert!(
        r["structuredContent"]["error"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("is not of type"),
        "{r}"
    );
    let r = c.request("tools/call", json!({"name": huge, "arguments": {}}));
    assert_eq!(r["error"]["code"], -32602);
    let size = r.to_string().len();
    assert!(size < 4096, "the unknown-tool error is {size} bytes");
    assert_eq!(c.call("ping", json!({}))["isError"], false);
}

pub const EXTRA_TOOL: &str = "name: hello\ndescription: Says hello from an operator's folder.\nsafety: read_only\nqueries:\n  - name: greeting\n    shape: value\n    sql: SELECT 'hello'::text\nexamples:\n  - args: {}\n";

fn hot_reload(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut c = client(ctx, &["--tools-dirs", &dir_s], &[]);
    assert!(!tool_names(&mut c).contains(&"hello".to_string()));

    // Add a file: the tool appears and the client is told.
    std::fs::write(dir.path().join("hello.yaml"), EXTRA_TOOL).unwrap();
    let started = Instant::now();
    assert!(
        c.wait_notification("notifications/tools/list_changed", Duration::from_secs(10))
            .is_some(),
        "no list_changed after adding a file"
    );
    eprintln!("list_changed after {:?}", started.elapsed());
    assert!(tool_names(&mut c).contains(&"hello".to_string()));
    assert_eq!(
        c.call("hello", json!({}))["structuredContent"]["greeting"],
        "hello"
    );

    // Edit it: the new version serves.
    std::fs::write(
        dir.path().join("hello.yaml"),
        EXTRA_TOOL.replace("'hello'", "'bonjour'"),
    )
    .unwrap();
    assert!(
        c.wait_notification("notifications/tools/list_changed", Duration::from_secs(10))
            .is_some()
    );
    assert_eq!(
        c.call("hello", json!({}))["structuredContent"]["greeting"],
        "bonjour"
    );

    // Break it: the last good version keeps serving and server_info shows the error.
    std::fs::write(
        dir.path().join("hello.yaml"),
        "name: hello\nsafety: [broken\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.call("server_info", json!({}));
        let errors = info["structuredContent"]["spec_errors"]
            .as_array()
            .unwrap()
            .clone();
        if !errors.is_empty() {
            assert!(
                errors[0].as_str().unwrap().contains("hello.yaml"),
                "{errors:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.call("hello", json!({}))["structuredContent"]["greeting"],
        "bonjour"
    );

    // Restore the same good text: the error is gone (issue #6: it stayed forever).
    std::fs::write(
        dir.path().join("hello.yaml"),
        EXTRA_TOOL.replace("'hello'", "'bonjour'"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.call("server_info", json!({}));
        if info["structuredContent"]["spec_errors"] == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed file's error is still reported: {}",
            info["structuredContent"]["spec_errors"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Remove it: the tool goes away.
    std::fs::remove_file(dir.path().join("hello.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tool_names(&mut c).contains(&"hello".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the removed tool is still listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.wait_notification("notifications/tools/list_changed", Duration::from_secs(5))
            .is_some()
    );
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

/// server_info's `config_warnings`, polled until `done` accepts them.
fn wait_config_warnings(c: &mut McpClient, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.call("server_info", json!({}));
        let warnings = info["structuredContent"]["config_warnings"].to_string();
        if done(&warnings) {
            return warnings;
        }
        assert!(
            Instant::now() < deadline,
            "config_warnings never settled: {warnings}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the server's log contains `needle`.
fn wait_stderr(c: &McpClient, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.stderr_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the log never mentioned {needle}:\n{}",
            c.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue #6: a misspelt disabled tool and a worker DSN for no node were silent.
fn config_warnings(ctx: &Ctx) {
    let mut c = client(
        ctx,
        &[
            "--disabled-tools",
            "ping,nope_tool",
            "--worker-dsns",
            "host=127.0.0.1 port=9701 dbname=x,host=wrong.example port=9999 dbname=x",
        ],
        &[],
    );
    assert!(!tool_names(&mut c).contains(&"ping".to_string()));
    wait_stderr(&c, "`nope_tool`");
    wait_stderr(&c, "wrong.example:9999");
    let warnings = wait_config_warnings(&mut c, |w| w.contains("wrong.example"));
    assert!(
        warnings.contains("disabled_tools: no tool or prompt is named `nope_tool`"),
        "{warnings}"
    );
    assert!(warnings.contains("`wrong.example:9999/x`"), "{warnings}");
    if ctx.is_fixture() {
        assert!(!warnings.contains("`127.0.0.1:9701/x`"), "{warnings}");
    }
}

/// Issue #6: a tools_dirs folder that did not exist at startup was never watched.
fn missing_tools_dir(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("later").join("tools");
    let mut c = client(ctx, &["--tools-dirs", tools.to_str().unwrap()], &[]);
    wait_stderr(&c, "does not exist");
    let warnings = wait_config_warnings(&mut c, |w| w != "[]");
    assert!(warnings.contains("later/tools"), "{warnings}");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(tools.join("hello.yaml"), EXTRA_TOOL).unwrap();
    assert!(
        c.wait_notification("notifications/tools/list_changed", Duration::from_secs(10))
            .is_some(),
        "no list_changed after creating the folder; log:\n{}",
        c.stderr_text()
    );
    assert_eq!(
        c.call("hello", json!({}))["structuredContent"]["greeting"],
        "hello"
    );
    wait_config_warnings(&mut c, |w| w == "[]");
}

fn secrets_never_leak(ctx: &Ctx) {
    let password = "pw-Zq8-never-print";
    let secret = "approval-secret-Zq8-never-print";
    let dsn = ctx.dsn();
    let with_pw = if dsn.contains("://") {
        dsn.clone()
    } else {
        format!("{dsn} password={password}")
    };
    let mut c = McpClient::start(
        &["--log-level", "debug"],
        &[
            ("CITUS_MCP_COORDINATOR_DSN", &with_pw),
            ("CITUS_MCP_COORDINATOR_PASSWORD", password),
            ("CITUS_MCP_APPROVAL_SECRET", secret),
        ],
    );
    let mut seen = String::new();
    for tool in ["server_info", "list_nodes", "citus_cluster_summary"] {
        seen.push_str(&c.call(tool, json!({})).to_string());
    }
    seen.push_str(&c.call("list_nodes", json!({"limit": "x"})).to_string());
    std::thread::sleep(Duration::from_millis(200));
    seen.push_str(&c.stderr_text());
    assert!(!seen.contains(password), "the password leaked");
    assert!(!seen.contains(secret), "the approval secret leaked");
}

/// A tool file: tool `name` sleeps `secs` seconds on the server, its SQL marked with
/// `marker` (for [`crate::Ctx::running`]), every call (never from the cache).
pub fn slow_tool(name: &str, marker: &str, secs: u32) -> String {
    format!(
        "name: {name}\ndescription: Sleeps on the server.\nsafety: read_only\ncache_ttl_s: 0\nlimits: {{timeout_ms: 60000}}\nqueries:\n  - name: r\n    shape: value\n    sql: SELECT pg_sleep({secs}) IS NULL AS {marker}\nexamples:\n  - args: {{}}\n"
    )
}

/// A call of a `slow` tool (`pg_sleep(secs)`, its SQL marked with `marker`) over stdio,
/// once its query runs on the server.
struct SlowCall {
    client: McpClient,
    id: u64,
    /// The text that marks the slow query in pg_stat_activity.
    marker: String,
    _dir: tempfile::TempDir,
}

impl SlowCall {
    fn start(ctx: &Ctx, marker: &str, secs: u32) -> SlowCall {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("slow.yaml"),
            slow_tool("slow", marker, secs),
        )
        .unwrap();
        let mut client = client(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
        let id = client.send_request("tools/call", json!({"name": "slow", "arguments": {}}));
        ctx.wait_running(
            marker,
            |n| n > 0,
            Duration::from_secs(10),
            "the slow query never started",
        );
        SlowCall {
            client,
            id,
            marker: marker.to_string(),
            _dir: dir,
        }
    }

    /// How many backends run the slow query now.
    fn running(&self, ctx: &Ctx) -> u64 {
        ctx.running(&self.marker)
    }

    /// Waits until no backend runs the slow query; `after` says what should have ended it.
    fn wait_gone(&self, ctx: &Ctx, within: Duration, after: &str) {
        ctx.wait_running(
            &self.marker,
            |n| n == 0,
            within,
            &format!("the query kept running after {after}"),
        );
    }
}

fn cancelled_request(ctx: &Ctx) {
    let mut slow = SlowCall::start(ctx, "e2e_slow_marker", 30);
    let id = slow.id;
    slow.client.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": "user pressed stop"}}));
    slow.wait_gone(ctx, Duration::from_secs(5), "notifications/cancelled");
    assert_eq!(
        slow.client.call("ping", json!({}))["isError"],
        false,
        "the server keeps serving after a cancel"
    );
}

/// A client that goes away mid-call (stdin closed) leaves nothing running: the server
/// cancels its in-flight statements on the way out.
fn vanished_client(ctx: &Ctx) {
    let mut slow = SlowCall::start(ctx, "e2e_vanish_marker", 120);
    slow.client.close_stdin();
    assert!(
        slow.client.wait_exit(Duration::from_secs(15)).is_some(),
        "the server did not exit after its client went away"
    );
    slow.wait_gone(ctx, Duration::from_secs(10), "the client went away");
}

/// stdio runs on one thread: while one call waits on the database, the others (and
/// pings) are answered, and its own answer still comes once the database is done.
fn slow_call_holds_up_no_other(ctx: &Ctx) {
    let mut slow = SlowCall::start(ctx, "e2e_one_thread_marker", 8);
    let c = &mut slow.client;
    for _ in 0..3 {
        assert_eq!(c.request("ping", json!({}))["result"], json!({}));
        let nodes = c.call("list_nodes", json!({}));
        assert_eq!(nodes["isError"], false, "{nodes}");
    }
    // The others were answered while the slow one was still on the server.
    assert_eq!(
        slow.running(ctx),
        1,
        "the slow query ended before the other calls were answered: the test proves nothing"
    );
    let answer = slow
        .client
        .wait_response(slow.id, Duration::from_secs(30))
        .expect("the slow call is answered");
    assert_eq!(answer["result"]["isError"], false, "{answer}");
}

pub const EXEC_TOOL: &str = "name: dangerous\ndescription: Pretends to change the cluster.\nsafety: execute\ninput_schema:\n  type: object\n  required: [approval_token]\n  properties:\n    approval_token: {type: string}\nqueries:\n  - name: r\n    sql: SELECT 1 AS one\nexamples:\n  - args: {approval_token: x}\n    expect: {error: APPROVAL_INVALID}\n";

fn execute_tools_hidden(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dangerous.yaml"), EXEC_TOOL).unwrap();
    let d = dir.path().to_str().unwrap();
    let mut ro = client(ctx, &["--tools-dirs", d], &[]);
    assert!(!tool_names(&mut ro).contains(&"dangerous".to_string()));
    let r = ro.call("dangerous", json!({"approval_token": "x"}));
    assert_eq!(
        r["structuredContent"]["error"]["code"], "EXECUTE_DISABLED",
        "{r}"
    );
    assert!(
        !tool_names(&mut ro).contains(&"citus_request_approval_token".to_string()),
        "tokens are issued in admin mode only"
    );
    let r = ro.call(
        "citus_request_approval_token",
        json!({"action": "dangerous", "arguments": {}}),
    );
    assert_eq!(
        r["structuredContent"]["error"]["code"], "EXECUTE_DISABLED",
        "{r}"
    );
    let state = Admin::new(dir.path());
    let mut admin_only = client(ctx, &state.args(d, false), &state.env());
    assert!(
        !tool_names(&mut admin_only).contains(&"dangerous".to_string()),
        "admin mode alone does not offer execute tools"
    );
    let mut admin = client(ctx, &state.args(d, true), &state.env());
    let t = listed_tool(&mut admin, "dangerous");
    assert_eq!(t["annotations"]["destructiveHint"], true);
    assert_eq!(t["annotations"]["readOnlyHint"], false);
}

const APPROVAL_SECRET: &str = "e2e-approval-secret-Zq8-never-print";

/// What an admin-mode server of the approval tests runs with: its ledger and audit
/// log in a test folder, and a secret.
struct Admin {
    ledger: String,
    audit: std::path::PathBuf,
}

impl Admin {
    fn new(dir: &std::path::Path) -> Admin {
        Admin {
            ledger: dir.join("state/nonces").to_str().unwrap().to_string(),
            audit: dir.join("state/audit.jsonl"),
        }
    }

    fn args<'a>(&'a self, tools: &'a str, execute: bool) -> Vec<&'a str> {
        let mut a = vec![
            "--tools-dirs",
            tools,
            "--mode",
            "admin",
            "--approval-ledger-path",
            &self.ledger,
            "--approval-audit-log",
            self.audit.to_str().unwrap(),
        ];
        if execute {
            a.push("--allow-execute");
        }
        a
    }

    fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![("CITUS_MCP_APPROVAL_SECRET", APPROVAL_SECRET)]
    }

    /// `citus-mcp approve TOOL --args ARGS [extra]` with this server's configuration.
    fn approve(&self, tools: &str, tool: &str, args: &str, extra: &[&str]) -> std::process::Output {
        bin()
            .args(["approve", tool, "--args", args])
            .args(extra)
            .args(self.args(tools, true))
            .env("CITUS_MCP_APPROVAL_SECRET", APPROVAL_SECRET)
            .output()
            .unwrap()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }
}

/// An admin server with the `dangerous` execute tool, whose client declares `caps`.
fn admin_client(ctx: &Ctx, dir: &std::path::Path, caps: Value) -> (McpClient, Admin) {
    admin_client_with(ctx, dir, caps, &[])
}

/// [`admin_client`] with more environment.
fn admin_client_with(
    ctx: &Ctx,
    dir: &std::path::Path,
    caps: Value,
    more: &[(&str, &str)],
) -> (McpClient, Admin) {
    std::fs::write(dir.join("dangerous.yaml"), EXEC_TOOL).unwrap();
    let state = Admin::new(dir);
    let dsn = ctx.dsn();
    let mut env: Vec<(&str, &str)> = state.env();
    env.push(("CITUS_MCP_COORDINATOR_DSN", &dsn));
    env.extend_from_slice(more);
    let c = McpClient::start_with(&state.args(dir.to_str().unwrap(), true), &env, caps);
    (c, state)
}

/// Calls citus_request_approval_token for `dangerous` with the other fields of `more`
/// (`arguments`, `ttl_seconds`), and answers the elicitation it sends with `answer`;
/// returns the tool's result and the elicitation's params.
fn request_token(c: &mut McpClient, more: Value, answer: Value) -> (Value, Value) {
    let mut request = json!({"action": "dangerous"});
    for (k, v) in more.as_object().into_iter().flatten() {
        request[k] = v.clone();
    }
    let id = c.send_request(
        "tools/call",
        json!({"name": "citus_request_approval_token", "arguments": request}),
    );
    let ask = c
        .wait_server_request("elicitation/create", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no elicitation; stderr:\n{}", c.stderr_text()));
    c.respond(&ask, answer);
    let r = c
        .wait_response(id, Duration::from_secs(10))
        .expect("the token tool answers");
    (r["result"].clone(), ask["params"].clone())
}

fn approval_accepted(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    // Everything logged, every crate, and rmcp's and tokio-postgres's modules named
    // (a module's directive outranks its crate's): still no token or secret in the log.
    let (mut c, state) = admin_client_with(
        ctx,
        dir.path(),
        json!({"elicitation": {}}),
        &[(
            "RUST_LOG",
            "trace,rmcp::service=trace,rmcp::handler=trace,tokio_postgres::query=trace",
        )],
    );
    let listed = listed_tool(&mut c, "citus_request_approval_token");
    // It issues a token each time: not read-only, not idempotent, not destructive.
    assert_eq!(listed["annotations"]["idempotentHint"], false, "{listed}");
    assert_eq!(listed["annotations"]["readOnlyHint"], false, "{listed}");
    assert_eq!(listed["annotations"]["destructiveHint"], false, "{listed}");

    let r = c.call("dangerous", json!({}));
    assert_eq!(
        r["structuredContent"]["error"]["code"], "APPROVAL_REQUIRED",
        "{r}"
    );
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("citus_request_approval_token"), "{text}");

    // A token for the call without arguments, asked for as the seed's interface did:
    // the action and a TTL (an integer the client wrote as 60.0), no `arguments`.
    let (r, ask) = request_token(
        &mut c,
        json!({"ttl_seconds": 60.0}),
        json!({"action": "accept", "content": {"approve": true}}),
    );
    assert_eq!(r["structuredContent"]["ttl_seconds"], 60, "{r}");
    assert_eq!(ask["mode"], "form", "{ask}");
    assert!(
        ask["message"].as_str().unwrap().contains("`dangerous`"),
        "{ask}"
    );
    assert_eq!(
        ask["requestedSchema"]["properties"]["approve"]["type"],
        "boolean"
    );
    assert_eq!(r["isError"], false, "{r}");
    let token = r["structuredContent"]["approval_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();

    let ok = c.call("dangerous", json!({"approval_token": token}));
    assert_eq!(ok["isError"], false, "the approved call runs: {ok}");
    assert_eq!(ok["structuredContent"]["r"][0]["one"], 1, "{ok}");
    let again = c.call("dangerous", json!({"approval_token": token}));
    assert_eq!(
        again["structuredContent"]["error"]["code"], "APPROVAL_INVALID",
        "{again}"
    );
    assert!(again.to_string().contains("reason: replayed"), "{again}");

    let audit = state.audit();
    assert!(
        audit.contains("\"confirmed\"") && audit.contains("\"accepted\""),
        "{audit}"
    );
    assert!(
        !audit.contains(&token) && !audit.contains(APPROVAL_SECRET),
        "{audit}"
    );
    // A database error that quotes what the caller sent: the caller gets it back, the
    // log masks the password in it.
    let r = c.call(
        "citus_explain_query",
        json!({"sql": "SELECT 'postgres://u:PwInLog@h/db'::int"}),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("PwInLog"), "{r}");
    let log = c.stderr_text();
    assert!(log.contains("tool call failed"), "{log}");
    assert!(!log.contains("PwInLog"), "{log}");
    assert!(!log.contains(&token) && !log.contains(APPROVAL_SECRET));
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

/// The person approving sees every character the token binds: nothing cut, and what
/// does not show (a right-to-left override) written out; arguments too long to show are
/// not asked about in the client at all.
fn approval_shows_everything(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, state) = admin_client(ctx, dir.path(), json!({"elicitation": {}}));
    let note = format!("{} \u{202e}tail-of-the-note", "x".repeat(300));
    let (r, ask) = request_token(
        &mut c,
        json!({"arguments": { "note": note }}),
        json!({"action": "decline"}),
    );
    assert_eq!(r["isError"], true, "{r}");
    let message = ask["message"].as_str().unwrap();
    assert!(message.contains("tail-of-the-note"), "{message}");
    assert!(message.contains(&"x".repeat(300)), "{message}");
    assert!(message.contains("\\u{202e}"), "{message}");
    assert!(!message.contains('\u{202e}'), "{message}");

    let long = json!({"note": "y".repeat(30_000)});
    let r = c.call(
        "citus_request_approval_token",
        json!({"action": "dangerous", "arguments": long}),
    );
    assert_eq!(
        r["structuredContent"]["error"]["code"], "APPROVAL_REQUIRED",
        "{r}"
    );
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("30011 characters"), "{text}");
    assert!(text.contains("citus-mcp approve dangerous"), "{text}");

    let out = state.approve(
        dir.path().to_str().unwrap(),
        "dangerous",
        &json!({ "note": "a\u{202e}b" }).to_string(),
        &[],
    );
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(r#"{"note":"a\u{202e}b"}"#), "{said}");
    assert!(said.contains("do not show"), "{said}");
}

fn approval_declined(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, state) = admin_client(ctx, dir.path(), json!({"elicitation": {"form": {}}}));
    for answer in [
        json!({"action": "decline"}),
        json!({"action": "cancel"}),
        json!({"action": "accept", "content": {"approve": false}}),
    ] {
        let (r, _) = request_token(&mut c, json!({"arguments": {}}), answer.clone());
        assert_eq!(r["isError"], true, "{answer}: {r}");
        assert_eq!(
            r["structuredContent"]["error"]["code"], "APPROVAL_REQUIRED",
            "{r}"
        );
        assert!(
            r["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("declined"),
            "{r}"
        );
        assert!(r["structuredContent"].get("approval_token").is_none());
    }
    let audit = state.audit();
    assert_eq!(audit.matches("\"declined\"").count(), 3, "{audit}");
    assert!(!audit.contains("\"issued\""), "{audit}");
}

fn approval_without_elicitation(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _state) = admin_client(ctx, dir.path(), json!({}));
    let r = c.call(
        "citus_request_approval_token",
        json!({"action": "dangerous", "arguments": {}}),
    );
    assert_eq!(
        r["structuredContent"]["error"]["code"], "APPROVAL_REQUIRED",
        "{r}"
    );
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("citus-mcp approve dangerous --args '{}'"),
        "{text}"
    );
    // Only execute tools, with arguments they accept, are approved.
    let r = c.call(
        "citus_request_approval_token",
        json!({"action": "ping", "arguments": {}}),
    );
    assert_eq!(
        r["structuredContent"]["error"]["code"], "INVALID_ARGUMENT",
        "{r}"
    );
}

/// Issue #7: an execute tool reports MCP progress notifications when the client sent a
/// progressToken. The fixture's citus_rebalance_start schedules a job that never runs, so
/// the tool waits (and reports) until its wait is over. A database of its own: the job
/// would show in every other test's job list.
fn rebalance_progress(ctx: &Ctx) {
    if !ctx.is_fixture() {
        eprintln!("skipped on a real cluster: it would start a rebalance there");
        return;
    }
    let dsn = ctx
        .db()
        .fixture_database("e_two_e_progress")
        .expect("a fixture database of its own");
    let dir = tempfile::tempdir().unwrap();
    let state = Admin::new(dir.path());
    let d = dir.path().to_str().unwrap();
    let args = json!({"wait_seconds": 2, "shard_transfer_mode": "block_writes"});
    let out = state.approve(d, "citus_rebalance_execute", &args.to_string(), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut env = state.env();
    env.push(("CITUS_MCP_COORDINATOR_DSN", &dsn));
    let mut c = client(ctx, &state.args(d, true), &env);
    let mut call_args = args.clone();
    call_args["approval_token"] = json!(token);
    let id = c.send_request(
        "tools/call",
        json!({"name": "citus_rebalance_execute", "arguments": call_args, "_meta": {"progressToken": "rebalance-1"}}),
    );
    let r = c
        .wait_response(id, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no answer; stderr:\n{}", c.stderr_text()));
    assert_eq!(r["result"]["isError"], false, "{r}");
    let progress: Vec<&Value> = c
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert!(
        progress
            .iter()
            .any(|n| n["params"]["progressToken"] == "rebalance-1"
                && n["params"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("rebalance job"))),
        "no progress for the token: {:?}",
        c.notifications
    );
}

fn approve_cli(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dangerous.yaml"), EXEC_TOOL).unwrap();
    let state = Admin::new(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = state.approve(d, "dangerous", "{}", &["--ttl", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty() && !token.contains(' '), "{token}");
    assert!(
        !stderr.contains(APPROVAL_SECRET) && !stderr.contains(&token),
        "{stderr}"
    );

    let mut c = client(ctx, &state.args(d, true), &state.env());
    let ok = c.call("dangerous", json!({"approval_token": token}));
    assert_eq!(ok["isError"], false, "{ok}");
    let again = c.call("dangerous", json!({"approval_token": token}));
    assert_eq!(
        again["structuredContent"]["error"]["code"],
        "APPROVAL_INVALID"
    );
    // A restarted server shares the ledger: still refused.
    drop(c);
    let mut c = client(ctx, &state.args(d, true), &state.env());
    let after = c.call("dangerous", json!({"approval_token": token}));
    assert!(after.to_string().contains("reason: replayed"), "{after}");
    let audit = state.audit();
    assert!(audit.contains("\"via\":\"cli\""), "{audit}");
    assert!(
        !audit.contains(&token) && !audit.contains(APPROVAL_SECRET),
        "{audit}"
    );

    // Not an execute tool, or arguments it does not take: usage errors.
    let out = bin()
        .args(["approve", "ping"])
        .args(state.args(d, true))
        .env("CITUS_MCP_APPROVAL_SECRET", APPROVAL_SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

fn admin_needs_secret(_: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let state = Admin::new(dir.path());
    let d = dir.path().to_str().unwrap();
    for secret in [None, Some("short-secret")] {
        let mut cmd = bin();
        cmd.args(["tools", "list"]).args(state.args(d, true));
        if let Some(s) = secret {
            cmd.env("CITUS_MCP_APPROVAL_SECRET", s);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("approval_secret"), "{err}");
        assert!(!err.contains("short-secret"), "{err}");
    }
}

fn prompts(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let r = c.request("prompts/list", json!({}));
    let prompts = r["result"]["prompts"].as_array().unwrap().clone();
    assert!(!prompts.is_empty(), "{r}");
    for p in prompts {
        let name = p["name"].as_str().unwrap();
        let mut args = serde_json::Map::new();
        for a in p["arguments"].as_array().cloned().unwrap_or_default() {
            args.insert(
                a["name"].as_str().unwrap().to_string(),
                Value::from("orders"),
            );
        }
        let got = c.request("prompts/get", json!({"name": name, "arguments": args}));
        let messages = got["result"]["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {got}"));
        assert!(!messages.is_empty());
        for m in messages {
            assert!(m["role"] == "user" || m["role"] == "assistant");
        }
    }
    // Arguments are strings of a sane size, without control characters: they are pasted
    // into the text a model reads.
    for bad in [json!(123), json!("a\0b"), json!("x".repeat(20_000))] {
        let got = c.request(
            "prompts/get",
            json!({"name": "citus.skew_investigation", "arguments": {"table": bad}}),
        );
        assert_eq!(got["error"]["code"], -32602, "{got}");
    }
}

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_citus-mcp"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CITUS_MCP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    cmd
}

fn invalid_config(_: &Ctx) {
    let out = bin()
        .args(["tools", "list"])
        .env("CITUS_MCP_MAX_ROWS", "plenty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_rows") && err.contains("CITUS_MCP_MAX_ROWS"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "mode: god\n").unwrap();
    let out = bin()
        .args(["tools", "list", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`mode`") && err.contains("c.yaml"), "{err}");
    std::fs::write(&file, "max_rows: 10\nmax_rows: 20\n").unwrap();
    let out = bin()
        .args(["tools", "list", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duplicate key `max_rows`"), "{err}");
}

fn lint_cli(_: &Ctx) {
    let out = bin().args(["lint"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "name: bad\ndescription: d\nsafety: read_only\ninput_schema: {type: object, properties: {a: {type: integer}}}\nqueries:\n  - name: q\n    sql: SELECT * FROM t WHERE a = '{{ a }}'\nexamples:\n  - args: {a: 1}\n").unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        EXTRA_TOOL.replace("hello", "good"),
    )
    .unwrap();
    let out = bin()
        .args(["lint", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error[E006]") && text.contains("bad.yaml:7:5"),
        "{text}"
    );
    let out = bin()
        .args(["lint", "--format", "json", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "E006");
    let out = bin().args(["lint", "/nonexistent/tools"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing path is an I/O error");
}

fn lint_db(ctx: &Ctx) {
    let out = bin().args(["lint", "--db", &ctx.dsn()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.yaml"),
        EXTRA_TOOL
            .replace("hello", "typo")
            .replace("SELECT 'typo'::text", "SELECT nodname FROM pg_dist_node"),
    )
    .unwrap();
    let out = bin()
        .args(["lint", "--db", &ctx.dsn(), dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("E011") && text.contains("nodname"), "{text}");
}

fn tools_call(ctx: &Ctx) {
    let out = bin()
        .args(["tools", "call", "list_nodes", "--args", r#"{"limit": 2}"#])
        .env("CITUS_MCP_COORDINATOR_DSN", ctx.dsn())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);
    let out = bin()
        .args(["tools", "call", "list_nodes", "--args", r#"{"limit": 0}"#])
        .env("CITUS_MCP_COORDINATOR_DSN", ctx.dsn())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The DSN where a user puts it: after the subcommand (issue #9), or before it.
    let dsn = ctx.dsn();
    for args in [
        vec!["tools", "call", "server_info", &dsn],
        vec![&dsn, "tools", "call", "server_info"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cluster"]["connected"], true, "{args:?}: {v}");
    }
    let out = bin().args(["tools", "list", &dsn]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn resources(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let list = c.request("resources/list", json!({}));
    let uris: Vec<String> = list["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap().to_string())
        .collect();
    assert!(
        uris.contains(&"citus://cluster/summary".to_string())
            && uris.contains(&"citus://tables".to_string()),
        "{uris:?}"
    );
    let templates = c.request("resources/templates/list", json!({}));
    let templates: Vec<String> = templates["result"]["resourceTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uriTemplate"].as_str().unwrap().to_string())
        .collect();
    assert!(
        templates.contains(&"citus://tables/{table}".to_string()),
        "{templates:?}"
    );

    let read = |c: &mut McpClient, uri: &str| -> Value {
        c.request("resources/read", json!({"uri": uri}))
    };
    let r = read(&mut c, "citus://tables/orders");
    let content = &r["result"]["contents"][0];
    assert_eq!(content["mimeType"], "application/json", "{r}");
    let doc: Value = serde_json::from_str(content["text"].as_str().unwrap()).unwrap();
    assert_eq!(doc["table"]["table_name"], "orders");
    let summary: Value = serde_json::from_str(
        read(&mut c, "citus://cluster/summary")["result"]["contents"][0]["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(summary["summary"].is_object(), "{summary}");
    let tables: Value = serde_json::from_str(
        read(&mut c, "citus://tables")["result"]["contents"][0]["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(tables["tables"].as_array().unwrap().len() >= 8);
    let group: Value = serde_json::from_str(
        read(&mut c, "citus://colocation/2")["result"]["contents"][0]["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(group.to_string().contains("orders"), "{group}");
    // Each failure with the code its kind has: no such resource, or a variable the tool
    // refuses (invalid params, its stable code in data), never an internal error.
    let code = |r: Value| r["error"]["code"].as_i64().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(code(read(&mut c, "citus://tables/no_such_table")), -32002);
    assert_eq!(code(read(&mut c, "citus://nothing/here")), -32002);
    let r = read(&mut c, "citus://colocation/abc");
    assert_eq!(code(r.clone()), -32602, "{r}");
    assert_eq!(
        r["error"]["data"]["error"]["code"], "INVALID_ARGUMENT",
        "{r}"
    );
}

/// Issue #8: an operator serves only the toolsets a team needs.
fn toolsets(ctx: &Ctx) {
    let mut c = client(
        ctx,
        &["--toolsets", "monitor,oncall"],
        &[(
            "CITUS_MCP_TOOLSET_GROUPS",
            r#"{"oncall": ["citus_advisor", "server_info", "nope_tool"]}"#,
        )],
    );
    let mut names = tool_names(&mut c);
    names.sort();
    assert_eq!(
        names,
        [
            "citus_activity",
            "citus_advisor",
            "citus_job_inspector",
            "citus_lock_inspector",
            "citus_rebalance_status",
            "server_info"
        ],
    );
    let r = c.call("list_nodes", json!({}));
    assert_eq!(r["isError"], true, "{r}");
    let e = &r["structuredContent"]["error"];
    assert_eq!(e["code"], "TOOLSET_NOT_SERVED", "{r}");
    assert!(e["message"].as_str().unwrap().contains("`inspect`"), "{e}");
    assert!(e["hint"].as_str().unwrap().contains("toolsets"), "{e}");
    assert_eq!(c.call("citus_activity", json!({}))["isError"], false);
    // Every built-in prompt names an inspect tool, so none is offered, and none answers.
    let prompts = c.request("prompts/list", json!({}));
    assert_eq!(prompts["result"]["prompts"], json!([]), "{prompts}");
    let got = c.request("prompts/get", json!({"name": "citus.health_check"}));
    assert!(
        got["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not served")),
        "{got}"
    );
    let manual = c.request("resources/read", json!({"uri": "citus://tools/list_nodes"}));
    assert!(manual["error"].is_object(), "{manual}");
    let warnings = wait_config_warnings(&mut c, |w| w.contains("nope_tool"));
    assert!(warnings.contains("toolset_groups: `oncall`"), "{warnings}");

    let out = bin()
        .args(["tools", "list", "--toolsets", "inspect,monitr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`monitr`") && err.contains("--toolsets"),
        "{err}"
    );
}

/// Issue #8: tools/list stays short; each tool's manual is a resource.
fn tool_manuals(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let templates = c.request("resources/templates/list", json!({}));
    let manual = templates["result"]["resourceTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["uriTemplate"] == "citus://tools/{name}")
        .cloned()
        .unwrap_or_else(|| panic!("no manual template: {templates}"));
    assert_eq!(manual["mimeType"], "text/markdown");
    for name in tool_names(&mut c) {
        let uri = format!("citus://tools/{name}");
        let r = c.request("resources/read", json!({"uri": uri}));
        let content = &r["result"]["contents"][0];
        assert_eq!(content["mimeType"], "text/markdown", "{r}");
        let text = content["text"].as_str().unwrap();
        assert!(text.starts_with(&format!("# {name}")), "{text}");
    }
    let done = c.request(
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": "citus://tools/{name}"},
               "argument": {"name": "name", "value": "citus_sh"}}),
    );
    let values = done["result"]["completion"]["values"].to_string();
    assert!(
        values.contains("citus_shard_heatmap") && !values.contains("list_nodes"),
        "{done}"
    );
    let out = bin()
        .args(["tools", "show", "list_nodes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("# list_nodes") && text.contains("## Result"),
        "{text}"
    );
}

fn completions(ctx: &Ctx) {
    let mut c = client(ctx, &[], &[]);
    let complete = |c: &mut McpClient, r: Value, arg: &str, value: &str| -> Vec<String> {
        let out = c.request(
            "completion/complete",
            json!({"ref": r, "argument": {"name": arg, "value": value}}),
        );
        out["result"]["completion"]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{out}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let prompt = json!({"type": "ref/prompt", "name": "citus.skew_investigation"});
    let tables = complete(&mut c, prompt.clone(), "table", "ord");
    assert_eq!(tables, vec!["orders"]);
    let all = complete(
        &mut c,
        json!({"type": "ref/resource", "uri": "citus://tables/{table}"}),
        "table",
        "",
    );
    for t in [
        "countries",
        "customers",
        "events",
        "orders",
        "tenant_acme.projects",
    ] {
        assert!(all.contains(&t.to_string()), "{t} missing from {all:?}");
    }
    assert!(
        !all.contains(&"app_settings".to_string()),
        "plain local tables are not Citus tables"
    );
    let groups = complete(
        &mut c,
        json!({"type": "ref/resource", "uri": "citus://colocation/{colocation_id}"}),
        "colocation_id",
        "",
    );
    assert!(
        groups.len() >= 6 && groups.contains(&"2".to_string()),
        "{groups:?}"
    );
    let strategies = complete(
        &mut c,
        json!({"type": "ref/prompt", "name": "citus.rebalance_workflow"}),
        "strategy",
        "by_d",
    );
    assert_eq!(strategies, vec!["by_disk_size"]);
    assert!(complete(&mut c, prompt.clone(), "table", "zzz").is_empty());
    // A prompt or resource that does not exist, or does not take the argument: nothing.
    let nowhere = json!({"type": "ref/prompt", "name": "no.such_prompt"});
    assert!(complete(&mut c, nowhere, "table", "ord").is_empty());
    assert!(complete(&mut c, prompt, "colocation_id", "").is_empty());
    let made_up = json!({"type": "ref/resource", "uri": "citus://made/{table}"});
    assert!(complete(&mut c, made_up, "table", "ord").is_empty());
}

const EXTRA_PROMPT: &str = "name: extra.check\ndescription: An operator's own prompt.\nmessages:\n  - role: user\n    text: Call ping.\n";

fn prompt_hot_reload(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = client(ctx, &["--prompts-dirs", dir.path().to_str().unwrap()], &[]);
    std::fs::write(dir.path().join("extra.check.yaml"), EXTRA_PROMPT).unwrap();
    assert!(
        c.wait_notification(
            "notifications/prompts/list_changed",
            Duration::from_secs(10)
        )
        .is_some()
    );
    let list = c.request("prompts/list", json!({}));
    assert!(
        list["result"]["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "extra.check"),
        "{list}"
    );
    let got = c.request("prompts/get", json!({"name": "extra.check"}));
    assert_eq!(
        got["result"]["messages"][0]["content"]["text"],
        "Call ping."
    );
}

/// The 2026-07-28 lifecycle: no initialize; notifications travel on a
/// `subscriptions/listen` stream the client opens.
fn listen_2026(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let dsn = ctx.dsn();
    let mut c = McpClient::spawn(
        &["--tools-dirs", dir.path().to_str().unwrap()],
        &[("CITUS_MCP_COORDINATOR_DSN", dsn.as_str())],
    );
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "citus-mcp-tests", "version": "0"},
    });
    c.send_request(
        "subscriptions/listen",
        json!({"_meta": meta, "notifications": {"toolsListChanged": true}}),
    );
    assert!(
        c.wait_notification(
            "notifications/subscriptions/acknowledged",
            Duration::from_secs(10)
        )
        .is_some(),
        "no acknowledgement; stderr:\n{}",
        c.stderr_text()
    );
    std::fs::write(dir.path().join("hello.yaml"), EXTRA_TOOL).unwrap();
    assert!(
        c.wait_notification("notifications/tools/list_changed", Duration::from_secs(10))
            .is_some()
    );
    let list = c.request("tools/list", json!({"_meta": meta}));
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"hello"), "{names:?}");
    let r = c.request(
        "tools/call",
        json!({"_meta": meta, "name": "hello", "arguments": {}}),
    );
    assert_eq!(r["result"]["structuredContent"]["greeting"], "hello", "{r}");
    assert!(c.garbage.is_empty(), "{:?}", c.garbage);
}

fn resource_hot_reload(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = client(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
    let tool = format!("{EXTRA_TOOL}resources:\n  - uri: test://hello\n    name: hello\n");
    std::fs::write(dir.path().join("hello.yaml"), tool).unwrap();
    assert!(
        c.wait_notification(
            "notifications/resources/list_changed",
            Duration::from_secs(10)
        )
        .is_some()
    );
    let list = c.request("resources/list", json!({}));
    assert!(
        list["result"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["uri"] == "test://hello"),
        "{list}"
    );
    let read = c.request("resources/read", json!({"uri": "test://hello"}));
    let doc: Value =
        serde_json::from_str(read["result"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(doc["greeting"], "hello");
}
