//! The engine against a real PostgreSQL: values, binds, limits, paging, timeouts,
//! cancellation, reconnection, and the NOT_CITUS answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use citus_mcp::compile::SourceFile;
use citus_mcp::db::fanout::{FanOutMode, NodeSet};
use citus_mcp::engine::{Engine, ErrorCode, Settings, ToolError, ToolOutput};
use citus_mcp::registry::{Registry, Sources, builtin_tools};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "engine::values_become_json_without_losing_precision",
            values_become_json_without_losing_precision,
        ),
        trial(
            ctx,
            "engine::hostile_strings_stay_data",
            hostile_strings_stay_data,
        ),
        trial(
            ctx,
            "engine::a_value_json_cannot_hold_stops_the_statement",
            a_value_json_cannot_hold_stops_the_statement,
        ),
        trial(
            ctx,
            "engine::read_only_tools_cannot_write",
            read_only_tools_cannot_write,
        ),
        trial(
            ctx,
            "engine::offset_paging_walks_every_shard_once",
            offset_paging_walks_every_shard_once,
        ),
        trial(
            ctx,
            "engine::keyset_paging_walks_every_table_once",
            keyset_paging_walks_every_table_once,
        ),
        trial(
            ctx,
            "engine::max_rows_and_max_bytes_truncate_explicitly",
            max_rows_and_max_bytes_truncate_explicitly,
        ),
        trial(
            ctx,
            "engine::statement_timeout_is_a_timeout_error",
            statement_timeout_is_a_timeout_error,
        ),
        trial(
            ctx,
            "engine::tool_statements_run_without_jit_a_callers_with_the_servers",
            tool_statements_run_without_jit_a_callers_with_the_servers,
        ),
        trial(
            ctx,
            "engine::a_statement_that_ended_past_its_cap_keeps_its_connection",
            a_statement_that_ended_past_its_cap_keeps_its_connection,
        ),
        trial(
            ctx,
            "engine::cancelling_a_call_cancels_the_query_on_the_server",
            cancelling_a_call_cancels_the_query_on_the_server,
        ),
        trial(
            ctx,
            "engine::a_saturated_pool_is_a_timeout_not_an_unreachable_node",
            a_saturated_pool_is_a_timeout_not_an_unreachable_node,
        ),
        trial(
            ctx,
            "engine::whole_numbers_sent_as_floats_are_integers",
            whole_numbers_sent_as_floats_are_integers,
        ),
        trial(
            ctx,
            "engine::a_tools_timeout_bounds_the_whole_call",
            a_tools_timeout_bounds_the_whole_call,
        ),
        trial(
            ctx,
            "engine::lost_connections_are_reestablished",
            lost_connections_are_reestablished,
        ),
        trial(
            ctx,
            "engine::plain_postgres_gets_not_citus",
            plain_postgres_gets_not_citus,
        ),
        trial(
            ctx,
            "engine::results_are_cached_for_their_ttl",
            results_are_cached_for_their_ttl,
        ),
        trial(
            ctx,
            "engine::unreachable_coordinator_is_node_unreachable",
            unreachable_coordinator_is_node_unreachable,
        ),
        trial(
            ctx,
            "engine::sizes_come_from_shards_and_empty_nodes_are_listed",
            sizes_come_from_shards_and_empty_nodes_are_listed,
        ),
        trial(
            ctx,
            "engine::hostile_input_in_every_string_argument",
            hostile_input_in_every_string_argument,
        ),
        trial(
            ctx,
            "engine::tls_modes_behave_like_libpq",
            tls_modes_behave_like_libpq,
        ),
    ]
}

/// An engine over the built-in tools plus `extra` tool files, on `dsn`.
fn engine(ctx: &Ctx, dsn: &str, extra: &[&str], settings: Settings) -> Engine {
    engine_named(ctx, dsn, extra, settings, "citus-mcp-tests")
}

/// Like [`engine`], with its own application_name so a test can find its connections.
fn engine_named(ctx: &Ctx, dsn: &str, extra: &[&str], settings: Settings, app: &str) -> Engine {
    engine_on(ctx.pool_named(dsn, app), extra, settings)
}

/// The built-in tools and `extra` over `db`.
fn engine_on(db: citus_mcp::db::Db, extra: &[&str], settings: Settings) -> Engine {
    let extra = extra
        .iter()
        .enumerate()
        .map(|(i, text)| SourceFile {
            origin: format!("test/extra{i}.yaml"),
            text: (*text).into(),
        })
        .collect();
    let registry = Registry::build(
        &Sources {
            tools: vec![builtin_tools(), extra],
            prompts: vec![],
            ..Default::default()
        },
        None,
        &[],
        citus_mcp::plugins::NEEDS,
    );
    let errors: Vec<String> = registry.errors().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "test tools do not compile:\n{}",
        errors.join("\n")
    );
    Engine::new(registry, Some(db), settings).with_plugins(citus_mcp::plugins::all())
}

fn call(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> Result<ToolOutput, ToolError> {
    ctx.rt
        .block_on(e.call(tool, args, &CancellationToken::new()))
}

fn no_cache() -> Settings {
    Settings {
        enable_caching: false,
        ..Settings::default()
    }
}

const VALUES_TOOL: &str = r#"
name: values
description: Every common type.
safety: read_only
input_schema: {type: object, properties: {t: {type: string}, n: {type: integer}, a: {type: array}}}
queries:
  - name: row
    shape: one
    sql: |
      SELECT 12345678901234567890.123456789::numeric AS big_numeric, 1.50::numeric AS scaled, 'NaN'::numeric AS nan,
             9007199254740993::int8 AS big_int8, 42::int8 AS small_int8, 7::int2 AS i2, 3.5::float8 AS f8,
             'pg_class'::regclass AS regclass_oid, 'pg_class'::regclass::text AS regclass_name, 1259::oid AS oid,
             interval '1 day 02:03:04.5' AS ival, timestamptz '2026-11-24 08:27:09.5+00' AS ts,
             date '2026-11-24' AS d, '{"a": [1, 2.5, null]}'::jsonb AS doc, ARRAY[1, NULL, 3] AS arr,
             ARRAY['x', 'y"z'] AS texts, '127.0.0.1'::inet AS ip, '\xdeadbeef'::bytea AS bytes,
             'primary'::text AS role, true AS flag, NULL::text AS nothing, 'r'::"char" AS kind,
             {{ t }}::text AS bound_text, {{ n }}::int AS bound_int, {{ a }}::int[] AS bound_array
examples:
  - args: {t: x, n: 1, a: [1]}
"#;

fn values_become_json_without_losing_precision(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[VALUES_TOOL], no_cache());
    let out = call(
        ctx,
        &e,
        "values",
        json!({"t": "O'Reilly", "n": 2147483647, "a": [1, null, 3]}),
    )
    .unwrap();
    let r = &out.structured["row"];
    assert_eq!(r["big_numeric"], "12345678901234567890.123456789");
    assert_eq!(r["scaled"], "1.50");
    assert_eq!(r["nan"], "NaN");
    assert_eq!(r["big_int8"], "9007199254740993");
    assert_eq!(r["small_int8"], 42);
    assert_eq!(r["i2"], 7);
    assert_eq!(r["f8"], 3.5);
    assert_eq!(r["regclass_oid"], 1259);
    assert_eq!(r["regclass_name"], "pg_class");
    assert_eq!(r["oid"], 1259);
    assert_eq!(r["ival"], "1 day 02:03:04.5");
    assert_eq!(r["ts"], "2026-11-24T08:27:09.500Z");
    assert_eq!(r["d"], "2026-11-24");
    assert_eq!(r["doc"], json!({"a": [1, 2.5, null]}));
    assert_eq!(r["arr"], json!([1, null, 3]));
    assert_eq!(r["texts"], json!(["x", "y\"z"]));
    assert_eq!(r["ip"], "127.0.0.1");
    assert_eq!(r["bytes"], "\\xdeadbeef");
    assert_eq!(r["flag"], true);
    assert_eq!(r["nothing"], Value::Null);
    assert_eq!(r["kind"], "r");
    assert_eq!(r["bound_text"], "O'Reilly");
    assert_eq!(r["bound_int"], 2147483647);
    assert_eq!(r["bound_array"], json!([1, null, 3]));
    // A value the column type cannot hold is the caller's mistake, not a crash.
    let err = call(ctx, &e, "values", json!({"t": "x", "n": 1, "a": ["one"]})).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.text());
}

fn hostile_strings_stay_data(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[], no_cache());
    let before = call(ctx, &e, "list_distributed_tables", json!({}))
        .unwrap()
        .structured;
    for hostile in [
        "orders'; DROP TABLE orders; --",
        "orders; DELETE FROM pg_dist_node",
        "$1",
        "/* x */ orders",
        "\"orders\"\"",
        "ördërs ☃",
        "orders\u{0}",
    ] {
        match call(ctx, &e, "citus_table_inspector", json!({"table": hostile})) {
            Ok(out) => panic!("{hostile:?} found a table: {}", out.text),
            Err(err) => assert!(
                matches!(err.code, ErrorCode::NotFound | ErrorCode::InvalidArgument),
                "{hostile:?} gave {}",
                err.text()
            ),
        }
    }
    let after = call(ctx, &e, "list_distributed_tables", json!({}))
        .unwrap()
        .structured;
    assert_eq!(before, after, "the catalog changed");

    // A tool file that marks a caller's value safe (minijinja's `safe`, `escape`) still
    // sends it as a bind: it comes back as the text it was, never run as SQL.
    let e = engine(ctx, &ctx.dsn(), &[MARKED_SAFE], no_cache());
    let attack = "(SELECT string_agg(rolname, ',') FROM pg_roles)";
    for filter in ["safe", "escape"] {
        let out = call(
            ctx,
            &e,
            "marked_safe",
            json!({"x": attack, "filter": filter}),
        )
        .unwrap_or_else(|err| panic!("{filter}: {}", err.text()));
        // The text itself (`escape` HTML-escapes its quotes), not the roles it names.
        let v = out.structured["r"][0]["v"].as_str().unwrap_or_default();
        assert!(
            v.starts_with("(SELECT string_agg(rolname"),
            "{filter}: {}",
            out.text
        );
    }
}

/// A tool whose template marks its argument safe, as an HTML template would.
const MARKED_SAFE: &str = r#"
name: marked_safe
description: Echoes its argument through a filter that marks it safe.
safety: read_only
input_schema:
  type: object
  additionalProperties: false
  required: [x, filter]
  properties:
    x: {type: string}
    filter: {enum: [safe, escape]}
queries:
  - name: r
    sql: |
      {% if filter == 'safe' %}SELECT {{ x | safe }}::text AS v{% else %}SELECT {{ x | escape }}::text AS v{% endif %}
examples:
  - args: {x: "a", filter: safe}
"#;

const WRITER: &str = r#"
name: sneaky
description: Claims to read, tries to write.
safety: read_only
queries:
  - name: r
    sql: SELECT citus_mcp_test_write() AS wrote
examples:
  - args: {}
"#;

fn read_only_tools_cannot_write(ctx: &Ctx) {
    // A function that writes cannot be recognised by reading the tool's SQL; the
    // READ ONLY transaction is what stops it.
    ctx.db()
        .psql(
            "CREATE TABLE IF NOT EXISTS public.citus_mcp_write_probe (x int); \
             CREATE OR REPLACE FUNCTION public.citus_mcp_test_write() RETURNS int LANGUAGE sql \
             AS 'INSERT INTO public.citus_mcp_write_probe VALUES (1) RETURNING x'",
        )
        .unwrap();
    let e = engine(ctx, &ctx.dsn(), &[WRITER], no_cache());
    let err = call(ctx, &e, "sneaky", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::ReadOnly, "{}", err.text());
}

/// Also: a page with more to come keeps its connection. Its query asks for one row more
/// than the page (`LIMIT size + 1`), so the call reads past its cap; the statement has
/// ended there, and the connection (its backend's caches, its prepared statements, on
/// Citus its connections to the workers) goes back to the pool instead of being closed,
/// which cost the next call ~45 ms on the sample cluster.
fn offset_paging_walks_every_shard_once(ctx: &Ctx) {
    let db = crate::pool_sized(&ctx.dsn(), "citus-mcp-paging", 1, Duration::from_secs(10));
    let e = engine_on(db, &[crate::BACKEND_PID], no_cache());
    let pid = || call(ctx, &e, "backend_pid", json!({})).unwrap().structured["pid"].clone();
    let warm = pid();
    let all = call(ctx, &e, "list_shards", json!({"limit": 1000}))
        .unwrap()
        .structured;
    let all = all["shards"].as_array().unwrap().clone();
    assert!(all.len() > 20, "{}", all.len());
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = call(
            ctx,
            &e,
            "list_shards",
            json!({"limit": 7, "offset": offset}),
        )
        .unwrap()
        .structured;
        let rows = page["shards"].as_array().unwrap();
        assert!(rows.len() <= 7);
        seen.extend(rows.iter().cloned());
        assert_eq!(
            pid(),
            warm,
            "the page at offset {offset} spent the connection"
        );
        match page.get("next_offset") {
            Some(n) => {
                assert_eq!(page["truncated"], true);
                offset = n.as_u64().unwrap();
            }
            None => break,
        }
    }
    assert_eq!(seen, all);
}

fn keyset_paging_walks_every_table_once(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[], no_cache());
    let all = call(
        ctx,
        &e,
        "citus_list_distributed_tables",
        json!({"limit": 1000}),
    )
    .unwrap()
    .structured;
    let all = all["tables"].as_array().unwrap().clone();
    assert!(all.len() >= 8, "{}", all.len());
    let mut seen = Vec::new();
    let mut args = json!({"limit": 3});
    loop {
        let page = call(ctx, &e, "citus_list_distributed_tables", args.clone())
            .unwrap()
            .structured;
        seen.extend(page["tables"].as_array().unwrap().iter().cloned());
        match page.get("next_cursor") {
            Some(c) => args = json!({"limit": 3, "cursor": c}),
            None => break,
        }
    }
    assert_eq!(seen, all);
    let err = call(
        ctx,
        &e,
        "citus_list_distributed_tables",
        json!({"cursor": "bm90IGEgY3Vyc29y"}),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

fn max_rows_and_max_bytes_truncate_explicitly(ctx: &Ctx) {
    let series = "name: series\ndescription: Ten rows.\nsafety: read_only\nlimits: {max_rows: 3}\nqueries:\n  - name: n\n    sql: SELECT g FROM generate_series(1, 10) g\nexamples:\n  - args: {}\n";
    let e = engine(ctx, &ctx.dsn(), &[series], no_cache());
    let out = call(ctx, &e, "series", json!({})).unwrap();
    assert_eq!(
        out.structured,
        json!({"n": [{"g": 1}, {"g": 2}, {"g": 3}], "truncated": true,
               "how_to_get_more": "series has no argument that narrows or pages it: this is what fits the server's limits (max_rows, and max_text_bytes: 50000 bytes here), which an operator can raise"}),
        "{}",
        out.text
    );
    assert!(out.text.contains("more available"));
    assert!(out.text.contains("how to get more: "), "{}", out.text);
    let defaults = engine(
        ctx,
        &ctx.dsn(),
        &[&series.replace("limits: {max_rows: 3}\n", "")],
        Settings {
            max_rows: 4,
            enable_caching: false,
            ..Settings::default()
        },
    );
    assert_eq!(
        call(ctx, &defaults, "series", json!({}))
            .unwrap()
            .structured["n"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let wide = "name: wide\ndescription: Wide rows.\nsafety: read_only\nlimits: {max_bytes: 3000}\ninput_schema: {type: object, properties: {limit: {type: integer}, offset: {type: integer}}}\nqueries:\n  - name: rows\n    paging: offset\n    sql: SELECT g, repeat('x', 100) AS filler FROM generate_series(1, 500) g ORDER BY g LIMIT {{ page.size + 1 }} OFFSET {{ page.offset }}\nexamples:\n  - args: {}\n";
    let small = engine(ctx, &ctx.dsn(), &[wide], no_cache());
    let out = call(ctx, &small, "wide", json!({"limit": 100})).unwrap();
    let size = serde_json::to_vec(&out.structured).unwrap().len();
    assert!(size <= 3000, "{size} bytes");
    assert_eq!(out.structured["truncated"], true);
    let n = out.structured["rows"].as_array().unwrap().len() as u64;
    assert!(n > 0 && n < 100, "{n}");
    assert_eq!(
        out.structured["next_offset"], n,
        "the next page starts after the rows that fit"
    );
    assert_eq!(
        out.structured["how_to_get_more"],
        format!("call wide again with offset: {n} and the same other arguments")
    );
    let next = call(ctx, &small, "wide", json!({"limit": 100, "offset": n})).unwrap();
    assert_eq!(next.structured["rows"][0]["g"], n + 1);
}

const SLEEPER: &str = r#"
name: sleeper
description: Sleeps.
safety: read_only
input_schema: {type: object, properties: {s: {type: number}}}
limits: {timeout_ms: 300}
queries:
  - name: r
    shape: value
    sql: SELECT pg_sleep({{ s }}) IS NULL AS slept, 'citus-mcp-sleeper' AS marker
examples:
  - args: {s: 0}
"#;

fn statement_timeout_is_a_timeout_error(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[SLEEPER], no_cache());
    let started = Instant::now();
    let err = call(ctx, &e, "sleeper", json!({"s": 5})).unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{}", err.text());
    assert!(started.elapsed() < Duration::from_secs(4));
    // The pool still works afterwards.
    assert!(call(ctx, &e, "sleeper", json!({"s": 0})).is_ok());
}

/// A tool file's statements run with JIT off (LLVM compiled a catalog query of
/// citus_lock_inspector for most of a second); a call with a caller's statement keeps the
/// server's own `jit`, so EXPLAIN shows the plan their application gets. Neither leaks
/// into the next call on the same connection.
fn tool_statements_run_without_jit_a_callers_with_the_servers(ctx: &Ctx) {
    use citus_mcp::db::Statement;
    // One connection, so every call below shares a session.
    let db = crate::pool_sized(&ctx.dsn(), "citus-mcp-jit", 1, Duration::from_secs(10));
    let run = |statements: &[Statement]| {
        ctx.rt
            .block_on(db.read_only(
                statements,
                Duration::from_secs(10),
                &CancellationToken::new(),
            ))
            .unwrap()
            .into_iter()
            .map(|r| r.rows[0][0].clone())
            .collect::<Vec<_>>()
    };
    let jit = || Statement::new("SELECT pg_catalog.current_setting('jit') AS jit", vec![], 1);
    let servers = || {
        Statement::new(
            "SELECT pg_catalog.current_setting('jit') = s.reset_val AS servers \
               FROM pg_catalog.pg_settings s WHERE s.name = 'jit'",
            vec![],
            1,
        )
    };
    assert_eq!(run(&[jit()]), vec![json!("off")]);
    assert_eq!(run(&[servers().once()]), vec![json!(true)]);
    // A call that runs a caller's statement runs all of its statements the server's way.
    assert_eq!(
        run(&[servers(), servers().once()]),
        vec![json!(true), json!(true)]
    );
    assert_eq!(run(&[jit()]), vec![json!("off")]);
    // The session itself was never changed: only the calls' transactions were.
    assert_eq!(run(&[servers().once()]), vec![json!(true)]);
    // A fan-out's statement runs in sessions of its own on every node, without JIT too.
    for mode in [FanOutMode::Coordinator, FanOutMode::Direct] {
        let nodes = ctx
            .rt
            .block_on(db.fan_out(
                NodeSet::AllNodes,
                mode,
                &jit(),
                Duration::from_secs(10),
                &CancellationToken::new(),
            ))
            .unwrap();
        assert!(!nodes.is_empty());
        let mut answered = 0;
        for n in nodes {
            let rows = match n.result {
                Ok(rows) => rows,
                // On the fixture, Direct mode dials the sample cluster's own addresses, where
                // this machine may run anything or nothing; a real cluster must answer on
                // every node.
                Err(citus_mcp::db::DbError::Connect { .. })
                    if ctx.is_fixture() && mode == FanOutMode::Direct =>
                {
                    continue;
                }
                Err(e) => panic!("{mode:?} {}: {e}", n.node.name()),
            };
            answered += 1;
            assert_eq!(
                rows.rows,
                vec![vec![json!("off")]],
                "{mode:?} {}",
                n.node.name()
            );
        }
        // The coordinator answers in every mode, from the call's own pool.
        assert!(answered > 0, "{mode:?}: no node answered");
    }
}

/// Past the last statement's cap the call reads on through the rows already arrived: a
/// statement that ended among them keeps its connection (a page query's `LIMIT size + 1`,
/// walked in offset_paging_walks_every_shard_once); one still sending rows is not waited
/// for (see security::rows_past_the_cap_stop_on_the_server), and its connection is replaced.
fn a_statement_that_ended_past_its_cap_keeps_its_connection(ctx: &Ctx) {
    // A few rows over the cap, with nothing after them...
    let db = crate::pool_sized(&ctx.dsn(), "citus-mcp-page", 1, Duration::from_secs(10));
    let run = |sql: &str, cap: usize| {
        let st = citus_mcp::db::Statement::new(sql, vec![], cap);
        ctx.rt
            .block_on(db.read_only(&[st], Duration::from_secs(30), &CancellationToken::new()))
            .unwrap()
            .pop()
            .unwrap()
    };
    let backend = || run("SELECT pg_catalog.pg_backend_pid()", 1).rows[0][0].clone();
    let warm = backend();
    let over = run("SELECT i FROM pg_catalog.generate_series(1, 5) AS i", 2);
    assert_eq!(over.rows, vec![vec![json!(1)], vec![json!(2)]]);
    assert!(over.more);
    assert_eq!(backend(), warm);
    // ...one that fails past the cap: its rows up to the cap are the answer, and the
    // connection, whose statement did not end well, is replaced...
    let failing = run(
        "SELECT 10 / (i - 4) AS q FROM pg_catalog.generate_series(1, 5) AS i",
        2,
    );
    assert_eq!(failing.rows, vec![vec![json!(-3)], vec![json!(-5)]]);
    assert!(failing.more);
    let replaced = backend();
    assert_ne!(replaced, warm);
    // ...and one that would still be sending rows: cut, and its connection replaced.
    let endless = run("SELECT pg_catalog.generate_series(1, 100000000) AS i", 2);
    assert!(endless.more);
    assert_ne!(backend(), replaced);
}

fn cancelling_a_call_cancels_the_query_on_the_server(ctx: &Ctx) {
    let sleeper = SLEEPER.replace("timeout_ms: 300", "timeout_ms: 60000");
    let e = Arc::new(engine(ctx, &ctx.dsn(), &[&sleeper], no_cache()));
    let cancel = CancellationToken::new();
    let (e2, c2) = (e.clone(), cancel.clone());
    let handle = ctx
        .rt
        .spawn(async move { e2.call("sleeper", json!({"s": 30}), &c2).await });
    let probe = engine(ctx, &ctx.dsn(), &[PROBE], no_cache());
    let running = |ctx: &Ctx| -> u64 {
        call(ctx, &probe, "sleeping", json!({})).unwrap().structured["n"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(ctx) == 0 {
        assert!(
            Instant::now() < deadline,
            "the sleeping query never showed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.cancel();
    let err = ctx.rt.block_on(handle).unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(ctx) > 0 {
        assert!(
            Instant::now() < deadline,
            "the query kept running after the cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const UNDECODABLE: &str = r#"
name: undecodable
description: Streams rows with a point in each.
safety: read_only
limits: {timeout_ms: 60000, max_rows: 1000000}
queries:
  - name: rows
    sql: SELECT g, point(g, g) AS p, 'citus-mcp-sleeper' AS marker FROM (SELECT generate_series(1, 2000000000) AS g) s
examples:
  - args: {}
"#;

/// Rows are decoded as they arrive: a value the engine cannot turn into JSON ends the
/// call at once with an error that names the column and the cast, while the server
/// still has rows to send; the statement is cancelled, not left running, and the next
/// call works.
fn a_value_json_cannot_hold_stops_the_statement(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[UNDECODABLE, SLEEPER], no_cache());
    let started = Instant::now();
    let err = call(ctx, &e, "undecodable", json!({})).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.text());
    assert!(err.message.contains("column `p`"), "{}", err.text());
    assert!(err.message.contains("::text"), "{}", err.text());
    let probe = engine(ctx, &ctx.dsn(), &[PROBE], no_cache());
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(ctx, &probe, "sleeping", json!({})).unwrap().structured["n"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the statement kept running after the error"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(call(ctx, &e, "sleeper", json!({"s": 0})).is_ok());
}

const PROBE: &str = r#"
name: sleeping
description: Counts sleeper queries.
safety: read_only
queries:
  - name: n
    shape: value
    sql: SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%citus-mcp-sleeper%' AND query NOT LIKE '%pg_stat_activity%' AND state = 'active'
examples:
  - args: {}
"#;

/// A call that finds every connection busy for as long as it may wait says so: the
/// database is up (not NODE_UNREACHABLE), this server is saturated.
fn a_saturated_pool_is_a_timeout_not_an_unreachable_node(ctx: &Ctx) {
    let db = crate::pool_sized(
        &ctx.dsn(),
        "citus-mcp-one-connection",
        1,
        Duration::from_secs(1),
    );
    let sleeper = SLEEPER
        .replace("timeout_ms: 300", "timeout_ms: 60000")
        .replace("citus-mcp-sleeper", "citus-mcp-saturated");
    let e = Arc::new(engine_on(db, &[&sleeper], no_cache()));
    let e2 = e.clone();
    let busy = ctx.rt.spawn(async move {
        e2.call("sleeper", json!({"s": 30}), &CancellationToken::new())
            .await
    });
    ctx.wait_running(
        "citus-mcp-saturated",
        |n| n == 1,
        Duration::from_secs(10),
        "the first call never ran",
    );
    let err = call(ctx, &e, "list_nodes", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{}", err.text());
    assert!(err.message.contains("all 1 connections"), "{}", err.text());
    assert!(err.hint.as_deref().unwrap_or_default().contains("in use"));
    busy.abort();
    ctx.wait_running(
        "citus-mcp-saturated",
        |n| n == 0,
        Duration::from_secs(10),
        "the first call kept running",
    );
    assert!(call(ctx, &e, "list_nodes", json!({})).is_ok());
}

/// JSON Schema's `integer` accepts `2.0`; the engine reads it as 2 everywhere: a bound
/// value (an integer parameter refuses the text `2.0`), a page's limit and offset. A page
/// position that is no whole number within 2^53 is refused, never read as the first page.
fn whole_numbers_sent_as_floats_are_integers(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[], no_cache());
    let rows = |args: Value| {
        let out = call(ctx, &e, "list_shards", args.clone())
            .unwrap_or_else(|err| panic!("{args}: {}", err.text()));
        out.structured["shards"].clone()
    };
    assert_eq!(
        rows(json!({"nodeid": 2.0, "limit": 3.0})),
        rows(json!({"nodeid": 2, "limit": 3}))
    );
    assert_eq!(rows(json!({"limit": 3.0})).as_array().unwrap().len(), 3);
    assert_eq!(
        rows(json!({"limit": 2, "offset": 2.0})),
        rows(json!({"limit": 2, "offset": 2}))
    );
    for offset in [
        json!(1.8446744073709552e19),
        json!(1e300),
        json!(9007199254740993u64),
        json!(u64::MAX),
    ] {
        let err = call(ctx, &e, "list_shards", json!({"offset": offset})).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidArgument,
            "{offset}: {}",
            err.text()
        );
        assert!(err.hint.is_some(), "{}", err.text());
    }
}

/// The tool's timeout is the call's: stages that each fit it do not add up past it, and
/// waiting for a connection counts against it.
fn a_tools_timeout_bounds_the_whole_call(ctx: &Ctx) {
    const STAGES: &str = r#"
name: three_stages
description: Three statements, each reading the one before, so each a stage of its own.
safety: read_only
input_schema: {type: object}
limits: {timeout_ms: 2000}
queries:
  - name: a
    output: false
    sql: SELECT pg_sleep(0.9) IS NULL AS x
  - name: b
    output: false
    sql: SELECT pg_sleep(0.9) IS NULL AS y, {{ results.a }}::text AS prev
  - name: c
    sql: SELECT pg_sleep(0.9) IS NULL AS z, {{ results.b }}::text AS prev
examples:
  - args: {}
"#;
    // Citus connecting to another node (a node-health check) has a third of the call.
    const CONNECT: &str = r#"
name: connect_timeout
description: Citus's connect timeout within a call.
safety: read_only
input_schema: {type: object}
limits: {timeout_ms: 3000}
queries:
  - name: t
    shape: value
    sql: SELECT pg_catalog.current_setting('citus.node_connection_timeout') AS t
examples:
  - args: {}
"#;
    let e = engine(ctx, &ctx.dsn(), &[STAGES, CONNECT], no_cache());
    let r = call(ctx, &e, "connect_timeout", json!({})).unwrap();
    // Plain PostgreSQL keeps the text it was given; Citus shows it with its unit. A third
    // of what is left of the call's 3 s when its statements begin.
    let t = r.structured["t"].as_str().unwrap();
    let ms: f64 = match (t.strip_suffix("ms"), t.strip_suffix('s')) {
        (Some(ms), _) => ms.parse().unwrap(),
        (None, Some(s)) => s.parse::<f64>().unwrap() * 1000.0,
        (None, None) => t.parse().unwrap(),
    };
    assert!((900.0..=1000.0).contains(&ms), "{t}");
    let started = std::time::Instant::now();
    let err = call(ctx, &e, "three_stages", json!({})).expect_err("2.7 s of stages in 2 s");
    assert_eq!(err.code, ErrorCode::Timeout, "{}", err.text());
    assert!(
        started.elapsed() < Duration::from_millis(2600),
        "{:?}",
        started.elapsed()
    );

    // One connection, held by a long call; the pool would wait 20 s for it (twice the
    // connect timeout), the next call's tool allows 1.5 s.
    let db = crate::pool_sized(&ctx.dsn(), "citus-mcp-held", 1, Duration::from_secs(10));
    let held = SLEEPER
        .replace("timeout_ms: 300", "timeout_ms: 60000")
        .replace("citus-mcp-sleeper", "citus-mcp-held");
    let quick = SLEEPER
        .replace("name: sleeper", "name: quick")
        .replace("timeout_ms: 300", "timeout_ms: 1500");
    let e = Arc::new(engine_on(db, &[&held, &quick], no_cache()));
    let e2 = e.clone();
    let busy = ctx.rt.spawn(async move {
        e2.call("sleeper", json!({"s": 30}), &CancellationToken::new())
            .await
    });
    ctx.wait_running(
        "citus-mcp-held",
        |n| n == 1,
        Duration::from_secs(10),
        "the first call never ran",
    );
    let started = std::time::Instant::now();
    let err = call(ctx, &e, "quick", json!({"s": 0})).expect_err("no connection within 1.5 s");
    assert_eq!(err.code, ErrorCode::Timeout, "{}", err.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    busy.abort();
    ctx.wait_running(
        "citus-mcp-held",
        |n| n == 0,
        Duration::from_secs(10),
        "the first call kept running",
    );
    assert!(call(ctx, &e, "quick", json!({"s": 0})).is_ok());
}

fn lost_connections_are_reestablished(ctx: &Ctx) {
    let e = engine_named(ctx, &ctx.dsn(), &[], no_cache(), "citus-mcp-reconnect-test");
    assert!(call(ctx, &e, "list_nodes", json!({})).is_ok());
    // Terminate every connection of the pool from the outside, waiting (up to 10 s) until
    // each backend has exited: a backend still finishing would answer the first call.
    ctx.db().psql("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = 'citus-mcp-reconnect-test'").unwrap();
    // As after a server restart: the next calls find their connections gone, close them
    // and run on new ones, without an error for the caller.
    for _ in 0..3 {
        let r = call(ctx, &e, "list_nodes", json!({}));
        assert!(r.is_ok(), "{:?}", r.err().map(|e| e.text()));
    }
}

fn plain_postgres_gets_not_citus(ctx: &Ctx) {
    let dsn = plain_database_dsn(ctx);
    let e = engine(ctx, &dsn, &[], no_cache());
    let err = call(ctx, &e, "citus_cluster_summary", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotCitus, "{}", err.text());
    assert!(err.hint.is_some());
    // The engine checks `requires` for plugin tools too.
    let err = call(ctx, &e, "citus_advisor", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotCitus, "{}", err.text());
    // Tools that need no Citus still work there.
    assert!(call(ctx, &e, "ping", json!({})).is_ok());
    let info = call(ctx, &e, "server_info", json!({})).unwrap().structured;
    assert_eq!(info["cluster"]["citus"], false);
}

/// A database on the same server without the Citus catalog.
pub fn plain_database_dsn(ctx: &Ctx) -> String {
    let dsn = ctx.dsn();
    let parsed = citus_mcp::db::Dsn::parse(&dsn).unwrap();
    let db = parsed.config.get_dbname().unwrap_or("postgres").to_string();
    if ctx.is_fixture() {
        let _ = ctx.db().psql("CREATE DATABASE citus_mcp_plain");
        dsn.replace(&format!("dbname={db}"), "dbname=citus_mcp_plain")
    } else {
        // On a real cluster the maintenance database normally has no citus extension.
        dsn.replace(&format!("dbname={db}"), "dbname=postgres")
    }
}

fn results_are_cached_for_their_ttl(ctx: &Ctx) {
    let counter = r#"
name: clock
description: Changes every call.
safety: read_only
cache_ttl_s: 60
queries:
  - name: t
    shape: value
    sql: SELECT clock_timestamp()::text
examples:
  - args: {}
"#;
    let e = engine(ctx, &ctx.dsn(), &[counter], Settings::default());
    let a = call(ctx, &e, "clock", json!({})).unwrap().structured;
    let b = call(ctx, &e, "clock", json!({})).unwrap().structured;
    assert_eq!(a, b);
    let off = engine(
        ctx,
        &ctx.dsn(),
        &[counter],
        Settings {
            enable_caching: false,
            ..Settings::default()
        },
    );
    let a = call(ctx, &off, "clock", json!({})).unwrap().structured;
    let b = call(ctx, &off, "clock", json!({})).unwrap().structured;
    assert_ne!(a, b);
}

fn unreachable_coordinator_is_node_unreachable(ctx: &Ctx) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let e = engine(
        ctx,
        &format!(
            "host=127.0.0.1 port={port} user=postgres password=hunter2 dbname=x connect_timeout=2"
        ),
        &[],
        no_cache(),
    );
    let err = call(ctx, &e, "list_nodes", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::NodeUnreachable, "{}", err.text());
    assert!(!err.text().contains("hunter2"));

    // A server that accepts connections and never answers them (a hung host): calls that
    // found every connection slot still connecting are not told the pool is busy.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut sockets = Vec::new();
        for s in hung.incoming().take(64) {
            sockets.push(s);
        }
    });
    let db = crate::pool_sized(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=x"),
        "citus-mcp-hung",
        1,
        Duration::from_secs(1),
    );
    let e = Arc::new(engine_on(db, &[], no_cache()));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            ctx.rt.spawn(async move {
                e.call("list_nodes", json!({}), &CancellationToken::new())
                    .await
            })
        })
        .collect();
    for c in calls {
        let err = ctx.rt.block_on(c).unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::NodeUnreachable, "{}", err.text());
    }
    // The version check a tool's `requires` makes is bounded by the tool's timeout too,
    // connecting included (here 1 s, where connecting may take 10).
    const NEEDS_CITUS: &str = r#"
name: needs_citus
description: A tool that needs Citus, with a short timeout.
safety: read_only
input_schema: {type: object}
limits: {timeout_ms: 1000}
requires: {citus: ">=11.0"}
queries:
  - name: one
    shape: value
    sql: SELECT 1 AS one
examples:
  - args: {}
"#;
    let db = crate::pool_sized(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=x"),
        "citus-mcp-hung",
        1,
        Duration::from_secs(10),
    );
    let e = engine_on(db, &[NEEDS_CITUS], no_cache());
    let started = std::time::Instant::now();
    let err = call(ctx, &e, "needs_citus", json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::NodeUnreachable, "{}", err.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}

fn sizes_come_from_shards_and_empty_nodes_are_listed(ctx: &Ctx) {
    let e = engine(ctx, &ctx.dsn(), &[], no_cache());
    let nodes = call(ctx, &e, "list_nodes", json!({})).unwrap().structured;
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "coordinator and three workers");
    let bytes: Vec<u64> = nodes
        .iter()
        .map(|n| n["shard_bytes"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        bytes.iter().filter(|b| **b == 0).count(),
        1,
        "exactly one empty worker: {bytes:?}"
    );
    assert!(
        bytes.iter().max().unwrap() > &10_000_000,
        "sizes come from the shards: {bytes:?}"
    );
    let t = call(ctx, &e, "citus_table_inspector", json!({"table": "events"}))
        .unwrap()
        .structured;
    assert!(
        t["table"]["total_bytes"].as_u64().unwrap() > 10_000_000,
        "{t}"
    );
    // Whether its shards can move online is judged over the tables that move with them:
    // customers and orders have primary keys; the columnar archive never moves online.
    let online = |table: &str| {
        call(ctx, &e, "citus_table_inspector", json!({"table": table}))
            .unwrap()
            .structured["table"]
            .clone()
    };
    let orders = online("orders");
    assert_eq!(orders["online_move_ready"], true, "{orders}");
    assert_eq!(orders["online_move_blockers"], json!([]), "{orders}");
    let archive = online("metrics_archive");
    assert_eq!(archive["online_move_ready"], false, "{archive}");
    assert!(
        archive["online_move_blockers"][0]
            .as_str()
            .unwrap()
            .contains("columnar"),
        "{archive}"
    );
}

const TLS_PROBE: &str = r#"
name: tls
description: Whether this session is encrypted.
safety: read_only
queries:
  - name: ssl
    shape: value
    sql: SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()
examples:
  - args: {}
"#;

/// sslmode behaves as in libpq, verify-ca and verify-full included (the fixture server runs
/// with a certificate for localhost and 127.0.0.1 signed by a throwaway CA).
fn tls_modes_behave_like_libpq(ctx: &Ctx) {
    let Some(ca) = ctx.db().ca_cert() else {
        eprintln!("skipped: a real cluster's certificates are not known to the tests");
        return;
    };
    let ca = ca.display().to_string();
    let base = ctx.dsn();
    let ssl = |extra: &str| -> Result<Value, ToolError> {
        let e = engine(ctx, &format!("{base} {extra}"), &[TLS_PROBE], no_cache());
        call(ctx, &e, "tls", json!({})).map(|o| o.structured["ssl"].clone())
    };
    assert_eq!(ssl("sslmode=disable").unwrap(), false);
    assert_eq!(ssl("sslmode=prefer").unwrap(), true);
    assert_eq!(
        ssl("sslmode=require").unwrap(),
        true,
        "require encrypts without checking the certificate"
    );
    assert_eq!(
        ssl(&format!("sslmode=verify-ca sslrootcert={ca}")).unwrap(),
        true
    );
    assert_eq!(
        ssl(&format!("sslmode=verify-full sslrootcert={ca}")).unwrap(),
        true
    );
    // The certificate is not for this name: verify-full refuses, verify-ca does not look.
    let misnamed = base.replace("host=127.0.0.1", "host=wrong.example hostaddr=127.0.0.1");
    let e = engine(
        ctx,
        &format!("{misnamed} sslmode=verify-full sslrootcert={ca}"),
        &[TLS_PROBE],
        no_cache(),
    );
    assert_eq!(
        call(ctx, &e, "tls", json!({})).unwrap_err().code,
        ErrorCode::NodeUnreachable
    );
    let e = engine(
        ctx,
        &format!("{misnamed} sslmode=verify-ca sslrootcert={ca}"),
        &[TLS_PROBE],
        no_cache(),
    );
    assert_eq!(
        call(ctx, &e, "tls", json!({})).unwrap().structured["ssl"],
        true
    );
    // An unknown CA fails verification.
    let err = ssl("sslmode=verify-full").unwrap_err();
    assert_eq!(err.code, ErrorCode::NodeUnreachable, "{}", err.text());
}

/// Every string argument of every built-in tool keeps hostile text as data: the call
/// succeeds, or fails as the caller's mistake (INVALID_ARGUMENT / NOT_FOUND), never as
/// SQL that broke, and the catalog is unchanged afterwards.
fn hostile_input_in_every_string_argument(ctx: &Ctx) {
    const HOSTILE: &[&str] = &[
        "x'; DROP TABLE orders; --",
        "orders\"; DELETE FROM pg_dist_node; --",
        "$1",
        "/* */ 1; SELECT 2",
        "ünïcödé ☃ \u{202e}",
        "%_\\",
        "",
    ];
    let e = engine(ctx, &ctx.dsn(), &[], no_cache());
    let before = call(ctx, &e, "list_shards", json!({"limit": 1000}))
        .unwrap()
        .structured;
    let registry = e.registry();
    let mut calls = 0;
    for tool in registry.tools.values() {
        if tool.spec.plugin.as_deref() == Some("explain") {
            continue; // takes SQL text by design; covered in analysis.rs
        }
        if !e.visible(tool) {
            continue; // not served here (the approval tool outside admin mode): refused before its arguments are read
        }
        let base = tool
            .spec
            .examples
            .first()
            .map(|x| x.args.clone())
            .unwrap_or_else(|| json!({}));
        let props = tool.spec.input_schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (name, schema) in &props {
            let is_free_string = schema["type"] == "string" && schema.get("enum").is_none();
            if !is_free_string || name == "cursor" {
                continue;
            }
            for hostile in HOSTILE {
                let mut args = base.clone();
                args[name.as_str()] = json!(hostile);
                calls += 1;
                if let Err(err) = call(ctx, &e, &tool.spec.name, args.clone()) {
                    assert!(
                        matches!(err.code, ErrorCode::InvalidArgument | ErrorCode::NotFound),
                        "{} {args}: {}",
                        tool.spec.name,
                        err.text()
                    );
                    assert_ne!(
                        err.sqlstate.as_deref(),
                        Some("42601"),
                        "a syntax error means the text reached the SQL"
                    );
                }
            }
        }
    }
    assert!(calls > 20, "{calls}");
    let after = call(ctx, &e, "list_shards", json!({"limit": 1000}))
        .unwrap()
        .structured;
    assert_eq!(before, after);
}
