//! The figures of issue #8, each as a ratio to its physical floor: what the same work costs
//! with nothing of citus-mcp in the way.
//!
//! | figure | floor |
//! |---|---|
//! | spawn → `initialize` | `citus-mcp --help` (the process starts and exits) |
//! | `ping` over stdio | an echo process over the same pipes (a line in, a line out) |
//! | `SELECT 1` tool, latency and server CPU | a raw tokio-postgres client, prepared statement, one round trip (CPU: that client's + the echo's) |
//! | `SELECT 1` tool, latency | the raw client sending the engine's one safe flight (READ ONLY transaction, timeouts, ROLLBACK) |
//! | calls/s with 16 in flight | the raw client with 16 queries in flight on one connection |
//! | 1,000-row call, rows/s | the raw client doing the same statement |
//! | round trips per call | one |
//! | wake-ups per second, idle | the echo process |
//! | peak memory (VmHWM) | the echo process |
//! | result bytes per row | the rows as text (PostgreSQL's own output) |
//!
//! It measures and prints; it asserts nothing about time.

use std::collections::VecDeque;
use std::io::{BufRead, Write};

use super::*;

/// Set in the environment of the benchmark binary run as the echo floor.
pub const ECHO_ENV: &str = "CITUS_MCP_BENCH_ECHO";

/// The echo floor: answers each JSON-RPC line with an empty result for its id. It reads
/// and writes with blocking calls on one thread, the least a stdio server can do.
pub fn echo_main() -> Result<()> {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line?;
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v.get("id").is_none() {
            continue;
        }
        let reply = json!({"jsonrpc": "2.0", "id": v["id"], "result": {}});
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// Tools the floor section serves from a folder of its own.
const SELECT_ONE_TOOL: &str = "name: select_one
description: SELECT 1, for the benchmark's per-call overhead.
safety: read_only
queries:
  - name: one
    shape: value
    sql: SELECT 1
examples:
  - args: {}
";

const SERIES_SQL: &str = "SELECT g, md5(g::text) FROM generate_series(1, $1::int) g";

/// Calls per latency figure, and per throughput figure.
pub(crate) const CALLS: usize = 2000;
pub(crate) const IN_FLIGHT: usize = 16;
pub(crate) const ROWS: usize = 1000;
pub(crate) const ROW_CALLS: usize = 200;
/// How long the idle wake-ups are counted.
const IDLE: Duration = Duration::from_secs(2);

pub fn floors(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "0. Issue #8 figures against their floors (ratio = citus-mcp / floor)",
        &["figure", "citus-mcp", "floor", "ratio", "floor is"],
    );
    let tools = ToolFolder::new()?;

    startup_row(&mut s, b)?;
    first_use_row(&mut s)?;

    let mut echo = echo_server(b)?;
    echo.initialize()?;
    let mut server = tools.server(b)?;
    server.initialize()?;

    // stdio: the same request to both, interleaved so drift hits both alike.
    let (mut ping, mut bounce) = (vec![], vec![]);
    let (ping_cpu, echo_cpu) = (server.cpu(), echo.cpu());
    for _ in 0..CALLS {
        ping.push(timed_call(&mut server, "ping", &json!({}))?);
        bounce.push(timed_call(&mut echo, "ping", &json!({}))?);
    }
    let ping_cpu = per_call(server.cpu() - ping_cpu, CALLS);
    let echo_cpu = per_call(echo.cpu() - echo_cpu, CALLS);
    ratio_row(
        &mut s,
        "ping over stdio p50",
        &ping,
        &bounce,
        50,
        "echo over the same pipes",
    );
    ratio_row(&mut s, "ping over stdio p99", &ping, &bounce, 99, "");
    s.row(vec![
        "server CPU per ping".into(),
        fmt_duration(ping_cpu),
        fmt_duration(echo_cpu),
        ratio(ping_cpu, echo_cpu),
        "echo's CPU per line".into(),
    ]);

    // The trivial SQL call against one round trip of a raw client.
    let floor = RawFloors::measure(b)?;
    let (raw, raw_cpu) = (&floor.select_one, floor.select_one_cpu);
    timed_call(&mut server, "select_one", &json!({}))?;
    let cpu = server.cpu();
    let calls = (0..CALLS)
        .map(|_| timed_call(&mut server, "select_one", &json!({})))
        .collect::<Result<Vec<_>>>()?;
    let call_cpu = per_call(server.cpu() - cpu, CALLS);
    ratio_row(
        &mut s,
        "SELECT 1 call p50",
        &calls,
        raw,
        50,
        "raw client, one round trip",
    );
    ratio_row(&mut s, "SELECT 1 call p99", &calls, raw, 99, "");
    ratio_row(
        &mut s,
        "SELECT 1 call p50, against the safe flight",
        &calls,
        &floor.safe_flight,
        50,
        "raw client, BEGIN READ ONLY + timeouts + SELECT + ROLLBACK in one flight",
    );
    s.row(vec![
        "server CPU per SELECT 1 call".into(),
        fmt_duration(call_cpu),
        fmt_duration(raw_cpu + echo_cpu),
        ratio(call_cpu, raw_cpu + echo_cpu),
        "raw client's CPU + echo's".into(),
    ]);
    s.row(vec![
        "SELECT 1 round trips per call".into(),
        format!(
            "{:.2}",
            b.rt.block_on(round_trips_of(b, "select_one", SELECT_ONE_TOOL))?
        ),
        "1".into(),
        String::new(),
        "one Bind/Execute/Sync".into(),
    ]);

    // Throughput with 16 requests in flight.
    let ours = rate(&mut server, "select_one", &json!({}), CALLS)?;
    rate_row(
        &mut s,
        "SELECT 1 calls/s, 16 in flight",
        ours,
        floor.select_one_rate,
    );

    // 1,000 rows.
    let raw_rows = &floor.rows;
    let series = json!({"n": ROWS});
    timed_call(&mut server, "series", &series)?;
    let rows = (0..ROW_CALLS)
        .map(|_| timed_call(&mut server, "series", &series))
        .collect::<Result<Vec<_>>>()?;
    ratio_row(
        &mut s,
        "1,000-row call p50",
        &rows,
        raw_rows,
        50,
        "raw client, same statement",
    );
    let rows_per_s = |v: &[Duration]| ROWS as f64 / pct(v, 50).as_secs_f64();
    s.row(vec![
        "rows/s, one call at a time".into(),
        format!("{:.0}", rows_per_s(&rows)),
        format!("{:.0}", rows_per_s(raw_rows)),
        format!("{:.2}", rows_per_s(&rows) / rows_per_s(raw_rows)),
        String::new(),
    ]);
    let ours = rate(&mut server, "series", &series, ROW_CALLS)?;
    rate_row(
        &mut s,
        "1,000-row calls/s, 16 in flight",
        ours,
        floor.rows_rate,
    );

    // Sizes.
    let (_, listed) = server.request("tools/list", json!({}))?;
    let tools = listed["result"]["tools"].as_array().map_or(0, Vec::len);
    let list_bytes = listed["result"].to_string().len();
    s.row(vec![
        "tools/list bytes".into(),
        format!("{list_bytes} for {tools} tools"),
        String::new(),
        String::new(),
        format!("{} per tool", list_bytes / tools.max(1)),
    ]);
    let (per_row, text_per_row) = result_bytes_per_row(&mut server, b)?;
    s.row(vec![
        "result bytes per row (1,000 rows)".into(),
        format!("{per_row:.0} B"),
        format!("{text_per_row:.0} B"),
        format!("{:.2}", per_row / text_per_row),
        "the row as PostgreSQL's text".into(),
    ]);
    // An MCP server waits for its client most of its life: waiting should cost nothing.
    let (ours, theirs) = (server.switches(), echo.switches());
    std::thread::sleep(IDLE);
    let per_s = |n: u64| n as f64 / IDLE.as_secs_f64();
    s.row(vec![
        "wake-ups per second, idle".into(),
        format!("{:.1}", per_s(server.switches() - ours)),
        format!("{:.1}", per_s(echo.switches() - theirs)),
        String::new(),
        "the echo process (context switches of every thread)".into(),
    ]);
    let (hwm, echo_hwm) = (server.status_kb("VmHWM")?, echo.status_kb("VmHWM")?);
    s.row(vec![
        "peak memory (VmHWM)".into(),
        fmt_kb(hwm),
        fmt_kb(echo_hwm),
        format!("{:.2}", hwm as f64 / echo_hwm.max(1) as f64),
        "the echo process; goal 20 MB".into(),
    ]);
    // Where it is: pages of the binary (file-backed; on kernels that map whole large
    // folios nearly all of it is resident) and the process's own heap and stacks.
    let (file, anon) = (server.status_kb("RssFile")?, server.status_kb("RssAnon")?);
    s.row(vec![
        "memory at the end: binary pages + heap".into(),
        format!("{} + {}", fmt_kb(file), fmt_kb(anon)),
        String::new(),
        String::new(),
        "RssFile + RssAnon".into(),
    ]);
    let size = std::fs::metadata(&b.bin)?.len();
    s.row(vec![
        "binary".into(),
        format!("{:.1} MB", size as f64 / 1e6),
        String::new(),
        String::new(),
        "goal 12 MB".into(),
    ]);
    s.note(format!(
        "{CALLS} calls per latency figure, {ROW_CALLS} for 1,000 rows; calls/s keep {IN_FLIGHT} requests in flight"
    ));
    s.note("CPU = the server process's time on CPU (all threads, /proc schedstat) per call");
    Ok(vec![s])
}

/// A folder with the two tools the floor and peer sections call, `select_one` and
/// `series`.
pub(crate) struct ToolFolder(tempfile::TempDir);

impl ToolFolder {
    pub(crate) fn new() -> Result<ToolFolder> {
        let dir = tempfile::Builder::new()
            .prefix("citus-mcp-bench-tools-")
            .tempdir()?;
        std::fs::write(dir.path().join("select_one.yaml"), SELECT_ONE_TOOL)?;
        std::fs::write(dir.path().join("series.yaml"), SERIES_TOOL)?;
        Ok(ToolFolder(dir))
    }

    /// citus-mcp serving these tools, uncached, with limits that 1,000 rows of `series`
    /// fit whole (the figure is rows, not the default budget's cut).
    pub(crate) fn server(&self, b: &Bench) -> Result<Server> {
        let env = [
            ("CITUS_MCP_ENABLE_CACHING", "false"),
            ("CITUS_MCP_MAX_ROWS", "2000"),
            ("CITUS_MCP_MAX_TEXT_BYTES", "1000000"),
        ];
        b.server(&["--tools-dirs", path_str(self.0.path())?], &env)
    }
}

/// What a raw tokio-postgres client takes for the benchmark's two statements: the least
/// any MCP server in front of PostgreSQL could take.
pub(crate) struct RawFloors {
    /// `SELECT 1`, prepared, one round trip.
    pub select_one: Vec<Duration>,
    /// That client's CPU per `SELECT 1`.
    pub select_one_cpu: Duration,
    /// The engine's one safe flight (START TRANSACTION READ ONLY, the timeouts, the SELECT,
    /// ROLLBACK): how much of a call's time the safety model asks of PostgreSQL.
    pub safe_flight: Vec<Duration>,
    /// `SELECT 1` with [`IN_FLIGHT`] queries in flight on one connection.
    pub select_one_rate: f64,
    /// The 1,000-row statement.
    pub rows: Vec<Duration>,
    pub rows_rate: f64,
}

impl RawFloors {
    pub(crate) fn measure(b: &Bench) -> Result<RawFloors> {
        let (select_one, select_one_cpu) = b.rt.block_on(async {
            let raw = Raw::connect(&b.dsn).await?;
            let cpu = own_cpu();
            let samples = select_one_samples(&raw, CALLS).await?;
            Ok::<_, anyhow::Error>((samples, per_call(own_cpu() - cpu, CALLS)))
        })?;
        let safe_flight = b.rt.block_on(async {
            let mut raw = Raw::connect(&b.dsn).await?;
            let one = [Rendered {
                sql: "SELECT 1".into(),
                binds: vec![],
            }];
            let prepared = raw.prepare_all(&one).await?;
            sample(CALLS, async || {
                raw.as_engine(&prepared, &one).await.map(drop)
            })
            .await
        })?;
        let select_one_rate = b.rt.block_on(raw_rate(b, "SELECT 1", None, CALLS))?;
        let n = ROWS as i32;
        let rows = b.rt.block_on(async {
            let raw = Raw::connect(&b.dsn).await?;
            let st = raw.client.prepare(SERIES_SQL).await?;
            sample(ROW_CALLS, async || {
                raw.client
                    .query(&st, &[&n])
                    .await
                    .map(drop)
                    .map_err(Into::into)
            })
            .await
        })?;
        let rows_rate = b.rt.block_on(raw_rate(b, SERIES_SQL, Some(n), ROW_CALLS))?;
        Ok(RawFloors {
            select_one,
            select_one_cpu,
            safe_flight,
            select_one_rate,
            rows,
            rows_rate,
        })
    }
}

/// Spawn → `initialize` response, against spawn → exit of `--help`.
fn startup_row(s: &mut Section, b: &Bench) -> Result<()> {
    let (mut init, mut help) = (vec![], vec![]);
    for _ in 0..11 {
        let t = Instant::now();
        let mut server = b.server(&[], &[])?;
        init.push(server.initialize()? - t);
        drop(server);
        let t = Instant::now();
        let out = Command::new(&b.bin)
            .arg("--help")
            .stdout(Stdio::null())
            .status()?;
        help.push(t.elapsed());
        if !out.success() {
            bail!("--help failed: {out}");
        }
    }
    ratio_row(
        s,
        "spawn → initialize",
        &init,
        &help,
        50,
        "--help (process start)",
    );
    Ok(())
}

/// What a built-in tool's first call adds: its validator and templates, compiled then
/// (issue #8: a tool nobody calls is never compiled). What jsonschema builds once per
/// process is built apart, as a session does once it is idle after `initialized`.
fn first_use_row(s: &mut Section) -> Result<()> {
    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    let t = Instant::now();
    citus_mcp::compile::warm_up();
    let shared = t.elapsed();
    let mut each = vec![];
    for tool in registry.tools.values() {
        let t = Instant::now();
        tool.runnable()
            .map_err(|e| anyhow::anyhow!("{}: {e}", tool.spec.name))?;
        each.push(t.elapsed());
    }
    each.sort();
    s.row(vec![
        "a tool's compile on its first call".into(),
        fmt_duration(each[each.len() / 2]),
        String::new(),
        String::new(),
        format!(
            "median of {} built-in tools, at most {}; jsonschema's shared parts {}, built once a session idles",
            each.len(),
            fmt_duration(*each.last().unwrap_or(&shared)),
            fmt_duration(shared)
        ),
    ]);
    Ok(())
}

/// The benchmark binary itself, as the echo floor.
fn echo_server(b: &Bench) -> Result<Server> {
    let exe = std::env::current_exe()?;
    Server::spawn(&exe, &b.dsn, &[], &[(ECHO_ENV, "1")])
}

pub(crate) fn timed_call(server: &mut Server, tool: &str, args: &Value) -> Result<Duration> {
    let t = Instant::now();
    Ok(server.call(tool, args)? - t)
}

/// Calls per second with [`IN_FLIGHT`] requests outstanding at all times.
pub(crate) fn rate(server: &mut Server, tool: &str, args: &Value, total: usize) -> Result<f64> {
    let request = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": args}})
    };
    let first = server.next_id;
    server.next_id += total as u64;
    let t = Instant::now();
    let mut sent: VecDeque<u64> = VecDeque::new();
    let mut next = first;
    let mut done = 0;
    while done < total {
        while sent.len() < IN_FLIGHT && next < first + total as u64 {
            server.send(&request(next))?;
            sent.push_back(next);
            next += 1;
        }
        let answer = server
            .next_answer(Instant::now() + TIMEOUT)
            .ok_or_else(|| anyhow!("no answer within {TIMEOUT:?}"))?;
        let Some(id) = answer.id else { continue };
        if answer.failed() {
            bail!("{tool} failed (request {id})");
        }
        sent.retain(|s| *s != id);
        done += 1;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// The raw client's queries per second with [`IN_FLIGHT`] in flight on one connection.
async fn raw_rate(b: &Bench, sql: &str, n: Option<i32>, total: usize) -> Result<f64> {
    use futures_util::StreamExt as _;
    let raw = Raw::connect(&b.dsn).await?;
    let st = raw.client.prepare(sql).await?;
    let client = &raw.client;
    let t = Instant::now();
    let results: Vec<Result<_, _>> = futures_util::stream::iter(0..total)
        .map(|_| {
            let st = &st;
            async move {
                match &n {
                    Some(n) => client.query(st, &[n]).await,
                    None => client.query(st, &[]).await,
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// Round trips of one call of `tool` (a tool of the floor section), counted on the wire.
async fn round_trips_of(b: &Bench, tool: &str, text: &str) -> Result<f64> {
    let (dsn, tool, text) = (b.dsn.clone(), tool.to_string(), text.to_string());
    // The calls run in a task on a worker thread, as the server runs them (see the
    // `roundtrips` section).
    tokio::spawn(async move {
        let proxy = FlightProxy::start(&dsn).await?;
        let db = Db::new(DbConfig {
            dsn: proxied(&dsn, proxy.port)?,
            worker_dsns: vec![],
            connect_timeout: Duration::from_secs(10),
            pool_size: 1,
            application_name: "citus-mcp-bench-floor".into(),
            timeout_ceiling: Duration::from_secs(60),
        })?;
        let mut sources = Sources::builtin();
        sources.tools.push(vec![SourceFile {
            origin: format!("bench/{tool}.yaml"),
            text: text.into(),
        }]);
        let registry = Registry::build(&sources, None, &[], citus_mcp::plugins::NEEDS);
        let engine =
            Engine::new(registry, Some(db), no_cache()).with_plugins(citus_mcp::plugins::all());
        call(&engine, &tool, &json!({})).await?;
        let before = proxy.flights();
        let runs = 200;
        for _ in 0..runs {
            call(&engine, &tool, &json!({})).await?;
        }
        Ok((proxy.flights() - before) as f64 / runs as f64)
    })
    .await?
}

/// `dsn` through a local port (the flight-counting proxy).
fn proxied(dsn: &str, port: u16) -> Result<Dsn> {
    let upstream = Dsn::parse(dsn)?
        .config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432);
    Ok(Dsn::parse(&dsn.replace(
        &format!("port={upstream}"),
        &format!("port={port}"),
    ))?)
}

/// Bytes of a `tools/call` result per row (structuredContent and text), and the rows'
/// own text (what `psql -At` would print: the columns and a separator).
fn result_bytes_per_row(server: &mut Server, b: &Bench) -> Result<(f64, f64)> {
    let size = |server: &mut Server, n: usize| -> Result<usize> {
        let (_, v) = server.request(
            "tools/call",
            json!({"name": "series", "arguments": {"n": n}}),
        )?;
        Ok(v["result"].to_string().len())
    };
    let (one, many) = (size(server, 1)?, size(server, ROWS)?);
    let per_row = (many - one) as f64 / (ROWS - 1) as f64;
    let text: usize = b.rt.block_on(async {
        let raw = Raw::connect(&b.dsn).await?;
        let rows = raw
            .client
            .query(
                "SELECT g::text, md5(g::text) FROM generate_series(1, $1::int) g",
                &[&(ROWS as i32)],
            )
            .await?;
        Ok::<_, anyhow::Error>(
            rows.iter()
                .map(|r| r.get::<_, String>(0).len() + r.get::<_, String>(1).len() + 2)
                .sum(),
        )
    })?;
    Ok((per_row, text as f64 / ROWS as f64))
}

pub(crate) fn per_call(cpu: Duration, calls: usize) -> Duration {
    cpu / calls as u32
}

pub(crate) fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v.get((v.len() * p).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

pub(crate) fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

fn ratio_row(
    s: &mut Section,
    label: &str,
    ours: &[Duration],
    floor: &[Duration],
    p: usize,
    what: &str,
) {
    let (a, b) = (pct(ours, p), pct(floor, p));
    s.row(vec![
        label.to_string(),
        fmt_duration(a),
        fmt_duration(b),
        ratio(a, b),
        what.to_string(),
    ]);
}

fn rate_row(s: &mut Section, label: &str, ours: f64, floor: f64) {
    s.row(vec![
        label.to_string(),
        format!("{ours:.0}"),
        format!("{floor:.0}"),
        format!("{:.2}", ours / floor.max(1e-9)),
        "raw client, 16 queries in flight on one connection".into(),
    ]);
}

/// Time on CPU of every thread of a process, from /proc schedstat (nanoseconds).
fn cpu_of(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Context switches of every thread of a process so far (voluntary and not).
fn switches_of(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// This process's time on CPU (the raw client's runtime runs here).
fn own_cpu() -> Duration {
    cpu_of("self")
}

impl Server {
    /// The server process's time on CPU so far.
    pub(crate) fn cpu(&self) -> Duration {
        cpu_of(&self.child.id().to_string())
    }

    /// The server process's context switches so far.
    fn switches(&self) -> u64 {
        switches_of(&self.child.id().to_string())
    }
}
