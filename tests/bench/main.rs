//! Benchmark: what citus-mcp costs on top of PostgreSQL. It measures and prints a report; it
//! never asserts a timing.
//!
//! It runs against a throwaway PostgreSQL loaded with the Citus catalog fixture (or the cluster
//! in `CITUS_TEST_DSN`, see tests/support/pg.rs), through the library and the built binary:
//!
//! 0. issue #8's figures, each as a ratio to its physical floor (floor.rs), and beside
//!    another MCP server's when one is named (peer.rs);
//! 1. per-call overhead of `Engine::call` over the same SQL on a plain tokio-postgres client,
//!    without the cache and on a cache hit;
//! 2. startup time of `citus-mcp` to its `initialize` response, with and without extra tool files;
//! 3. memory (VmRSS) after startup and after 1,000 `tools/call` requests over stdio;
//! 4. hot-reload latency, from writing a tool file to `notifications/tools/list_changed`, in
//!    folders of 0 to 1,000 files;
//! 5. `citus-mcp lint` time for 1 to 1,000 small tool files and copies of a built-in one;
//! 6. bytes of `structuredContent` and of the text rendering per result row;
//! 7. time per call and per row for results of 10 to 10,000 rows;
//! 8. the backend's and citus-mcp's memory over 10,000 distinct EXPLAINs;
//! 9. tools/call over Streamable HTTP beside stdio (http.rs);
//! 10. every built-in tool's examples over stdio, first call and the calls after (tools.rs).
//!
//! Run: `cargo bench --bench engine` (about a minute on 2 cores, after the build).
//! Names select sections: `cargo bench --bench engine -- overhead lint`. Results and how to
//! read them: tests/bench/README.md.

mod floor;
mod http;
mod peer;
#[path = "../support/pg.rs"]
mod pg;

mod explains;
mod tools;

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use citus_mcp::compile::SourceFile;
use citus_mcp::db::value::Bind;
use citus_mcp::db::{Db, DbConfig, Dsn, Statement};
use citus_mcp::engine::{Engine, Settings, ToolOutput};
use citus_mcp::registry::{Registry, Sources};
use citus_mcp::template::Rendered;
use serde_json::{Value, json};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

fn main() -> Result<()> {
    if std::env::var_os(floor::ECHO_ENV).is_some() {
        return floor::echo_main();
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let started = Instant::now();
    eprintln!("bench: starting the test database");
    let db = pg::TestDatabase::start()?;
    let bench = Bench {
        dsn: db.dsn().to_string(),
        bin: server_binary()?,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    let mut report = Report {
        header: machine(&bench, db.kind())?,
        sections: vec![],
    };
    let sections: [(&str, SectionFn); 13] = [
        ("floor", floor::floors),
        ("peer", peer::side_by_side),
        ("overhead", overhead),
        ("roundtrips", round_trips),
        ("startup", startup),
        ("memory", memory),
        ("reload", hot_reload),
        ("lint", lint),
        ("bytes", bytes_per_row),
        ("rows", rows_growth),
        ("explains", explains::explains),
        ("http", http::http),
        ("tools", tools::tools),
    ];
    for (name, run) in sections {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        eprintln!("bench: {name}");
        let t = Instant::now();
        match run(&bench) {
            Ok(mut s) => {
                if let Some(first) = s.first_mut() {
                    first.took = t.elapsed();
                }
                report.sections.extend(s);
            }
            Err(e) => {
                let mut s = Section::new(format!("{name}: FAILED"), &[""]);
                s.note(format!("{e:#}"));
                report.sections.push(s);
            }
        }
    }
    report.header.push(format!(
        "total run time {}",
        fmt_duration(started.elapsed())
    ));
    print!("{report}");
    Ok(())
}

type SectionFn = fn(&Bench) -> Result<Vec<Section>>;

/// What every section shares.
struct Bench {
    dsn: String,
    bin: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    /// An engine over the built-in tools plus `extra` tool files (name, YAML).
    fn engine(&self, settings: Settings, extra: &[(&str, &str)]) -> Result<Engine> {
        let mut sources = Sources::builtin();
        sources.tools.push(
            extra
                .iter()
                .map(|(name, text)| SourceFile {
                    origin: format!("bench/{name}.yaml"),
                    text: (*text).into(),
                })
                .collect(),
        );
        let registry = Registry::build(&sources, None, &[], citus_mcp::plugins::NEEDS);
        let errors: Vec<String> = registry.errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            bail!("tool files do not compile:\n{}", errors.join("\n"));
        }
        let db = Db::new(DbConfig {
            dsn: Dsn::parse(&self.dsn)?,
            worker_dsns: vec![],
            connect_timeout: Duration::from_secs(10),
            pool_size: 4,
            application_name: "citus-mcp-bench".into(),
            timeout_ceiling: Duration::from_secs(60),
        })?;
        Ok(Engine::new(registry, Some(db), settings).with_plugins(citus_mcp::plugins::all()))
    }

    fn server(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Server> {
        Server::spawn(&self.bin, &self.dsn, args, env)
    }
}

fn no_cache() -> Settings {
    Settings {
        enable_caching: false,
        ..Settings::default()
    }
}

/// The server binary cargo built next to this benchmark (release profile).
fn server_binary() -> Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_citus-mcp"));
    if !bin.is_file() {
        bail!(
            "{} is missing: run `cargo build --release --bin citus-mcp` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Date, machine and database, for the report's first lines.
fn machine(b: &Bench, kind: pg::DbKind) -> Result<Vec<String>> {
    let cpu = read_proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let mem = read_proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version: String = b.rt.block_on(async {
        let raw = Raw::connect(&b.dsn).await?;
        let row = raw.client.query_one("SHOW server_version", &[]).await?;
        Ok::<_, anyhow::Error>(row.get(0))
    })?;
    let db = match kind {
        pg::DbKind::Fixture => "throwaway PostgreSQL with the Citus 13.2 catalog fixture",
        pg::DbKind::RealCitus => "the Citus cluster of CITUS_TEST_DSN",
    };
    Ok(vec![
        format!(
            "citus-mcp {} benchmark, {}",
            env!("CARGO_PKG_VERSION"),
            chrono::Local::now().format("%Y-%m-%d %H:%M %Z")
        ),
        format!("machine: {cores} cores ({cpu}), {mem} RAM"),
        format!("database: PostgreSQL {version}, {db}, over TCP on localhost"),
        format!(
            "build: {}",
            if cfg!(debug_assertions) {
                "debug (numbers are not representative)"
            } else {
                "release"
            }
        ),
    ])
}

fn read_proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. Per-call overhead

/// One tool call to measure.
struct Case {
    tool: &'static str,
    args: Value,
    runs: usize,
}

fn overhead(b: &Bench) -> Result<Vec<Section>> {
    let cases = [
        Case {
            tool: "ping",
            args: json!({}),
            runs: 5000,
        },
        Case {
            tool: "list_nodes",
            args: json!({}),
            runs: 500,
        },
        Case {
            tool: "citus_table_inspector",
            args: json!({"table": "orders"}),
            runs: 200,
        },
    ];
    let mut s = Section::new(
        "1. Per-call overhead: Engine::call vs the same SQL on a plain client",
        TIMING,
    );
    b.rt.block_on(async {
        let uncached = b.engine(no_cache(), &[])?;
        let cached = b.engine(Settings::default(), &[])?;
        let mut raw = Raw::connect(&b.dsn).await?;
        round_trip(&mut s, &raw, 2000).await?;
        for case in &cases {
            overhead_case(&mut s, [&uncached, &cached], &mut raw, case).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    s.note("plain = prepare + query per statement, rows not decoded (2 round trips each)");
    s.note(
        "engine protocol = what Db::read_only sends, in one flight: BEGIN READ ONLY, set_config, \
         Bind/Execute per statement, ROLLBACK; statements prepared once (one round trip, where \
         the engine also waits before a statement that reads an earlier one's rows)",
    );
    s.note("engine = Engine::call: validation, rendering, that protocol, JSON decoding, shaping");
    Ok(vec![s])
}

/// Round trips per call, counted on the wire: citus-mcp talks to PostgreSQL through a
/// proxy that counts each burst of bytes citus-mcp sends after PostgreSQL answered (one
/// wait for an answer). The floor is a plain client's prepared query: one.
fn round_trips(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "2. Round trips per call (counted by a proxy on the wire)",
        &["call", "round trips per call", "note"],
    );
    let dsn_text = b.dsn.clone();
    // The calls run in a task on a worker thread, as the server runs them: a wake from the
    // thread that blocks on the runtime goes through the shared queue, and another worker
    // may then send a request before the rest of the flight is queued.
    let rows = b.rt.block_on(async move {
        tokio::spawn(async move {
            let mut rows: Vec<Vec<String>> = Vec::new();
            let proxy = FlightProxy::start(&dsn_text).await?;
            let port = Dsn::parse(&dsn_text)?
                .config
                .get_ports()
                .first()
                .copied()
                .unwrap_or(5432);
            let dsn = Dsn::parse(
                &dsn_text.replace(&format!("port={port}"), &format!("port={}", proxy.port)),
            )?;
            let pool = || {
                Db::new(DbConfig {
                    dsn: dsn.clone(),
                    worker_dsns: vec![],
                    connect_timeout: Duration::from_secs(10),
                    pool_size: 1,
                    application_name: "citus-mcp-bench-flights".into(),
                    timeout_ceiling: Duration::from_secs(60),
                })
            };
            let runs = 200u64;
            // The database layer alone, one statement: the floor is one.
            let layer = pool()?;
            let one = [Statement::new("SELECT 1 AS one", vec![], 1)];
            let never = CancellationToken::new();
            let read = || layer.read_only(&one, Duration::from_secs(10), &never);
            read().await?;
            let before = proxy.flights();
            for _ in 0..runs {
                read().await?;
            }
            rows.push(vec![
                "Db::read_only (SELECT 1)".into(),
                format!("{:.2}", (proxy.flights() - before) as f64 / runs as f64),
                "the database layer: one statement".into(),
            ]);
            let db = pool()?;
            let registry =
                Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
            let engine =
                Engine::new(registry, Some(db), no_cache()).with_plugins(citus_mcp::plugins::all());
            for (tool, args, note) in [
                (
                    "list_nodes",
                    json!({}),
                    "two statements, the second reads the first's rows",
                ),
                (
                    "citus_table_inspector",
                    json!({"table": "orders"}),
                    "several statements, some reading earlier rows",
                ),
                (
                    "citus_explain_query",
                    json!({"sql": "SELECT count(*) FROM orders"}),
                    "caller SQL: parsed per call",
                ),
            ] {
                call(&engine, tool, &args).await?; // warm: connection, version facts, parses
                let before = proxy.flights();
                for _ in 0..runs {
                    call(&engine, tool, &args).await?;
                }
                let per_call = (proxy.flights() - before) as f64 / runs as f64;
                rows.push(vec![
                    tool.to_string(),
                    format!("{per_call:.2}"),
                    note.to_string(),
                ]);
            }
            Ok::<_, anyhow::Error>(rows)
        })
        .await?
    })?;
    for r in rows {
        s.row(r);
    }
    s.note("a warm call sends START TRANSACTION READ ONLY, its timeouts, every Bind/Execute and the ROLLBACK in one flight and waits once; a statement that reads an earlier one's rows waits for them");
    s.note(
        "caller SQL (EXPLAIN) adds its Parse, which must come after the timeouts, and its Close",
    );
    Ok(vec![s])
}

/// A TCP proxy in front of PostgreSQL that counts the client's flights.
struct FlightProxy {
    port: u16,
    flights: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FlightProxy {
    async fn start(dsn: &str) -> Result<FlightProxy> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let parsed = Dsn::parse(dsn)?;
        let host = match parsed.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => bail!("the bench database is not reached over TCP"),
        };
        let upstream = format!(
            "{host}:{}",
            parsed.config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let flights = std::sync::Arc::new(AtomicU64::new(0));
        let counter = flights.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // True once the server has answered since the client last sent.
                let answered = std::sync::Arc::new(AtomicBool::new(true));
                let (a1, a2, n) = (answered.clone(), answered, counter.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = cr.read(&mut buf).await {
                        if k == 0 || sw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        if a1.swap(false, Ordering::SeqCst) {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = sr.read(&mut buf).await {
                        if k == 0 || cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        a2.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        Ok(FlightProxy { port, flights })
    }

    fn flights(&self) -> u64 {
        self.flights.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn overhead_case(
    s: &mut Section,
    [uncached, cached]: [&Engine; 2],
    raw: &mut Raw,
    case: &Case,
) -> Result<()> {
    let statements = rendered(uncached, case.tool, &case.args)?;
    let label = |what: &str| format!("{} {what}", case.tool);
    if statements.is_empty() {
        let engine = time_calls(uncached, case).await?;
        s.timing(label("engine"), &engine, "a plugin: no SQL, not cached");
        return Ok(());
    }
    let prepared = raw.prepare_all(&statements).await?;
    // Interleaved, so that drift on a busy machine hits every variant alike.
    let [mut plain, mut protocol, mut engine, mut hit] = [(); 4].map(|()| vec![]);
    for i in 0..=case.runs {
        let timed = i > 0; // the first round warms connections and caches up
        time_into(&mut plain, timed, raw.prepare_query(&statements)).await?;
        time_into(&mut protocol, timed, raw.as_engine(&prepared, &statements)).await?;
        time_into(&mut engine, timed, call(uncached, case.tool, &case.args)).await?;
        time_into(&mut hit, timed, call(cached, case.tool, &case.args)).await?;
    }
    let med = |v: &[Duration]| Stats::of(v).median;
    s.timing(
        label("plain client"),
        &plain,
        format!("{} statement(s)", statements.len()),
    );
    s.timing(label("engine protocol"), &protocol, "");
    s.timing(
        label("engine, no cache"),
        &engine,
        format!(
            "{} over plain, {} over its protocol",
            signed(med(&engine), med(&plain)),
            signed(med(&engine), med(&protocol))
        ),
    );
    s.timing(label("engine, cache hit"), &hit, "");
    Ok(())
}

/// Awaits `work`, and records how long it took when `timed`.
async fn time_into<T>(
    samples: &mut Vec<Duration>,
    timed: bool,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let t = Instant::now();
    let out = work.await?;
    if timed {
        samples.push(t.elapsed());
    }
    Ok(out)
}

/// `runs` round trips of a raw client: a prepared `SELECT 1`, one at a time.
async fn select_one_samples(raw: &Raw, runs: usize) -> Result<Vec<Duration>> {
    let one = raw.client.prepare("SELECT 1").await?;
    sample(runs, async || {
        raw.client
            .query(&one, &[])
            .await
            .map(drop)
            .map_err(Into::into)
    })
    .await
}

/// One round trip: a prepared `SELECT 1`.
async fn round_trip(s: &mut Section, raw: &Raw, runs: usize) -> Result<()> {
    let samples = select_one_samples(raw, runs).await?;
    s.timing(
        "round trip (prepared SELECT 1)",
        &samples,
        "the unit of the rows below",
    );
    Ok(())
}

async fn time_calls(engine: &Engine, case: &Case) -> Result<Vec<Duration>> {
    // Warm up: connections, prepared-statement caches, the cache entry.
    for _ in 0..3 {
        call(engine, case.tool, &case.args).await?;
    }
    sample(case.runs, async || {
        call(engine, case.tool, &case.args).await.map(drop)
    })
    .await
}

async fn call(engine: &Engine, tool: &str, args: &Value) -> Result<ToolOutput> {
    engine
        .call(tool, args.clone(), &CancellationToken::new())
        .await
        .map_err(|e| anyhow!("{tool}: {}", e.text()))
}

/// The SQL a tool runs for `args` (its queries rendered as `lint` renders examples).
fn rendered(engine: &Engine, tool: &str, args: &Value) -> Result<Vec<Rendered>> {
    let registry = engine.registry();
    let t = registry
        .tools
        .get(tool)
        .ok_or_else(|| anyhow!("no tool {tool}"))?;
    if t.spec.plugin.is_some() {
        return Ok(vec![]);
    }
    let queries = t.render_example(args).map_err(|e| anyhow!("{tool}: {e}"))?;
    Ok(queries.into_iter().map(|(_, r)| r).collect())
}

/// Runs `f` `runs` times and returns how long each run took.
async fn sample(runs: usize, mut f: impl AsyncFnMut() -> Result<()>) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// A plain tokio-postgres connection, over the same TLS as the engine's pool.
struct Raw {
    client: tokio_postgres::Client,
    begin: tokio_postgres::Statement,
    set_timeout: tokio_postgres::Statement,
    rollback: tokio_postgres::Statement,
}

impl Raw {
    async fn connect(dsn: &str) -> Result<Raw> {
        let dsn = Dsn::parse(dsn)?;
        let (client, connection) = dsn.config.connect(dsn.tls()?).await?;
        tokio::spawn(connection);
        let begin = client.prepare("START TRANSACTION READ ONLY").await?;
        let set_timeout = client
            .prepare(
                "SELECT set_config('statement_timeout', $1, true), \
                 set_config('lock_timeout', $1, true)",
            )
            .await?;
        let rollback = client.prepare("ROLLBACK").await?;
        Ok(Raw {
            client,
            begin,
            set_timeout,
            rollback,
        })
    }

    /// What a plain client does: prepare and query each statement. Returns the row count.
    async fn prepare_query(&self, statements: &[Rendered]) -> Result<usize> {
        let mut rows = 0;
        for st in statements {
            let prepared = self.client.prepare(&st.sql).await?;
            let binds = binds(&st.binds);
            rows += self.client.query(&prepared, &params(&binds)).await?.len();
        }
        Ok(rows)
    }

    async fn prepare_all(&self, statements: &[Rendered]) -> Result<Vec<tokio_postgres::Statement>> {
        let mut out = Vec::new();
        for st in statements {
            out.push(self.client.prepare(&st.sql).await?);
        }
        Ok(out)
    }

    /// What `Db::read_only` sends for these statements (prepared once, like its cache): the
    /// transaction's start, the timeouts, every Bind/Execute and the ROLLBACK in one flight
    /// (requests leave in the order their futures are first polled), at most 1,001 rows each.
    async fn as_engine(
        &mut self,
        prepared: &[tokio_postgres::Statement],
        statements: &[Rendered],
    ) -> Result<usize> {
        use futures_util::TryStreamExt as _;
        let binds: Vec<Vec<Bind<'_>>> = statements.iter().map(|st| binds(&st.binds)).collect();
        let ms = "30000".to_string();
        let client = &self.client;
        let begin = client.execute(&self.begin, &[]);
        let values: [&(dyn ToSql + Sync); 1] = [&ms];
        let set = client.execute(&self.set_timeout, &values);
        let queries = futures_util::future::try_join_all(prepared.iter().zip(&binds).map(
            |(p, b)| async move {
                let stream = client.query_raw(p, params(b)).await?;
                let rows: Vec<_> = stream.try_collect().await?;
                Ok::<usize, tokio_postgres::Error>(rows.len().min(1001))
            },
        ));
        let rollback = client.execute(&self.rollback, &[]);
        let (_, _, counts, _) = tokio::try_join!(begin, set, queries, rollback)?;
        Ok(counts.iter().sum())
    }
}

fn binds(values: &[Value]) -> Vec<Bind<'_>> {
    values.iter().map(Bind).collect()
}

fn params<'a>(binds: &'a [Bind<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect()
}

// ---------------------------------------------------------------------------------------------
// 2. Startup, 3. memory, 4. hot reload: the binary over stdio

fn startup(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new("3. Startup: spawn to initialize response", TIMING);
    let (init, list) = time_startups(b, 10, &[])?;
    s.timing("to initialize", &init, "built-in tools");
    s.timing("to first tools/list", &list, "");
    for corpus in [Corpus::Small(1000), Corpus::Inspector(100)] {
        let dir = corpus.dir()?;
        let (init, list) = time_startups(b, 5, &["--tools-dirs", path_str(dir.path())?])?;
        s.timing(
            format!("to initialize, {corpus}"),
            &init,
            "compiled at startup",
        );
        s.timing(format!("to first tools/list, {corpus}"), &list, "");
    }
    s.note(format!("{SMALL}; {INSPECTOR}"));
    Ok(vec![s])
}

/// Spawns the server `runs` times; how long until initialize, and until the first tools/list.
fn time_startups(b: &Bench, runs: usize, args: &[&str]) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut init, mut list) = (vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        let mut server = b.server(args, &[])?;
        init.push(server.initialize()? - t);
        list.push(server.request("tools/list", json!({}))?.0 - t);
    }
    Ok((init, list))
}

/// The calls of the memory run, in rotation.
fn stdio_calls() -> [(&'static str, Value); 4] {
    [
        ("ping", json!({})),
        ("list_nodes", json!({})),
        ("list_shards", json!({"limit": 100})),
        ("citus_table_inspector", json!({"table": "orders"})),
    ]
}

fn memory(b: &Bench) -> Result<Vec<Section>> {
    let mut mem = Section::new(
        "4. Memory of the server process (caching off)",
        &["", "VmRSS", "VmHWM", "notes"],
    );
    let mut lat = Section::new("3b. tools/call latency over stdio (same run)", TIMING);
    let mut server = b.server(&[], &[("CITUS_MCP_ENABLE_CACHING", "false")])?;
    server.initialize()?;
    mem.row(server.memory_row("after initialize", "")?);
    server.request("tools/list", json!({}))?;
    mem.row(server.memory_row("after tools/list", "")?);
    let calls = stdio_calls();
    let mut samples: Vec<Vec<Duration>> = vec![vec![]; calls.len()];
    let checkpoints = [10, 100, 250, 500, 1000];
    for i in 1..=1000 {
        let (tool, args) = &calls[i % calls.len()];
        let t = Instant::now();
        let at = server.call(tool, args)?;
        samples[i % calls.len()].push(at - t);
        if checkpoints.contains(&i) {
            mem.row(server.memory_row(&format!("after {i} tools/call"), "")?);
        }
    }
    for ((tool, args), s) in calls.iter().zip(&samples) {
        lat.timing(format!("{tool} {args}"), s, "");
    }
    mem.note("calls rotate over ping, list_nodes, list_shards {limit: 100}, citus_table_inspector {table: orders}");
    lat.note("compare with section 1: the difference is JSON-RPC, rmcp and the pipes");
    Ok(vec![mem, lat])
}

fn hot_reload(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "5. Hot reload: new tool file to notifications/tools/list_changed",
        TIMING,
    );
    for (corpus, runs) in [
        (Corpus::Small(0), 10),
        (Corpus::Small(1000), 5),
        (Corpus::Inspector(100), 5),
    ] {
        let (samples, notes) = reload_latency(b, corpus, runs)?;
        s.timing(format!("new file, folder of {corpus}"), &samples, notes);
    }
    s.note("the watcher debounces for 200 ms; every change rescans and recompiles the folder");
    s.note(format!(
        "the new files are small tools; {SMALL}; {INSPECTOR}"
    ));
    Ok(vec![s])
}

/// Writes `runs` new tool files one by one into a watched folder of `existing` files.
fn reload_latency(b: &Bench, existing: Corpus, runs: usize) -> Result<(Vec<Duration>, String)> {
    let dir = existing.dir()?;
    let mut server = b.server(&["--tools-dirs", path_str(dir.path())?], &[])?;
    server.initialize()?;
    server.request("tools/list", json!({}))?;
    let (mut samples, mut missed, mut extra) = (vec![], 0, 0);
    for i in 0..runs {
        // Let the previous change settle; count notifications that arrive late.
        extra += server.count_notifications(LIST_CHANGED, Duration::from_millis(400));
        let name = format!("bench_reload_{i:02}");
        let t = Instant::now();
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            small_tool(&name, i),
        )?;
        match server.wait_notification(LIST_CHANGED, Duration::from_secs(10)) {
            Some(at) => samples.push(at - t),
            None => missed += 1,
        }
    }
    extra += server.count_notifications(LIST_CHANGED, Duration::from_millis(400));
    let listed = server.request("tools/list", json!({}))?.1["result"]["tools"]
        .as_array()
        .map_or(0, |t| {
            t.iter()
                .filter(|t| {
                    t["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("bench_reload"))
                })
                .count()
        });
    let notes =
        format!("{listed}/{runs} new tools listed, {missed} missed, {extra} extra notifications");
    Ok((samples, notes))
}

const LIST_CHANGED: &str = "notifications/tools/list_changed";

/// A running `citus-mcp` speaking newline-delimited JSON-RPC on its stdin and stdout.
struct Server {
    child: Child,
    stdin: ChildStdin,
    /// Lines of stdout, with the moment the reader thread got them (before any parsing:
    /// the client's own work is not the server's latency).
    lines: Receiver<(Instant, String)>,
    /// Notifications received while waiting for something else.
    pending: Vec<(Instant, Value)>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    fn spawn(bin: &Path, dsn: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.args(args).current_dir(std::env::temp_dir());
        for (k, _) in std::env::vars() {
            if k.starts_with("CITUS_MCP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", "/nonexistent")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env("CITUS_MCP_COORDINATOR_DSN", dsn)
            .env("CITUS_MCP_LOG_LEVEL", "warn")
            .envs(env.iter().copied());
        Server::start(cmd)
    }

    /// Starts any stdio MCP server (`peer.rs` runs another project's).
    fn start(mut cmd: Command) -> Result<Server> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().context("stderr")?, stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("stderr lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(Server {
            stdin: child.stdin.take().context("stdin")?,
            child,
            lines,
            pending: vec![],
            stderr,
            next_id: 1,
        })
    }

    /// initialize, then notifications/initialized; returns when the response arrived.
    fn initialize(&mut self) -> Result<Instant> {
        let params = json!({"protocolVersion": "2025-06-18", "capabilities": {},
                            "clientInfo": {"name": "citus-mcp-bench", "version": "0"}});
        let (at, _) = self.request("initialize", params)?;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(at)
    }

    fn send(&mut self, msg: &Value) -> Result<()> {
        let mut line = msg.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Sends a request and waits for its response: (when it arrived, the response).
    fn request(&mut self, method: &str, params: Value) -> Result<(Instant, Value)> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (at, v) = self.next(deadline).ok_or_else(|| {
                anyhow!(
                    "no answer to {method} within {TIMEOUT:?}; stderr:\n{}",
                    self.stderr.lock().expect("stderr lock")
                )
            })?;
            if v["id"] == json!(id) {
                if v.get("error").is_some() {
                    bail!("{method} failed: {}", v["error"]);
                }
                return Ok((at, v));
            }
            self.pending.push((at, v));
        }
    }

    /// tools/call; returns when the result arrived. A tool error is an error here.
    fn call(&mut self, tool: &str, args: &Value) -> Result<Instant> {
        let (at, v) = self.request("tools/call", json!({"name": tool, "arguments": args}))?;
        if v["result"]["isError"] == json!(true) {
            bail!("{tool} answered an error: {}", v["result"]["content"]);
        }
        Ok(at)
    }

    /// When a notification of this method arrived (one already received counts).
    fn wait_notification(&mut self, method: &str, timeout: Duration) -> Option<Instant> {
        if let Some(i) = self.pending.iter().position(|(_, v)| v["method"] == method) {
            return Some(self.pending.remove(i).0);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (at, v) = self.next(deadline)?;
            if v["method"] == method {
                return Some(at);
            }
            self.pending.push((at, v));
        }
    }

    /// How many notifications of this method arrive (or had arrived) within `window`.
    fn count_notifications(&mut self, method: &str, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        while let Some(line) = self.next(deadline) {
            self.pending.push(line);
        }
        let before = self.pending.len();
        self.pending.retain(|(_, v)| v["method"] != method);
        before - self.pending.len()
    }

    fn next(&mut self, deadline: Instant) -> Option<(Instant, Value)> {
        let (at, line) = self.next_line(deadline)?;
        Some((
            at,
            serde_json::from_str(&line).unwrap_or(Value::String(line)),
        ))
    }

    fn next_line(&mut self, deadline: Instant) -> Option<(Instant, String)> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    /// The next line's id and whether it is a failure, read without building the rest
    /// (a 1,000-row answer would cost the client as much as the server).
    fn next_answer(&mut self, deadline: Instant) -> Option<Answer> {
        let (_, line) = self.next_line(deadline)?;
        Some(serde_json::from_str(&line).unwrap_or_default())
    }

    /// A `/proc/<pid>/status` value in kB (VmRSS, VmHWM).
    fn status_kb(&self, key: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let value = read_proc_field(&path, key).ok_or_else(|| anyhow!("no {key} in {path}"))?;
        let kb = value.trim_end_matches("kB").trim();
        kb.parse().with_context(|| format!("{key}: {value}"))
    }

    fn memory_row(&self, label: &str, note: &str) -> Result<Vec<String>> {
        Ok(vec![
            label.to_string(),
            fmt_kb(self.status_kb("VmRSS")?),
            fmt_kb(self.status_kb("VmHWM")?),
            note.to_string(),
        ])
    }
}

/// What [`Server::next_answer`] reads of a line.
#[derive(Default, serde::Deserialize)]
struct Answer {
    id: Option<u64>,
    error: Option<serde::de::IgnoredAny>,
    result: Option<AnswerResult>,
}

#[derive(Default, serde::Deserialize)]
struct AnswerResult {
    #[serde(rename = "isError", default)]
    is_error: bool,
}

impl Answer {
    fn failed(&self) -> bool {
        self.error.is_some() || self.result.as_ref().is_some_and(|r| r.is_error)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Lint

fn lint(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "6. citus-mcp lint <dir> (static) for many tool files",
        GROWTH,
    );
    let small = [1, 10, 100, 1000].map(Corpus::Small);
    let inspector = [1, 10, 100, 1000].map(Corpus::Inspector);
    for corpora in [small, inspector] {
        lint_series(&mut s, &b.bin, &corpora)?;
    }
    s.note("per unit = (time - time for 1 file) / (files - 1): the cost of one more file");
    s.note("growth = how the median grew against the line above, for that many times more files");
    s.note(format!("{SMALL}; {INSPECTOR}"));
    Ok(vec![s])
}

/// Lints folders of growing size; one row each.
fn lint_series(s: &mut Section, bin: &Path, corpora: &[Corpus]) -> Result<()> {
    let (mut previous, mut one_file) = (None, Duration::ZERO);
    for corpus in corpora {
        let files = corpus.files();
        let runs = if files >= 1000 { 2 } else { 5 };
        let dir = corpus.dir()?;
        let mut note = String::new();
        let samples = (0..runs)
            .map(|_| time_lint(bin, dir.path(), &mut note))
            .collect::<Result<Vec<_>>>()?;
        let median = Stats::of(&samples).median;
        if files == 1 {
            one_file = median;
        }
        let per_file = if files > 1 {
            fmt_duration(median.saturating_sub(one_file) / (files as u32 - 1))
        } else {
            "-".into()
        };
        s.growth(
            corpus.to_string(),
            &samples,
            per_file,
            previous,
            files,
            note,
        );
        previous = Some((files, median));
    }
    Ok(())
}

fn time_lint(bin: &Path, dir: &Path, note: &mut String) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("lint")
        .arg(dir)
        .env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        *note = format!("exit {}: {}", out.status, text.lines().next().unwrap_or(""));
    }
    Ok(took)
}

/// A folder of valid tool files, all variations of one tool.
#[derive(Clone, Copy)]
enum Corpus {
    /// Small generated tools (one query, two examples).
    Small(usize),
    /// Copies of the built-in citus_table_inspector (four queries, seven examples).
    Inspector(usize),
}

const SMALL: &str = "small = a generated one-query tool (1 kB)";
const INSPECTOR: &str = "inspector = a copy of the built-in citus_table_inspector (13 kB)";

impl Corpus {
    fn files(self) -> usize {
        match self {
            Corpus::Small(n) | Corpus::Inspector(n) => n,
        }
    }

    /// A temporary folder with the files.
    fn dir(self) -> Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("citus-mcp-bench-")
            .tempdir()?;
        for i in 0..self.files() {
            let name = format!("bench_tool_{i:04}");
            let text = match self {
                Corpus::Small(_) => small_tool(&name, i),
                Corpus::Inspector(_) => inspector_copy(&name),
            };
            std::fs::write(dir.path().join(format!("{name}.yaml")), text)?;
        }
        Ok(dir)
    }
}

impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corpus::Small(n) => write!(f, "{n} small {}", plural(*n, "file")),
            Corpus::Inspector(n) => write!(f, "{n} inspector {}", plural(*n, "file")),
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn small_tool(name: &str, variant: usize) -> String {
    TOOL_TEMPLATE
        .replace("@NAME@", name)
        .replace("@DEFAULT@", &(1 + variant % 100).to_string())
        .replace("@VARIANT@", &variant.to_string())
}

/// citus_table_inspector under another name, without its resources (URIs must be unique).
fn inspector_copy(name: &str) -> String {
    const TEXT: &str = include_str!("../../tools.d/citus_table_inspector.yaml");
    let body = TEXT.split("\nresources:").next().unwrap_or(TEXT);
    body.replacen("name: citus_table_inspector", &format!("name: {name}"), 1)
}

const TOOL_TEMPLATE: &str = r#"name: @NAME@
title: Biggest shards @VARIANT@
description: The largest shard placements of the cluster, with their node (variation @VARIANT@, generated by the benchmark).
safety: read_only
input_schema:
  type: object
  additionalProperties: false
  properties:
    table: {type: string, description: "Only this table (schema-qualified or on the search_path)"}
    limit: {type: integer, minimum: 1, maximum: 100, default: @DEFAULT@}
limits: {max_rows: 100, timeout_ms: 10000}
cache_ttl_s: 30
requires: {citus: ">=11.0"}
queries:
  - name: shards
    sql: |
      SELECT shardid, table_name::text AS table_name, nodename, nodeport,
             shard_size + @VARIANT@ AS shard_size
        FROM citus_shards
       {% if table is defined %}WHERE table_name = to_regclass({{ table }}){% endif %}
       ORDER BY shard_size DESC
       LIMIT {{ limit }}
examples:
  - args: {}
    expect: {min_rows: {shards: 1}}
  - args: {table: orders, limit: 3}
"#;

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("not UTF-8: {}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// 6. Bytes per row

fn bytes_per_row(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "7. Bytes per result row: structuredContent (JSON) vs text",
        &[
            "",
            "rows",
            "JSON",
            "JSON/row",
            "text",
            "text/row",
            "text/JSON",
        ],
    );
    let engine = b.engine(no_cache(), &[])?;
    for (tool, key) in [
        ("list_shards", "shards"),
        ("citus_list_distributed_tables", "tables"),
        ("list_nodes", "nodes"),
    ] {
        let (full, one) = b.rt.block_on(async {
            let full = call(&engine, tool, &json!({"limit": 1000})).await?;
            let one = call(&engine, tool, &json!({"limit": 1})).await?;
            Ok::<_, anyhow::Error>((Size::of(&full, key), Size::of(&one, key)))
        })?;
        s.row(full.row(tool, &one));
    }
    s.note("per row = (bytes of all rows - bytes of 1 row) / (rows - 1): what one more row costs");
    s.note("roughly 4 bytes make a token; the text is what a model reads");
    Ok(vec![s])
}

/// The size of one result.
struct Size {
    rows: usize,
    json: usize,
    text: usize,
}

impl Size {
    fn of(out: &ToolOutput, key: &str) -> Size {
        Size {
            rows: out.structured[key].as_array().map_or(0, Vec::len),
            json: out.structured.to_string().len(),
            text: out.text.len(),
        }
    }

    fn row(&self, tool: &str, one: &Size) -> Vec<String> {
        let per_row = |all: usize, first: usize| {
            let n = self.rows.saturating_sub(one.rows).max(1);
            format!("{} B", all.saturating_sub(first) / n)
        };
        vec![
            tool.to_string(),
            self.rows.to_string(),
            fmt_bytes(self.json),
            per_row(self.json, one.json),
            fmt_bytes(self.text),
            per_row(self.text, one.text),
            format!(
                "{:.0} %",
                100.0 * self.text as f64 / self.json.max(1) as f64
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Growth with result rows

const SERIES_TOOL: &str = "name: series
description: n generated rows with an md5 each, for the benchmark.
safety: read_only
input_schema:
  type: object
  additionalProperties: false
  required: [n]
  properties: {n: {type: integer, minimum: 1, maximum: 1000000}}
queries:
  - name: rows
    sql: SELECT g, md5(g::text) FROM generate_series(1, {{ n }}::int) g
examples:
  - args: {n: 3}
";

fn rows_growth(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "8. Growth with result rows: SELECT g, md5(g::text) FROM generate_series(1, n)",
        GROWTH,
    );
    let roomy = Settings {
        max_rows: 20_000,
        max_bytes: 100_000_000,
        ..no_cache()
    };
    let sizes = [(10, 300), (100, 200), (1000, 50), (10_000, 10)];
    b.rt.block_on(async {
        let engine = b.engine(roomy, &[("series", SERIES_TOOL)])?;
        let raw = Raw::connect(&b.dsn).await?;
        let (mut prev_engine, mut prev_plain) = (None, None);
        for (n, runs) in sizes {
            let case = Case {
                tool: "series",
                args: json!({"n": n}),
                runs,
            };
            let statements = rendered(&engine, "series", &case.args)?;
            let (mut plain, mut calls) = (vec![], vec![]);
            for i in 0..=runs {
                time_into(&mut plain, i > 0, raw.prepare_query(&statements)).await?;
                time_into(&mut calls, i > 0, call(&engine, "series", &case.args)).await?;
            }
            let bytes = Size::of(&call(&engine, "series", &case.args).await?, "rows");
            let note = format!(
                "JSON {} B/row, text {} B/row",
                bytes.json / n,
                bytes.text / n
            );
            prev_plain = Some(s.per_row(
                format!("plain client, n = {n}"),
                &plain,
                prev_plain,
                n,
                String::new(),
            ));
            prev_engine = Some(s.per_row(format!("engine, n = {n}"), &calls, prev_engine, n, note));
        }
        truncated_case(&mut s, b).await
    })?;
    s.note("per unit = median / n; growth = how the median grew for 10 times more rows");
    Ok(vec![s])
}

/// 10,000 rows under the default max_bytes: the engine cuts the result to fit.
async fn truncated_case(s: &mut Section, b: &Bench) -> Result<()> {
    let settings = Settings {
        max_rows: 20_000,
        ..no_cache()
    };
    let engine = b.engine(settings, &[("series", SERIES_TOOL)])?;
    let case = Case {
        tool: "series",
        args: json!({"n": 10_000}),
        runs: 10,
    };
    let calls = time_calls(&engine, &case).await?;
    let out = call(&engine, "series", &case.args).await?;
    let kept = Size::of(&out, "rows");
    let note = format!(
        "max_bytes {}: {} rows kept, truncated={}",
        Settings::default().max_bytes,
        kept.rows,
        out.structured["truncated"]
    );
    s.per_row(
        "engine, n = 10000, cut to fit".to_string(),
        &calls,
        None,
        10_000,
        note,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

const TIMING: &[&str] = &["", "n", "median", "p95", "notes"];
const GROWTH: &[&str] = &["", "n", "median", "p95", "per unit", "growth", "notes"];

struct Stats {
    median: Duration,
    p95: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut v = samples.to_vec();
        v.sort();
        let n = v.len();
        if n == 0 {
            return Stats {
                median: Duration::ZERO,
                p95: Duration::ZERO,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Stats {
            median,
            p95: v[(n * 95).div_ceil(100) - 1],
        }
    }
}

struct Report {
    header: Vec<String>,
    sections: Vec<Section>,
}

/// One table of the report.
struct Section {
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
    took: Duration,
}

impl Section {
    fn new(title: impl Into<String>, columns: &[&str]) -> Section {
        Section {
            title: title.into(),
            columns: columns.iter().map(ToString::to_string).collect(),
            rows: vec![],
            notes: vec![],
            took: Duration::ZERO,
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A row of a [`TIMING`] table.
    fn timing(&mut self, label: impl Into<String>, samples: &[Duration], note: impl Into<String>) {
        let st = Stats::of(samples);
        self.row(vec![
            label.into(),
            samples.len().to_string(),
            fmt_duration(st.median),
            fmt_duration(st.p95),
            note.into(),
        ]);
    }

    /// A row of a [`GROWTH`] table; `previous` is the (size, median) of the line before.
    fn growth(
        &mut self,
        label: String,
        samples: &[Duration],
        per_unit: String,
        previous: Option<(usize, Duration)>,
        size: usize,
        note: String,
    ) {
        let st = Stats::of(samples);
        let growth = previous.map_or_else(
            || "-".to_string(),
            |(prev_size, prev)| {
                format!(
                    "x{:.1} for x{}",
                    st.median.as_secs_f64() / prev.as_secs_f64().max(1e-9),
                    size / prev_size.max(1)
                )
            },
        );
        self.row(vec![
            label,
            samples.len().to_string(),
            fmt_duration(st.median),
            fmt_duration(st.p95),
            per_unit,
            growth,
            note,
        ]);
    }

    /// A growth row whose unit is one result row; returns (n, median) for the next line.
    fn per_row(
        &mut self,
        label: String,
        samples: &[Duration],
        previous: Option<(usize, Duration)>,
        n: usize,
        note: String,
    ) -> (usize, Duration) {
        let median = Stats::of(samples).median;
        let per_unit = fmt_duration(median / n as u32);
        self.growth(label, samples, per_unit, previous, n, note);
        (n, median)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.header {
            writeln!(f, "{line}")?;
        }
        for s in &self.sections {
            writeln!(f)?;
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.took > Duration::ZERO {
            writeln!(f, "{} [{}]", self.title, fmt_duration(self.took))?;
        } else {
            writeln!(f, "{}", self.title)?;
        }
        let table: Vec<&Vec<String>> = std::iter::once(&self.columns).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|c| {
                table
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let last = self.columns.len().saturating_sub(1);
        for r in &table {
            let mut line = String::from("  ");
            for (c, w) in widths.iter().enumerate() {
                let cell = r.get(c).map_or("", String::as_str);
                let pad = w.saturating_sub(cell.chars().count());
                // Labels and notes align left, numbers right.
                if c == 0 || (c == last && self.columns[c] == "notes") {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                line.push_str("  ");
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        for n in &self.notes {
            writeln!(f, "  - {n}")?;
        }
        Ok(())
    }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `a - b` with its sign.
fn signed(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", fmt_duration(a - b))
    } else {
        format!("-{}", fmt_duration(b - a))
    }
}

fn fmt_kb(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn fmt_bytes(b: usize) -> String {
    if b < 10_000 {
        format!("{b} B")
    } else {
        format!("{:.1} kB", b as f64 / 1000.0)
    }
}
