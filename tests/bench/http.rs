//! The `http` section: tools/call over Streamable HTTP beside the same calls over stdio.
//!
//! One release server with `serve --http 127.0.0.1:0` (caching off), driven over loopback
//! with a keep-alive HTTP/1.1 client: the latency of sequential calls in a legacy session
//! and as 2026-07-28 requests without a session, next to a stdio server doing the same
//! calls; then calls per second with 1, 8 and 64 concurrent clients. It reports; it never
//! asserts a timing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::{Bench, Section, TIMING, fmt_duration};

/// Sequential calls per tool and transport.
const RUNS: usize = 200;
/// Calls per throughput row, split over its clients.
const THROUGHPUT_CALLS: usize = 2048;

/// The calls compared: no database, one statement, several statements.
fn calls() -> [(&'static str, Value); 3] {
    [
        ("ping", json!({})),
        ("list_nodes", json!({})),
        ("citus_table_inspector", json!({"table": "orders"})),
    ]
}

pub fn http(b: &Bench) -> Result<Vec<Section>> {
    let mut lat = Section::new(
        "9. tools/call over Streamable HTTP beside stdio (caching off)",
        TIMING,
    );
    let mut rate = Section::new(
        "9b. Calls per second over HTTP, concurrent clients on loopback (caching off)",
        &["", "clients", "calls", "wall", "calls/s", "notes"],
    );
    let no_cache = [("CITUS_MCP_ENABLE_CACHING", "false")];

    // stdio: the same calls, sequential, on a server of its own.
    let mut stdio = b.server(&[], &no_cache)?;
    stdio.initialize()?;
    let mut stdio_medians = Vec::new();
    for (tool, args) in calls() {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let at = stdio.call(tool, &args)?;
            samples.push(at - t);
        }
        stdio_medians.push(super::Stats::of(&samples).median);
        lat.timing(format!("{tool} stdio"), &samples, "");
    }
    drop(stdio);

    let server = b.server(
        &["serve", "--http", "127.0.0.1:0"],
        &[no_cache[0], ("CITUS_MCP_LOG_LEVEL", "info")],
    )?;
    let port = port_of(&server)?;
    let ep = Endpoint::new(port);
    b.rt.block_on(async {
        let session = ep.initialize().await?;
        for ((tool, args), stdio_median) in calls().into_iter().zip(stdio_medians) {
            for model in [Model::Session(session.clone()), Model::Stateless] {
                let mut samples = Vec::with_capacity(RUNS);
                for i in 0..RUNS {
                    let t = Instant::now();
                    ep.call(&model, i as u64, tool, &args).await?;
                    samples.push(t.elapsed());
                }
                let median = super::Stats::of(&samples).median;
                lat.timing(
                    format!("{tool} http {}", model.label()),
                    &samples,
                    format!("{} over stdio", super::signed(median, stdio_median)),
                );
            }
        }
        for (tool, args) in [calls()[0].clone(), calls()[1].clone()] {
            for clients in [1, 8, 64] {
                let (wall, n) = throughput(&ep, clients, tool, &args).await?;
                rate.row(vec![
                    tool.to_string(),
                    clients.to_string(),
                    n.to_string(),
                    fmt_duration(wall),
                    format!("{:.0}", n as f64 / wall.as_secs_f64()),
                    if clients == 1 {
                        "one client, one call at a time".into()
                    } else {
                        String::new()
                    },
                ]);
            }
        }
        anyhow::Ok(())
    })?;
    lat.note(
        "http: one keep-alive HTTP/1.1 connection; every answer is an SSE body, read to its end",
    );
    lat.note(
        "session: a 2025-06-18 session (Mcp-Session-Id); 2026: no session, _meta on every request",
    );
    rate.note("half the clients hold a 2025 session, half send 2026-07-28 requests; each call waits for its answer");
    rate.note(format!(
        "the server's pool has 8 connections; {THROUGHPUT_CALLS} calls per row, split over the clients"
    ));
    Ok(vec![lat, rate])
}

/// The port the server logged (`serving MCP on http://127.0.0.1:PORT/mcp`).
fn port_of(server: &super::Server) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = server.stderr.lock().expect("stderr lock").clone();
        if let Some(rest) = log.split("serving MCP on http://127.0.0.1:").nth(1) {
            return rest
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .context("the log names no port");
        }
        if Instant::now() > deadline {
            bail!("the HTTP server did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a call travels: in a legacy session, or as a 2026-07-28 request.
#[derive(Clone)]
enum Model {
    Session(String),
    Stateless,
}

impl Model {
    fn label(&self) -> &'static str {
        match self {
            Model::Session(_) => "session",
            Model::Stateless => "2026",
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Endpoint {
    fn new(port: u16) -> Endpoint {
        Endpoint {
            url: format!("http://127.0.0.1:{port}/mcp"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// POSTs one message; the headers of the answer and its body.
    async fn post(&self, headers: &[(&str, &str)], body: &Value) -> Result<(String, String)> {
        let mut req = hyper::Request::builder()
            .method("POST")
            .uri(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            bail!("HTTP {status}: {text}");
        }
        Ok((session, text))
    }

    async fn initialize(&self) -> Result<String> {
        let (session, _) = self
            .post(
                &[],
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "citus-mcp-bench", "version": "0"}}}),
            )
            .await?;
        if session.is_empty() {
            bail!("no session id");
        }
        self.post(
            &[
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await?;
        Ok(session)
    }

    /// One tools/call, to its answer; a tool error is an error here.
    async fn call(&self, model: &Model, id: u64, tool: &str, args: &Value) -> Result<()> {
        let (headers, body) = match model {
            Model::Session(s) => (
                vec![
                    ("mcp-session-id", s.as_str()),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": tool, "arguments": args}}),
            ),
            Model::Stateless => (
                vec![
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", tool),
                ],
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                              "io.modelcontextprotocol/clientCapabilities": {}},
                    "name": tool, "arguments": args}}),
            ),
        };
        let (_, text) = self.post(&headers, &body).await?;
        let answer = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .chain(std::iter::once(text.as_str()))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m["id"] == json!(id))
            .with_context(|| format!("no answer to call {id}: {text}"))?;
        if answer["result"]["isError"] != json!(false) {
            bail!("{tool} failed: {answer}");
        }
        Ok(())
    }
}

/// `clients` clients share [`THROUGHPUT_CALLS`] calls; the wall time and the calls made.
async fn throughput(
    ep: &Endpoint,
    clients: usize,
    tool: &'static str,
    args: &Value,
) -> Result<(Duration, usize)> {
    let per_client = THROUGHPUT_CALLS / clients;
    // Sessions are opened before the clock starts.
    let mut models = Vec::with_capacity(clients);
    for c in 0..clients {
        models.push(if c % 2 == 0 {
            Model::Session(ep.initialize().await?)
        } else {
            Model::Stateless
        });
    }
    let started = Instant::now();
    let tasks: Vec<_> = models
        .into_iter()
        .map(|model| {
            let (ep, args) = (ep.clone(), args.clone());
            tokio::spawn(async move {
                for i in 0..per_client {
                    ep.call(&model, i as u64, tool, &args).await?;
                }
                anyhow::Ok(per_client)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok((started.elapsed(), done))
}
