//! One test per rule, over rows written by hand in the shape of the tool file's queries.

use serde_json::{Value, json};

use super::*;
use crate::plugins::advice::test_records as recs;

fn rules(f: &[Finding]) -> Vec<&str> {
    f.iter().map(|f| f.rule).collect()
}

const MB: i64 = 1024 * 1024;

/// The sample cluster: coordinator 9700 (no distributed shards), 9701 and 9702 with every
/// shard, 9703 empty and without reference tables.
fn sample_nodes() -> Vec<Record> {
    let node = |id: i64, port: i64, coord: bool, shards: i64, bytes: i64, missing: i64| {
        json!({
            "nodeid": id, "groupid": id - 1, "node": format!("127.0.0.1:{port}"), "role": "primary",
            "is_coordinator": coord, "is_active": true, "should_have_shards": !coord,
            "has_metadata": true, "metadata_synced": true, "is_clone": false, "primary_nodeid": null,
            "shards": shards, "bytes": bytes, "distributed_tables": 4, "reference_shards": 1,
            "missing_reference_shards": missing,
            "missing_reference_tables": if missing > 0 { json!(["countries"]) } else { Value::Null },
        })
    };
    recs(json!([
        node(1, 9700, true, 0, 0, 0),
        node(2, 9701, false, 40, 58 * MB, 0),
        node(3, 9702, false, 39, 17 * MB, 0),
        node(4, 9703, false, 0, 0, 1),
    ]))
}

#[test]
fn node_skew_sees_bytes_and_shard_counts() {
    let f = node_skew(&sample_nodes());
    assert_eq!(rules(&f), ["data_skew", "shard_count_skew"]);
    assert!(f[0].title.contains("127.0.0.1:9701"), "{}", f[0].title);
    assert_eq!(f[0].evidence["per_node"]["127.0.0.1:9703"]["bytes"], 0);
    // Skew leads to the plan of the rebalance that would even it out, by the same measure.
    let next = f[0].next_tool.as_ref().unwrap();
    assert_eq!(next.name, "citus_rebalance_plan");
    assert_eq!(next.arguments, json!({"strategy": "by_disk_size"}));
    assert_eq!(
        f[1].next_tool.as_ref().unwrap().arguments,
        json!({"strategy": "by_shard_count"})
    );
    assert_eq!(f[1].evidence["min_shards"], 0.0);

    // Balanced workers, or small differences, are no finding.
    let mut even = sample_nodes();
    for n in &mut even[1..] {
        n.insert("bytes".into(), json!(20 * MB));
        n.insert("shards".into(), json!(26));
    }
    assert!(node_skew(&even).is_empty());
    let mut small = even.clone();
    small[1].insert("bytes".into(), json!(12 * MB));
    small[2].insert("bytes".into(), json!(5 * MB));
    small[3].insert("bytes".into(), json!(5 * MB));
    assert!(
        node_skew(&small).is_empty(),
        "a 7 MB gap is not worth a rebalance"
    );
}

#[test]
fn a_worker_that_did_not_answer_has_unknown_bytes_not_zero() {
    // The nodes query: reachable false and bytes null for a worker citus_shards could not
    // measure. Data skew is then unknown; shard counts still come from the catalog.
    let mut nodes = sample_nodes();
    nodes[2].insert("reachable".into(), json!(false));
    nodes[2].insert("bytes".into(), Value::Null);
    let f = node_skew(&nodes);
    assert_eq!(rules(&f), ["shard_count_skew"]);
    assert_eq!(
        f[0].evidence["per_node"]["127.0.0.1:9702"]["bytes"],
        Value::Null
    );
    let f = node_states(&nodes);
    assert_eq!(rules(&f), ["unreachable_node"]);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["node"], "127.0.0.1:9702");

    // It is named in node_errors, once, even when a fan-out named it too.
    let mut errors = vec![
        json!({"nodeid": 4, "node": "127.0.0.1:9703", "code": "NODE_UNREACHABLE", "message": "x"}),
    ];
    nodes[3].insert("reachable".into(), json!(false));
    name_unreachable_nodes(&nodes, &mut errors);
    let named: Vec<&Value> = errors.iter().map(|e| &e["node"]).collect();
    assert_eq!(named, [&json!("127.0.0.1:9703"), &json!("127.0.0.1:9702")]);
    assert_eq!(errors[1]["code"], "NODE_UNREACHABLE");
}

#[test]
fn node_skew_ignores_clones_and_needs_two_workers() {
    let mut nodes = sample_nodes();
    nodes.truncate(2);
    assert!(node_skew(&nodes).is_empty());
    let mut nodes = sample_nodes();
    nodes[3].insert("is_clone".into(), json!(true));
    nodes[3].insert("is_active".into(), json!(false));
    nodes[2].insert("bytes".into(), json!(55 * MB));
    nodes[2].insert("shards".into(), json!(40));
    assert!(node_skew(&nodes).is_empty(), "{:?}", node_skew(&nodes));
}

#[test]
fn empty_workers_names_the_node_and_the_biggest_movable_table() {
    let tables = recs(json!([
        {"table_name": "public.countries", "table_type": "reference"},
        {"table_name": "public.events", "table_type": "distributed"},
    ]));
    let f = empty_workers(&sample_nodes(), &tables);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].evidence["node"], "127.0.0.1:9703");
    assert_eq!(f[0].evidence["missing_reference_shards"], 1);
    let next = f[0].next_tool.as_ref().unwrap();
    assert_eq!(next.name, "citus_validate_rebalance_prereqs");
    assert_eq!(next.arguments, json!({"table": "public.events"}));
    // Without distributed tables an empty worker is just a worker.
    let mut nodes = sample_nodes();
    for n in &mut nodes {
        n.insert("distributed_tables".into(), json!(0));
    }
    assert!(empty_workers(&nodes, &tables).is_empty());
}

#[test]
fn hot_shards_need_a_dominant_shard_in_a_table_of_several() {
    let tables = recs(json!([
        {"table_name": "public.events", "table_type": "distributed", "shards": 8,
         "bytes": 52 * MB, "largest_shard_bytes": 35 * MB, "largest_shardid": 102072},
        {"table_name": "public.orders", "table_type": "distributed", "shards": 32,
         "bytes": 32 * MB, "largest_shard_bytes": 2 * MB, "largest_shardid": 102040},
        {"table_name": "public.tiny", "table_type": "distributed", "shards": 4,
         "bytes": 400, "largest_shard_bytes": 300, "largest_shardid": 1},
        {"table_name": "public.countries", "table_type": "reference", "shards": 1,
         "bytes": 90 * MB, "largest_shard_bytes": 90 * MB, "largest_shardid": 2},
    ]));
    let f = hot_shards(&tables, 10);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].evidence["shardid"], 102072);
    assert!(f[0].title.contains("public.events"));
    assert_eq!(
        f[0].next_tool.as_ref().unwrap().arguments,
        json!({"table": "public.events"})
    );
    assert!(hot_shards(&tables, 0).is_empty(), "max_tables caps them");
    // A table with a shard on a node that did not answer has no total: no finding.
    let mut unknown = tables.clone();
    unknown[0].insert("bytes".into(), Value::Null);
    unknown[0].insert("largest_shard_bytes".into(), Value::Null);
    assert!(hot_shards(&unknown, 10).is_empty());
}

#[test]
fn replica_identity_rule_follows_citus() {
    let t = |name: &str, kind: &str, ri: &str, pk: bool, idx: Value, ty: &str| {
        json!({"table_name": name, "relkind": kind, "replica_identity": ri, "has_primary_key": pk,
               "replica_identity_index": idx, "table_type": ty, "bytes": 0})
    };
    let tables = recs(json!([
        t("public.with_pk", "r", "d", true, Value::Null, "distributed"),
        t("public.no_pk", "r", "d", false, Value::Null, "distributed"),
        t("public.nothing", "r", "n", true, Value::Null, "distributed"),
        t("public.full", "r", "f", false, Value::Null, "distributed"),
        t(
            "public.by_index",
            "r",
            "i",
            false,
            json!("by_index_key"),
            "distributed"
        ),
        t("public.lost_index", "r", "i", false, Value::Null, "schema"),
        t("public.parent", "p", "d", false, Value::Null, "distributed"),
        t("public.local", "r", "d", false, Value::Null, "local"),
        t("public.ref", "r", "d", false, Value::Null, "reference"),
    ]));
    let f = tables_without_replica_identity(&tables, &sample_nodes(), 10);
    let named: Vec<&str> = f
        .iter()
        .map(|f| f.evidence["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        [
            "public.no_pk",
            "public.nothing",
            "public.lost_index",
            "public.ref"
        ]
    );
    assert!(f[..3].iter().all(|f| f.severity == Severity::Warning));
    assert_eq!(
        f[3].severity,
        Severity::Warning,
        "9703 lacks reference tables"
    );
    assert_eq!(
        f[0].next_tool.as_ref().unwrap().arguments,
        json!({"table": "public.no_pk"})
    );
    // A reference table only matters while some node lacks its copy.
    let mut nodes = sample_nodes();
    nodes[3].insert("missing_reference_shards".into(), json!(0));
    let f = tables_without_replica_identity(&tables, &nodes, 10);
    assert_eq!(f[3].severity, Severity::Info);
    // max_tables caps the list and says how many are left.
    let f = tables_without_replica_identity(&tables, &nodes, 2);
    assert_eq!(f.len(), 3);
    assert_eq!(f[2].evidence["tables_without_replica_identity"], 4);
    // A columnar table cannot move online even with a primary key: its writes are not
    // logically decoded, so the advice is block_writes, never a replica identity.
    let mut columnar = t("public.archive", "r", "d", true, Value::Null, "distributed");
    columnar["access_method"] = json!("columnar");
    let f = tables_without_replica_identity(&recs(json!([columnar])), &nodes, 10);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rule, "columnar_moves_block_writes");
    let fix = &f[0].recommendation;
    assert!(
        fix.contains("block_writes") && !fix.contains("REPLICA IDENTITY FULL"),
        "{fix}"
    );
}

#[test]
fn node_states_alarm_on_inactive_nodes_but_not_on_clones() {
    let mut nodes = sample_nodes();
    nodes[2].insert("is_active".into(), json!(false));
    let mut clone = nodes[3].clone();
    clone.insert("nodeid".into(), json!(5));
    clone.insert("node".into(), json!("127.0.0.1:9801"));
    clone.insert("is_clone".into(), json!(true));
    clone.insert("is_active".into(), json!(false));
    clone.insert("should_have_shards".into(), json!(false));
    clone.insert("primary_nodeid".into(), json!(2));
    nodes.push(clone);
    let mut drained = nodes[3].clone();
    drained.insert("should_have_shards".into(), json!(false));
    drained.insert("shards".into(), json!(3));
    drained.insert("metadata_synced".into(), json!(false));
    nodes[3] = drained;
    let f = node_states(&nodes);
    assert_eq!(
        rules(&f),
        [
            "inactive_node",
            "non_shard_node",
            "metadata_not_synced",
            "clone_node"
        ]
    );
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["node"], "127.0.0.1:9702");
    assert_eq!(f[1].severity, Severity::Warning, "still holds shards");
    assert_eq!(f[3].severity, Severity::Info);
    assert!(f[3].title.contains("nodeid 2"), "{}", f[3].title);
    // The coordinator without shards and healthy workers are fine.
    assert!(node_states(&sample_nodes()).is_empty());
}

#[test]
fn missing_reference_tables_names_node_and_tables() {
    let f = missing_reference_tables(&sample_nodes());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].evidence["node"], "127.0.0.1:9703");
    assert_eq!(f[0].evidence["missing_tables"], json!(["countries"]));
    assert_eq!(
        f[0].next_tool.as_ref().unwrap().name,
        "citus_table_inspector"
    );
}

#[test]
fn long_sessions_grade_by_duration() {
    let s = recs(json!([
        {"global_pid": 10000000001i64, "state": "active", "query_secs": 400.0, "state_secs": 400.0, "node": "h:1"},
        {"global_pid": 10000000002i64, "state": "active", "query_secs": 3000.0, "state_secs": 1.0, "node": "h:1"},
        {"global_pid": 10000000003i64, "state": "active", "query_secs": 100.0, "state_secs": 100.0, "node": "h:1"},
        {"global_pid": 10000000004i64, "state": "idle in transaction", "query_secs": 900.0, "state_secs": 90.0, "node": "h:1"},
        {"global_pid": 10000000005i64, "state": "idle in transaction (aborted)", "query_secs": 9.0, "state_secs": 30.0, "node": "h:1"},
    ]));
    let f = long_sessions(&s, &DEFAULT_LIMITS);
    assert_eq!(
        rules(&f),
        [
            "long_running_query",
            "long_running_query",
            "idle_in_transaction"
        ]
    );
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[1].severity, Severity::Critical);
    assert_eq!(f[2].evidence["global_pid"], 10000000004i64);
    assert_eq!(
        f[2].next_tool.as_ref().unwrap().arguments["global_pid"],
        10000000004i64
    );
}

#[test]
fn lock_waits_over_ten_seconds_are_findings_and_many_are_capped() {
    let waits: Vec<Value> = (0..15)
        .map(|i| json!({"waiting_gpid": i, "blocking_gpid": 99, "wait_secs": 11.0 + i as f64}))
        .chain([json!({"waiting_gpid": 100, "blocking_gpid": 99, "wait_secs": 2.0})])
        .collect();
    let f = lock_waits(&recs(Value::Array(waits)), &DEFAULT_LIMITS);
    assert_eq!(f.len(), MAX_LISTED + 1);
    assert_eq!(f[MAX_LISTED].evidence["not_listed"], 5);
    assert_eq!(
        f[0].next_tool.as_ref().unwrap().name,
        "citus_lock_inspector"
    );
}

#[test]
fn background_jobs_failed_error_tasks_and_stuck() {
    let jobs = recs(json!([
        {"job_id": 1, "state": "failed", "job_type": "rebalance", "tasks": 4, "tasks_done": 2, "tasks_error": 1},
        {"job_id": 2, "state": "running", "job_type": "rebalance", "tasks": 4, "tasks_error": 1, "first_error_task": 7},
        {"job_id": 3, "state": "running", "job_type": "rebalance", "tasks": 4, "tasks_retrying": 1, "tasks_running": 0},
        {"job_id": 4, "state": "running", "job_type": "rebalance", "tasks": 4, "tasks_retrying": 1, "tasks_running": 1},
        {"job_id": 5, "state": "scheduled", "job_type": "rebalance", "tasks": 4},
    ]));
    let f = background_jobs(&jobs);
    assert_eq!(
        rules(&f),
        [
            "background_job_failed",
            "background_task_error",
            "background_job_stuck"
        ]
    );
    assert!(f[1].title.contains("task 7"), "{}", f[1].title);
    // A rebalance job leads to its own status tool.
    let next = f[2].next_tool.as_ref().unwrap();
    assert_eq!(next.name, "citus_rebalance_status");
    assert_eq!(next.arguments, json!({"job_id": 3, "verbose": true}));
    let copy = background_jobs(&recs(json!([
        {"job_id": 9, "state": "failed", "job_type": "copy", "tasks": 1, "tasks_error": 1},
    ])));
    assert_eq!(
        copy[0].next_tool.as_ref().unwrap().arguments,
        json!({"job_id": 9, "include_tasks": true})
    );
}

#[test]
fn leftover_cleanup_is_a_warning_unless_a_job_runs() {
    let cleanup =
        recs(json!([{"node_group_id": 1, "object_type": "shard placement", "records": 2}]));
    let f = leftover_cleanup(&cleanup, &[]);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].evidence["records"], 2);
    let running = recs(json!([{"job_id": 1, "state": "running"}]));
    assert_eq!(
        leftover_cleanup(&cleanup, &running)[0].severity,
        Severity::Info
    );
    assert!(leftover_cleanup(&[], &[]).is_empty());
}

#[test]
fn prepared_transactions_older_than_recovery_are_orphans() {
    let x = recs(json!([
        {"node": "h:1", "gid": "citus_0_123_4_5", "age_secs": 900.0},
        {"node": "h:2", "gid": "app_tx", "age_secs": 600.0},
        {"node": "h:2", "gid": "citus_0_1_2_3", "age_secs": 5.0},
    ]));
    let f = orphaned_prepared_xacts(&x, &DEFAULT_LIMITS);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].evidence["citus_transaction"], true);
    assert!(
        f[0].recommendation
            .contains("recover_prepared_transactions")
    );
    assert!(f[1].recommendation.contains("ROLLBACK PREPARED"));
}

fn settings(v: Value) -> NodeSettings {
    let mut rows = Vec::new();
    for (node, s) in v.as_object().unwrap() {
        for (name, value) in s.as_object().unwrap() {
            rows.push(json!({"node": node, "name": name, "setting": value}));
        }
    }
    by_node(&recs(Value::Array(rows)))
}

#[test]
fn blocking_settings_wal_level_slots_and_background_tasks() {
    let good = json!({
        "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
        "replication_slots_in_use": "0", "wal_senders_in_use": "0", "max_worker_processes": "8",
        "citus.max_background_task_executors": "4", "citus.max_background_task_executors_per_node": "2",
        "citus.background_task_queue_interval": "5000", "citus.recover_2pc_interval": "60000",
        "citus.defer_shard_delete_interval": "15000",
    });
    let all_good = settings(json!({
        "127.0.0.1:9700": good, "127.0.0.1:9701": good, "127.0.0.1:9702": good, "127.0.0.1:9703": good,
    }));
    assert!(blocking_settings(&all_good, &sample_nodes()).is_empty());

    let mut bad = good.clone();
    bad["wal_level"] = json!("replica");
    bad["replication_slots_in_use"] = json!("10");
    let mut coord = good.clone();
    coord["wal_level"] = json!("replica"); // holds no shards: not a move source
    coord["citus.max_background_task_executors"] = json!("8");
    coord["citus.background_task_queue_interval"] = json!("-1");
    coord["citus.recover_2pc_interval"] = json!("-1");
    coord["citus.defer_shard_delete_interval"] = json!("-1");
    coord["citus.max_background_task_executors_per_node"] = json!("1");
    let s = settings(json!({
        "127.0.0.1:9700": coord, "127.0.0.1:9701": bad, "127.0.0.1:9702": good, "127.0.0.1:9703": good,
    }));
    let f = blocking_settings(&s, &sample_nodes());
    assert_eq!(
        rules(&f),
        [
            "wal_level_not_logical",
            "replication_capacity",
            "background_executors",
            "background_tasks_disabled",
            "recovery_disabled",
            "cleanup_disabled",
            "serial_shard_moves"
        ]
    );
    assert_eq!(
        f[0].evidence["wal_level"],
        json!({"127.0.0.1:9701": "replica"})
    );
    assert!(f[1].evidence["per_node"]["127.0.0.1:9701"].is_object());
}

#[test]
fn setting_drift_lists_values_per_node() {
    let s = settings(json!({
        "a:1": {"work_mem": "4096", "wal_level": "logical", "replication_slots_in_use": "3"},
        "b:1": {"work_mem": "8192", "wal_level": "logical", "replication_slots_in_use": "0"},
    }));
    let f = setting_drift(&s);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].evidence["value_per_node"],
        json!({"work_mem": {"a:1": "4096", "b:1": "8192"}})
    );
    let same = settings(json!({"a:1": {"wal_level": "logical"}, "b:1": {"wal_level": "logical"}}));
    assert!(setting_drift(&same).is_empty());
    let missing = settings(
        json!({"a:1": {"wal_level": "logical", "citus.x": "1"}, "b:1": {"wal_level": "logical"}}),
    );
    assert_eq!(setting_drift(&missing).len(), 1, "a setting one node lacks");
}

#[test]
fn version_mismatch_compares_release_and_extension() {
    let v = |node: &str, release: &str, ext: &str, available: &str| {
        json!({"node": node, "citus_version": format!("Citus {release} on x86_64-pc-linux-gnu, compiled by gcc"),
               "extversion": ext, "available_version": available, "postgres_version_num": "150020"})
    };
    let same = recs(json!([
        v("a:1", "13.2.2", "13.2-1", "13.2-1"),
        v("b:1", "13.2.2", "13.2-1", "13.2-1")
    ]));
    assert!(version_mismatch(&same).is_empty());
    let differ = recs(json!([
        v("a:1", "13.2.2", "13.2-1", "13.2-1"),
        v("b:1", "13.1.0", "13.1-1", "13.2-1")
    ]));
    let f = version_mismatch(&differ);
    assert_eq!(
        rules(&f),
        ["citus_version_mismatch", "citus_extension_outdated"]
    );
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["per_node"]["b:1"]["citus"], "13.1.0");
    assert_eq!(f[1].evidence["node"], "b:1");
}

#[test]
fn focus_selects_rules() {
    let facts = Facts::default();
    // Without facts no rule has anything to say.
    assert!(judge(&facts, Focus::All, 10, &DEFAULT_LIMITS).is_empty());
    let args = json!({"thresholds": {"lock_wait_secs": 1, "long_query_secs": -5}});
    let limits = Limits::from_args(args.as_object().unwrap());
    assert_eq!(limits.lock_wait, 1.0);
    assert_eq!(
        limits.long_query, DEFAULT_LIMITS.long_query,
        "a negative value is ignored"
    );
    assert!(Focus::All.has(Focus::Ops));
    assert!(!Focus::Skew.has(Focus::Ops));
    assert_eq!(Focus::parse("config"), Focus::Config);
}

#[test]
fn next_tools_are_built_in_tools() {
    let reg = crate::registry::Registry::build(
        &crate::registry::Sources::builtin(),
        None,
        &[],
        crate::plugins::NEEDS,
    );
    for name in NEXT_TOOLS {
        assert!(
            reg.tools.contains_key(*name),
            "`{name}` is not a built-in tool"
        );
    }
}

#[test]
fn durations_read_naturally() {
    assert_eq!(duration(42.4), "42 s");
    assert_eq!(duration(400.0), "6 min");
    assert_eq!(duration(7200.0), "2.0 h");
}

/// Checks whose queries failed judged nothing: the result says so as a finding, so an
/// empty list never reads as a clean bill of health.
#[test]
fn failed_checks_are_a_finding() {
    let mut facts = Facts::default();
    assert!(checks_failed(&facts, 3).is_none());
    facts
        .errors
        .push(json!({"query": "sessions", "code": "TIMEOUT", "message": "m"}));
    let f = checks_failed(&facts, 3).unwrap();
    assert_eq!((f.rule, f.severity), ("checks_failed", Severity::Warning));
    assert_eq!(f.evidence["failed_checks"], json!(["sessions"]));
    facts
        .errors
        .push(json!({"query": "tables", "code": "TIMEOUT", "message": "m"}));
    facts
        .errors
        .push(json!({"query": "nodes", "code": "TIMEOUT", "message": "m"}));
    let f = checks_failed(&facts, 3).unwrap();
    assert_eq!(f.severity, Severity::Critical, "none ran");
    let out = output("all", vec![f], &facts, 100_000);
    assert_eq!(out.structured["summary"]["critical"], 1);
    assert!(!out.text.contains("no findings"), "{}", out.text);
}
