//! EXPLAIN and fan-out against the test database.

use std::sync::Arc;
use std::time::Duration;

use citus_mcp::db::fanout::FanOutMode;
use citus_mcp::engine::{Engine, ErrorCode, Settings, ToolError, ToolOutput};
use citus_mcp::registry::{Registry, Sources};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "explain::classifies_the_plan",
            explain_classifies_the_plan,
        ),
        trial(
            ctx,
            "explain::analyze_of_a_delete_is_refused_and_changes_nothing",
            explain_analyze_delete,
        ),
        trial(
            ctx,
            "explain::analyze_runs_read_only_and_rolls_back",
            explain_analyze_read_only,
        ),
        trial(
            ctx,
            "summary::a_clone_node_is_not_reported_inactive",
            clone_node_is_not_inactive,
        ),
        trial(
            ctx,
            "fanout::config_drift_through_the_coordinator",
            drift_via_coordinator,
        ),
        trial(
            ctx,
            "fanout::direct_connections_report_failed_nodes",
            drift_direct,
        ),
    ]
}

fn engine(ctx: &Ctx, settings: Settings) -> Engine {
    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    Engine::new(
        registry,
        Some(ctx.pool(&ctx.dsn())),
        Settings {
            enable_caching: false,
            ..settings
        },
    )
    .with_plugins(citus_mcp::plugins::all())
}

fn call(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> Result<ToolOutput, ToolError> {
    ctx.rt
        .block_on(e.call(tool, args, &CancellationToken::new()))
}

fn count_orders(ctx: &Ctx) -> String {
    ctx.db()
        .psql("SELECT count(*) || '/' || coalesce(sum(amount), 0) FROM public.orders")
        .unwrap()
}

fn explain_classifies_the_plan(ctx: &Ctx) {
    let e = engine(ctx, Settings::default());
    let router = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "SELECT * FROM orders WHERE customer_id = 1"}),
    )
    .unwrap()
    .structured;
    let multi = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "SELECT count(*) FROM orders"}),
    )
    .unwrap()
    .structured;
    if ctx.is_fixture() {
        // Plain PostgreSQL has no Citus scan: everything is local.
        assert_eq!(router["plan_type"], "local", "{router}");
        assert_eq!(multi["distributed"], false);
    } else {
        assert_eq!(router["plan_type"], "router", "{router}");
        assert_eq!(router["task_count"], 1);
        assert_eq!(multi["plan_type"], "multi_shard", "{multi}");
        assert_eq!(multi["task_count"], 32);
    }
    assert!(router["plan"].is_object());
    let err = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "SELECT 1; DROP TABLE orders"}),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

fn explain_analyze_delete(ctx: &Ctx) {
    let e = engine(ctx, Settings::default());
    let before = count_orders(ctx);
    for sql in [
        "DELETE FROM orders",
        "delete from orders where customer_id = 7",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "UPDATE orders SET amount = 0",
        "SELECT * INTO orders_copy FROM orders",
    ] {
        let err = call(
            ctx,
            &e,
            "citus_explain_query",
            json!({"sql": sql, "analyze": true}),
        )
        .unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidArgument,
            "{sql}: {}",
            err.text()
        );
        assert!(err.hint.is_some());
    }
    // Without analyze the plan is shown and nothing runs.
    let plan = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "DELETE FROM orders"}),
    )
    .unwrap();
    assert_eq!(plan.structured["analyzed"], false);
    assert_eq!(count_orders(ctx), before, "the table changed");
}

fn explain_analyze_read_only(ctx: &Ctx) {
    ctx.db()
        .psql(
            "CREATE TABLE IF NOT EXISTS public.citus_mcp_write_probe (x int); \
             CREATE OR REPLACE FUNCTION public.citus_mcp_test_write() RETURNS int LANGUAGE sql \
             AS 'INSERT INTO public.citus_mcp_write_probe VALUES (1) RETURNING x'",
        )
        .unwrap();
    let e = engine(ctx, Settings::default());
    let out = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "SELECT count(*) FROM orders", "analyze": true}),
    )
    .unwrap();
    assert!(
        out.structured["execution_time_ms"].as_f64().is_some(),
        "{}",
        out.text
    );
    // A writing function is volatile in the catalog: ANALYZE is refused, naming it.
    let before = ctx
        .db()
        .psql("SELECT count(*) FROM public.citus_mcp_write_probe")
        .unwrap();
    let err = call(
        ctx,
        &e,
        "citus_explain_query",
        json!({"sql": "SELECT citus_mcp_test_write()", "analyze": true}),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.text());
    assert!(
        err.message.contains("citus_mcp_test_write()"),
        "{}",
        err.text()
    );
    // Behind the check, PostgreSQL itself refuses: the same statement run by the
    // database layer in its READ ONLY transaction fails with 25006.
    let db = ctx.pool(&ctx.dsn());
    let st = citus_mcp::db::Statement::new("SELECT public.citus_mcp_test_write()", vec![], 1);
    let err = ctx
        .rt
        .block_on(db.read_only(&[st], Duration::from_secs(10), &CancellationToken::new()))
        .unwrap_err();
    assert_eq!(ToolError::from(err).code, ErrorCode::ReadOnly);
    assert_eq!(
        ctx.db()
            .psql("SELECT count(*) FROM public.citus_mcp_write_probe")
            .unwrap(),
        before
    );
}

fn drift_via_coordinator(ctx: &Ctx) {
    let e = engine(ctx, Settings::default());
    let out = call(ctx, &e, "citus_config_drift", json!({"include_all": true}))
        .unwrap()
        .structured;
    let nodes = out["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "every node answered: {out}");
    assert!(out.get("node_errors").is_none(), "{out}");
    let drift = out["drift"].as_array().unwrap();
    let wal = drift
        .iter()
        .find(|d| d["name"] == "wal_level")
        .expect("wal_level compared");
    assert_eq!(wal["value_per_node"].as_object().unwrap().len(), 4);
    assert!(
        out.get("node_settings").is_none(),
        "intermediate rows are not part of the result"
    );
    let filtered = call(
        ctx,
        &e,
        "citus_config_drift",
        json!({"include_all": true, "name_like": "wal%"}),
    )
    .unwrap()
    .structured;
    assert!(
        filtered["drift"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["name"].as_str().unwrap().starts_with("wal"))
    );
}

fn drift_direct(ctx: &Ctx) {
    let e = engine(
        ctx,
        Settings {
            fanout: FanOutMode::Direct,
            ..Settings::default()
        },
    );
    let out = call(ctx, &e, "citus_config_drift", json!({"include_all": true}))
        .unwrap()
        .structured;
    let answered = out["nodes"].as_array().unwrap().len();
    let failed = out
        .get("node_errors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        answered + failed.len(),
        4,
        "every node is accounted for: {out}"
    );
    // What citus-mcp sets on its own sessions is no drift: each node's call sets
    // citus.node_connection_timeout from the time left there, and its sessions start with
    // their own statement timeouts.
    let compared: Vec<&str> = out["drift"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(!compared.contains(&"statement_timeout"), "{compared:?}");
    // (On the fixture the coordinator is plain PostgreSQL, whose citus.* settings are
    // placeholders: only a real cluster's nodes can agree.)
    if !ctx.is_fixture() {
        let differing = call(ctx, &e, "citus_config_drift", json!({}))
            .unwrap()
            .structured;
        assert!(
            !differing
                .to_string()
                .contains("citus.node_connection_timeout"),
            "{differing}"
        );
    }
    if ctx.is_fixture() {
        // The fixture's pg_dist_node names workers at 127.0.0.1:9701-9703; whichever of
        // them nothing listens on must be reported, the others answer.
        let down: Vec<String> = (9701..=9703)
            .filter(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut reported: Vec<String> = failed
            .iter()
            .map(|f| f["node"].as_str().unwrap().to_string())
            .collect();
        reported.sort();
        assert_eq!(reported, down, "{out}");
        for f in &failed {
            assert_eq!(f["code"], "NODE_UNREACHABLE", "{f}");
        }
    } else {
        assert!(failed.is_empty(), "{out}");
    }
}

/// A Citus 13.2 clone is inactive by design (`citus_add_clone_node` sets isactive false
/// and noderole 'unavailable'): the summary lists it as a clone, not as an inactive node.
/// The tool's own SQL runs in a transaction that adds the clone and is rolled back, so
/// no other test sees the extra node.
fn clone_node_is_not_inactive(ctx: &Ctx) {
    let registry = Registry::build(
        &Sources {
            tools: vec![citus_mcp::registry::builtin_tools()],
            ..Default::default()
        },
        None,
        &[],
        citus_mcp::plugins::NEEDS,
    );
    let tool = registry.tools.get("citus_cluster_summary").unwrap().clone();
    let mut ctx_vars = tool.context(&serde_json::Map::new());
    // Every node answered the health check (none is down in this test).
    ctx_vars.insert("results".into(), json!({"node_check": []}));
    let rendered = tool
        .runnable()
        .unwrap()
        .templates
        .render("warnings", &Value::Object(ctx_vars))
        .unwrap();
    let findings: Vec<(String, String)> = ctx.rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(&ctx.dsn(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(
            "INSERT INTO pg_catalog.pg_dist_node (nodeid, groupid, nodename, nodeport, isactive, noderole, \
             shouldhaveshards, nodeisclone, nodeprimarynodeid) \
             SELECT max(nodeid) + 100, -1, '127.0.0.1', 9799, false, 'unavailable', false, true, 2 FROM pg_catalog.pg_dist_node",
        )
        .await
        .unwrap();
        let binds: Vec<citus_mcp::db::value::Bind<'_>> =
            rendered.binds.iter().map(citus_mcp::db::value::Bind).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = binds
            .iter()
            .map(|b| b as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = tx.query(rendered.sql.as_str(), &params).await.unwrap();
        tx.rollback().await.unwrap();
        rows.iter().map(|r| (r.get::<_, String>("code"), r.get::<_, String>("message"))).collect()
    });
    assert!(
        findings
            .iter()
            .any(|(code, m)| code == "CLONE_NODE" && m.contains("9799")),
        "{findings:?}"
    );
    assert!(
        !findings
            .iter()
            .any(|(code, m)| code == "NODE_INACTIVE" && m.contains("9799")),
        "{findings:?}"
    );
}
