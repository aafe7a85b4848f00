//! End to end over Streamable HTTP: the built binary with `--http 127.0.0.1:0`, driven
//! with raw HTTP/1.1 requests as a remote MCP client sends them.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use libtest_mimic::Trial;
use serde_json::{Value, json};

use crate::e2e::{EXEC_TOOL, EXTRA_TOOL, bin, slow_tool};
use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "http::legacy_session_calls_and_gets_list_changed_on_its_get_stream",
            legacy_session,
        ),
        trial(
            ctx,
            "http::protocol_2026_07_28_and_stateless_mode_need_no_session",
            stateless,
        ),
        trial(
            ctx,
            "http::tokens_401_without_403_outside_the_grant_name_in_audit_log",
            tokens,
        ),
        trial(
            ctx,
            "http::a_resource_is_read_within_its_tools_grant",
            resource_grants,
        ),
        trial(
            ctx,
            "http::bad_origin_host_and_oversized_requests_are_refused",
            refusals,
        ),
        trial(
            ctx,
            "http::non_loopback_without_tokens_does_not_start",
            non_loopback,
        ),
        trial(
            ctx,
            "http::health_readiness_and_metrics_count_a_call",
            health_and_metrics,
        ),
        trial(
            ctx,
            "http::load_64_concurrent_clients_lose_no_response",
            load,
        ),
        trial(
            ctx,
            "http::a_client_that_goes_away_mid_call_leaves_nothing_running",
            vanished_clients,
        ),
        trial(
            ctx,
            "http::sigterm_finishes_calls_in_flight_then_cancels_the_rest",
            graceful_shutdown,
        ),
        trial(
            ctx,
            "http::silent_slow_and_idle_connections_are_closed_and_keep_no_one_out",
            slow_connections,
        ),
        trial(
            ctx,
            "http::a_caller_over_its_session_limit_loses_only_its_own_oldest",
            session_limit,
        ),
        trial(
            ctx,
            "http::a_caller_runs_at_most_max_calls_per_caller_and_others_still_get_in",
            call_limit,
        ),
        trial(
            ctx,
            "http::one_listen_stream_too_many_ends_the_callers_oldest",
            listen_limit,
        ),
    ]
}

/// A `citus-mcp serve --http 127.0.0.1:0` process and its log; requests go through
/// its [`Endpoint`].
pub(crate) struct HttpServer {
    child: Child,
    log: Arc<Mutex<String>>,
    pub(crate) ep: Endpoint,
}

impl std::ops::Deref for HttpServer {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

/// Where requests go: cheap to clone into a task.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) port: u16,
    /// The MCP endpoint's path: `/mcp`, or `/mcp/{cluster}`.
    path: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What a POST or GET answered: status, headers, and the JSON-RPC messages of the body
/// (an SSE stream's `data:` lines, or a JSON body).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) messages: Vec<Value>,
    pub(crate) text: String,
}

impl Answer {
    /// The one response message (not a notification).
    pub(crate) fn response(&self) -> &Value {
        self.messages
            .iter()
            .find(|m| m.get("id").is_some() && m.get("method").is_none())
            .unwrap_or_else(|| panic!("no response in {} {}", self.status, self.text))
    }

    /// Fails the test, showing the answer, unless it is a tool result that is not an error.
    #[track_caller]
    pub(crate) fn assert_ok(&self) {
        assert_eq!(self.response()["result"]["isError"], false, "{}", self.text);
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");

pub(crate) fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

impl HttpServer {
    pub(crate) fn start(ctx: &Ctx, args: &[&str], env: &[(&str, &str)]) -> HttpServer {
        let mut cmd = bin();
        cmd.env("CITUS_MCP_COORDINATOR_DSN", ctx.dsn());
        HttpServer::launch(cmd, args, env)
    }

    /// `citus-mcp serve --http 127.0.0.1:0 ARGS` with `cmd`'s environment and `env`;
    /// returns once the log names the port.
    pub(crate) fn launch(
        mut cmd: std::process::Command,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> HttpServer {
        cmd.args(["serve", "--http", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the server starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = log.lock().unwrap().clone();
            if let Some(rest) = text
                .split("serving MCP on http://127.0.0.1:")
                .nth(1)
                .or_else(|| text.split("serving MCP on https://127.0.0.1:").nth(1))
            {
                break rest
                    .split('/')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("the log names the port");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the server never listened:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        HttpServer {
            child,
            log,
            ep: Endpoint {
                port,
                path: "/mcp".into(),
                client: Client::builder(TokioExecutor::new()).build_http(),
            },
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `needle`, or as it is after 10 s: what the server logs from
    /// a background task (a JWKS fetch) can come after the answer a test already has.
    pub(crate) fn log_with(&self, needle: &str) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() > until {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub(crate) fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "SIGTERM was not delivered");
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Endpoint {
    /// The same server, its MCP endpoint at `path` (a cluster's `/mcp/{name}`).
    pub(crate) fn at(&self, path: &str) -> Endpoint {
        Endpoint {
            path: path.into(),
            ..self.clone()
        }
    }

    /// The MCP endpoint's path.
    pub(crate) fn mcp_path(&self) -> &str {
        &self.path
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("no answer: {e}"))
    }

    /// A request whose failure (a server on its way out) is an answer too.
    pub(crate) async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let mut req = hyper::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Answer {
            status,
            headers,
            messages: messages(&text),
            text,
        })
    }

    pub(crate) async fn post(&self, headers: &[(&str, &str)], body: &Value) -> Answer {
        let mut all = vec![("content-type", "application/json"), ACCEPT];
        all.extend_from_slice(headers);
        self.send("POST", &self.path, &all, body.to_string().into_bytes())
            .await
    }

    /// A legacy session's GET stream (where its notifications go), open.
    pub(crate) async fn open_stream(&self, session: &str) -> hyper::body::Incoming {
        let get = hyper::Request::builder()
            .method("GET")
            .uri(self.url(&self.path))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(get).await.expect("the stream opens");
        assert_eq!(resp.status(), 200);
        resp.into_body()
    }

    /// A legacy session: initialize and initialized; returns its id.
    pub(crate) async fn initialize(&self, headers: &[(&str, &str)]) -> String {
        let init = self
            .post(
                headers,
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "citus-mcp-tests", "version": "0"}}}),
            )
            .await;
        assert_eq!(init.status, 200, "{}", init.text);
        assert_eq!(
            init.response()["result"]["protocolVersion"],
            "2025-06-18",
            "{}",
            init.text
        );
        let session = init
            .header("mcp-session-id")
            .expect("a session id")
            .to_string();
        let mut h = headers.to_vec();
        h.push(("mcp-session-id", &session));
        h.push(("mcp-protocol-version", "2025-06-18"));
        let done = self
            .post(
                &h,
                &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(done.status, 202, "{}", done.text);
        session
    }

    /// tools/call in a legacy session.
    pub(crate) async fn call(
        &self,
        session: &str,
        headers: &[(&str, &str)],
        id: u64,
        tool: &str,
        args: Value,
    ) -> Answer {
        let mut h = headers.to_vec();
        h.push(("mcp-session-id", session));
        h.push(("mcp-protocol-version", "2025-06-18"));
        self.post(
            &h,
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}),
        )
        .await
    }

    /// tools/call as a 2026-07-28 request: no session, the method and name in headers.
    pub(crate) async fn call_2026(
        &self,
        headers: &[(&str, &str)],
        id: u64,
        tool: &str,
        args: Value,
    ) -> Answer {
        let mut h = headers.to_vec();
        h.extend([
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ]);
        self.post(
            &h,
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"_meta": meta_2026(), "name": tool, "arguments": args}}),
        )
        .await
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON-RPC messages of a body: SSE `data:` lines, or the body itself.
fn messages(text: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return vec![v];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

pub(crate) fn structured(a: &Answer) -> &Value {
    &a.response()["result"]["structuredContent"]
}

/// A client that drops its POST while the call runs leaves no statement behind over the
/// 2026-07-28 protocol and in stateless mode, where a closed stream is the cancellation.
/// A legacy (2025-06-18) session's request outlives its connection, as that protocol asks
/// (the client may resume the stream with `Last-Event-ID`), until the client cancels it or
/// ends its session.
fn vanished_clients(ctx: &Ctx) {
    let marker = "http_vanish_marker";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.yaml"), slow_tool("slow", marker, 120)).unwrap();
    let wait_for = |want: u64, what: &str| {
        ctx.wait_running(marker, |n| n == want, Duration::from_secs(10), what);
    };
    let tools = dir.path().to_str().unwrap();
    for (mode, stateless) in [
        ("a legacy session", false),
        ("the 2026-07-28 protocol", false),
        ("stateless mode", true),
    ] {
        let mut args = vec!["--tools-dirs", tools];
        if stateless {
            args.push("--http-stateless");
        }
        let s = HttpServer::start(ctx, &args, &[]);
        let ep = s.ep.clone();
        let session = match mode {
            "a legacy session" => Some(ctx.rt.block_on(s.initialize(&[]))),
            _ => None,
        };
        let sent = session.clone();
        let call = ctx.rt.spawn(async move {
            match (sent, mode) {
                (Some(session), _) => ep.call(&session, &[], 7, "slow", json!({})).await,
                (None, "stateless mode") => {
                    ep.post(
                        &[("mcp-protocol-version", "2025-06-18")],
                        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}),
                    )
                    .await
                }
                (None, _) => ep.call_2026(&[], 7, "slow", json!({})).await,
            }
        });
        wait_for(1, &format!("{mode}: the slow query never started"));
        // The client goes away: its request, connection and all.
        call.abort();
        if let Some(session) = &session {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(
                ctx.running(marker),
                1,
                "{mode}: a lost connection is not a cancel"
            );
            let bye = ctx.rt.block_on(s.send(
                "DELETE",
                s.mcp_path(),
                &[
                    ("mcp-session-id", session),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
                vec![],
            ));
            assert!(
                bye.status < 300,
                "{mode}: DELETE: {} {}",
                bye.status,
                bye.text
            );
        }
        wait_for(
            0,
            &format!("{mode}: the query kept running after its client went away"),
        );
        let r = ctx.rt.block_on(s.call_2026(&[], 8, "ping", json!({})));
        assert_eq!(
            r.response()["result"]["isError"],
            false,
            "{mode}: {}",
            r.text
        );
    }
}

fn legacy_session(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let s = HttpServer::start(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
    ctx.rt.block_on(async {
        let session = s.initialize(&[]).await;
        let r = s
            .call(&session, &[], 1, "ping", json!({"message": "over http"}))
            .await;
        assert_eq!(structured(&r)["message"], "over http", "{}", r.text);
        let r = s.call(&session, &[], 2, "list_nodes", json!({})).await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);

        // The session's GET stream carries list_changed after a hot reload.
        let get = hyper::Request::builder()
            .method("GET")
            .uri(s.url("/mcp"))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = s.client.request(get).await.expect("the stream opens");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        std::fs::write(dir.path().join("hello.yaml"), EXTRA_TOOL).unwrap();
        let mut seen = String::new();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
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
        .await;
        assert_eq!(found, Ok(true), "no list_changed on the GET stream: {seen}");
        let r = s.call(&session, &[], 3, "hello", json!({})).await;
        assert_eq!(structured(&r)["greeting"], "hello", "{}", r.text);
    });
}

fn stateless(ctx: &Ctx) {
    // 2026-07-28 requests need no session, in the default mode too.
    let s = HttpServer::start(ctx, &[], &[]);
    ctx.rt.block_on(async {
        let r = s
            .call_2026(&[], 1, "ping", json!({"message": "2026"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(structured(&r)["message"], "2026", "{}", r.text);
        assert!(r.header("mcp-session-id").is_none());
    });
    drop(s);

    // http.stateless: a 2025 client initializes and then calls without a session, as it
    // would through a round-robin balancer to another replica.
    let s = HttpServer::start(ctx, &["--http-stateless"], &[]);
    ctx.rt.block_on(async {
        let init = s
            .post(
                &[],
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "citus-mcp-tests", "version": "0"}}}),
            )
            .await;
        assert_eq!(init.status, 200, "{}", init.text);
        assert!(init.header("mcp-session-id").is_none(), "stateless mode issued a session");
        let r = s
            .post(
                &[("mcp-protocol-version", "2025-06-18")],
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ping", "arguments": {}}}),
            )
            .await;
        assert_eq!(structured(&r)["message"], "pong", "{}", r.text);
        let r = s.call_2026(&[], 2, "list_nodes", json!({})).await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
    });
}

const ALICE: &str = "alice-token-7f3a-never-print";
const BOB: &str = "bob-token-c91e-never-print";
const APPROVAL_SECRET: &str = "http-approval-secret-never-print";

fn tokens(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dangerous.yaml"), EXEC_TOOL).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "http:\n  tokens:\n    - name: alice\n      sha256: {}\n      classes: [read_only, plan]\n  tokens_file: {}\n",
            citus_mcp::httpd::auth::hash_hex(ALICE),
            dir.path().join("tokens.yaml").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!(
            "- name: bob\n  sha256: {}\n  tools: [ping, citus_request_approval_token]\n",
            citus_mcp::httpd::auth::hash_hex(BOB)
        ),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let s = HttpServer::start(
        ctx,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tools-dirs",
            d,
            "--mode",
            "admin",
            "--allow-execute",
            "--allow-self-issue",
            "--approval-ledger-path",
            dir.path().join("nonces").to_str().unwrap(),
            "--approval-audit-log",
            audit.to_str().unwrap(),
        ],
        &[("CITUS_MCP_APPROVAL_SECRET", APPROVAL_SECRET)],
    );
    let alice = format!("Bearer {ALICE}");
    let bob = format!("Bearer {BOB}");
    ctx.rt.block_on(async {
        // No token, or a wrong one: 401 with a Bearer challenge.
        let r = s.call_2026(&[], 1, "ping", json!({})).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(
            r.header("www-authenticate").unwrap().starts_with("Bearer"),
            "{:?}",
            r.headers
        );
        let r = s
            .call_2026(&[("authorization", "Bearer nope")], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
        let r = s.send("GET", "/metrics", &[], vec![]).await;
        assert_eq!(
            r.status, 401,
            "metrics need a token when tokens are configured"
        );

        // Bob may call ping but not list_nodes (read_only is not in his grant).
        let r = s
            .call_2026(&[("authorization", &bob)], 2, "ping", json!({}))
            .await;
        assert_eq!(structured(&r)["message"], "pong", "{}", r.text);
        let session = s.initialize(&[("authorization", &bob)]).await;
        let r = s
            .call(
                &session,
                &[("authorization", &bob)],
                3,
                "list_nodes",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
        assert_eq!(r.response()["id"], 3);
        assert!(
            r.text.contains("`bob` may not call `list_nodes`"),
            "{}",
            r.text
        );
        // Alice may, in a session of her own (bob's is not hers to use); nobody without
        // execute may call the execute tool.
        let r = s
            .call(
                &session,
                &[("authorization", &alice)],
                4,
                "list_nodes",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 404, "{}", r.text);
        let hers = s.initialize(&[("authorization", &alice)]).await;
        let r = s
            .call(
                &hers,
                &[("authorization", &alice)],
                4,
                "list_nodes",
                json!({}),
            )
            .await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
        let r = s
            .call_2026(
                &[("authorization", &alice)],
                5,
                "dangerous",
                json!({"approval_token": "x"}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);

        // A tool's manual is read, and its name completed, only where the token may call it.
        let in_session = |token: &str, session: &str, body: Value| {
            let ep = s.ep.clone();
            let (token, session) = (token.to_string(), session.to_string());
            async move {
                let h = [
                    ("authorization", token.as_str()),
                    ("mcp-session-id", session.as_str()),
                    ("mcp-protocol-version", "2025-06-18"),
                ];
                ep.post(&h, &body).await
            }
        };
        let manual = |uri: &str| json!({"jsonrpc": "2.0", "id": 8, "method": "resources/read", "params": {"uri": uri}});
        let r = in_session(&bob, &session, manual("citus://tools/list_nodes")).await;
        assert!(r.response()["error"].is_object(), "{}", r.text);
        let r = in_session(&bob, &session, manual("citus://tools/ping")).await;
        assert!(r.response()["result"]["contents"].is_array(), "{}", r.text);
        let r = in_session(
            &alice,
            &hers,
            json!({"jsonrpc": "2.0", "id": 9, "method": "completion/complete", "params": {
                "ref": {"type": "ref/resource", "uri": "citus://tools/{name}"},
                "argument": {"name": "name", "value": ""}}}),
        )
        .await;
        let names = r.response()["result"]["completion"]["values"].to_string();
        assert!(
            names.contains("\"list_nodes\"") && !names.contains("\"dangerous\""),
            "{names}"
        );

        // Bob's name reaches the approval audit log through Caller::identity.
        let r = s
            .call(
                &session,
                &[("authorization", &bob)],
                6,
                "citus_request_approval_token",
                json!({"action": "dangerous", "arguments": {}}),
            )
            .await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
        let log = std::fs::read_to_string(&audit).unwrap();
        let issued: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(issued["caller"], "bob", "{log}");

        let m = s
            .send("GET", "/metrics", &[("authorization", &alice)], vec![])
            .await;
        assert_eq!(m.status, 200);
        assert!(
            m.text
                .contains("citus_mcp_http_refused_total{reason=\"forbidden\"} 2"),
            "{}",
            m.text
        );
        assert!(
            m.text
                .contains("citus_mcp_http_refused_total{reason=\"unauthenticated\"} 3"),
            "{}",
            m.text
        );
    });
    let log = s.log_with("caller=bob");
    assert!(log.contains("caller=bob"), "{log}");
    for secret in [ALICE, BOB, APPROVAL_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
}

/// A plan tool's resource, as an operator may declare one.
const PLANNED_TOOL: &str = "name: planned\ndescription: A plan, also a resource.\nsafety: plan\nresources:\n  - uri: citus://test/planned\n    name: planned\n    description: The plan.\nqueries:\n  - name: r\n    shape: value\n    sql: SELECT 1 AS one\nexamples:\n  - args: {}\n";

/// `resources/read` runs the tool behind the URI: a token may read it only if it may
/// call that tool (a read_only grant does not reach a plan tool through its resource).
fn resource_grants(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("planned.yaml"), PLANNED_TOOL).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "http:\n  tokens:\n    - name: reader\n      sha256: {}\n      classes: [read_only]\n    - name: planner\n      sha256: {}\n      tools: [planned]\n",
            citus_mcp::httpd::auth::hash_hex(ALICE),
            citus_mcp::httpd::auth::hash_hex(BOB),
        ),
    )
    .unwrap();
    let s = HttpServer::start(
        ctx,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tools-dirs",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let reader = format!("Bearer {ALICE}");
    let planner = format!("Bearer {BOB}");
    ctx.rt.block_on(async {
        let read = |who: String, uri: &'static str| {
            let s = &s;
            async move {
                let session = s.initialize(&[("authorization", &who)]).await;
                s.post(
                    &[
                        ("authorization", &who),
                        ("mcp-session-id", &session),
                        ("mcp-protocol-version", "2025-06-18"),
                    ],
                    &json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}}),
                )
                .await
            }
        };
        let r = read(reader.clone(), "citus://test/planned").await;
        assert_eq!(r.status, 403, "a read_only token read a plan tool: {}", r.text);
        assert!(r.text.contains("`planned`"), "{}", r.text);
        let r = read(reader.clone(), "citus://cluster/summary").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.response()["result"]["contents"].is_array(), "{}", r.text);
        // A token granted the tool by name reads its resource.
        let r = read(planner.clone(), "citus://test/planned").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.response()["result"]["contents"].is_array(), "{}", r.text);
        let r = read(planner.clone(), "citus://cluster/summary").await;
        assert_eq!(r.status, 403, "{}", r.text);
        // Each lists only what it may read.
        for (name, who, has, lacks) in [
            ("reader", reader, "citus://cluster/summary", "citus://test/planned"),
            ("planner", planner, "citus://test/planned", "citus://cluster/summary"),
        ] {
            let session = s.initialize(&[("authorization", &who)]).await;
            let r = s
                .post(
                    &[
                        ("authorization", &who),
                        ("mcp-session-id", &session),
                        ("mcp-protocol-version", "2025-06-18"),
                    ],
                    &json!({"jsonrpc": "2.0", "id": 10, "method": "resources/list", "params": {}}),
                )
                .await;
            let listed = r.response()["result"]["resources"].to_string();
            assert!(listed.contains(has), "{name}: {listed}");
            assert!(!listed.contains(lacks), "{name}: {listed}");
        }
    });
}

fn refusals(ctx: &Ctx) {
    let s = HttpServer::start(ctx, &[], &[("CITUS_MCP_HTTP_MAX_BODY_BYTES", "4096")]);
    ctx.rt.block_on(async {
        let r = s
            .call_2026(&[("origin", "http://evil.example")], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 403, "a foreign Origin: {}", r.text);
        let r = s
            .call_2026(&[("origin", "http://localhost:6274")], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 200, "a loopback Origin: {}", r.text);
        let host = format!("rebound.example:{}", s.port);
        let r = s.call_2026(&[("host", &host)], 1, "ping", json!({})).await;
        assert_eq!(r.status, 403, "a foreign Host: {}", r.text);
        // The pages that tell about the server check the same (this one has no tokens).
        for page in ["/metrics", "/readyz"] {
            let r = s.send("GET", page, &[("host", &host)], vec![]).await;
            assert_eq!(r.status, 403, "{page}, a foreign Host: {}", r.text);
            let r = s
                .send("GET", page, &[("origin", "http://evil.example")], vec![])
                .await;
            assert_eq!(r.status, 403, "{page}, a foreign Origin: {}", r.text);
            let r = s
                .send("GET", page, &[("origin", "http://localhost:6274")], vec![])
                .await;
            assert_ne!(r.status, 403, "{page}, a loopback Origin: {}", r.text);
        }
        let r = s.send("GET", "/metrics", &[], vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = s
            .call_2026(&[], 1, "ping", json!({"message": "x".repeat(5000)}))
            .await;
        assert_eq!(r.status, 413, "{}", r.text);
        let big = "y".repeat(20_000);
        let r = s
            .call_2026(&[("x-padding", &big)], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 431, "{}", r.text);
        // A body no JSON-RPC message could be read from gets a JSON-RPC error a client
        // can read (rmcp would answer 415 with plain text).
        let headers = [("content-type", "application/json"), ACCEPT];
        for (body, code) in [
            ("{not json", -32700),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
            (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, -32600),
        ] {
            let r = s.send("POST", "/mcp", &headers, body.into()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text);
            let v: Value = serde_json::from_str(&r.text).unwrap_or_else(|_| panic!("{}", r.text));
            assert_eq!(v["error"]["code"], code, "{body}: {v}");
            assert_eq!(v["id"], Value::Null, "{v}");
        }
        let r = s.call_2026(&[], 1, "ping", json!({})).await;
        assert_eq!(r.status, 200, "the server keeps serving: {}", r.text);
    });
}

fn non_loopback(_: &Ctx) {
    let out = bin()
        .args(["serve", "--http", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without authentication") && err.contains("http.tokens"),
        "{err}"
    );
}

fn health_and_metrics(ctx: &Ctx) {
    let s = HttpServer::start(ctx, &[], &[]);
    ctx.rt.block_on(async {
        assert_eq!(s.send("GET", "/healthz", &[], vec![]).await.status, 200);
        // The routes as a client meets them: HEAD without a body, a wrong method told
        // which are right, an unknown path (a near miss of /mcp too) 404, and the header
        // limit before any route.
        let r = s.send("HEAD", "/healthz", &[], vec![]).await;
        assert_eq!((r.status, r.text.as_str()), (200, ""));
        let r = s.send("POST", "/healthz", &[], vec![]).await;
        assert_eq!(r.status, 405, "{}", r.text);
        assert_eq!(r.header("allow"), Some("GET,HEAD"));
        assert_eq!(s.send("DELETE", "/metrics", &[], vec![]).await.status, 405);
        for path in [
            "/nope",
            "/mcp/",
            "/mcpx",
            "//mcp",
            "/.well-known/oauth-protected-resource/x",
        ] {
            assert_eq!(s.send("GET", path, &[], vec![]).await.status, 404, "{path}");
        }
        let big = "y".repeat(20_000);
        let r = s
            .send("GET", "/healthz", &[("x-padding", &big)], vec![])
            .await;
        assert_eq!(r.status, 431, "{}", r.text);
        // Ready once the coordinator answers (it is up for the whole test run).
        let r = s.send("GET", "/readyz", &[], vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = s.call_2026(&[], 1, "list_nodes", json!({})).await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
        let r = s
            .call_2026(&[], 2, "list_nodes", json!({"no_such": 1}))
            .await;
        assert_eq!(r.response()["result"]["isError"], true, "{}", r.text);
        let m = s.send("GET", "/metrics", &[], vec![]).await;
        assert_eq!(m.status, 200);
        assert!(m.header("content-type").unwrap().starts_with("text/plain"));
        for line in [
            "citus_mcp_tool_calls_total{tool=\"list_nodes\",outcome=\"ok\"} 1",
            "citus_mcp_tool_calls_total{tool=\"list_nodes\",outcome=\"INVALID_ARGUMENT\"} 1",
            "citus_mcp_tool_call_duration_seconds_count{tool=\"list_nodes\"} 2",
            "citus_mcp_tool_calls_in_flight 0",
        ] {
            assert!(m.text.contains(line), "{line} missing from:\n{}", m.text);
        }
        assert!(
            !m.text
                .contains("citus_mcp_tool_rows_returned_total{tool=\"list_nodes\"} 0"),
            "{}",
            m.text
        );
        // The pool: the calls above opened a connection, none is waiting.
        let gauge = |series: &str| -> u64 {
            m.text
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{series} missing from:\n{}", m.text))
        };
        assert!(gauge("citus_mcp_db_connections{state=\"open\"}") >= 1);
        assert!(
            gauge("citus_mcp_db_connections{state=\"max\"}")
                >= gauge("citus_mcp_db_connections{state=\"open\"}")
        );
        assert_eq!(gauge("citus_mcp_db_waiting"), 0);
    });
}

/// 64 clients at once, half in legacy sessions and half as 2026-07-28 requests, each
/// making four calls: every call gets its own answer.
fn load(ctx: &Ctx) {
    let server = HttpServer::start(ctx, &[], &[]);
    ctx.rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..64u64 {
            let s = server.ep.clone();
            tasks.push(tokio::spawn(async move {
                let session = if c % 2 == 0 {
                    Some(s.initialize(&[]).await)
                } else {
                    None
                };
                let mut answered = 0;
                for i in 0..4u64 {
                    let id = c * 10 + i;
                    let message = format!("client {c} call {i}");
                    let r = match &session {
                        Some(sid) => {
                            s.call(sid, &[], id, "ping", json!({"message": message}))
                                .await
                        }
                        None => {
                            s.call_2026(&[], id, "ping", json!({"message": message}))
                                .await
                        }
                    };
                    assert_eq!(r.response()["id"], id, "{}", r.text);
                    assert_eq!(structured(&r)["message"], message, "{}", r.text);
                    answered += 1;
                }
                answered
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("a client finished");
        }
        assert_eq!(total, 256);
    });
}

fn graceful_shutdown(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let short = slow_tool("short", "http_short_marker", 1);
    let long = slow_tool("slow", "http_long_marker", 120);
    std::fs::write(dir.path().join("short.yaml"), short).unwrap();
    std::fs::write(dir.path().join("slow.yaml"), long).unwrap();
    let active = |marker: &str| {
        format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_activity%' AND state = 'active'"
        )
    };
    let wait_count = |sql: &str, want_zero: bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while (ctx.db().psql(sql).unwrap().trim() == "0") != want_zero {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A call in flight when SIGTERM arrives still gets its answer.
    let mut s = HttpServer::start(ctx, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
    let ep = s.ep.clone();
    let call = ctx
        .rt
        .spawn(async move { ep.call_2026(&[], 1, "short", json!({})).await.text });
    wait_count(
        &active("http_short_marker"),
        false,
        "the short query never started",
    );
    s.terminate();
    let text = ctx.rt.block_on(call).unwrap();
    assert!(text.contains("\"isError\":false"), "{text}");
    assert_eq!(
        s.wait_exit(Duration::from_secs(20)).and_then(|e| e.code()),
        Some(0),
        "{}",
        s.log()
    );

    // With no grace left, a long call's statement is cancelled and the server exits.
    let mut s = HttpServer::start(
        ctx,
        &["--tools-dirs", dir.path().to_str().unwrap()],
        &[("CITUS_MCP_HTTP_SHUTDOWN_GRACE_SECONDS", "0")],
    );
    let ep = s.ep.clone();
    let call = ctx.rt.spawn(async move {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"_meta": meta_2026(), "name": "slow", "arguments": {}}});
        let headers = [
            ("content-type", "application/json"),
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "slow"),
        ];
        // It answers, as cancelled because the server is shutting down: a JSON-RPC answer
        // the client can read, not a bare 500.
        ep.try_send("POST", "/mcp", &headers, body.to_string().into_bytes())
            .await
    });
    wait_count(
        &active("http_long_marker"),
        false,
        "the long query never started",
    );
    s.terminate();
    let answer = ctx.rt.block_on(call).unwrap().expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.text.contains("CANCELLED") && answer.text.contains("shutting down"),
        "{}",
        answer.text
    );
    assert_eq!(
        s.wait_exit(Duration::from_secs(20)).and_then(|e| e.code()),
        Some(0),
        "{}",
        s.log()
    );
    wait_count(
        &active("http_long_marker"),
        true,
        "the long query kept running after the server exited",
    );
}

/// Connections that send nothing, send their headers a byte at a time, sit idle after a
/// response, or send part of a body are closed (the body answered 408) within
/// `http.read_timeout_seconds`; 300 of them, against a server started with an open-files
/// soft limit of 128, keep no one else out. A call, and a GET stream, that last longer than
/// the timeout are not cut.
fn slow_connections(ctx: &Ctx) {
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.yaml"),
        slow_tool("slow", "http_slow_connections_marker", 3),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        r#"ulimit -Sn 128 && exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_citus-mcp"),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("CITUS_MCP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CITUS_MCP_COORDINATOR_DSN", ctx.dsn())
        .env("CITUS_MCP_HTTP_READ_TIMEOUT_SECONDS", "2");
    let s = HttpServer::launch(cmd, &["--tools-dirs", dir.path().to_str().unwrap()], &[]);
    let addr = ("127.0.0.1", s.port);
    let connect = || {
        let c = TcpStream::connect(addr).expect("the server accepts connections");
        c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        c
    };
    // What a connection does next: the server closed it (or reset it), answered, or nothing.
    let next = |c: &mut TcpStream| -> Result<String, ErrorKind> {
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => Err(e.kind()),
        }
    };
    let closed = |r: &Result<String, ErrorKind>| {
        matches!(r, Ok(t) if t.is_empty())
            || matches!(r, Err(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe))
    };

    let mut silent: Vec<TcpStream> = (0..300).map(|_| connect()).collect();
    let session = ctx.rt.block_on(async {
        // Others are served meanwhile, and a call longer than the timeout is answered.
        let call = tokio::time::timeout(
            Duration::from_secs(30),
            s.call_2026(&[], 1, "slow", json!({})),
        )
        .await
        .expect("a call while 300 silent connections are open is answered");
        assert_eq!(call.response()["result"]["isError"], false, "{}", call.text);
        tokio::time::timeout(Duration::from_secs(30), s.initialize(&[]))
            .await
            .expect("a session starts")
    });
    for (i, c) in silent.iter_mut().enumerate() {
        let r = next(c);
        assert!(closed(&r), "silent connection {i} is still open: {r:?}");
    }

    // A GET stream outlives the timeout: it is a response, and responses are never cut.
    ctx.rt.block_on(async {
        let mut stream = s.open_stream(&session).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        match tokio::time::timeout(Duration::from_millis(300), stream.frame()).await {
            Err(_) | Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the GET stream was cut: {other:?}"),
        }
    });

    // Headers a byte every 250 ms: closed before they end (after 2 s, not the 10 s they take).
    let mut slow = connect();
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 0123456789\r\n\r\n";
    let mut cut = false;
    for b in request {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = next(&mut slow);
    assert!(
        cut || closed(&r),
        "headers sent slowly were read to the end: {r:?}"
    );

    // Idle after a response: closed.
    let mut idle = connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = next(&mut idle);
    assert!(
        matches!(&r, Ok(t) if t.starts_with("HTTP/1.1 200")),
        "{r:?}"
    );
    let r = next(&mut idle);
    assert!(closed(&r), "an idle connection is still open: {r:?}");

    // A body that stops halfway: 408, then closed; sized or chunked alike.
    for framing in [
        &b"Content-Length: 100\r\n\r\n{\"jsonrpc\""[..],
        &b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"jso\r\n"[..],
    ] {
        let mut body = connect();
        body.write_all(
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Accept: application/json, text/event-stream\r\n",
        )
        .unwrap();
        body.write_all(framing).unwrap();
        let r = next(&mut body);
        assert!(
            matches!(&r, Ok(t) if t.starts_with("HTTP/1.1 408") && t.contains("http.read_timeout_seconds")),
            "{r:?}"
        );
        let r = next(&mut body);
        assert!(closed(&r), "{r:?}");
    }

    let r = ctx.rt.block_on(s.call_2026(&[], 2, "ping", json!({})));
    assert_eq!(r.status, 200, "the server keeps serving: {}", r.text);
}

/// A configuration file in `dir`: the `http` setting `setting`, and tokens for alice and bob
/// (read_only).
fn alice_and_bob(dir: &std::path::Path, setting: &str) -> std::path::PathBuf {
    let config = dir.join("config.yaml");
    let token = |name: &str, secret: &str| {
        format!(
            "    - name: {name}\n      sha256: {}\n      classes: [read_only]\n",
            citus_mcp::httpd::auth::hash_hex(secret)
        )
    };
    std::fs::write(
        &config,
        format!(
            "http:\n  {setting}\n  tokens:\n{}{}",
            token("alice", ALICE),
            token("bob", BOB)
        ),
    )
    .unwrap();
    config
}

/// `http.max_sessions_per_caller`: a caller that opens one session more loses its own oldest
/// (404 from then on, as after a DELETE); another caller's sessions, and a caller's sessions
/// within the limit, stay. A deleted session does not count. Another caller's session id
/// finds no session.
fn session_limit(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let config = alice_and_bob(dir.path(), "max_sessions_per_caller: 3");
    let s = HttpServer::start(
        ctx,
        &["--config", config.to_str().unwrap()],
        &[("CITUS_MCP_HTTP_READ_TIMEOUT_SECONDS", "2")],
    );
    let alice = format!("Bearer {ALICE}");
    let bob = format!("Bearer {BOB}");
    let alice = [("authorization", alice.as_str())];
    let bob = [("authorization", bob.as_str())];
    ctx.rt.block_on(async {
        let ping = |who: [(&'static str, &str); 1], session: String| {
            let ep = s.ep.clone();
            let who = who.map(|(k, v)| (k, v.to_string()));
            async move {
                let h = [
                    (who[0].0, who[0].1.as_str()),
                    ("mcp-session-id", session.as_str()),
                    ("mcp-protocol-version", "2025-06-18"),
                ];
                ep.post(&h, &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
                    .await
                    .status
            }
        };
        let bobs = s.initialize(&bob).await;
        let mut alices = Vec::new();
        for _ in 0..6 {
            alices.push(s.initialize(&alice).await);
        }
        for (i, id) in alices.iter().enumerate() {
            let want = if i < 3 { 404 } else { 200 };
            assert_eq!(ping(alice, id.clone()).await, want, "alice's session {i}");
        }
        assert_eq!(ping(bob, bobs.clone()).await, 200, "bob's session");

        // A deleted session no longer counts: one more after a DELETE closes nothing.
        let h = [
            alice[0],
            ("mcp-session-id", alices[5].as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ];
        let deleted = s.send("DELETE", s.mcp_path(), &h, vec![]).await;
        assert!(deleted.status < 300, "{} {}", deleted.status, deleted.text);
        let newest = s.initialize(&alice).await;
        for id in [&alices[3], &alices[4], &newest] {
            assert_eq!(ping(alice, id.clone()).await, 200);
        }
        assert_eq!(ping(alice, alices[5].clone()).await, 404);
        assert_eq!(ping(bob, bobs.clone()).await, 200, "bob's session");

        // A session belongs to its opener: bob, holding alice's session id, can neither
        // call in it, nor listen to it, nor delete it; it finds no such session.
        assert_eq!(ping(bob, newest.clone()).await, 404);
        let theirs = [
            bob[0],
            ("mcp-session-id", newest.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ];
        let listen = [
            theirs[0],
            theirs[1],
            theirs[2],
            ("accept", "text/event-stream"),
        ];
        let get = s.send("GET", s.mcp_path(), &listen, vec![]).await;
        assert_eq!(get.status, 404, "{}", get.text);
        let delete = s.send("DELETE", s.mcp_path(), &theirs, vec![]).await;
        assert_eq!(delete.status, 404, "{}", delete.text);
        assert_eq!(
            ping(alice, newest.clone()).await,
            200,
            "alice's session stays"
        );
        assert_eq!(ping(alice, bobs).await, 404, "nor alice bob's");
    });
    let log = s.log();
    assert_eq!(
        log.matches("more than http.max_sessions_per_caller (3)")
            .count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("caller=alice"), "{log}");
    assert!(!log.contains(ALICE) && !log.contains(BOB), "{log}");

    // Nobody's body is read before their token is checked: a POST without one whose body
    // never comes is refused at once, not after the read timeout (nor buffered first).
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Accept: application/json, text/event-stream\r\nContent-Length: 4000000\r\n\r\n{",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).expect("answered before the body comes");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // With a valid token, the body that never comes gets the read timeout: 408, where
    // `App::authorized` reads it to see the tool called.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    c.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ALICE}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             Content-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .unwrap();
    let n = c
        .read(&mut buf)
        .expect("answered when the read timeout passes");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

/// `http.max_calls_per_caller`: with 2, alice's third call while two of hers run gets
/// TOO_MANY_CALLS at once (nothing runs for it), bob's call runs meanwhile, and alice calls
/// again once hers are done.
fn call_limit(ctx: &Ctx) {
    let marker = "http_call_limit_marker";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.yaml"), slow_tool("slow", marker, 4)).unwrap();
    let config = alice_and_bob(dir.path(), "max_calls_per_caller: 2");
    let wait_for = |want: u64, what: &str| {
        ctx.wait_running(marker, |n| n == want, Duration::from_secs(10), what);
    };
    let tools = dir.path().to_str().unwrap();
    let s = HttpServer::start(
        ctx,
        &["--config", config.to_str().unwrap(), "--tools-dirs", tools],
        &[],
    );
    let call = |token: &'static str, id: u64| {
        let ep = s.ep.clone();
        ctx.rt.spawn(async move {
            let auth = format!("Bearer {token}");
            ep.call_2026(&[("authorization", &auth)], id, "slow", json!({}))
                .await
        })
    };
    let error_code =
        |a: &Answer| a.response()["result"]["structuredContent"]["error"]["code"].clone();
    let first = [call(ALICE, 1), call(ALICE, 2)];
    wait_for(2, "alice's two calls never ran");
    let third = ctx.rt.block_on(call(ALICE, 3)).unwrap();
    assert_eq!(error_code(&third), "TOO_MANY_CALLS", "{}", third.text);
    assert!(
        third.text.contains("http.max_calls_per_caller"),
        "{}",
        third.text
    );
    assert_eq!(ctx.running(marker), 2, "the refused call ran nothing");
    let bobs = call(BOB, 4);
    wait_for(3, "bob's call never ran");
    for c in first {
        let r = ctx.rt.block_on(c).unwrap();
        r.assert_ok();
    }
    let again = ctx.rt.block_on(call(ALICE, 5)).unwrap();
    again.assert_ok();
    let r = ctx.rt.block_on(bobs).unwrap();
    r.assert_ok();

    // Another way to run a query: a resource read counts as a call too.
    let two = [call(ALICE, 6), call(ALICE, 7)];
    wait_for(2, "alice's calls never ran");
    let read = ctx.rt.block_on(async {
        let auth = format!("Bearer {ALICE}");
        let session = s.initialize(&[("authorization", &auth)]).await;
        s.post(
            &[
                ("authorization", &auth),
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &json!({"jsonrpc": "2.0", "id": 8, "method": "resources/read",
                "params": {"uri": "citus://cluster/summary"}}),
        )
        .await
    });
    assert_eq!(
        read.response()["error"]["data"]["error"]["code"],
        "TOO_MANY_CALLS",
        "{}",
        read.text
    );
    // A client that goes away mid-call gives its places back: its statements are
    // cancelled (2026-07-28: a closed stream), and its next call runs.
    for c in two {
        c.abort();
    }
    wait_for(0, "the vanished calls still run");
    let after = ctx.rt.block_on(call(ALICE, 9)).unwrap();
    after.assert_ok();
}

/// `subscriptions/listen` streams count as sessions do (`http.max_sessions_per_caller`): a
/// third stream with a limit of 2 ends the first; the other two stay and hear the next
/// reload.
fn listen_limit(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let s = HttpServer::start(
        ctx,
        &["--tools-dirs", dir.path().to_str().unwrap()],
        &[("CITUS_MCP_HTTP_MAX_SESSIONS_PER_CALLER", "2")],
    );
    ctx.rt.block_on(async {
        let listen = || async {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen",
                "params": {"_meta": meta_2026(), "notifications": {"toolsListChanged": true}}});
            let req = hyper::Request::builder()
                .method("POST")
                .uri(s.url(s.mcp_path()))
                .header("content-type", "application/json")
                .header(ACCEPT.0, ACCEPT.1)
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "subscriptions/listen")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let resp = s.client.request(req).await.expect("the stream opens");
            assert_eq!(resp.status(), 200);
            let mut stream = resp.into_body();
            let mut seen = String::new();
            while !seen.contains("notifications/subscriptions/acknowledged") {
                let frame = stream.frame().await.expect("acknowledged").unwrap();
                if let Some(d) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
            stream
        };
        // Reads a stream until it ends (None) or `needle` arrives (Some(true)), or 10 s.
        async fn read_until(stream: &mut hyper::body::Incoming, needle: &str) -> Option<bool> {
            let mut seen = String::new();
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match stream.frame().await {
                        Some(Ok(f)) => {
                            if let Some(d) = f.data_ref() {
                                seen.push_str(&String::from_utf8_lossy(d));
                                if seen.contains(needle) {
                                    return Some(true);
                                }
                            }
                        }
                        _ => return None,
                    }
                }
            })
            .await
            .unwrap_or(Some(false))
        }
        let mut first = listen().await;
        let mut second = listen().await;
        let mut third = listen().await;
        assert_eq!(
            read_until(&mut first, "never").await,
            None,
            "the oldest stream ends"
        );
        std::fs::write(dir.path().join("hello.yaml"), EXTRA_TOOL).unwrap();
        for (name, stream) in [("second", &mut second), ("third", &mut third)] {
            assert_eq!(
                read_until(stream, "notifications/tools/list_changed").await,
                Some(true),
                "the {name} stream stays and hears the reload"
            );
        }
    });
}
