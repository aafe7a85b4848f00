//! Issue #8's table measured the way the issue did: beside another stdio MCP server doing the
//! same statements on the same database (the peer is MCP Toolbox for Databases;
//! `tests/bench/peers/toolbox.yaml` serves its side).
//!
//! The peer is any command line in `CITUS_MCP_BENCH_PEER` that serves two tools over stdio:
//! `select_one` (no arguments, `SELECT 1`) and `series` (`n`, `SELECT g, md5(g::text) FROM
//! generate_series(1, n) g`). It runs with `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` and
//! `PGPASSWORD` set to the benchmark's database. Without it the section says how to name
//! one and measures nothing. The two servers are measured in turns, so that drift on a shared
//! machine hits both alike; the ratio column is citus-mcp's figure over the peer's, the
//! floor column a raw tokio-postgres client's over the peer's (the best ratio any server in
//! front of PostgreSQL could reach; floor.rs), and the goal column is the issue's.

use super::floor::{
    CALLS, IN_FLIGHT, ROW_CALLS, ROWS, RawFloors, ToolFolder, pct, per_call, rate, ratio,
    timed_call,
};
use super::*;

/// The peer's command line (split on whitespace).
pub const PEER_ENV: &str = "CITUS_MCP_BENCH_PEER";

/// Turns each server takes in a latency figure.
const TURNS: usize = 4;

pub fn side_by_side(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "0b. Issue #8 figures beside another MCP server (ratio = citus-mcp / peer)",
        &[
            "figure",
            "citus-mcp",
            "peer",
            "ratio",
            "floor ÷ peer",
            "goal",
        ],
    );
    let Some(line) = std::env::var(PEER_ENV)
        .ok()
        .filter(|l| !l.trim().is_empty())
    else {
        s.note(format!(
            "skipped: set {PEER_ENV} to a stdio MCP server's command line that serves select_one and series(n) on the PG* database; tests/bench/peers/toolbox.yaml says how for MCP Toolbox"
        ));
        return Ok(vec![s]);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let pg = pg_env(&b.dsn)?;
    let peer = || -> Result<Server> {
        let mut cmd = Command::new(words[0]);
        cmd.args(&words[1..]).envs(pg.iter().map(|(k, v)| (k, v)));
        Server::start(cmd)
    };

    let tools = ToolFolder::new()?;
    let ours = || tools.server(b);

    // Spawn → initialize, fresh processes in turns.
    let (mut a, mut p) = (vec![], vec![]);
    for _ in 0..6 {
        let t = Instant::now();
        a.push(ours()?.initialize()? - t);
        let t = Instant::now();
        p.push(peer()?.initialize()? - t);
    }
    let spawn = [pct(&a, 50), pct(&p, 50)];
    row(&mut s, "spawn → initialize", spawn, None, "≤ 10 ms");

    let mut servers = [ours()?, peer()?];
    for server in &mut servers {
        server.initialize()?;
    }
    let listed: Vec<(usize, usize)> = servers
        .iter_mut()
        .map(|server| {
            let (_, v) = server.request("tools/list", json!({}))?;
            let tools = v["result"]["tools"].as_array().map_or(0, Vec::len);
            Ok((v["result"].to_string().len(), tools))
        })
        .collect::<Result<_>>()?;
    s.row(vec![
        "tools/list bytes".into(),
        format!("{} for {} tools", listed[0].0, listed[0].1),
        format!("{} for {} tools", listed[1].0, listed[1].1),
        String::new(),
        String::new(),
        "≤ 1 KB per tool".into(),
    ]);

    let floor = RawFloors::measure(b)?;
    let p50 = |v: &[Duration]| pct(v, 50);
    let p99 = |v: &[Duration]| pct(v, 99);
    let one = json!({});
    let (lat, cpu) = turns(&mut servers, "select_one", &one, CALLS)?;
    let flight = &floor.safe_flight;
    let both = |f: &dyn Fn(&[Duration]) -> Duration| [f(&lat[0]), f(&lat[1])];
    row(
        &mut s,
        "SELECT 1 call p50",
        both(&p50),
        Some(p50(flight)),
        "≤ 0.5×",
    );
    row(
        &mut s,
        "SELECT 1 call p99",
        both(&p99),
        Some(p99(flight)),
        "",
    );
    let raw_cpu = Some(floor.select_one_cpu);
    row(
        &mut s,
        "server CPU per SELECT 1 call",
        cpu,
        raw_cpu,
        "≤ 0.5×",
    );
    let calls = rates(&mut servers, "select_one", &one, CALLS)?;
    rate_row(
        &mut s,
        "SELECT 1 calls/s, 16 in flight",
        calls,
        floor.select_one_rate,
        "≥ 2×",
    );

    let series = json!({"n": ROWS});
    let (lat, cpu) = turns(&mut servers, "series", &series, ROW_CALLS)?;
    let both = |f: &dyn Fn(&[Duration]) -> Duration| [f(&lat[0]), f(&lat[1])];
    let raw_rows = Some(p50(&floor.rows));
    row(&mut s, "1,000-row call p50", both(&p50), raw_rows, "≤ 0.4×");
    row(&mut s, "server CPU per 1,000-row call", cpu, None, "");
    let calls = rates(&mut servers, "series", &series, ROW_CALLS)?;
    rate_row(
        &mut s,
        "1,000-row calls/s, 16 in flight",
        calls,
        floor.rows_rate,
        "≥ 3×",
    );
    let bytes: Vec<usize> = servers
        .iter_mut()
        .map(|server| {
            let (_, v) =
                server.request("tools/call", json!({"name": "series", "arguments": series}))?;
            Ok(v["result"].to_string().len())
        })
        .collect::<Result<_>>()?;
    s.row(vec![
        "1,000-row result bytes".into(),
        bytes[0].to_string(),
        bytes[1].to_string(),
        format!("{:.2}", bytes[0] as f64 / bytes[1].max(1) as f64),
        String::new(),
        String::new(),
    ]);

    let hwm = [
        servers[0].status_kb("VmHWM")?,
        servers[1].status_kb("VmHWM")?,
    ];
    s.row(vec![
        "peak memory (VmHWM)".into(),
        fmt_kb(hwm[0]),
        fmt_kb(hwm[1]),
        format!("{:.2}", hwm[0] as f64 / hwm[1].max(1) as f64),
        String::new(),
        "≤ 20 MB".into(),
    ]);
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len() as f64 / 1e6);
    let (ours_mb, peer_mb) = (size(&b.bin)?, size(Path::new(words[0])));
    s.row(vec![
        "binary".into(),
        format!("{ours_mb:.1} MB"),
        peer_mb
            .as_ref()
            .map_or("?".into(), |mb| format!("{mb:.1} MB")),
        peer_mb.map_or(String::new(), |mb| format!("{:.2}", ours_mb / mb)),
        String::new(),
        "≤ 12 MB".into(),
    ]);
    s.note(format!("peer: {line}"));
    s.note(format!(
        "{CALLS} calls per SELECT 1 figure, {ROW_CALLS} per 1,000-row figure, in {TURNS} turns each; calls/s keep {IN_FLIGHT} requests in flight; spawn is the median of 6 fresh processes"
    ));
    s.note("CPU = the server process's time on CPU (all threads, /proc schedstat) per call");
    s.note(format!(
        "floor = a raw tokio-postgres client: for SELECT 1 the engine's one safe flight (START TRANSACTION READ ONLY, timeouts, SELECT, ROLLBACK; a bare SELECT takes {}), for CPU that client's own, for calls/s {IN_FLIGHT} queries in flight on one connection",
        fmt_duration(pct(&floor.select_one, 50))
    ));
    Ok(vec![s])
}

/// `calls` calls of `tool` on each server, in [`TURNS`] turns: every call's latency, and
/// each server's CPU per call.
fn turns(
    servers: &mut [Server; 2],
    tool: &str,
    args: &Value,
    calls: usize,
) -> Result<([Vec<Duration>; 2], [Duration; 2])> {
    let mut lat = [vec![], vec![]];
    let mut cpu = [Duration::ZERO; 2];
    for server in servers.iter_mut() {
        timed_call(server, tool, args)?;
    }
    for _ in 0..TURNS {
        for (i, server) in servers.iter_mut().enumerate() {
            let before = server.cpu();
            for _ in 0..calls / TURNS {
                lat[i].push(timed_call(server, tool, args)?);
            }
            cpu[i] += server.cpu() - before;
        }
    }
    Ok((lat, cpu.map(|c| per_call(c, calls / TURNS * TURNS))))
}

/// Each server's calls/s of `tool` with [`IN_FLIGHT`] requests in flight.
fn rates(servers: &mut [Server; 2], tool: &str, args: &Value, total: usize) -> Result<[f64; 2]> {
    Ok([
        rate(&mut servers[0], tool, args, total)?,
        rate(&mut servers[1], tool, args, total)?,
    ])
}

/// A row of two times, citus-mcp's and the peer's, and the raw client's if it has one.
fn row(
    s: &mut Section,
    label: &str,
    [ours, peer]: [Duration; 2],
    floor: Option<Duration>,
    goal: &str,
) {
    s.row(vec![
        label.to_string(),
        fmt_duration(ours),
        fmt_duration(peer),
        ratio(ours, peer),
        floor.map_or(String::new(), |f| ratio(f, peer)),
        goal.to_string(),
    ]);
}

fn rate_row(s: &mut Section, label: &str, [ours, peer]: [f64; 2], floor: f64, goal: &str) {
    let peer = peer.max(1e-9);
    s.row(vec![
        label.to_string(),
        format!("{ours:.0}"),
        format!("{peer:.0}"),
        format!("{:.2}", ours / peer),
        format!("{:.2}", floor / peer),
        goal.to_string(),
    ]);
}

/// The benchmark's database as libpq's environment variables, for the peer.
fn pg_env(dsn: &str) -> Result<Vec<(&'static str, String)>> {
    use tokio_postgres::config::Host;
    let config: tokio_postgres::Config = dsn.parse()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => bail!("the peer needs a TCP host in the benchmark's DSN"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok(vec![
        ("PGHOST", host),
        ("PGPORT", port.to_string()),
        (
            "PGUSER",
            config.get_user().unwrap_or("postgres").to_string(),
        ),
        (
            "PGDATABASE",
            config.get_dbname().unwrap_or("postgres").to_string(),
        ),
        // Toolbox asks for a password even where the server trusts the connection.
        (
            "PGPASSWORD",
            config
                .get_password()
                .map_or("unused".into(), |p| String::from_utf8_lossy(p).into_owned()),
        ),
    ])
}
