//! MCP over Streamable HTTP (`serve --http`): rmcp's `StreamableHttpService` at `/mcp`,
//! beside `/healthz`, `/readyz` and `/metrics`, on hyper's HTTP/1.1 (conn.rs).
//!
//! This module owns the HTTP edge: the listen address and the refusal to serve a
//! non-loopback address without authentication, `Host` and `Origin` allow-lists
//! (rmcp checks them), body and header size limits, bearer tokens and their grants
//! (`auth`), OAuth access tokens and the protected-resource metadata (`oauth`, `jwks`),
//! https (`tls`), and the graceful shutdown. Everything MCP is the same [`Server`] stdio
//! uses, one per session (or per request when stateless), over the same engine, so
//! hot reload and `list_changed` reach HTTP sessions too. It never sees SQL.
//!
//! With several clusters (`clusters` in the configuration) each is served at
//! `/mcp/{cluster}` by its own engine, behind the same authentication; `/readyz` reports
//! each, and `/metrics` labels each cluster's series with its name.

pub mod auth;
mod conn;
pub mod jwks;
pub mod oauth;
mod sessions;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::Service as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::echo;
use crate::engine::Engine;
use crate::metrics::{Entered, Metrics, PoolGauge, Running};
use crate::server::{CallerGrant, CallerLimits, CallerName, Change, Server};
use crate::spec::Safety;
use auth::{Grant, Holder, TokenConfig, TokenStore};
use oauth::{OAuth, OAuthConfig, Rejection};

/// The `http` section of the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to serve on; stdio when unset.
    pub listen: Option<String>,
    /// No sessions: every request stands alone (replicas without sticky sessions).
    pub stateless: bool,
    /// `Host` values accepted; loopback names and the listen address when empty.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted; loopback origins when unset.
    pub allowed_origins: Option<Vec<String>>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// How long a connection may take to send a request's headers (new, or idle after a
    /// response), and then its body.
    pub read_timeout_seconds: u64,
    /// Sessions one caller may hold per endpoint; one more closes its oldest.
    pub max_sessions_per_caller: usize,
    /// Calls one authenticated caller may have running at once per endpoint.
    pub max_calls_per_caller: usize,
    pub shutdown_grace_seconds: u64,
    pub tokens: Vec<TokenConfig>,
    pub tokens_file: Option<PathBuf>,
    /// OAuth resource-server mode: JWT access tokens from an issuer.
    pub oauth: Option<OAuthConfig>,
    /// PEM certificate chain and key: serve https.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            stateless: false,
            allowed_hosts: vec![],
            allowed_origins: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            read_timeout_seconds: 30,
            max_sessions_per_caller: 32,
            max_calls_per_caller: 4,
            shutdown_grace_seconds: 10,
            tokens: vec![],
            tokens_file: None,
            oauth: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Why the HTTP server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen `{0}` is not an address: use ip:port, e.g. 127.0.0.1:8080")]
    Address(String),
    #[error(
        "refusing to listen on {0} without authentication: anyone who can reach it could query \
         the cluster. Configure http.tokens or http.tokens_file (`citus-mcp token new NAME` makes \
         one) or http.oauth, or listen on a loopback address such as 127.0.0.1"
    )]
    Unauthenticated(SocketAddr),
    #[error("http tokens: {0}")]
    Tokens(String),
    #[error("http.oauth: {0}")]
    OAuth(String),
    #[error("http TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Origins a browser on this machine sends; anything else is refused when present.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// How long a shutdown waits for the coordinator to cancel statements, and for the
/// connections to drain once sessions are closed.
const CANCEL_WAIT: Duration = Duration::from_secs(3);
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long the calls cancelled at shutdown have to write their answers.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The address to listen on: an IP and port (`localhost:PORT` is 127.0.0.1).
pub fn listen_address(text: &str) -> Result<SocketAddr, HttpError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    match text.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        _ => Err(HttpError::Address(text.to_string())),
    }
}

/// One engine served over HTTP: at `/mcp`, or at `/mcp/{name}` for a named cluster.
pub struct Served {
    /// The cluster's name; `None` for the single-DSN configuration.
    pub name: Option<String>,
    /// The cluster's engine: its pool, settings and approval gate over the shared snapshot.
    pub engine: Arc<Engine>,
}

impl Served {
    /// Where its MCP endpoint is.
    pub fn path(&self) -> String {
        match &self.name {
            Some(n) => format!("/mcp/{n}"),
            None => "/mcp".into(),
        }
    }
}

/// What the request handlers share.
struct Shared {
    served: Vec<Served>,
    metrics: Arc<Metrics>,
    /// POST responses not yet fully sent, which a shutdown lets finish.
    responses: Arc<Running>,
    tokens: Arc<TokenStore>,
    oauth: Option<Arc<OAuth>>,
    /// Tokens or OAuth are configured: every protected request needs a valid one.
    authenticated: bool,
    max_body: usize,
    max_headers: usize,
    /// `http.read_timeout_seconds`: for a request's headers (conn.rs), then its body.
    read_timeout: Duration,
    /// Each caller's sessions at each endpoint (`http.max_sessions_per_caller`).
    sessions: sessions::Sessions,
    /// The `Host` and `Origin` checks of the MCP endpoints (rmcp's), for `/metrics` and
    /// `/readyz`.
    site: Site,
}

/// Everything checked before binding: a configuration that cannot be served safely
/// never opens a socket.
pub struct Prepared {
    addr: SocketAddr,
    config: HttpConfig,
    tokens: TokenStore,
    oauth: Option<OAuth>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Prepared {
    pub fn new(config: &HttpConfig) -> Result<Prepared, HttpError> {
        let text = config.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let addr = listen_address(text)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(HttpError::Tls(
                    "http.tls_cert is set but http.tls_key is not: give both PEM files, or \
                     neither to serve plain http"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(HttpError::Tls(
                    "http.tls_key is set but http.tls_cert is not: give both PEM files, or \
                     neither to serve plain http"
                        .into(),
                ));
            }
        };
        let tokens = TokenStore::load(&config.tokens, config.tokens_file.as_deref())?;
        let oauth = config.oauth.as_ref().map(OAuth::new).transpose()?;
        if let Some(o) = &oauth {
            // A jwks_file that cannot serve stops the server now; a URL is fetched once
            // serving (the issuer may come up later).
            o.jwks.check_file()?;
        }
        if !addr.ip().is_loopback() && !tokens.configured() && oauth.is_none() {
            return Err(HttpError::Unauthenticated(addr));
        }
        Ok(Prepared {
            addr,
            config: config.clone(),
            tokens,
            oauth,
            tls,
        })
    }

    /// The `Host` values accepted: `http.allowed_hosts`, or loopback names and the listen
    /// address.
    fn allowed_hosts(&self) -> Vec<String> {
        let mut hosts = self.config.allowed_hosts.clone();
        if hosts.is_empty() {
            hosts = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if !self.addr.ip().is_unspecified() && !self.addr.ip().is_loopback() {
                // An IP literal in Host cannot be a rebinding attack.
                hosts.push(self.addr.ip().to_string());
            }
        }
        hosts
    }

    /// The browser origins accepted: `http.allowed_origins`, or loopback ones.
    fn allowed_origins(&self) -> Vec<String> {
        self.config
            .allowed_origins
            .clone()
            .unwrap_or_else(|| LOOPBACK_ORIGINS.map(String::from).to_vec())
    }

    fn rmcp_config(&self, cancel: CancellationToken) -> StreamableHttpServerConfig {
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(self.allowed_hosts())
            .with_allowed_origins(self.allowed_origins())
            // An empty list means "no browser origin", not "no check".
            .enforce_origin_validation()
            .with_max_request_body_bytes(self.config.max_body_bytes)
            .with_legacy_session_mode(!self.config.stateless)
            .with_cancellation_token(cancel)
    }
}

/// Serves until SIGTERM or ctrl-c, then shuts down gracefully: no new connections,
/// calls in flight get `http.shutdown_grace_seconds` to finish, then sessions close and
/// the statements still running are cancelled on every node.
pub async fn serve(
    prepared: Prepared,
    served: Vec<Served>,
    changes: broadcast::Sender<Change>,
) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::bind(prepared.addr)
        .await
        .map_err(|source| HttpError::Listen {
            addr: prepared.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| HttpError::Listen {
        addr: prepared.addr,
        source,
    })?;
    raise_open_files_limit();
    let read_timeout = Duration::from_secs(prepared.config.read_timeout_seconds);
    let sessions = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    // One MCP service per cluster, each with its own sessions; all hear the same reloads.
    let mut endpoints = Vec::new();
    // Cancelled once the shutdown's grace is over: the calls still running answer as
    // cancelled, so their clients get a JSON-RPC answer before the sessions close.
    let give_up = CancellationToken::new();
    let mut open_sessions = sessions::Sessions::new(prepared.config.max_sessions_per_caller);
    for c in &served {
        let counters = match &c.name {
            Some(n) => Arc::new(metrics.for_cluster(n)),
            None => metrics.clone(),
        };
        let limits = Arc::new(CallerLimits::new(
            prepared.config.max_calls_per_caller,
            prepared.config.max_sessions_per_caller,
        ));
        let server = Server::new(c.engine.clone(), changes.clone())
            .with_metrics(counters)
            .with_caller_limits(limits)
            .with_shutdown(give_up.clone());
        let mcp = StreamableHttpService::new(
            move || Ok(server.clone()),
            open_sessions.manager(&c.path()),
            prepared.rmcp_config(sessions.clone()),
        );
        endpoints.push((c.path(), mcp));
    }
    if prepared.addr.ip().is_unspecified() && prepared.config.allowed_hosts.is_empty() {
        tracing::warn!(
            "listening on every interface with the default http.allowed_hosts: only loopback Host \
             headers are accepted; list the names clients use in http.allowed_hosts"
        );
    }
    let site = Site::new(&prepared.allowed_hosts(), &prepared.allowed_origins());
    let responses = Arc::new(Running::default());
    let tokens = Arc::new(prepared.tokens);
    let oauth = prepared.oauth.map(Arc::new);
    let authenticated = tokens.configured() || oauth.is_some();
    let paths: Vec<String> = served.iter().map(Served::path).collect();
    let tools = served.first().map_or(0, |c| c.engine.visible_tools().len());
    let shared = Arc::new(Shared {
        served,
        metrics: metrics.clone(),
        responses: responses.clone(),
        tokens: tokens.clone(),
        oauth: oauth.clone(),
        authenticated,
        max_body: prepared.config.max_body_bytes,
        max_headers: prepared.config.max_header_bytes,
        read_timeout,
        sessions: open_sessions,
        site,
    });
    // A tokens file that cannot be watched still serves the tokens it holds now.
    let _tokens_watch = match tokens.watch() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("{e}: edits take effect after a restart");
            None
        }
    };
    if let Some(o) = &oauth {
        let o = o.clone();
        tokio::spawn(async move {
            if let Err(e) = o.jwks.refresh().await {
                tracing::warn!("OAuth signing keys not loaded yet: {e}");
            }
        });
    }
    let app = App {
        shared: shared.clone(),
        endpoints: endpoints.into(),
    };

    let stop = CancellationToken::new();
    let scheme = if prepared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = match prepared.tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config);
            tokio::spawn(conn::serve(listener, app, read_timeout, stop.clone()))
        }
        None => tokio::spawn(conn::serve(listener, app, read_timeout, stop.clone())),
    };
    tracing::info!(
        address = %local,
        stateless = prepared.config.stateless,
        authenticated,
        oauth = oauth.is_some(),
        tools,
        "serving MCP on {scheme}://{local}{}",
        paths.join(format!(", {scheme}://{local}").as_str())
    );
    shutdown_signal().await;

    stop.cancel();
    let grace = Duration::from_secs(prepared.config.shutdown_grace_seconds);
    tracing::info!(
        in_flight = metrics.in_flight(),
        "shutting down: calls in flight have {} s to finish",
        grace.as_secs()
    );
    // A call is done when its answer is written, not when its handler returns.
    if tokio::time::timeout(grace, responses.idle()).await.is_err() {
        tracing::warn!(
            in_flight = metrics.in_flight(),
            "calls still running after the grace period: cancelling them"
        );
    }
    // The calls still running answer as cancelled (their statements are cancelled as
    // their futures drop), and those answers are written before the sessions close.
    give_up.cancel();
    if tokio::time::timeout(ANSWER_WAIT, responses.idle())
        .await
        .is_err()
    {
        tracing::warn!("cancelled calls still unanswered after 2 s");
    }
    // Sessions hold their GET streams open; closing them lets the connections drain.
    sessions.cancel();
    let cancels = shared
        .served
        .iter()
        .filter_map(|c| c.engine.db())
        .map(|db| db.cancel_running());
    if tokio::time::timeout(CANCEL_WAIT, futures_util::future::join_all(cancels))
        .await
        .is_err()
    {
        tracing::warn!("could not cancel the statements in flight within 3 s");
    }
    match tokio::time::timeout(DRAIN_WAIT, running).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}"),
        Err(_) => tracing::warn!("connections still open after 5 s; exiting anyway"),
    }
    Ok(())
}

/// SIGTERM (systemd, containers) or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A response body: rmcp's, or one of the edge's own.
type Body = BoxBody<Bytes, std::convert::Infallible>;
type Response = http::Response<Body>;
/// One cluster's MCP endpoint.
type Mcp = StreamableHttpService<Server, LocalSessionManager>;

/// A response with a fixed text body.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What serves requests: the routes, and what their handlers share.
#[derive(Clone)]
pub(crate) struct App {
    shared: Arc<Shared>,
    /// Each cluster's MCP path and service.
    endpoints: Arc<[(String, Mcp)]>,
}

/// A route that needs a token.
enum Protected {
    Metrics,
    Mcp(Mcp),
}

impl App {
    /// Routes a request. Headers over the limit get 431 whatever the route; `/healthz`,
    /// `/readyz` and the OAuth metadata need no token; `/metrics` and the MCP endpoints
    /// go through [`App::protected`].
    async fn handle(self, req: http::Request<Incoming>) -> Response {
        if let Some(refusal) = self.headers_too_large(&req) {
            return refusal;
        }
        let s = &self.shared;
        let path = req.uri().path();
        let mcp = self.endpoints.iter().find(|(p, _)| p == path);
        let metadata = path == METADATA_PATH
            || path
                .strip_prefix(METADATA_PATH)
                .is_some_and(|rest| self.endpoints.iter().any(|(p, _)| p == rest))
            || s.oauth.as_ref().is_some_and(|o| path == o.metadata_path);
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match (path, mcp) {
            (_, Some((_, service))) => {
                let service = service.clone();
                self.protected(req, Protected::Mcp(service)).await
            }
            // What a page says about the server is not for a browser that reached it
            // through a rebinding DNS name: the MCP endpoints' Host and Origin checks.
            ("/metrics" | "/readyz", _) if get && !s.site.allows(req.headers()) => text(
                StatusCode::FORBIDDEN,
                "Forbidden: Host or Origin header is not allowed\n",
            ),
            ("/metrics", _) if get => self.protected(req, Protected::Metrics).await,
            ("/healthz", _) if get => text(StatusCode::OK, "ok\n"),
            ("/readyz", _) if get => readyz(s).await,
            _ if metadata && get => resource_metadata(s),
            ("/metrics" | "/healthz" | "/readyz", _) => method_not_allowed(),
            _ if metadata => method_not_allowed(),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// 431 for a request whose headers (names, values and the target) exceed the limit.
    fn headers_too_large<B>(&self, req: &http::Request<B>) -> Option<Response> {
        let size: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri().to_string().len();
        (size > self.shared.max_headers).then(|| {
            self.shared.metrics.record_refusal("headers_too_large");
            text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large\n",
            )
        })
    }

    /// A POST to an MCP endpoint counts as running until its response body is written or
    /// dropped, so that a shutdown lets it finish. `subscriptions/listen` (a stream that
    /// lasts as long as the client wants) and GET streams are not counted: a shutdown
    /// closes them.
    async fn protected(&self, req: http::Request<Incoming>, route: Protected) -> Response {
        let stream = req.method() != Method::POST
            || req
                .headers()
                .get("mcp-method")
                .is_some_and(|m| m == "subscriptions/listen");
        if stream {
            return self.authorized(req, route).await;
        }
        let entered = self.shared.responses.enter();
        let (parts, body) = self.authorized(req, route).await.into_parts();
        let tracked = Tracked {
            inner: body,
            _entered: entered,
        };
        http::Response::from_parts(parts, tracked.boxed())
    }

    /// Authentication (401 without a valid token) and the token's grant (403 for a tool
    /// outside it); the holder's name and grant go on to the server as [`CallerName`] and
    /// [`CallerGrant`] (the log, the approval audit log, and a `tools/list` of what the
    /// token may call). A request's body is read only once its token is valid.
    async fn authorized(&self, req: http::Request<Incoming>, route: Protected) -> Response {
        let s = &self.shared;
        let (mut parts, body) = req.into_parts();
        // The endpoint's engine and cluster, where a grant may or may not hold; `/metrics`
        // shows every cluster, so only a grant for all of them holds there.
        let engine = match &route {
            Protected::Mcp(_) => s.engine_at(parts.uri.path()),
            Protected::Metrics => None,
        };
        let cluster = engine.and_then(|e| e.settings.cluster.as_deref());
        let holder = if s.authenticated {
            let holder = match auth::bearer(&parts.headers) {
                None => return s.unauthorized(None),
                Some(t) => match s.authenticate(t).await {
                    Ok(h) => h,
                    Err(reason) => return s.unauthorized(Some(reason)),
                },
            };
            let grant = holder.grant_at(cluster);
            if grant.is_empty() {
                // An OAuth token none of whose scopes is configured, or a grant for other
                // clusters only.
                tracing::info!(caller = %holder.name, "refused: the token grants nothing here");
                s.metrics.record_refusal("forbidden");
                return s.forbidden(Value::Null, &holder.name, None, cluster);
            }
            Some((holder.name, grant))
        } else {
            None
        };
        let bytes = match whole_body(s, body).await {
            Ok(b) => b,
            Err(refusal) => return refusal,
        };
        if let Some((name, grant)) = holder {
            // The grant depends on the tool, which only the body names (2025 clients send
            // no Mcp-Name header).
            if parts.method == Method::POST
                && let Some(engine) = engine
                && let Some(r) = refused(engine, &grant, &bytes)
            {
                tracing::warn!(caller = %name, tool = %echo::cap(&r.what), "refused: outside the token's grant");
                s.metrics.record_refusal("forbidden");
                return s.forbidden(r.id, &name, Some((&r.what, &r.tool, r.safety)), cluster);
            }
            tracing::debug!(caller = %name, method = %parts.method, "authenticated");
            parts.extensions.insert(CallerGrant(Arc::new(grant)));
            parts.extensions.insert(CallerName(name));
        }
        match route {
            Protected::Metrics => metrics_page(s),
            Protected::Mcp(service) => {
                if parts.method == Method::POST
                    && let Some((code, message)) = unreadable(&bytes)
                {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}),
                    );
                }
                let req = http::Request::from_parts(parts, Full::new(bytes));
                self.limit_sessions(req, service).await
            }
        }
    }

    /// A caller that opens a session beyond `http.max_sessions_per_caller` loses its oldest,
    /// and a request naming a session another caller opened finds none (sessions.rs). The
    /// caller is the token's holder; without tokens, everyone is one caller.
    async fn limit_sessions(&self, req: http::Request<Full<Bytes>>, service: Mcp) -> Response {
        let opens = req.method() == Method::POST && !req.headers().contains_key("mcp-session-id");
        let path = req.uri().path().to_string();
        let caller = req
            .extensions()
            .get::<CallerName>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        // Another caller's session is answered as an unknown one (rmcp's own 404).
        if let Some(id) = req.headers().get("mcp-session-id")
            && !self
                .shared
                .sessions
                .owns(&path, &caller, id.to_str().unwrap_or_default())
        {
            tracing::debug!(caller = %caller, "refused: a session this caller did not open");
            return text(StatusCode::NOT_FOUND, "Not Found: Session not found");
        }
        let response = match hyper_util::service::TowerToHyperService::new(service)
            .call(req)
            .await
        {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if opens
            && let Some(id) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            self.shared.sessions.opened(&path, &caller, id).await;
        }
        response
    }
}

/// The `Host` and `Origin` values a request may carry, matched as rmcp matches them for the
/// MCP endpoints: a host without a port allows any port, an origin's port may be `*`, and a
/// request without `Origin` (not a browser's) passes that check.
struct Site {
    hosts: Vec<(String, Option<u16>)>,
    origins: Vec<Origin>,
}

/// An origin's scheme, host and port (`None`: any port, as `:*` says).
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// `scheme://host[:port]`, `:*` for any port; `null` and anything else is no origin.
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, any_port) = match rest.strip_suffix(":*") {
            Some(a) => (a, true),
            None => (rest.trim_end_matches('/'), false),
        };
        let authority = http::uri::Authority::try_from(authority).ok()?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        Some(Origin {
            scheme,
            host: bare_host(authority.host()),
            port: (!any_port).then(|| authority.port_u16().unwrap_or(default_port)),
        })
    }

    fn allows(&self, o: &Origin) -> bool {
        self.scheme == o.scheme
            && self.host == o.host
            && self.port.is_none_or(|p| o.port == Some(p))
    }
}

fn bare_host(host: &str) -> String {
    host.trim_matches(['[', ']']).to_ascii_lowercase()
}

impl Site {
    fn new(hosts: &[String], origins: &[String]) -> Site {
        Site {
            hosts: hosts
                .iter()
                .map(|h| match http::uri::Authority::try_from(h.trim()) {
                    Ok(a) => (bare_host(a.host()), a.port_u16()),
                    Err(_) => (bare_host(h), None),
                })
                .collect(),
            origins: origins.iter().filter_map(|o| Origin::parse(o)).collect(),
        }
    }

    fn allows(&self, headers: &http::HeaderMap) -> bool {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| http::uri::Authority::try_from(h).ok());
        let Some(host) = host else { return false };
        let (name, port) = (bare_host(host.host()), host.port_u16());
        let host_ok = self
            .hosts
            .iter()
            .any(|(h, p)| *h == name && p.is_none_or(|p| port == Some(p)));
        let origin_ok = match headers.get(header::ORIGIN) {
            None => true,
            Some(o) => o
                .to_str()
                .ok()
                .and_then(Origin::parse)
                .is_some_and(|o| self.origins.iter().any(|a| a.allows(&o))),
        };
        host_ok && origin_ok
    }
}

fn method_not_allowed() -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    r
}

/// A response body that holds its request's place among the running ones.
struct Tracked {
    inner: Body,
    _entered: Entered,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request's body, whole: at most `http.max_body_bytes` (413) and within
/// `http.read_timeout_seconds` (408), so that a client that sends its body slowly, or
/// never, holds up no handler and no connection for longer than that.
async fn whole_body(s: &Shared, body: Incoming) -> Result<Bytes, Response> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let read = http_body_util::Limited::new(body, s.max_body).collect();
    match tokio::time::timeout(s.read_timeout, read).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            s.metrics.record_refusal("body_too_large");
            Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ))
        }
        Ok(Err(_)) => Err(text(StatusCode::BAD_REQUEST, "unreadable request body\n")),
        Err(_) => {
            s.metrics.record_refusal("body_timeout");
            let mut r = text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} s (http.read_timeout_seconds)\n",
                    s.read_timeout.as_secs()
                ),
            );
            // The rest of the body may still come: the connection is not reused.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does for every
/// program: the soft limit is often 1,024, which a few hundred HTTP clients (each
/// connection a file descriptor, as is each PostgreSQL connection) would reach.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let was = limit.current;
            limit.current = limit.maximum;
            match setrlimit(Resource::Nofile, limit) {
                Ok(()) => tracing::debug!(
                    "open files limit raised from {was:?} to {:?}",
                    limit.maximum
                ),
                Err(e) => tracing::debug!("cannot raise the open files limit: {e}"),
            }
        }
    }
}

/// The RFC 9728 metadata document's path; `/mcp`'s own is this plus `/mcp`.
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// Not a configured bearer token, nor shaped like a JWT (or no OAuth to try it).
    UnknownToken,
    Jwt(Rejection),
}

impl Invalid {
    fn description(self) -> &'static str {
        match self {
            Invalid::UnknownToken => "the token is not valid",
            Invalid::Jwt(r) => r.description(),
        }
    }

    fn code(self) -> &'static str {
        match self {
            Invalid::UnknownToken => "unknown_token",
            Invalid::Jwt(r) => r.code(),
        }
    }
}

impl Shared {
    /// The engine whose MCP endpoint `path` is.
    fn engine_at(&self, path: &str) -> Option<&Engine> {
        self.served
            .iter()
            .find(|c| c.path() == path)
            .map(|c| &*c.engine)
    }

    /// A configured bearer token first (its hash), then an OAuth access token.
    async fn authenticate(&self, token: &str) -> Result<Holder, Invalid> {
        if let Some(h) = self.tokens.current().verify(token) {
            return Ok(h.clone());
        }
        match &self.oauth {
            // A JWT has three parts; anything else is a mistyped bearer token, and is
            // told so rather than that it is a bad JWT.
            Some(o) if token.split('.').count() == 3 => o.verify(token).await.map_err(Invalid::Jwt),
            _ => Err(Invalid::UnknownToken),
        }
    }

    /// The challenge of a 401 or 403: the realm, the metadata document when OAuth is
    /// configured (RFC 9728 §5.1), and the RFC 6750 error.
    fn challenge(&self, error: Option<(&str, &str)>, scope: Option<&str>) -> HeaderValue {
        let mut c = String::from("Bearer realm=\"citus-mcp\"");
        if let Some(o) = &self.oauth {
            c.push_str(&format!(", resource_metadata=\"{}\"", o.metadata_url));
        }
        if let Some((code, description)) = error {
            c.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        if let Some(scope) = scope {
            c.push_str(&format!(", scope=\"{scope}\""));
        }
        // Every part is configuration or a fixed text; a configured URL with a quote or
        // a control character would be refused by HeaderValue, so fall back to the realm.
        HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("Bearer realm=\"citus-mcp\""))
    }

    fn unauthorized(&self, error: Option<Invalid>) -> Response {
        self.metrics.record_refusal("unauthenticated");
        tracing::info!(
            reason = error.map_or("no_bearer_token", Invalid::code),
            "refused an unauthenticated request"
        );
        let description = error.map_or("a valid bearer token is required", Invalid::description);
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": if error.is_some() { "invalid_token" } else { "unauthorized" },
                "error_description": description}),
        );
        let challenge = self.challenge(error.map(|e| ("invalid_token", e.description())), None);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        r
    }

    /// 403 for a call outside the grant: a JSON-RPC error for its id, and the scopes
    /// that would allow it when OAuth is configured. `what` is `None` for a token that
    /// grants nothing at all.
    fn forbidden(
        &self,
        id: Value,
        holder: &str,
        what: Option<(&str, &str, Safety)>,
        cluster: Option<&str>,
    ) -> Response {
        let message = match what {
            Some((what, _, _)) => {
                format!("the token `{holder}` may not call `{}`", echo::cap(what))
            }
            None => format!(
                "the token `{}` grants no tool here: none of its scopes is configured, or its \
                 grants are for other clusters",
                echo::cap(holder)
            ),
        };
        let scope = self.oauth.as_ref().map(|o| match what {
            Some((_, tool, safety)) => o.scopes_allowing(tool, safety, cluster).join(" "),
            None => o.scopes_supported().join(" "),
        });
        let mut r = json_response(
            StatusCode::FORBIDDEN,
            &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32003, "message": message}}),
        );
        let challenge = self.challenge(
            Some(("insufficient_scope", "the token does not grant this call")),
            scope.as_deref().filter(|s| !s.is_empty()),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        r
    }
}

/// The protected-resource metadata (RFC 9728); 404 without OAuth.
fn resource_metadata(s: &Shared) -> Response {
    match &s.oauth {
        Some(o) => json_response(StatusCode::OK, &o.metadata()),
        None => text(StatusCode::NOT_FOUND, "no OAuth configured\n"),
    }
}

/// A message of a POST body the grant does not cover.
struct Refusal {
    id: Value,
    /// What it asked for: a tool name, or a method.
    what: String,
    /// The tool and class a grant must allow ("" and read-only for the methods that
    /// run read-only queries of any tool).
    tool: String,
    safety: Safety,
}

/// The first message of a POST body the grant does not cover. A body that does not
/// parse, or a tool no one may see, goes on to rmcp and the engine, which answer it as
/// for any caller.
fn refused(engine: &Engine, grant: &Grant, body: &[u8]) -> Option<Refusal> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let messages = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    let registry = engine.registry();
    messages.into_iter().find_map(|m| {
        let method = m.get("method")?.as_str()?;
        let id = m.get("id").cloned().unwrap_or(Value::Null);
        match method {
            "tools/call" => {
                let name = m.pointer("/params/name")?.as_str()?;
                let tool = registry.tools.get(name).filter(|t| engine.visible(t))?;
                (!grant.allows(name, tool.spec.safety)).then(|| Refusal {
                    id,
                    what: name.to_string(),
                    tool: name.to_string(),
                    safety: tool.spec.safety,
                })
            }
            // A resource is read by calling the tool behind its URI: the same grant.
            "resources/read" => {
                let uri = m.pointer("/params/uri")?.as_str()?;
                let (tool, safety) = engine.resource_tool(uri)?;
                (!grant.allows(&tool, safety)).then(|| Refusal {
                    id,
                    what: tool.clone(),
                    tool,
                    safety,
                })
            }
            // Completions run read-only queries of the tools whose arguments they complete.
            "completion/complete" => {
                (!grant.classes.contains(&Safety::ReadOnly)).then(|| Refusal {
                    id,
                    what: method.to_string(),
                    tool: String::new(),
                    safety: Safety::ReadOnly,
                })
            }
            _ => None,
        }
    })
}

/// What makes a POST body no JSON-RPC message rmcp could read, as a JSON-RPC error (code,
/// message): rmcp would answer 415 with plain text, which a client cannot match to its
/// request. Not JSON (-32700), a batch (MCP has none since 2025-06-18), or a request whose
/// id is no id (-32600).
fn unreadable(body: &[u8]) -> Option<(i64, String)> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some((
                -32700,
                format!("parse error: {}", echo::cap(&e.to_string())),
            ));
        }
    };
    match &v {
        Value::Array(_) => Some((
            -32600,
            "batches are not supported; send one message per request".into(),
        )),
        message if crate::stdio::bad_request_id(message).is_some() => Some((
            -32600,
            "invalid request: the id must be a string or an integer".into(),
        )),
        _ => None,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = text(status, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 200 once every coordinator has answered within the last minute (`Db::facts` caches
/// for that long); 503 otherwise, without the reason (this page needs no token). With
/// clusters, one line per cluster: `NAME: ready` or why not.
async fn readyz(s: &Shared) -> Response {
    let checks = s.served.iter().map(|c| async move {
        let state = match c.engine.db() {
            None => Err("no coordinator configured"),
            Some(db) => match tokio::time::timeout(Duration::from_secs(5), db.facts()).await {
                Ok(Ok(_)) => Ok("ready"),
                Ok(Err(e)) => {
                    tracing::debug!(cluster = c.name.as_deref(), "not ready: {e}");
                    Err("coordinator not reachable")
                }
                Err(_) => Err("coordinator did not answer"),
            },
        };
        (c.name.as_deref(), state)
    });
    let states = futures_util::future::join_all(checks).await;
    let ready = states.iter().all(|(_, st)| st.is_ok());
    let body: String = states
        .iter()
        .map(|(name, st)| {
            let text = st.unwrap_or_else(|e| e);
            match name {
                Some(n) => format!("{n}: {text}\n"),
                None => format!("{text}\n"),
            }
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, body)
}

fn metrics_page(s: &Shared) -> Response {
    let pools: Vec<PoolGauge> = s
        .served
        .iter()
        .filter_map(|c| {
            let u = c.engine.db()?.pool_use();
            Some(PoolGauge {
                cluster: c.name.clone().unwrap_or_default(),
                open: u.open,
                idle: u.idle,
                max: u.max,
                waiting: u.waiting,
            })
        })
        .collect();
    // Every cluster's engine takes every snapshot: one count of reloads.
    let page = s
        .metrics
        .render(s.served.first().map_or(0, |c| c.engine.swaps()), &pools);
    let mut r = text(StatusCode::OK, page);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_matches_hosts_and_origins_as_the_mcp_endpoints_do() {
        let site = Site::new(
            &[
                "localhost".into(),
                "::1".into(),
                "mcp.example.com:8443".into(),
            ],
            &LOOPBACK_ORIGINS.map(String::from),
        );
        let allows = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            site.allows(&h)
        };
        assert!(
            allows(&[("host", "localhost:8080")]),
            "any port of a bare name"
        );
        assert!(allows(&[("host", "LOCALHOST")]));
        assert!(allows(&[("host", "[::1]:9")]));
        assert!(allows(&[("host", "mcp.example.com:8443")]));
        assert!(
            !allows(&[("host", "mcp.example.com:8444")]),
            "the named port only"
        );
        assert!(!allows(&[("host", "localhost.evil.example")]));
        assert!(!allows(&[]), "no Host");
        assert!(allows(&[
            ("host", "localhost"),
            ("origin", "http://localhost:6274")
        ]));
        assert!(allows(&[
            ("host", "localhost"),
            ("origin", "https://[::1]:1")
        ]));
        // A named origin's default port follows its scheme, whatever its case.
        let named = Site::new(&["localhost".into()], &["https://app.example".into()]);
        let origin = |o: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("localhost"));
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            named.allows(&h)
        };
        assert!(origin("HTTPS://APP.example"));
        assert!(origin("https://app.example:443"));
        assert!(!origin("https://app.example:80"));
        assert!(!origin("http://app.example"));
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost.evil.example:80",
            "file://",
        ] {
            assert!(
                !allows(&[("host", "localhost"), ("origin", origin)]),
                "{origin}"
            );
        }
    }

    #[test]
    fn listen_addresses_parse_and_non_loopback_needs_tokens() {
        assert_eq!(
            listen_address("localhost:8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert!(listen_address("[::1]:1").unwrap().ip().is_loopback());
        assert!(matches!(
            listen_address("example.com:80"),
            Err(HttpError::Address(_))
        ));
        let open = HttpConfig {
            listen: Some("0.0.0.0:8080".into()),
            ..HttpConfig::default()
        };
        let e = Prepared::new(&open).err().unwrap();
        assert!(matches!(e, HttpError::Unauthenticated(_)), "{e}");
        assert!(e.to_string().contains("http.tokens"), "{e}");
        let half_tls = HttpConfig {
            tls_cert: Some("/x/cert.pem".into()),
            ..HttpConfig::default()
        };
        let e = Prepared::new(&half_tls).err().unwrap();
        assert!(
            e.to_string()
                .contains("http.tls_cert is set but http.tls_key is not"),
            "{e}"
        );
        let with_token = HttpConfig {
            tokens: vec![TokenConfig {
                name: "ops".into(),
                sha256: auth::hash_hex("t"),
                classes: vec![Safety::ReadOnly],
                tools: vec![],
                clusters: vec![],
            }],
            ..open
        };
        assert!(Prepared::new(&with_token).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        )
        .unwrap();
        let with_oauth = HttpConfig {
            listen: Some("0.0.0.0:8080".into()),
            oauth: Some(
                serde_json::from_value(json!({"issuer": "https://issuer.example",
                    "audience": "https://mcp.example/mcp", "jwks_file": jwks}))
                .unwrap(),
            ),
            ..HttpConfig::default()
        };
        assert!(Prepared::new(&with_oauth).is_ok());
    }

    #[test]
    fn oauth_and_tls_come_from_the_environment_too() {
        let env = std::collections::BTreeMap::from([
            (
                "CITUS_MCP_HTTP_OAUTH".to_string(),
                r#"{"issuer": "https://i.example", "audience": "https://m.example/mcp",
                    "jwks_url": "https://i.example/jwks", "scopes": {"db:read": {"classes": ["read_only"]}}}"#
                    .to_string(),
            ),
            ("CITUS_MCP_HTTP_TLS_CERT".to_string(), "/etc/c.pem".to_string()),
            ("CITUS_MCP_HTTP_TLS_KEY".to_string(), "/etc/k.pem".to_string()),
        ]);
        let c = crate::config::load(None, &env, &Default::default()).unwrap();
        let oauth = c.http.oauth.unwrap();
        assert_eq!(oauth.audience, "https://m.example/mcp");
        assert_eq!(oauth.scopes["db:read"].classes, vec![Safety::ReadOnly]);
        assert_eq!(oauth.identity_claim, "sub");
        assert_eq!(c.http.tls_key.unwrap().to_str(), Some("/etc/k.pem"));
        let bad = std::collections::BTreeMap::from([(
            "CITUS_MCP_HTTP_OAUTH".to_string(),
            r#"{"issuer": "https://i.example"}"#.to_string(),
        )]);
        let e = crate::config::load(None, &bad, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("audience"), "{e}");
        assert!(Prepared::new(&HttpConfig::default()).is_ok());
    }
}
