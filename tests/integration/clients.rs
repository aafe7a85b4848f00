//! Real clients and several clusters (issue #9): the MCP Python SDK's client over Streamable
//! HTTP in both session models and over stdio, and two clusters served side by side by one
//! process.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use libtest_mimic::Trial;
use serde_json::{Value, json};

use crate::e2e::{EXTRA_TOOL, bin};
use crate::httpd::{Endpoint, HttpServer, structured};
use crate::{Ctx, READER_ROLE, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "clients::python_sdk_lists_calls_and_hears_list_changed_in_both_models",
            python_sdk,
        ),
        trial(
            ctx,
            "clients::python_sdk_over_stdio_checks_rows_against_their_output_schema",
            python_sdk_stdio,
        ),
        trial(
            ctx,
            "clients::two_clusters_side_by_side_each_with_its_own_pool_mode_and_limits",
            two_clusters,
        ),
        trial(
            ctx,
            "clients::stdio_and_the_cli_choose_a_cluster_by_name",
            choose_cluster,
        ),
        trial(
            ctx,
            "clients::a_tokens_grant_holds_where_its_clusters_say",
            cluster_tokens,
        ),
    ]
}

/// The Python that has the MCP SDK: `CITUS_MCP_TEST_PYTHON`, else `python3`.
fn python() -> String {
    let python = std::env::var("CITUS_MCP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import mcp, mcp_types"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{python}` cannot import the MCP Python SDK: `{python} -m pip install 'mcp>=2,<3'` \
         (.ci/run does), or point CITUS_MCP_TEST_PYTHON at a Python that has it"
    );
    python
}

/// A tool file like the e2e tests' `hello`, named `name`.
fn greeting_tool(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        EXTRA_TOOL.replace("name: hello", &format!("name: {name}")),
    )
    .unwrap();
    path
}

/// Runs tests/clients/mcp_sdk_client.py; its report.
fn sdk_client(python: &str, url: &str, mode: &str, tools_dir: &str, tool: &str) -> Value {
    sdk_client_with(python, url, mode, tools_dir, tool, &[])
}

/// [`sdk_client`] with `env` set for the script (and a server it starts over stdio).
fn sdk_client_with(
    python: &str,
    url: &str,
    mode: &str,
    tools_dir: &str,
    tool: &str,
    env: &[(&str, &str)],
) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/mcp_sdk_client.py"
    );
    let mut child = std::process::Command::new(python)
        .args([script, url, mode, tools_dir, tool])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    // Bounded: the script waits 20 s at most for a notification.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK client failed ({mode} at {url}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn python_sdk(ctx: &Ctx) {
    let python = python();
    // Sessions (the default), then http.stateless: both models, both protocol eras.
    for stateless in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let tools_s = tools.path().to_str().unwrap();
        let mut args = vec!["--tools-dirs", tools_s];
        if stateless {
            args.push("--http-stateless");
        }
        // A read timeout shorter than the client's pause between two calls (the script's
        // IDLE_SECONDS): its idle connection is closed under it.
        let s = HttpServer::start(ctx, &args, &[("CITUS_MCP_HTTP_READ_TIMEOUT_SECONDS", "2")]);
        let url = s.ep.url("/mcp");
        for mode in ["legacy", "2026-07-28"] {
            let name = format!(
                "added_{}_{}",
                if stateless { "stateless" } else { "sessions" },
                if mode == "legacy" { "legacy" } else { "y2026" }
            );
            let file = greeting_tool(work.path(), &name);
            // A 2025 client of a stateless server has no GET stream, so no list_changed
            // (README says so): it lists and calls only.
            let hears = !(stateless && mode == "legacy");
            let dir = if hears { tools_s } else { "-" };
            let r = sdk_client(&python, &url, mode, dir, file.to_str().unwrap());
            let what = format!(
                "{} {mode}: {r}",
                if stateless { "stateless" } else { "sessions" }
            );
            let want = if mode == "legacy" {
                "2025-11-25"
            } else {
                "2026-07-28"
            };
            assert_eq!(r["protocol"], want, "{what}");
            // A 2026-07-28 client that pins its version skips discovery: no server info.
            if mode == "legacy" {
                assert_eq!(r["server"], "citus-mcp", "{what}");
            }
            let tools = r["tools"].as_array().unwrap();
            assert!(tools.contains(&json!("citus_cluster_summary")), "{what}");
            assert_eq!(r["ping"]["message"], "from the python sdk", "{what}");
            assert!(r["nodes"].as_u64().unwrap() >= 1, "{what}");
            if hears {
                assert_eq!(r["list_changed"], true, "{what}");
                assert!(
                    r["tools_after"].as_array().unwrap().contains(&json!(name)),
                    "{what}"
                );
                assert_eq!(r["added"]["greeting"], "hello", "{what}");
            }
        }
        assert!(!s.log().contains("panicked"), "{}", s.log());
    }
}

/// Rows with an `output_schema`, many more than the default budget keeps.
const ROWS_SCHEMA_TOOL: &str = r#"
name: rows_schema
description: Generated rows, with an output schema the client checks.
safety: read_only
input_schema: {type: object, properties: {n: {type: integer}}, required: [n]}
output_schema:
  type: object
  required: [rows, truncated]
  additionalProperties: false
  properties:
    rows:
      type: array
      items:
        type: object
        required: [g, label, nothing]
        additionalProperties: false
        properties:
          g: {type: integer}
          label: {type: string}
          nothing: {type: "null"}
    truncated: {type: boolean}
    how_to_get_more: {type: string}
queries:
  - name: rows
    sql: SELECT g, E'r\t"' || g AS label, NULL::int AS nothing FROM generate_series(1, {{ n }}) g
examples:
  - args: {n: 3}
"#;

/// The MCP Python SDK over stdio (the transport that writes a SQL tool's rows itself):
/// the SDK checks structured content against the tool's `output_schema` and reads the rest.
fn python_sdk_stdio(ctx: &Ctx) {
    let python = python();
    let work = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    std::fs::write(tools.path().join("rows_schema.yaml"), ROWS_SCHEMA_TOOL).unwrap();
    let file = greeting_tool(work.path(), "added_stdio");
    let server = format!("stdio:{}", env!("CARGO_BIN_EXE_citus-mcp"));
    let dsn = ctx.dsn();
    let env = [
        ("CITUS_MCP_COORDINATOR_DSN", dsn.as_str()),
        ("CITUS_MCP_ENABLE_CACHING", "false"),
        ("HOME", "/nonexistent"),
        ("XDG_CONFIG_HOME", "/nonexistent"),
    ];
    let tools_s = tools.path().to_str().unwrap();
    let r = sdk_client_with(
        &python,
        &server,
        "legacy",
        tools_s,
        file.to_str().unwrap(),
        &env,
    );
    assert_eq!(r["ping"]["message"], "from the python sdk", "{r}");
    assert!(r["nodes"].as_u64().unwrap() >= 1, "{r}");
    let rows = &r["rows_schema"];
    assert_eq!(
        rows["first"],
        json!({"g": 1, "label": "r\t\"1", "nothing": null}),
        "{r}"
    );
    assert_eq!(rows["truncated"], true, "{r}");
    let kept = rows["rows"].as_u64().unwrap();
    assert!(kept > 100 && kept < 5000, "{r}");
    assert!(
        rows["how_to_get_more"].as_str().unwrap().contains("n"),
        "{r}"
    );
    assert!(
        rows["text"].as_str().unwrap().starts_with("## rows ("),
        "{r}"
    );
    assert_eq!(r["list_changed"], true, "{r}");
    assert_eq!(r["added"]["greeting"], "hello", "{r}");
}

const MAIN_SECRET: &str = "main-cluster-approval-secret-never-print";
const SECOND_SECRET: &str = "second-cluster-approval-secret-never-print";
const SECOND_PASSWORD: &str = "second-cluster-password-never-print";

/// Which database and role a cluster's connections reach.
const WHOAMI: &str = "name: whoami\ndescription: Which database and role this cluster's connections reach.\ntoolset: inspect\nsafety: read_only\nqueries:\n  - name: me\n    shape: one\n    sql: SELECT current_database()::text AS db, current_user::text AS role\nexamples:\n  - args: {}\n";

/// A configuration with two clusters: `main` (the test database, admin mode) and
/// `second` (another database of the fixture server, or on a real cluster the same
/// database as README's least-privilege role; read-only, `max_rows: 1`).
struct TwoClusters {
    config: std::path::PathBuf,
    tools: tempfile::TempDir,
    state: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

fn two_cluster_config(ctx: &Ctx, db_name: &str) -> TwoClusters {
    let second_dsn = if ctx.is_fixture() {
        ctx.db()
            .fixture_database(db_name)
            .expect("a second database")
    } else {
        // The reader role exists once a reader pool was made.
        drop(ctx.reader_pool());
        let dsn = ctx.dsn();
        // The last `user` wins, in a URL's query as in key=value text.
        match (dsn.contains("://"), dsn.contains('?')) {
            (true, true) => format!("{dsn}&user={READER_ROLE}"),
            (true, false) => format!("{dsn}?user={READER_ROLE}"),
            (false, _) => format!("{dsn} user={READER_ROLE}"),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(tools.path().join("whoami.yaml"), WHOAMI).unwrap();
    // The fixture server trusts local connections, so a password is sent and ignored;
    // on a real cluster the second cluster logs in as the reader role without one.
    let password = if ctx.is_fixture() {
        format!("    coordinator_password: {SECOND_PASSWORD}\n")
    } else {
        String::new()
    };
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "tools_dirs: [{tools}]\nmax_rows: 500\nclusters:\n  main:\n    dsn: \"{main}\"\n    \
             mode: admin\n    allow_execute: true\n    approval_secret: {MAIN_SECRET}\n  \
             second:\n    dsn: \"{second}\"\n{password}    max_rows: 1\n    mode: admin\n    \
             approval_secret: {SECOND_SECRET}\n    toolsets: [inspect, monitor]\n",
            tools = tools.path().display(),
            main = ctx.dsn(),
            second = second_dsn,
        ),
    )
    .unwrap();
    TwoClusters {
        config,
        tools,
        state,
        _dir: dir,
    }
}

impl TwoClusters {
    fn command(&self) -> std::process::Command {
        let mut cmd = bin();
        cmd.env_remove("CITUS_MCP_COORDINATOR_DSN")
            .env("XDG_STATE_HOME", self.state.path())
            .arg("--config")
            .arg(&self.config);
        cmd
    }
}

/// Waits on a session's GET stream for `notifications/tools/list_changed`.
async fn heard_list_changed(body: &mut hyper::body::Incoming) -> bool {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen.push_str(&String::from_utf8_lossy(d));
                if seen.contains("notifications/tools/list_changed") {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

fn two_clusters(ctx: &Ctx) {
    let setup = two_cluster_config(ctx, "clusters_second");
    let s = HttpServer::launch(
        setup.command(),
        &["--log-format", "json", "--log-level", "debug"],
        &[],
    );
    let (main, second) = (s.ep.at("/mcp/main"), s.ep.at("/mcp/second"));
    ctx.rt.block_on(async {
        // Each cluster answers from its own database (or role).
        let a = main.call_2026(&[], 1, "whoami", json!({})).await;
        let b = second.call_2026(&[], 2, "whoami", json!({})).await;
        let (a, b) = (&structured(&a)["me"], &structured(&b)["me"]);
        assert_ne!(a, b, "both clusters answered the same: {a} {b}");
        if ctx.is_fixture() {
            assert_eq!(b["db"], "clusters_second", "{b}");
        } else {
            assert_eq!(b["role"], READER_ROLE, "{b}");
        }

        // Its own limits: `second` caps rows at 1, `main` inherits 500 from the top level.
        let r = main.call_2026(&[], 3, "list_nodes", json!({})).await;
        let nodes = &structured(&r)["nodes"];
        assert!(nodes.as_array().unwrap().len() > 1, "{}", r.text);
        assert_eq!(structured(&r)["truncated"], false, "{}", r.text);
        let r = second.call_2026(&[], 4, "list_nodes", json!({})).await;
        assert_eq!(
            structured(&r)["nodes"].as_array().unwrap().len(),
            1,
            "{}",
            r.text
        );
        assert_eq!(structured(&r)["truncated"], true, "{}", r.text);

        // Its own mode: only `main` (admin, allow_execute) lists execute tools.
        let list = |ep: Endpoint, id: u64| async move {
            let r = ep
                .send(
                    "POST",
                    ep.mcp_path(),
                    &[
                        ("content-type", "application/json"),
                        ("accept", "application/json, text/event-stream"),
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/list"),
                    ],
                    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list",
                        "params": {"_meta": {
                            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {}}}})
                    .to_string()
                    .into_bytes(),
                )
                .await;
            r.response()["result"]["tools"]
                .as_array()
                .unwrap_or_else(|| panic!("{}", r.text))
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert!(
            list(main.clone(), 5)
                .await
                .contains(&"citus_rebalance_execute".into())
        );
        let second_tools = list(second.clone(), 6).await;
        assert!(!second_tools.contains(&"citus_rebalance_execute".into()));
        // Its own toolsets: `second` serves inspect and monitor only.
        assert!(
            second_tools.contains(&"citus_activity".into()),
            "{second_tools:?}"
        );
        assert!(
            !second_tools.contains(&"citus_advisor".into()),
            "{second_tools:?}"
        );
        assert!(
            list(main.clone(), 11)
                .await
                .contains(&"citus_advisor".into())
        );

        // Each says which cluster it is.
        let r = second.call_2026(&[], 10, "server_info", json!({})).await;
        assert_eq!(structured(&r)["cluster_name"], "second", "{}", r.text);
        assert_eq!(structured(&r)["limits"]["max_rows"], 1, "{}", r.text);

        // /mcp is not an endpoint when clusters are configured.
        let r = s.ep.call_2026(&[], 7, "ping", json!({})).await;
        assert_eq!(r.status, 404, "{}", r.text);

        // A hot reload reaches every cluster's sessions.
        let (sa, sb) = (main.initialize(&[]).await, second.initialize(&[]).await);
        let (mut ga, mut gb) = (main.open_stream(&sa).await, second.open_stream(&sb).await);
        // In the inspect toolset, which both clusters serve.
        let hello = EXTRA_TOOL.replace("safety:", "toolset: inspect\nsafety:");
        std::fs::write(setup.tools.path().join("hello.yaml"), hello).unwrap();
        assert!(
            heard_list_changed(&mut ga).await,
            "main heard no list_changed"
        );
        assert!(
            heard_list_changed(&mut gb).await,
            "second heard no list_changed"
        );
        for (ep, session) in [(&main, &sa), (&second, &sb)] {
            let r = ep.call(session, &[], 8, "hello", json!({})).await;
            assert_eq!(structured(&r)["greeting"], "hello", "{}", r.text);
        }
        // A session belongs to its cluster's endpoint.
        let r = second.call(&sa, &[], 9, "ping", json!({})).await;
        assert_eq!(r.status, 404, "{}", r.text);

        // 64 clients at once, alternating clusters and session models, four calls each:
        // every call is answered, by its own cluster.
        let (want_a, want_b) = (a.clone(), b.clone());
        let mut tasks = Vec::new();
        for c in 0..64u64 {
            let (ep, want) = if c % 2 == 0 {
                (main.clone(), want_a.clone())
            } else {
                (second.clone(), want_b.clone())
            };
            tasks.push(tokio::spawn(async move {
                let session = if c % 4 < 2 {
                    Some(ep.initialize(&[]).await)
                } else {
                    None
                };
                for i in 0..4u64 {
                    let id = 1000 + c * 10 + i;
                    let r = match &session {
                        Some(sid) => ep.call(sid, &[], id, "whoami", json!({})).await,
                        None => ep.call_2026(&[], id, "whoami", json!({})).await,
                    };
                    assert_eq!(r.response()["id"], id, "{}", r.text);
                    assert_eq!(structured(&r)["me"], want, "{}", r.text);
                }
                4
            }));
        }
        let mut answered = 0;
        for t in tasks {
            answered += tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("the load finishes within a minute")
                .expect("a client finished");
        }
        assert_eq!(answered, 256);

        // Readiness per cluster; metrics labelled by cluster.
        let r = s.ep.send("GET", "/readyz", &[], vec![]).await;
        assert_eq!(
            (r.status, r.text.as_str()),
            (200, "main: ready\nsecond: ready\n")
        );
        let m = s.ep.send("GET", "/metrics", &[], vec![]).await;
        for line in [
            "citus_mcp_tool_calls_total{cluster=\"main\",tool=\"list_nodes\",outcome=\"ok\"} 1",
            "citus_mcp_tool_calls_total{cluster=\"second\",tool=\"list_nodes\",outcome=\"ok\"} 1",
            "citus_mcp_tool_calls_total{cluster=\"main\",tool=\"hello\",outcome=\"ok\"} 1",
            "citus_mcp_tool_calls_total{cluster=\"second\",tool=\"whoami\",outcome=\"ok\"} 129",
        ] {
            assert!(m.text.contains(line), "{line} missing from:\n{}", m.text);
        }
    });
    // Each admin cluster keeps its own approval ledger and audit log by default.
    for name in ["main", "second"] {
        let audit = setup
            .state
            .path()
            .join(format!("citus-mcp/approval-audit-{name}.jsonl"));
        assert!(audit.exists(), "{} is missing", audit.display());
    }
    // Structured logs: every stderr line is one JSON object; no secret in any of them.
    let log = s.log();
    assert!(log.contains("serving MCP on http://"), "{log}");
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    for secret in [MAIN_SECRET, SECOND_SECRET, SECOND_PASSWORD] {
        assert!(!log.contains(secret), "a secret is in the log:\n{log}");
    }
}

fn choose_cluster(ctx: &Ctx) {
    let setup = two_cluster_config(ctx, "clusters_choose");
    let run = |args: &[&str]| {
        let out = setup
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Several clusters and no choice: stdio cannot serve them all; the error names them.
    for args in [
        &["serve"][..],
        &["tools", "call", "whoami"],
        &["--cluster", "nope", "serve"],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("main, second"), "{args:?}: {err}");
    }
    // stdio serves the one chosen, with its own limits.
    let state = setup.state.path().to_str().unwrap();
    let config = setup.config.to_str().unwrap();
    let mut c = crate::mcp::McpClient::start(
        &["--config", config, "--cluster", "second"],
        &[("XDG_STATE_HOME", state)],
    );
    let me = c.call("whoami", json!({}));
    let r = c.call("list_nodes", json!({}));
    assert_eq!(r["structuredContent"]["truncated"], true, "{r}");
    let mut c2 = crate::mcp::McpClient::start(
        &["--config", config, "--cluster", "main"],
        &[("XDG_STATE_HOME", state)],
    );
    let me2 = c2.call("whoami", json!({}));
    assert_ne!(
        me["structuredContent"], me2["structuredContent"],
        "{me} {me2}"
    );
    assert!(c.garbage.is_empty() && c2.garbage.is_empty());
    drop((c, c2));

    // The one chosen answers.
    let (code, out, err) = run(&["--cluster", "second", "tools", "call", "whoami"]);
    assert_eq!(code, Some(0), "{err}");
    let me: Value = serde_json::from_str(&out).unwrap();
    assert_ne!(me["me"]["db"].as_str().unwrap().len(), 0, "{out}");
    let (_, main_out, _) = run(&["tools", "call", "whoami", "--cluster", "main"]);
    assert_ne!(main_out, out, "both clusters answered the same");
    // A single-DSN flag beside clusters is an error naming both.
    let (code, _, err) = run(&["--coordinator-dsn", "host=nowhere", "tools", "list"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("coordinator_dsn") && err.contains("clusters"),
        "{err}"
    );
    for secret in [MAIN_SECRET, SECOND_SECRET, SECOND_PASSWORD] {
        assert!(!err.contains(secret), "{err}");
    }
}

/// The token `ops` may call `ping` only; `/mcp/main` and `/mcp/second` both hold it to that.
/// `second-ops` holds at `/mcp/second` only.
fn cluster_tokens(ctx: &Ctx) {
    let token = "cluster-token-never-print";
    let second_only = "second-only-token-never-print";
    let setup = two_cluster_config(ctx, "clusters_tokens");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "http:\n  tokens:\n    - name: ops\n      sha256: {}\n      tools: [ping]\n\
         \x20   - name: second-ops\n      sha256: {}\n      tools: [ping]\n      clusters: [second]\n",
        citus_mcp::httpd::auth::hash_hex(token),
        citus_mcp::httpd::auth::hash_hex(second_only)
    ));
    std::fs::write(&setup.config, text).unwrap();
    let s = HttpServer::launch(setup.command(), &[], &[]);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    ctx.rt.block_on(async {
        for name in ["main", "second"] {
            let ep = s.ep.at(&format!("/mcp/{name}"));
            let r = ep.call_2026(&[], 1, "ping", json!({})).await;
            assert_eq!(r.status, 401, "{name}: {}", r.text);
            let r = ep
                .call_2026(&auth, 2, "ping", json!({"message": name}))
                .await;
            assert_eq!(structured(&r)["message"], name, "{}", r.text);
            let r = ep.call_2026(&auth, 3, "whoami", json!({})).await;
            assert_eq!(r.status, 403, "{name}: {}", r.text);
        }
        // A token for one cluster holds at its endpoint only, and not at /metrics, which
        // shows every cluster.
        let bearer = format!("Bearer {second_only}");
        let theirs = [("authorization", bearer.as_str())];
        let r =
            s.ep.at("/mcp/second")
                .call_2026(&theirs, 4, "ping", json!({"message": "second"}))
                .await;
        assert_eq!(structured(&r)["message"], "second", "{}", r.text);
        let r =
            s.ep.at("/mcp/main")
                .call_2026(&theirs, 5, "ping", json!({}))
                .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.text.contains("other clusters"), "{}", r.text);
        let r = s.send("GET", "/metrics", &theirs, vec![]).await;
        assert_eq!(r.status, 403, "{}", r.text);
        let r = s.send("GET", "/metrics", &auth, vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    });
    let log = s.log();
    assert!(!log.contains(token) && !log.contains(second_only), "{log}");
}
