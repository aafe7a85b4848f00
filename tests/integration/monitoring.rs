//! The monitoring tools under live conditions: a sleeping session, an idle one, a real lock
//! wait between two sessions, the sample cluster's skew and empty worker, and background jobs.
//!
//! Sessions are `psql` child processes tagged with a unique application_name; a guard kills
//! them (and terminates their backends, found by that name only) even when a test fails.

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citus_mcp::engine::{Engine, Settings, ToolError, ToolOutput};
use citus_mcp::registry::{Registry, Sources};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "monitoring::activity_shows_a_sleeping_session_and_filters_it",
            activity_shows_a_sleeping_session_and_filters_it,
        ),
        trial(
            ctx,
            "monitoring::lock_inspector_shows_who_blocks_whom",
            lock_inspector_shows_who_blocks_whom,
        ),
        trial(
            ctx,
            "monitoring::heatmap_lists_the_empty_worker_for_every_grouping",
            heatmap_lists_the_empty_worker_for_every_grouping,
        ),
        trial(
            ctx,
            "monitoring::skew_report_sees_the_sample_skew",
            skew_report_sees_the_sample_skew,
        ),
        trial(
            ctx,
            "monitoring::job_inspector_filters_jobs_and_lists_tasks",
            job_inspector_filters_jobs_and_lists_tasks,
        ),
    ]
}

fn engine(ctx: &Ctx, app: &str) -> Engine {
    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    Engine::new(
        registry,
        Some(ctx.pool_named(&ctx.dsn(), app)),
        Settings {
            enable_caching: false,
            ..Settings::default()
        },
    )
    .with_plugins(citus_mcp::plugins::all())
}

fn call(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> Result<ToolOutput, ToolError> {
    ctx.rt
        .block_on(e.call(tool, args, &CancellationToken::new()))
}

fn ok(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> Value {
    match call(ctx, e, tool, args.clone()) {
        Ok(out) => out.structured,
        Err(err) => panic!("{tool} {args} failed: {}", err.text()),
    }
}

fn rows<'a>(out: &'a Value, key: &str) -> &'a [Value] {
    out[key]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no `{key}` list in {out}"))
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or("")
}

/// A name no other test or run uses.
pub(crate) fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// psql sessions of one test, all tagged with `app` (their application_name).
pub(crate) struct Sessions<'a> {
    ctx: &'a Ctx,
    app: String,
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl<'a> Sessions<'a> {
    pub(crate) fn new(ctx: &'a Ctx, app: &str) -> Self {
        Sessions {
            ctx,
            app: app.to_string(),
            children: Vec::new(),
            stdins: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.ctx.dsn()])
            .env("PGAPPNAME", &self.app)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs each command in turn in one session (one `-c` per command); returns its index.
    pub(crate) fn run(&mut self, commands: &[&str]) -> usize {
        let mut cmd = self.command();
        for c in commands {
            cmd.args(["-c", c]);
        }
        let child = cmd.stdin(Stdio::null()).spawn().expect("psql starts");
        self.children.push(child);
        self.children.len() - 1
    }

    /// A session that runs `sql` and then stays connected, idle.
    pub(crate) fn idle_after(&mut self, sql: &str) {
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .spawn()
            .expect("psql starts");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        self.stdins.push(stdin);
        self.children.push(child);
    }

    /// Waits for session `i` to exit by itself; true when it succeeded.
    fn wait(&mut self, i: usize, timeout: Duration) -> bool {
        let child = &mut self.children[i];
        let status = wait_until("a psql session to finish", timeout, || {
            child.try_wait().expect("try_wait")
        });
        status.success()
    }
}

impl Drop for Sessions<'_> {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A killed client does not stop a backend in pg_sleep; end ours (and only ours).
        let _ = self.ctx.db().psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
              WHERE application_name = '{}' AND pid <> pg_backend_pid()",
            self.app
        ));
    }
}

// ---------------------------------------------------------------------------------------------

fn activity_shows_a_sleeping_session_and_filters_it(ctx: &Ctx) {
    let marker = unique("cmcp_activity");
    let tool_app = unique("cmcp_activity_tool");
    let e = engine(ctx, &tool_app);
    let mut sessions = Sessions::new(ctx, &marker);
    // A secret in the statement: it must not leave the server as written.
    sessions.run(&[&format!(
        "SELECT pg_sleep(20) /* {marker} sleep PASSWORD 'hunter2' secret $x$hunter5$x$ token E'x\\'hunter6' */"
    )]);
    sessions.idle_after(&format!("SELECT 1 AS x /* {marker} idle */;"));

    let sleeper_in = |out: &Value| -> Option<Value> {
        rows(out, "sessions")
            .iter()
            .find(|s| {
                text(s, "query").contains(&format!("{marker} sleep"))
                    && s["is_worker_query"] != json!(true)
            })
            .cloned()
    };
    let args = json!({"limit": 1000, "query_max_chars": 2000});
    // Caught the instant its statement starts, the session has no wait event yet: wait
    // for it to be in pg_sleep, as the assertions below expect.
    let found = wait_until(
        "the sleeping session in citus_activity",
        Duration::from_secs(15),
        || {
            sleeper_in(&ok(ctx, &e, "citus_activity", args.clone()))
                .filter(|s| s["wait_event"] == "PgSleep")
        },
    );
    assert_eq!(text(&found, "state"), "active", "{found}");
    assert_eq!(text(&found, "wait_event"), "PgSleep", "{found}");
    let query = text(&found, "query");
    assert!(
        query.contains("PASSWORD '***'") && !query.contains("hunter2"),
        "{found}"
    );
    // Every quoting PostgreSQL reads is masked (dollar quotes, E'' with a \' inside).
    assert!(
        query.contains("secret '***' token '***'")
            && !query.contains("hunter5")
            && !query.contains("hunter6"),
        "{found}"
    );
    assert_eq!(text(&found, "application_name"), marker);
    assert!(found["nodeid"].as_u64().is_some(), "{found}");
    let node = text(&found, "node");
    assert!(
        node.contains(':') && node.rsplit(':').next().unwrap().parse::<u16>().is_ok(),
        "node is host:port: {found}"
    );
    assert_eq!(
        found["is_coordinator"], true,
        "the client connected to the coordinator: {found}"
    );
    let gpid = found["global_pid"].as_u64().expect("a global pid");

    // It has been sleeping for a while: duration grows, min_duration_secs lets it through.
    std::thread::sleep(Duration::from_millis(1300));
    let out = ok(
        ctx,
        &e,
        "citus_activity",
        json!({"limit": 1000, "query_max_chars": 2000, "min_duration_secs": 1}),
    );
    let again = sleeper_in(&out).expect("a 1-second minimum keeps a session sleeping longer");
    let duration = again["duration_secs"].as_f64().unwrap();
    assert!(duration >= 1.0, "{again}");
    assert!(again["query_secs"].as_f64().unwrap() >= 1.0, "{again}");
    for s in rows(&out, "sessions") {
        assert!(
            s["duration_secs"].as_f64().unwrap() >= 1.0,
            "filter leaked {s}"
        );
    }
    let durations: Vec<f64> = rows(&out, "sessions")
        .iter()
        .map(|s| s["duration_secs"].as_f64().unwrap())
        .collect();
    assert!(
        durations.windows(2).all(|w| w[0] >= w[1]),
        "longest first: {durations:?}"
    );
    let out = ok(
        ctx,
        &e,
        "citus_activity",
        json!({"min_duration_secs": 3600, "limit": 1000, "query_max_chars": 2000}),
    );
    assert!(sleeper_in(&out).is_none(), "a one-hour minimum hides it");

    // The tool never lists its own session.
    let out = ok(ctx, &e, "citus_activity", json!({"limit": 1000}));
    assert!(
        rows(&out, "sessions")
            .iter()
            .all(|s| text(s, "application_name") != tool_app),
        "the tool's own session is listed"
    );
    assert!(!rows(&out, "summary").is_empty());

    // The text is cut to query_max_chars and flagged.
    let out = ok(
        ctx,
        &e,
        "citus_activity",
        json!({"global_pid": gpid, "query_max_chars": 12}),
    );
    let cut = rows(&out, "sessions");
    assert!(!cut.is_empty(), "global_pid filter finds the session");
    for s in cut {
        assert_eq!(s["global_pid"].as_u64(), Some(gpid), "{s}");
    }
    let origin = cut
        .iter()
        .find(|s| s["is_worker_query"] != json!(true))
        .unwrap();
    assert_eq!(text(origin, "query").chars().count(), 12, "{origin}");
    assert_eq!(origin["query_truncated"], true);

    // An idle session shows only with include_idle.
    let idle_in = |out: &Value| -> Option<Value> {
        rows(out, "sessions")
            .iter()
            .find(|s| text(s, "query").contains(&format!("{marker} idle")))
            .cloned()
    };
    let idle = wait_until("the idle session", Duration::from_secs(15), || {
        idle_in(&ok(
            ctx,
            &e,
            "citus_activity",
            json!({"include_idle": true, "limit": 1000, "query_max_chars": 2000}),
        ))
        .filter(|s| text(s, "state") == "idle")
    });
    assert_eq!(text(&idle, "application_name"), marker);
    let out = ok(
        ctx,
        &e,
        "citus_activity",
        json!({"limit": 1000, "query_max_chars": 2000}),
    );
    assert!(
        idle_in(&out).is_none(),
        "idle sessions are hidden by default"
    );
    drop(sessions);
}

// ---------------------------------------------------------------------------------------------

fn lock_inspector_shows_who_blocks_whom(ctx: &Ctx) {
    let marker = unique("cmcp_lock");
    let e = engine(ctx, &unique("cmcp_lock_tool"));
    let row = ctx
        .db()
        .psql("SELECT customer_id || '|' || order_id || '|' || status FROM public.orders ORDER BY customer_id DESC, order_id DESC LIMIT 1")
        .unwrap();
    let parts: Vec<&str> = row.trim().splitn(3, '|').collect();
    let (customer, order, status) = (parts[0], parts[1], parts[2]);
    let before = ctx
        .db()
        .psql(&format!("SELECT status, amount FROM public.orders WHERE customer_id = {customer} AND order_id = {order}"))
        .unwrap();
    let update = |tag: &str| {
        format!(
            "UPDATE public.orders SET status = '{marker}_{tag}' WHERE customer_id = {customer} AND order_id = {order} /* {marker} {tag} api_key='k-{tag}' */"
        )
    };
    let mut sessions = Sessions::new(ctx, &marker);
    let a = sessions.run(&[
        "BEGIN",
        &update("a"),
        &format!("SELECT pg_sleep(10) /* {marker} a password=hunter3 */"),
        "ROLLBACK",
    ]);
    wait_until("session A to hold the row", Duration::from_secs(10), || {
        let n = ctx
            .db()
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{marker}' \
                  AND state = 'active' AND query LIKE 'SELECT pg_sleep(10)%' AND pid <> pg_backend_pid()"
            ))
            .unwrap();
        (n.trim() == "1").then_some(())
    });
    let b = sessions.run(&["BEGIN", &update("b"), "ROLLBACK"]);

    let args = json!({"include_locks": true, "limit": 1000, "query_max_chars": 2000});
    let (out, wait) = wait_until(
        "the lock wait in citus_lock_inspector",
        Duration::from_secs(8),
        || {
            let out = ok(ctx, &e, "citus_lock_inspector", args.clone());
            let wait = rows(&out, "waits")
                .iter()
                .find(|w| text(w, "blocked_statement").contains(&format!("{marker} b")))
                .cloned();
            wait.map(|w| (out, w))
        },
    );
    assert!(
        text(&wait, "blocking_statement").contains(&format!("{marker} a")),
        "{wait}"
    );
    // Secrets in both statements are masked.
    let (blocked, blocking) = (
        text(&wait, "blocked_statement"),
        text(&wait, "blocking_statement"),
    );
    assert!(
        blocked.contains("api_key='***'") && !blocked.contains("k-b"),
        "{wait}"
    );
    assert!(
        blocking.contains("password=***") && !blocking.contains("hunter3"),
        "{wait}"
    );
    // Nowhere in the result: `blockers` shows the blocker's statement too.
    let all = out.to_string();
    assert!(
        !all.contains("hunter3") && !all.contains("k-a") && !all.contains("k-b"),
        "{out}"
    );
    let waiting = wait["waiting_gpid"].as_u64().expect("waiting gpid");
    let blocking = wait["blocking_gpid"].as_u64().expect("blocking gpid");
    assert_ne!(waiting, blocking);
    assert_eq!(text(&wait, "waiting_application"), marker, "{wait}");
    assert_eq!(text(&wait, "blocking_application"), marker, "{wait}");
    assert_eq!(
        text(&wait, "blocking_state"),
        "active",
        "A sleeps inside its transaction: {wait}"
    );
    assert!(wait["wait_secs"].as_f64().unwrap() >= 0.0, "{wait}");
    assert!(wait["blocking_xact_secs"].as_f64().unwrap() > 0.0, "{wait}");
    assert_eq!(wait["blocking_is_waiting"], false);
    assert_eq!(text(&wait, "citus_table"), "orders", "{wait}");
    for key in ["waiting_node", "blocking_node", "lock_node"] {
        assert!(text(&wait, key).contains(':'), "{key} is host:port: {wait}");
    }

    let blocker = rows(&out, "blockers")
        .iter()
        .find(|r| r["blocking_gpid"].as_u64() == Some(blocking))
        .unwrap_or_else(|| panic!("A is not among the blockers: {out}"));
    assert_eq!(blocker["is_root"], true, "{blocker}");
    assert!(blocker["directly_blocked"].as_u64().unwrap() >= 1);
    assert!(blocker["total_blocked"].as_u64().unwrap() >= 1);

    let locks = rows(&out, "locks");
    let ungranted = locks
        .iter()
        .find(|l| l["global_pid"].as_u64() == Some(waiting) && l["granted"] == false)
        .unwrap_or_else(|| panic!("no ungranted lock of B: {out}"));
    assert!(ungranted["waitstart"].is_string(), "{ungranted}");
    assert!(
        locks
            .iter()
            .any(|l| l["global_pid"].as_u64() == Some(blocking)
                && l["granted"] == true
                && l["lock_target"] == ungranted["lock_target"]),
        "A holds what B waits for: {out}"
    );

    // The waiting session shows in citus_activity as waiting for a lock (on a worker in Citus).
    let act = ok(
        ctx,
        &e,
        "citus_activity",
        json!({"global_pid": waiting, "limit": 100}),
    );
    assert!(
        rows(&act, "sessions")
            .iter()
            .any(|s| s["waiting_on_lock"] == true),
        "{act}"
    );

    // Both sessions end by themselves and roll back.
    assert!(
        sessions.wait(a, Duration::from_secs(30)),
        "session A failed"
    );
    assert!(
        sessions.wait(b, Duration::from_secs(30)),
        "session B failed"
    );
    drop(sessions);
    let after = ctx
        .db()
        .psql(&format!("SELECT status, amount FROM public.orders WHERE customer_id = {customer} AND order_id = {order}"))
        .unwrap();
    assert_eq!(before, after, "the row changed");
    assert!(before.starts_with(status), "{before}");
    let out = ok(
        ctx,
        &e,
        "citus_lock_inspector",
        json!({"query_max_chars": 2000}),
    );
    assert!(
        rows(&out, "waits")
            .iter()
            .all(|w| !text(w, "blocked_statement").contains(&marker)),
        "the wait is over"
    );
}

// ---------------------------------------------------------------------------------------------

fn port_of(node: &str) -> &str {
    node.rsplit(':').next().unwrap_or("")
}

fn heatmap_lists_the_empty_worker_for_every_grouping(ctx: &Ctx) {
    let e = engine(ctx, "citus-mcp-tests");
    for metric in ["bytes", "shard_count"] {
        let out = ok(
            ctx,
            &e,
            "citus_shard_heatmap",
            json!({"group_by": "node", "metric": metric, "limit": 5}),
        );
        let groups = rows(&out, "groups");
        let empty = groups
            .iter()
            .find(|g| port_of(text(g, "group_key")) == "9703")
            .unwrap_or_else(|| panic!("the empty worker is missing ({metric}): {out}"));
        assert_eq!(empty["bytes"], 0, "{empty}");
        assert_eq!(empty["shard_count"], 0, "{empty}");
        assert_eq!(empty["metric_value"], 0, "{empty}");
        assert_eq!(empty["should_have_shards"], true, "{empty}");
        let values: Vec<u64> = groups
            .iter()
            .map(|g| g["metric_value"].as_u64().unwrap())
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] >= w[1]),
            "hottest first: {values:?}"
        );
        let hottest = &groups[0];
        assert_eq!(hottest["heat"], 100, "{hottest}");
        assert!(hottest["ratio_to_avg"].as_f64().unwrap() > 1.0, "{hottest}");
        let shares: f64 = groups
            .iter()
            .map(|g| g["share_pct"].as_f64().unwrap())
            .sum();
        assert!((shares - 100.0).abs() < 1.0, "shares add up: {shares}");
        let hot = rows(&out, "hot_shards");
        assert_eq!(hot.len(), 5);
        let bytes: Vec<u64> = hot.iter().map(|s| s["bytes"].as_u64().unwrap()).collect();
        assert!(
            bytes.windows(2).all(|w| w[0] >= w[1]),
            "biggest first: {bytes:?}"
        );
        assert!(
            bytes[0] > 1_000_000,
            "sizes come from the shards: {bytes:?}"
        );
        assert!(hot.iter().all(|s| port_of(text(s, "node")) != "9703"));
    }
    // A node's ratio is to the average of the nodes meant to hold shards: the coordinator,
    // which holds only reference copies and should not hold shards, is not one of them.
    let out = ok(ctx, &e, "citus_shard_heatmap", json!({}));
    let groups = rows(&out, "groups");
    let meant: Vec<&Value> = groups
        .iter()
        .filter(|g| g["should_have_shards"] == true)
        .collect();
    let avg = meant
        .iter()
        .map(|g| g["bytes"].as_f64().unwrap())
        .sum::<f64>()
        / meant.len() as f64;
    let hottest = &groups[0];
    let want = hottest["bytes"].as_f64().unwrap() / avg;
    assert!(
        (hottest["ratio_to_avg"].as_f64().unwrap() - want).abs() < 0.01,
        "{want:.2}: {hottest}"
    );
    // What the numbers call for: 9703 is empty while workers hold many shard groups.
    let steps = rows(&out, "next_steps");
    assert!(
        steps.iter().any(|s| s["step"] == "rebalance"
            && port_of(text(s, "why").split(' ').next().unwrap()) == "9703"),
        "{out}"
    );
    // One schema table: one shard on one node, which neither a rebalance nor a tenant
    // isolation (hash-distributed tables only) can change.
    let out = ok(
        ctx,
        &e,
        "citus_shard_heatmap",
        json!({"table": "tenant_acme.tasks"}),
    );
    assert_eq!(rows(&out, "next_steps").len(), 0, "{out}");
    // The events table: the hot tenant's shard carries a large share of its table.
    let out = ok(
        ctx,
        &e,
        "citus_shard_heatmap",
        json!({"table": "events", "limit": 1}),
    );
    let top = &rows(&out, "hot_shards")[0];
    assert_eq!(text(top, "table_name"), "events");
    assert!(top["pct_of_table"].as_f64().unwrap() > 30.0, "{top}");
    assert!(top["ratio_to_table_avg"].as_f64().unwrap() > 2.0, "{top}");
    assert!(
        rows(&out, "groups")
            .iter()
            .any(|g| port_of(text(g, "group_key")) == "9703" && g["bytes"] == 0),
        "{out}"
    );
    // Tables and colocation groups.
    let out = ok(ctx, &e, "citus_shard_heatmap", json!({"group_by": "table"}));
    let tables = rows(&out, "groups");
    assert_eq!(
        text(&tables[0], "table_name"),
        "events",
        "events is the biggest table: {out}"
    );
    let orders = tables
        .iter()
        .find(|t| text(t, "table_name") == "orders")
        .unwrap();
    assert_eq!(orders["shards"], 32);
    let out = ok(
        ctx,
        &e,
        "citus_shard_heatmap",
        json!({"group_by": "colocation", "metric": "shard_count"}),
    );
    let first = &rows(&out, "groups")[0];
    assert_eq!(first["shard_count"], 64, "customers + orders: {out}");
    assert_eq!(first["tables"], json!(["customers", "orders"]));
    let err = call(
        ctx,
        &e,
        "citus_shard_heatmap",
        json!({"group_by": "schema"}),
    )
    .unwrap_err();
    assert_eq!(err.code.as_str(), "INVALID_ARGUMENT");
}

fn skew_report_sees_the_sample_skew(ctx: &Ctx) {
    let e = engine(ctx, "citus-mcp-tests");
    for metric in ["bytes", "shard_count"] {
        let out = ok(
            ctx,
            &e,
            "citus_shard_skew_report",
            json!({"metric": metric}),
        );
        let summary = &out["summary"];
        assert_ne!(summary["skew_level"], "none", "{metric}: {summary}");
        assert!(
            ["low", "moderate", "high"].contains(&text(summary, "skew_level")),
            "{summary}"
        );
        assert!(
            summary["max_avg_ratio"].as_f64().unwrap() >= 1.2,
            "{summary}"
        );
        assert!(
            text(summary, "skew_thresholds").contains("1.2"),
            "{summary}"
        );
        assert_eq!(summary["node_count"], 3, "the three workers: {summary}");
        assert_eq!(summary["empty_node_count"], 1, "{summary}");
        assert!(
            summary["empty_nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| port_of(n.as_str().unwrap()) == "9703"),
            "{summary}"
        );
        assert_eq!(summary["min"], 0);
        assert_eq!(summary["next_tool"], "citus_shard_heatmap");
        assert!(
            text(summary, "recommendation").contains("citus.rebalance_workflow"),
            "{summary}"
        );
        let nodes = rows(&out, "nodes");
        let empty = nodes
            .iter()
            .find(|n| port_of(text(n, "node")) == "9703")
            .expect("9703 listed");
        assert_eq!(empty["metric_value"], 0);
        assert_eq!(empty["counted_because"], "should_have_shards");
        assert!(
            nodes.iter().all(|n| n["is_coordinator"] == false),
            "the coordinator holds no distributed shards and should not: {out}"
        );
        assert!(!rows(&out, "top_shards").is_empty());
    }
    // The big events shard of tenant 1 is bigger than an average node.
    let out = ok(
        ctx,
        &e,
        "citus_shard_skew_report",
        json!({"table": "events", "include_top_shards": false}),
    );
    assert!(
        out.get("top_shards").is_none() || out["top_shards"].is_null(),
        "{out}"
    );
    assert_eq!(out["summary"]["skew_level"], "high", "{out}");
    assert!(
        text(&out["summary"], "recommendation").contains("isolate_tenant_to_new_shard"),
        "{out}"
    );
    // One schema table: its single shard sits on one node, and no move can change that.
    let out = ok(
        ctx,
        &e,
        "citus_shard_skew_report",
        json!({"table": "tenant_acme.tasks", "include_top_shards": false}),
    );
    let recommendation = text(&out["summary"], "recommendation");
    assert!(
        recommendation.contains("cannot even it out")
            && !recommendation.contains("rebalance_workflow"),
        "{out}"
    );
    assert_eq!(
        out["summary"]["next_tool"], "citus_shard_skew_report",
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------

/// Fake jobs in pg_dist_background_job/task (fixture only), removed on drop.
struct FakeJobs<'a> {
    ctx: &'a Ctx,
    ids: Vec<u64>,
}

impl Drop for FakeJobs<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let ids = self
            .ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let _ = self.ctx.db().psql(&format!(
            "DELETE FROM pg_dist_background_task_depend WHERE job_id IN ({ids}); \
             DELETE FROM pg_dist_background_task WHERE job_id IN ({ids}); \
             DELETE FROM pg_dist_background_job WHERE job_id IN ({ids})"
        ));
    }
}

fn job_inspector_filters_jobs_and_lists_tasks(ctx: &Ctx) {
    let e = engine(ctx, "citus-mcp-tests");
    if !ctx.is_fixture() {
        // A real cluster's jobs are whatever they are: the calls must work.
        for args in [
            json!({}),
            json!({"include_tasks": true, "state": "running"}),
            json!({"state": "failed", "include_tasks": true, "limit": 3}),
        ] {
            let out = ok(ctx, &e, "citus_job_inspector", args);
            assert!(out["jobs"].is_array());
        }
        return;
    }
    let marker = unique("cmcp_job");
    let job = |state: &str, started: &str, finished: &str| -> u64 {
        ctx.db()
            .psql(&format!(
                "INSERT INTO pg_dist_background_job (state, job_type, description, started_at, finished_at) \
                 VALUES ('{state}', 'citus_mcp_test', '{marker} {state}', {started}, {finished}) RETURNING job_id"
            ))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut jobs = FakeJobs { ctx, ids: vec![] };
    let running = job("running", "now() - interval '90 seconds'", "NULL");
    jobs.ids.push(running);
    let failed = job(
        "failed",
        "now() - interval '2 hours'",
        "now() - interval '1 hour'",
    );
    jobs.ids.push(failed);
    let command = format!(
        "SELECT pg_catalog.citus_move_shard_placement(102074, 2, 4, shard_transfer_mode := 'block_writes') /* {marker} */"
    );
    let task = |job: u64, status: &str, extra_cols: &str, extra_vals: &str| -> u64 {
        ctx.db()
            .psql(&format!(
                "INSERT INTO pg_dist_background_task (job_id, status, command, nodes_involved{extra_cols}) \
                 VALUES ({job}, '{status}', $cmd${command}$cmd$, '{{2,4}}'{extra_vals}) RETURNING task_id"
            ))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let done = task(running, "done", "", "");
    let run = task(running, "running", ", pid, retry_count", ", 4242, 0");
    let retry = task(
        running,
        "runnable",
        ", retry_count, message, not_before",
        ", 2, 'connection to the remote node failed', now() + interval '1 minute'",
    );
    let blocked = task(running, "blocked", "", "");
    let error = task(
        failed,
        "error",
        ", retry_count, message",
        ", 3, 'ERROR:  could not move'",
    );
    let unscheduled = task(failed, "unscheduled", "", "");
    ctx.db()
        .psql(&format!(
            "INSERT INTO pg_dist_background_task_depend (job_id, task_id, depends_on) \
             VALUES ({running}, {blocked}, {run}), ({running}, {blocked}, {done}), ({failed}, {unscheduled}, {error})"
        ))
        .unwrap();

    let out = ok(
        ctx,
        &e,
        "citus_job_inspector",
        json!({"state": "running", "include_tasks": true, "command_max_chars": 20}),
    );
    let listed = rows(&out, "jobs");
    assert!(listed.iter().all(|j| j["state"] == "running"), "{out}");
    assert!(listed.iter().all(|j| j["job_id"] != failed));
    let j = listed
        .iter()
        .find(|j| j["job_id"] == running)
        .expect("the running job");
    assert_eq!(j["is_active"], true);
    assert_eq!(j["job_type"], "citus_mcp_test");
    assert_eq!(j["tasks_total"], 4);
    assert_eq!(j["tasks_done"], 1);
    assert_eq!(j["tasks_running"], 1);
    assert_eq!(j["tasks_runnable"], 1);
    assert_eq!(j["tasks_blocked"], 1);
    assert_eq!(j["progress_pct"], 25.0);
    assert_eq!(j["last_message"], "connection to the remote node failed");
    assert!(j["duration_secs"].as_f64().unwrap() >= 90.0, "{j}");
    assert!(j["finished_at"].is_null());
    let tasks: Vec<&Value> = rows(&out, "tasks")
        .iter()
        .filter(|t| t["job_id"] == running)
        .collect();
    let ids: Vec<u64> = tasks
        .iter()
        .map(|t| t["task_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![done, run, retry, blocked],
        "tasks in task_id order"
    );
    assert!(rows(&out, "tasks").iter().all(|t| t["job_id"] != failed));
    let t_run = tasks[1];
    assert_eq!(t_run["status"], "running");
    assert_eq!(t_run["pid"], 4242);
    let t_retry = tasks[2];
    assert_eq!(t_retry["retry_count"], 2);
    assert!(t_retry["not_before"].is_string());
    let t_blocked = tasks[3];
    assert_eq!(t_blocked["depends_on"], json!([done, run]));
    assert_eq!(t_blocked["nodes_involved"], json!([2, 4]));
    let nodes: Vec<&str> = t_blocked["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        nodes.iter().map(|n| port_of(n)).collect::<Vec<_>>(),
        vec!["9701", "9703"]
    );
    assert_eq!(text(t_blocked, "command").chars().count(), 20);
    assert_eq!(t_blocked["command_truncated"], true);

    let out = ok(
        ctx,
        &e,
        "citus_job_inspector",
        json!({"state": "failed", "include_tasks": true}),
    );
    let j = rows(&out, "jobs")
        .iter()
        .find(|j| j["job_id"] == failed)
        .expect("the failed job");
    assert_eq!(j["is_active"], false);
    assert_eq!(j["tasks_error"], 1);
    assert_eq!(j["tasks_unscheduled"], 1);
    assert!(
        (j["duration_secs"].as_f64().unwrap() - 3600.0).abs() < 1.0,
        "{j}"
    );
    assert!(rows(&out, "jobs").iter().all(|j| j["job_id"] != running));
    let t = rows(&out, "tasks")
        .iter()
        .find(|t| t["task_id"] == error)
        .unwrap();
    assert_eq!(t["status"], "error", "Citus's failed task state is `error`");
    assert_eq!(t["message"], "ERROR:  could not move");
    assert_eq!(t["retry_count"], 3);

    let out = ok(ctx, &e, "citus_job_inspector", json!({"job_id": running}));
    assert_eq!(out["job"]["job_id"], running);
    assert_eq!(
        out["job"]["details"]["task_state_counts"]["done"], 1,
        "{out}"
    );
    assert_eq!(rows(&out, "jobs").len(), 1);
    let out = ok(ctx, &e, "citus_job_inspector", json!({"limit": 1}));
    assert_eq!(rows(&out, "jobs").len(), 1);
    assert!(out.get("tasks").is_none() || out["tasks"].is_null());

    drop(jobs);
    let err = call(ctx, &e, "citus_job_inspector", json!({"job_id": running})).unwrap_err();
    assert_eq!(err.code.as_str(), "NOT_FOUND");
    let err = call(ctx, &e, "citus_job_inspector", json!({"state": "error"})).unwrap_err();
    assert_eq!(
        err.code.as_str(),
        "INVALID_ARGUMENT",
        "`error` is a task status, not a job state"
    );
}
