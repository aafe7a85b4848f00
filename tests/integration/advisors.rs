//! The advisor plugins on the sample cluster, and on conditions a test creates: an inactive
//! node, a clone, failed jobs, cleanup records, live sessions, a lock wait, a prepared
//! transaction, tables without a usable replica identity. Every test removes what it
//! created, also when it fails (guards), because all tests share one database.

use std::sync::Arc;
use std::time::Duration;

use citus_mcp::engine::{Engine, Settings, ToolOutput};
use citus_mcp::registry::{Registry, Sources};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::monitoring::{Sessions, unique, wait_until};
use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "advisors::advisor_finds_the_sample_cluster_problems",
            advisor_finds_the_sample_cluster_problems,
        ),
        trial(
            ctx,
            "advisors::advisor_reports_nodes_jobs_and_cleanup_records",
            advisor_reports_nodes_jobs_and_cleanup_records,
        ),
        trial(
            ctx,
            "advisors::advisor_sees_sessions_lock_waits_and_prepared_transactions",
            advisor_sees_sessions_lock_waits_and_prepared_transactions,
        ),
        trial(
            ctx,
            "advisors::prereqs_of_the_sample_tables",
            prereqs_of_the_sample_tables,
        ),
        trial(
            ctx,
            "advisors::prereqs_fixes_quote_identifiers_and_run",
            prereqs_fixes_quote_identifiers_and_run,
        ),
        trial(
            ctx,
            "advisors::advisor_says_which_checks_did_not_run",
            advisor_says_which_checks_did_not_run,
        ),
        trial(
            ctx,
            "advisors::snapshot_source_is_the_biggest_worker",
            snapshot_source_is_the_biggest_worker,
        ),
    ]
}

/// A check whose query fails everywhere, on the coordinator or on every node of a fan-out,
/// judged nothing: the advisor says so as a finding (critical when none ran), never "no
/// findings". The advisor's own file, with its config checks made to fail on every node.
fn advisor_says_which_checks_did_not_run(ctx: &Ctx) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tools.d/citus_advisor.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let failing = text
        .replace(
            "SELECT s.name::text AS name, s.reset_val AS setting",
            "SELECT (1 / 0)::text AS name, s.reset_val AS setting",
        )
        .replace(
            "SELECT citus_version()                                                     AS citus_version,",
            "SELECT (1 / 0)::text AS citus_version,",
        );
    assert_ne!(text, failing);
    let mut sources = Sources::builtin();
    sources.tools.push(vec![citus_mcp::compile::SourceFile {
        origin: "failing/citus_advisor.yaml".into(),
        text: failing.into(),
    }]);
    let registry = Registry::build(&sources, None, &[], citus_mcp::plugins::NEEDS);
    assert!(
        registry.diagnostics.is_empty(),
        "{:?}",
        registry.diagnostics
    );
    let e = Engine::new(
        registry,
        Some(ctx.pool_named(&ctx.dsn(), "citus-mcp-advisor-tests")),
        Settings {
            enable_caching: false,
            ..Settings::default()
        },
    )
    .with_plugins(citus_mcp::plugins::all());
    let out = call(ctx, &e, "citus_advisor", json!({"focus": "config"}));
    let v = &out.structured;
    let failed = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "checks_failed")
        .unwrap_or_else(|| panic!("no checks_failed finding: {v}"));
    assert_eq!(
        failed["evidence"]["failed_checks"],
        json!(["settings", "versions"]),
        "{failed}"
    );
    assert!(!out.text.contains("no findings"), "{}", out.text);
}

fn engine(ctx: &Ctx) -> Engine {
    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    Engine::new(
        registry,
        Some(ctx.pool_named(&ctx.dsn(), "citus-mcp-advisor-tests")),
        Settings {
            enable_caching: false,
            ..Settings::default()
        },
    )
    .with_plugins(citus_mcp::plugins::all())
}

fn call(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> ToolOutput {
    match ctx
        .rt
        .block_on(e.call(tool, args.clone(), &CancellationToken::new()))
    {
        Ok(out) => out,
        Err(err) => panic!("{tool} {args} failed: {}", err.text()),
    }
}

fn findings(out: &Value) -> &[Value] {
    out["findings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no findings list: {out}"))
}

/// The findings of `rule` whose evidence mentions `needle` (in its JSON, or as one of its
/// values: names with quotes are escaped in JSON).
fn find<'a>(out: &'a Value, rule: &str, needle: &str) -> Vec<&'a Value> {
    let mentions = |e: &Value| {
        e.to_string().contains(needle)
            || e.as_object()
                .is_some_and(|m| m.values().any(|v| v.as_str() == Some(needle)))
    };
    findings(out)
        .iter()
        .filter(|f| f["rule"] == rule && mentions(&f["evidence"]))
        .collect()
}

fn one<'a>(out: &'a Value, rule: &str, needle: &str) -> &'a Value {
    let found = find(out, rule, needle);
    assert!(
        !found.is_empty(),
        "no `{rule}` finding about {needle}: {}",
        serde_json::to_string_pretty(out).unwrap()
    );
    found[0]
}

/// Runs SQL when dropped: the cleanup of a test, whatever happens to it.
struct Restore<'a> {
    ctx: &'a Ctx,
    sql: Vec<String>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for sql in self.sql.iter().rev() {
            if let Err(e) = self.ctx.db().psql(sql) {
                eprintln!("cleanup failed: {e:#}");
            }
        }
    }
}

fn psql(ctx: &Ctx, sql: &str) -> String {
    ctx.db()
        .psql(sql)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------

fn advisor_finds_the_sample_cluster_problems(ctx: &Ctx) {
    let e = engine(ctx);
    let out = call(ctx, &e, "citus_advisor", json!({}));
    let v = &out.structured;
    assert!(v.get("errors").is_none(), "every check ran: {v}");
    assert!(v.get("node_errors").is_none(), "{v}");

    // Skew: 9701 holds most of the data, 9703 none.
    let skew = one(v, "data_skew", "127.0.0.1:9703");
    assert!(
        skew["title"].as_str().unwrap().contains("127.0.0.1:9701"),
        "{skew}"
    );
    assert_eq!(skew["evidence"]["per_node"]["127.0.0.1:9703"]["bytes"], 0);
    assert_eq!(skew["severity"], "warning");
    one(v, "shard_count_skew", "127.0.0.1:9703");
    let empty = one(v, "empty_worker", "127.0.0.1:9703");
    assert_eq!(
        empty["next_tool"],
        json!({"name": "citus_validate_rebalance_prereqs", "arguments": {"table": "public.events"}}),
        "the biggest table is the first to check: {empty}"
    );
    let hot = one(v, "hot_shard", "public.events");
    assert!(hot["evidence"]["shard_bytes"].as_f64().unwrap() > 30.0 * 1024.0 * 1024.0);

    // Schema: the columnar metrics_archive cannot move online whatever its replica
    // identity (it has none); the others have a primary key.
    let ri = one(v, "columnar_moves_block_writes", "public.metrics_archive");
    assert_eq!(ri["evidence"]["access_method"], "columnar");
    assert_eq!(ri["evidence"]["has_primary_key"], false);
    assert!(
        ri["recommendation"]
            .as_str()
            .unwrap()
            .contains("block_writes"),
        "{ri}"
    );
    assert_eq!(
        ri["next_tool"]["arguments"],
        json!({"table": "public.metrics_archive"})
    );
    assert!(find(v, "no_replica_identity", "public.metrics_archive").is_empty());
    assert!(find(v, "no_replica_identity", "public.orders").is_empty());

    // Ops: 9703 has no copy of the reference table.
    let refs = one(v, "reference_tables_missing", "127.0.0.1:9703");
    assert_eq!(refs["evidence"]["missing_tables"], json!(["countries"]));
    assert!(
        find(v, "inactive_node", "127.0.0.1:970").is_empty(),
        "the sample's nodes are active: {v}"
    );

    // Config: the fixture server runs with wal_level replica, on every "node".
    if ctx.is_fixture() {
        let wal = one(v, "wal_level_not_logical", "127.0.0.1:9701");
        assert!(
            wal["evidence"]["wal_level"].get("127.0.0.1:9700").is_none(),
            "the coordinator holds no shards: {wal}"
        );
        assert!(find(v, "citus_version_mismatch", "").is_empty());
        assert!(find(v, "settings_differ", "").is_empty(), "one server: {v}");
    }

    // Worst first, every next tool a real tool, and the text says the same.
    let order = |s: &str| ["critical", "warning", "info"].iter().position(|x| *x == s);
    let ranks: Vec<usize> = findings(v)
        .iter()
        .map(|f| order(f["severity"].as_str().unwrap()).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    let registry = e.registry();
    for f in findings(v) {
        if let Some(name) = f["next_tool"]["name"].as_str() {
            assert!(registry.tools.contains_key(name), "{name}");
        }
        assert!(!f["recommendation"].as_str().unwrap().is_empty(), "{f}");
    }
    assert_eq!(
        v["summary"]["warning"].as_u64().unwrap() as usize,
        findings(v)
            .iter()
            .filter(|f| f["severity"] == "warning")
            .count()
    );
    assert!(out.text.contains("[warning] data_skew: "), "{}", out.text);

    // A focus runs only its rules; max_tables caps per-table findings.
    let out = call(
        ctx,
        &e,
        "citus_advisor",
        json!({"focus": "schema", "max_tables": 1}),
    );
    let rules: Vec<&str> = findings(&out.structured)
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules
            .iter()
            .all(|r| ["no_replica_identity", "columnar_moves_block_writes"].contains(r)),
        "{rules:?}"
    );
    let out = call(
        ctx,
        &e,
        "citus_advisor",
        json!({"focus": "skew", "max_tables": 1}),
    );
    assert_eq!(find(&out.structured, "hot_shard", "").len(), 1);
    assert!(find(&out.structured, "wal_level_not_logical", "").is_empty());
}

fn advisor_reports_nodes_jobs_and_cleanup_records(ctx: &Ctx) {
    if !ctx.is_fixture() {
        // A real cluster's nodes and jobs are what they are: the rules must run.
        let out = call(ctx, &engine(ctx), "citus_advisor", json!({"focus": "ops"}));
        assert!(out.structured.get("errors").is_none(), "{}", out.text);
        return;
    }
    let marker = unique("cmcp_adv_ops");
    let mut restore = Restore { ctx, sql: vec![] };
    // An inactive worker, and a Citus 13.2 clone of 9701 (inactive until promoted).
    restore
        .sql
        .push("DELETE FROM pg_dist_node WHERE nodeid IN (9191, 9192)".into());
    psql(
        ctx,
        "INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport, isactive, noderole, shouldhaveshards, hasmetadata, metadatasynced, nodeisclone, nodeprimarynodeid) VALUES \
         (9191, 9191, '127.0.0.1', 9791, false, 'primary', true, true, true, false, 0), \
         (9192, 9192, '127.0.0.1', 9792, false, 'primary', false, true, true, true, 2)",
    );
    // A failed job with a task in error, and cleanup records of a move that ended.
    restore.sql.push(format!(
        "DELETE FROM pg_dist_background_job WHERE description = '{marker}'"
    ));
    restore.sql.push(format!(
        "DELETE FROM pg_dist_background_task WHERE job_id IN (SELECT job_id FROM pg_dist_background_job WHERE description = '{marker}')"
    ));
    let job = psql(
        ctx,
        &format!(
            "INSERT INTO pg_dist_background_job (state, job_type, description, started_at, finished_at) \
             VALUES ('failed', 'rebalance', '{marker}', now() - interval '1 hour', now() - interval '50 minutes') RETURNING job_id"
        ),
    );
    psql(
        ctx,
        &format!(
            "INSERT INTO pg_dist_background_task (job_id, status, command, retry_count, message) \
             VALUES ({job}, 'done', 'SELECT 1', 0, NULL), ({job}, 'error', 'SELECT 2', 3, 'ERROR:  {marker} could not move')"
        ),
    );
    restore.sql.push(format!(
        "DELETE FROM pg_dist_cleanup WHERE object_name LIKE '{marker}%'"
    ));
    psql(
        ctx,
        &format!(
            "INSERT INTO pg_dist_cleanup (record_id, operation_id, object_type, object_name, node_group_id, policy_type) VALUES \
             (919101, 919100, 1, '{marker}_102008', 1, 2), (919102, 919100, 3, '{marker}_slot', 2, 0)"
        ),
    );

    let out = call(ctx, &engine(ctx), "citus_advisor", json!({"focus": "ops"}));
    let v = &out.structured;
    assert!(v.get("errors").is_none(), "{v}");
    let inactive = one(v, "inactive_node", "127.0.0.1:9791");
    assert_eq!(inactive["severity"], "critical");
    assert_eq!(inactive["next_tool"]["name"], "list_nodes");
    assert!(
        find(v, "inactive_node", "127.0.0.1:9792").is_empty(),
        "a clone is not an inactive node: {v}"
    );
    let clone = one(v, "clone_node", "127.0.0.1:9792");
    assert_eq!(clone["severity"], "info");
    assert!(
        clone["title"].as_str().unwrap().contains("nodeid 2"),
        "{clone}"
    );

    let failed = one(v, "background_job_failed", &marker);
    assert_eq!(failed["evidence"]["job_id"].to_string(), job);
    assert_eq!(failed["evidence"]["tasks_error"], 1);
    assert!(
        failed["evidence"]["last_message"]
            .as_str()
            .unwrap()
            .contains("could not move")
    );
    assert_eq!(
        failed["next_tool"],
        json!({"name": "citus_rebalance_status", "arguments": {"job_id": failed["evidence"]["job_id"], "verbose": true}})
    );
    let cleanup = one(v, "leftover_cleanup", &marker);
    assert!(
        cleanup["evidence"]["records"].as_i64().unwrap() >= 2,
        "{cleanup}"
    );
    assert!(
        out.text.contains("[critical] inactive_node"),
        "{}",
        out.text
    );

    drop(restore);
    let out = call(ctx, &engine(ctx), "citus_advisor", json!({"focus": "ops"}));
    assert!(find(&out.structured, "inactive_node", "127.0.0.1:9791").is_empty());
    assert!(find(&out.structured, "background_job_failed", &marker).is_empty());
    assert!(find(&out.structured, "leftover_cleanup", &marker).is_empty());
}

fn advisor_sees_sessions_lock_waits_and_prepared_transactions(ctx: &Ctx) {
    let marker = unique("cmcp_adv_live");
    let e = engine(ctx);
    let row = psql(
        ctx,
        "SELECT customer_id || '|' || order_id FROM public.orders ORDER BY customer_id, order_id LIMIT 1",
    );
    let (customer, order) = row.split_once('|').unwrap();
    let update = |tag: &str| {
        format!(
            "UPDATE public.orders SET status = status WHERE customer_id = {customer} AND order_id = {order} /* {marker} {tag} */"
        )
    };
    let mut sessions = Sessions::new(ctx, &marker);
    sessions.run(&[
        "BEGIN",
        &update("holder"),
        &format!("SELECT pg_sleep(12) /* {marker} holder PASSWORD $$hunter7$$ */"),
        "ROLLBACK",
    ]);
    wait_until("the holder to sleep", Duration::from_secs(10), || {
        let n = psql(
            ctx,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{marker}' AND query LIKE 'SELECT pg_sleep(12)%'"
            ),
        );
        (n == "1").then_some(())
    });
    sessions.run(&["BEGIN", &update("waiter"), "ROLLBACK"]);
    sessions.idle_after(&format!("BEGIN; SELECT 1 /* {marker} idle */;"));

    // A prepared transaction left behind, where the server allows them.
    let gid = format!("{marker}_2pc");
    let prepared = ctx
        .db()
        .psql(&format!("BEGIN; PREPARE TRANSACTION '{gid}'"))
        .is_ok();
    let _rollback = Restore {
        ctx,
        sql: if prepared {
            vec![format!("ROLLBACK PREPARED '{gid}'")]
        } else {
            vec![]
        },
    };

    let args = json!({"focus": "ops", "thresholds": {
        "long_query_secs": 1, "idle_in_transaction_secs": 1, "lock_wait_secs": 1, "prepared_xact_secs": 0}});
    let out = wait_until("the live findings", Duration::from_secs(10), || {
        let out = call(ctx, &e, "citus_advisor", args.clone()).structured;
        let all = !find(&out, "long_running_query", &format!("{marker} holder")).is_empty()
            && !find(&out, "idle_in_transaction", &format!("{marker} idle")).is_empty()
            && !find(&out, "lock_wait", &format!("{marker} waiter")).is_empty();
        all.then_some(out)
    });
    let long = one(&out, "long_running_query", &format!("{marker} holder"));
    assert_eq!(long["evidence"]["application_name"], marker.as_str());
    assert_eq!(long["next_tool"]["name"], "citus_activity");
    assert_eq!(
        long["next_tool"]["arguments"]["global_pid"],
        long["evidence"]["global_pid"]
    );
    let idle = one(&out, "idle_in_transaction", &format!("{marker} idle"));
    assert!(
        idle["evidence"]["state"]
            .as_str()
            .unwrap()
            .starts_with("idle in transaction")
    );
    let wait = one(&out, "lock_wait", &format!("{marker} waiter"));
    assert!(
        wait["evidence"]["blocking_statement"]
            .as_str()
            .unwrap()
            .contains(&marker),
        "{wait}"
    );
    assert_eq!(wait["next_tool"]["name"], "citus_lock_inspector");
    // The holder's secret is in its statement, which two findings show: masked in both.
    assert!(!out.to_string().contains("hunter7"), "{out}");
    if prepared {
        let x = one(&out, "orphaned_prepared_transaction", &gid);
        assert_eq!(x["evidence"]["citus_transaction"], false);
        assert!(
            x["recommendation"]
                .as_str()
                .unwrap()
                .contains("ROLLBACK PREPARED")
        );
    }
    // With the default thresholds a few seconds are nothing to report.
    let out = call(ctx, &e, "citus_advisor", json!({"focus": "ops"})).structured;
    assert!(
        find(&out, "long_running_query", &marker).is_empty(),
        "{out}"
    );
    assert!(find(&out, "lock_wait", &marker).is_empty(), "{out}");
    drop(sessions);
}

// ---------------------------------------------------------------------------------------------

fn check<'a>(out: &'a Value, name: &str, table: Option<&str>) -> &'a Value {
    out["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name && table.is_none_or(|t| c["table"] == t))
        .unwrap_or_else(|| panic!("no check {name} {table:?}: {out}"))
}

fn prereqs_of_the_sample_tables(ctx: &Ctx) {
    let e = engine(ctx);
    let out = call(
        ctx,
        &e,
        "citus_validate_rebalance_prereqs",
        json!({"table": "orders"}),
    );
    let v = &out.structured;
    assert_eq!(v["table"], "public.orders");
    assert_eq!(v["table_type"], "distributed");
    assert_eq!(
        v["colocated_tables"],
        json!(["public.customers", "public.orders"])
    );
    assert_eq!(check(v, "table_is_movable", None)["status"], "pass");
    for t in ["public.customers", "public.orders"] {
        let c = check(v, "replica_identity", Some(t));
        assert_eq!(c["status"], "pass", "{c}");
        assert!(c.get("fix").is_none(), "{c}");
    }
    // 9703 lacks the reference table: reported, not blocking, and the reference table's
    // own replica identity is checked since Citus copies it first.
    let refs = check(v, "reference_tables_on_every_node", None);
    assert_eq!(refs["status"], "fail");
    assert_eq!(refs["blocking"], false);
    assert_eq!(
        refs["evidence"]["nodes_missing_reference_tables"][0]["node"],
        "127.0.0.1:9703"
    );
    assert_eq!(
        check(v, "replica_identity", Some("public.countries"))["status"],
        "pass"
    );
    let wal = check(v, "wal_level_logical", None);
    assert_eq!(
        wal["evidence"]["source_nodes"],
        json!(["127.0.0.1:9701", "127.0.0.1:9702"]),
        "the nodes holding the group's shards: {wal}"
    );
    if ctx.is_fixture() {
        assert_eq!(wal["status"], "fail", "the fixture runs wal_level replica");
        assert!(wal["fix"].as_str().unwrap().contains("wal_level = logical"));
        assert_eq!(v["can_move_online"], false);
        for c in [
            "replication_slots_and_senders",
            "logical_replication_workers",
        ] {
            assert_eq!(check(v, c, None)["status"], "pass", "{c}: {v}");
        }
    }
    assert!(
        out.text.contains("[pass] replica_identity public.orders"),
        "{}",
        out.text
    );

    // The columnar table: logical replication would not carry its writes, so the fix is
    // block_writes, never a replica identity (which would let Citus move it logically).
    let out = call(
        ctx,
        &e,
        "citus_validate_rebalance_prereqs",
        json!({"table": "public.metrics_archive"}),
    );
    let c = check(
        &out.structured,
        "columnar_writes",
        Some("public.metrics_archive"),
    );
    assert_eq!(c["status"], "fail");
    assert_eq!(c["evidence"]["access_method"], "columnar");
    let fix = c["fix"].as_str().unwrap();
    assert!(
        fix.contains("block_writes") && !fix.contains("ALTER TABLE"),
        "{c}"
    );
    assert_eq!(out.structured["can_move_online"], false);

    // A schema-sharded table moves with its schema's other tables.
    let out = call(
        ctx,
        &e,
        "citus_validate_rebalance_prereqs",
        json!({"table": "tenant_acme.tasks"}),
    );
    assert_eq!(out.structured["table_type"], "schema");
    assert_eq!(
        out.structured["colocated_tables"],
        json!(["tenant_acme.projects", "tenant_acme.tasks"])
    );
    // A reference table is not moved at all.
    let out = call(
        ctx,
        &e,
        "citus_validate_rebalance_prereqs",
        json!({"table": "countries"}),
    );
    assert_eq!(
        check(&out.structured, "table_is_movable", None)["status"],
        "fail"
    );
    assert_eq!(out.structured["can_move_online"], false);
}

fn prereqs_fixes_quote_identifiers_and_run(ctx: &Ctx) {
    if !ctx.is_fixture() {
        return; // it registers tables in pg_dist_partition by hand
    }
    let mut restore = Restore { ctx, sql: vec![] };
    restore.sql.push(
        "DELETE FROM pg_dist_partition WHERE logicalrelid::text LIKE '\"cmcp Adv\".%'".into(),
    );
    restore
        .sql
        .push("DROP SCHEMA IF EXISTS \"cmcp Adv\" CASCADE".into());
    psql(
        ctx,
        r#"CREATE SCHEMA "cmcp Adv";
           CREATE TABLE "cmcp Adv"."Odd ""Name""" (id bigint NOT NULL, code text NOT NULL, note text);
           CREATE UNIQUE INDEX "Odd key" ON "cmcp Adv"."Odd ""Name""" (id, code);
           CREATE UNIQUE INDEX odd_partial ON "cmcp Adv"."Odd ""Name""" (note) WHERE note IS NOT NULL;
           CREATE TABLE "cmcp Adv".plain (id bigint PRIMARY KEY);
           ALTER TABLE "cmcp Adv".plain REPLICA IDENTITY NOTHING;
           INSERT INTO pg_dist_partition (logicalrelid, partmethod, partkey, colocationid, repmodel, autoconverted)
           SELECT r::regclass, 'h', p.partkey, 919200, 's', false
             FROM (VALUES ('"cmcp Adv"."Odd ""Name"""'), ('"cmcp Adv".plain')) AS v(r),
                  pg_dist_partition p
            WHERE p.logicalrelid = 'public.customers'::regclass"#,
    );
    let e = engine(ctx);
    let out = call(
        ctx,
        &e,
        "citus_validate_rebalance_prereqs",
        json!({"table": r#""cmcp Adv"."Odd ""Name""""#}),
    );
    let v = &out.structured;
    assert_eq!(v["table"], r#""cmcp Adv"."Odd ""Name""""#);
    let odd = check(v, "replica_identity", Some(r#""cmcp Adv"."Odd ""Name""""#));
    assert_eq!(odd["status"], "fail");
    assert_eq!(
        odd["evidence"]["usable_unique_index"], "Odd key",
        "not the partial one"
    );
    let fix = odd["fix"].as_str().unwrap();
    let using = r#"ALTER TABLE "cmcp Adv"."Odd ""Name""" REPLICA IDENTITY USING INDEX "Odd key";"#;
    assert!(fix.starts_with(using), "{fix}");
    let plain = check(v, "replica_identity", Some(r#""cmcp Adv".plain"#));
    assert_eq!(plain["evidence"]["replica_identity"], "nothing");
    assert!(plain["evidence"]["has_primary_key"] == true, "{plain}");
    let full = r#"ALTER TABLE "cmcp Adv".plain REPLICA IDENTITY USING INDEX plain_pkey;"#;
    assert!(plain["fix"].as_str().unwrap().starts_with(full), "{plain}");
    assert_eq!(v["can_move_online"], false);

    // The fixes are valid statements that give each table a replica identity (in a
    // transaction that is rolled back).
    let after = psql(
        ctx,
        &format!(
            "BEGIN; {using} {full} \
             SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class \
              WHERE relnamespace = '\"cmcp Adv\"'::regnamespace AND relkind = 'r'; ROLLBACK"
        ),
    );
    assert!(after.contains("Odd \"Name\"=i,plain=i"), "{after}");

    // The advisor names the same tables.
    let out = call(
        ctx,
        &e,
        "citus_advisor",
        json!({"focus": "schema", "max_tables": 100}),
    );
    one(
        &out.structured,
        "no_replica_identity",
        r#""cmcp Adv".plain"#,
    );
    drop(restore);
}

fn snapshot_source_is_the_biggest_worker(ctx: &Ctx) {
    let e = engine(ctx);
    let out = call(ctx, &e, "citus_snapshot_source_advisor", json!({}));
    let v = &out.structured;
    assert!(v.get("errors").is_none(), "{v}");
    assert_eq!(v["recommended"]["node"], "127.0.0.1:9701", "{v}");
    let candidates = v["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3, "{v}");
    let empty = candidates
        .iter()
        .find(|c| c["node"] == "127.0.0.1:9703")
        .unwrap();
    assert_eq!(empty["eligible"], false);
    assert!(
        empty["disqualified_because"][0]
            .as_str()
            .unwrap()
            .contains("no distributed shards")
    );
    let second = candidates
        .iter()
        .find(|c| c["node"] == "127.0.0.1:9702")
        .unwrap();
    assert!(second["score"].as_f64().unwrap() < v["recommended"]["score"].as_f64().unwrap());
    assert_eq!(
        v["functions"],
        json!({"citus_add_clone_node": true, "get_snapshot_based_node_split_plan": true, "citus_promote_clone_and_rebalance": true})
    );
    let steps = v["steps"].to_string();
    assert!(
        steps.contains("citus_add_clone_node('<replica-host>', <replica-port>, '127.0.0.1', 9701)"),
        "{steps}"
    );
    assert!(
        out.text.starts_with("recommended source: 127.0.0.1:9701"),
        "{}",
        out.text
    );

    if !ctx.is_fixture() {
        return;
    }
    // A registered clone is listed with what its split plan says (the fixture's
    // get_snapshot_based_node_split_plan is a stub that raises, as C-only functions do).
    let _restore = Restore {
        ctx,
        sql: vec!["DELETE FROM pg_dist_node WHERE nodeid = 9193".into()],
    };
    psql(
        ctx,
        "INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport, isactive, noderole, shouldhaveshards, hasmetadata, metadatasynced, nodeisclone, nodeprimarynodeid) \
         VALUES (9193, 9193, '127.0.0.1', 9793, false, 'primary', false, true, true, true, 2)",
    );
    let out = call(ctx, &e, "citus_snapshot_source_advisor", json!({}));
    let clone = out.structured["clones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clone_nodeid"] == 9193)
        .cloned()
        .unwrap_or_else(|| panic!("{}", out.structured));
    assert_eq!(clone["primary_node"], "127.0.0.1:9701");
    assert_eq!(
        clone["promote_sql"],
        "SELECT pg_catalog.citus_promote_clone_and_rebalance(9193);"
    );
    assert!(
        clone["split_plan_error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not available in the citus-mcp test fixture"),
        "{clone}"
    );
    let first = out.structured["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == "127.0.0.1:9701")
        .unwrap();
    assert!(
        first["reasons"].to_string().contains("clone(s) registered"),
        "{first}"
    );
}
