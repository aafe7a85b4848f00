//! The MCP face of the engine: an rmcp `ServerHandler` over the shared registry.
//!
//! It converts engine types to MCP types and back, and forwards `list_changed`
//! notifications. It never sees SQL: tool calls go to [`Engine::answer`].

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); we still advertise nothing else from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::model::{
    BooleanSchema, ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction,
    ElicitationSchema, PrimitiveSchemaDefinition, ServerRequest,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, ContentBlock, ErrorData, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference,
    Resource, ResourceContents, ResourceTemplate, Role as McpRole, ServerCapabilities,
    ServerConfig, SubscriptionFilter, Tool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::compile::CompiledTool;
use crate::echo;
use crate::engine::{
    Caller, CallerFuture, CompletionRef, Engine, ErrorCode, Structured, ToolError,
};
use crate::manual;
use crate::metrics::{self, CallRecord, Metrics};
use crate::spec::{Role, Safety};
use crate::stdio::Outbox;

/// How long after a session's `initialized` jsonschema's shared parts are built.
const WARM_UP_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// What changed in the registry, for `list_changed` notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Tools,
    Prompts,
    Resources,
}

/// The authenticated name of an HTTP caller: the transport puts it in the request's
/// extensions, and it reaches the engine as [`Caller::identity`] (the approval audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerName(pub String);

/// What an authenticated HTTP caller may call (its token's grant): the transport puts it
/// in the request's extensions, and `tools/list` shows only those tools.
#[derive(Debug, Clone)]
pub struct CallerGrant(pub Arc<crate::httpd::auth::Grant>);

/// Whether the caller may call `t` (over HTTP, what its token grants; no grant: anything).
fn granted(grant: Option<&crate::httpd::auth::Grant>, t: &CompiledTool) -> bool {
    grant.is_none_or(|g| g.allows(&t.spec.name, t.spec.safety))
}

/// The caller's grant, when the HTTP transport authenticated one for this request.
fn caller_grant(ctx: &RequestContext<RoleServer>) -> Option<Arc<crate::httpd::auth::Grant>> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<CallerGrant>())
        .map(|g| g.0.clone())
}

/// The caller's name, when the HTTP transport authenticated one for this request.
fn caller_name(ctx: &RequestContext<RoleServer>) -> Option<String> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<CallerName>())
        .map(|n| n.0.clone())
}

/// What one HTTP caller may hold at once. Calls, resource reads and completions running:
/// `http.max_calls_per_caller`, beyond which a caller gets TOO_MANY_CALLS at once, so that one
/// token holder cannot take every connection of the pool (`pool_size`) and leave the others
/// waiting until their calls time out; only authenticated callers have names, so without
/// tokens only the pool limits. `subscriptions/listen` streams (2026-07-28):
/// `http.max_sessions_per_caller`, as sessions (httpd/sessions.rs), everyone alike without
/// tokens: one more ends the caller's oldest stream, which a client would reopen.
pub struct CallerLimits {
    calls: usize,
    streams: usize,
    running: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Semaphore>>>,
    listening: Arc<Listening>,
    opened: std::sync::atomic::AtomicU64,
}

impl CallerLimits {
    pub fn new(calls: usize, streams: usize) -> CallerLimits {
        CallerLimits {
            calls: calls.max(1),
            streams: streams.max(1),
            running: std::sync::Mutex::default(),
            listening: Arc::default(),
            opened: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A place for one more call of `caller`, held until it is dropped.
    fn enter(&self, caller: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ToolError> {
        let places = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            // The caller's name is copied once, at its first call.
            match running.get(caller) {
                Some(places) => places.clone(),
                None => running
                    .entry(caller.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.calls)))
                    .clone(),
            }
        };
        places.try_acquire_owned().map_err(|_| {
            ToolError::new(
                ErrorCode::TooManyCalls,
                format!(
                    "`{}` has {} calls running already, as many as one caller may",
                    echo::cap(caller),
                    self.calls
                ),
            )
            .hint(
                "wait for one of them to finish, then call again (the limit is \
                 http.max_calls_per_caller)",
            )
        })
    }

    /// Registers a stream of `caller`: the token ends it when the caller opens one too many;
    /// the guard forgets it when it ends.
    fn listen(&self, caller: &str) -> (CancellationToken, StreamGuard) {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut all = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        let mine = all.entry(caller.to_string()).or_default();
        mine.push((n, stop.clone()));
        while mine.len() > self.streams {
            let (_, oldest) = mine.remove(0);
            tracing::debug!(caller = %caller, "ending the caller's oldest subscriptions/listen stream");
            oldest.cancel();
        }
        let guard = StreamGuard {
            all: self.listening.clone(),
            caller: caller.to_string(),
            n,
        };
        (stop, guard)
    }
}

/// Each caller's open `subscriptions/listen` streams, oldest first: (number, how to end it).
type Listening = std::sync::Mutex<BTreeMap<String, Vec<(u64, CancellationToken)>>>;

/// Forgets a `subscriptions/listen` stream when it ends.
struct StreamGuard {
    all: Arc<Listening>,
    caller: String,
    n: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = all.get_mut(&self.caller) {
            mine.retain(|(n, _)| *n != self.n);
            if mine.is_empty() {
                all.remove(&self.caller);
            }
        }
    }
}

/// The client of one tool call, as the engine sees it.
struct McpCaller {
    peer: rmcp::Peer<RoleServer>,
    progress: Option<rmcp::model::ProgressToken>,
    identity: Option<String>,
}

impl Caller for McpCaller {
    fn progress<'a>(
        &'a self,
        done: f64,
        total: Option<f64>,
        message: &'a str,
    ) -> CallerFuture<'a, ()> {
        Box::pin(async move {
            let Some(token) = self.progress.clone() else {
                return;
            };
            let mut p =
                rmcp::model::ProgressNotificationParam::new(token, done).with_message(message);
            if let Some(t) = total {
                p = p.with_total(t);
            }
            // A client that went away gets no progress; the call itself notices.
            if let Err(e) = self.peer.notify_progress(p).await {
                tracing::debug!("progress not delivered: {e}");
            }
        })
    }

    fn confirm<'a>(&'a self, message: &'a str) -> CallerFuture<'a, Option<bool>> {
        Box::pin(async move {
            // Only a client that declared form elicitation can ask its person. Sessions
            // of protocol 2026-07-28 store no client capabilities and may not send
            // server-to-client requests at all, so they count as unable to ask.
            let caps = self
                .peer
                .peer_info()
                .and_then(|i| i.capabilities.elicitation.clone())?;
            if caps.form.is_none() && caps.url.is_some() {
                return None;
            }
            // rmcp's typed `elicit` helpers need its `elicitation` feature (which pulls
            // in the `url` crate and its ICU tables); the request itself is part of the
            // model and is sent as any other.
            let approve = BooleanSchema::new()
                .title("Approve")
                .description("Approve this one call")
                .with_default(false);
            let mut schema = ElicitationSchema::new(BTreeMap::from([(
                "approve".to_string(),
                PrimitiveSchemaDefinition::Boolean(approve),
            )]));
            schema.required = Some(vec!["approve".to_string()]);
            let params = ElicitRequestParams::FormElicitationParams {
                meta: None,
                message: message.to_string(),
                requested_schema: schema,
            };
            let answer = self
                .peer
                .send_request(ServerRequest::ElicitRequest(ElicitRequest::new(params)))
                .await;
            match answer {
                // Accepting the form is not enough: the box must be ticked.
                Ok(ClientResult::ElicitResult(r)) => Some(
                    r.action == ElicitationAction::Accept
                        && r.content
                            .as_ref()
                            .and_then(|c| c.get("approve"))
                            .and_then(Value::as_bool)
                            == Some(true),
                ),
                Ok(_) => Some(false),
                // A client that can ask but failed to is not a yes, and not a client
                // that cannot ask (which allow_self_issue would let through).
                Err(e) => {
                    tracing::warn!("elicitation failed: {e}");
                    Some(false)
                }
            }
        })
    }

    fn identity(&self) -> Option<String> {
        self.identity.clone()
    }
}

/// The handler; cheap to clone, one per session.
#[derive(Clone)]
pub struct Server {
    engine: Arc<Engine>,
    changes: broadcast::Sender<Change>,
    metrics: Option<Arc<Metrics>>,
    /// What each HTTP caller may hold at once (nothing over stdio).
    limit: Option<Arc<CallerLimits>>,
    /// Where SQL tools' structured results go when the transport writes them itself.
    outbox: Option<Outbox>,
    /// Cancelled when a shutting-down HTTP server gives up on the calls still running:
    /// each then answers as cancelled, before the sessions close.
    shutdown: Option<CancellationToken>,
}

impl Server {
    pub fn new(engine: Arc<Engine>, changes: broadcast::Sender<Change>) -> Server {
        Server {
            engine,
            changes,
            metrics: None,
            limit: None,
            outbox: None,
            shutdown: None,
        }
    }

    /// Hands SQL tools' structured results to the stdio transport through `outbox`, which
    /// serializes them from their rows (see [`Outbox`]).
    pub fn with_outbox(mut self, outbox: Outbox) -> Server {
        self.outbox = Some(outbox);
        self
    }

    /// Limits what each HTTP caller holds at once: calls running, listen streams.
    pub fn with_caller_limits(mut self, limit: Arc<CallerLimits>) -> Server {
        self.limit = Some(limit);
        self
    }

    /// A place for one more call of this request's caller, if callers are limited.
    fn enter(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ToolError> {
        match (&self.limit, caller_name(ctx)) {
            (Some(limit), Some(caller)) => limit.enter(&caller).map(Some),
            _ => Ok(None),
        }
    }

    /// Counts every tool call in `metrics` (served at `/metrics` over HTTP).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Server {
        self.metrics = Some(metrics);
        self
    }

    /// Calls still running when `stop` is cancelled answer as cancelled.
    pub fn with_shutdown(mut self, stop: CancellationToken) -> Server {
        self.shutdown = Some(stop);
        self
    }
}

/// A tool as MCP lists it: schemas from YAML, annotations from the safety class. A tool
/// with `details` says where its manual is, so the short description can stay short.
///
/// MCP reads `destructiveHint` and `idempotentHint` only when `readOnlyHint` is false, so a
/// read-only tool's entry leaves them out (every listing costs the model's context). A
/// read_only or plan tool with `idempotent: false` acts outside the database (the approval
/// tool issues a token): neither read-only nor idempotent, never destructive.
pub fn mcp_tool(t: &CompiledTool) -> Tool {
    let spec = &t.spec;
    let annotations = match (spec.safety, spec.idempotent) {
        (Safety::Execute, _) => ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(spec.idempotent.unwrap_or(false)),
        (_, Some(false)) => ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false),
        _ => ToolAnnotations::new().read_only(true),
    }
    .open_world(false);
    let mut description = spec.description.trim().to_string();
    if spec.details.is_some() {
        description.push_str(&format!(" Manual: {}", manual::uri(&spec.name)));
    }
    let mut tool = Tool::new(spec.name.clone(), description, t.input_schema.clone())
        .with_annotations(annotations);
    if let Some(title) = &spec.title {
        tool = tool.with_title(title.clone());
    }
    if let Some(out) = &t.output_schema {
        tool = tool.with_raw_output_schema(out.clone());
    }
    tool
}

/// Where to start, by task; the server's instructions name only the tools it serves.
const GUIDE: &[(&str, &[&str])] = &[
    (
        "Start with",
        &[
            "citus_cluster_summary",
            "list_nodes",
            "citus_list_distributed_tables",
            "citus_table_inspector",
        ],
    ),
    (
        "for health and skew",
        &[
            "citus_advisor",
            "citus_shard_skew_report",
            "citus_shard_heatmap",
        ],
    ),
    (
        "for what is running",
        &[
            "citus_activity",
            "citus_lock_inspector",
            "citus_job_inspector",
        ],
    ),
    (
        "for how a statement is distributed",
        &["citus_explain_query"],
    ),
];

/// The bytes a tool costs in every `tools/list`: its entry as compact JSON, which is
/// what a client receives and, in most clients, what the model reads.
pub fn list_entry_bytes(t: &CompiledTool) -> usize {
    serde_json::to_vec(&mcp_tool(t)).map_or(0, |v| v.len())
}

impl Server {
    /// The resources of the visible tools: plain URIs, or URI templates.
    /// The resources (or templates) of the tools served; over HTTP, only those of tools
    /// the caller's token may call, as for `tools/list`.
    fn resources(
        &self,
        templates: bool,
        ctx: &RequestContext<RoleServer>,
    ) -> Vec<(crate::spec::ResourceSpec, std::sync::Arc<CompiledTool>)> {
        let grant = caller_grant(ctx);
        self.engine
            .visible_tools()
            .into_iter()
            .filter(|t| granted(grant.as_deref(), t))
            .flat_map(|t| {
                let specs: Vec<_> = t
                    .spec
                    .resources
                    .iter()
                    .filter(|r| r.variables().is_empty() != templates)
                    .cloned()
                    .collect();
                specs.into_iter().map(move |r| (r, t.clone()))
            })
            .collect()
    }
}

impl Server {
    /// The instructions sent at initialization: where to start, among the tools served.
    fn instructions(&self) -> String {
        let served: Vec<String> = self
            .engine
            .visible_tools()
            .iter()
            .map(|t| t.spec.name.clone())
            .collect();
        let steps: Vec<String> = GUIDE
            .iter()
            .filter_map(|(intro, tools)| {
                let named: Vec<&str> = tools
                    .iter()
                    .copied()
                    .filter(|t| served.iter().any(|s| s == t))
                    .collect();
                (!named.is_empty()).then(|| format!("{intro} {}", named.join(", ")))
            })
            .collect();
        let mut s = String::from("Inspect a Citus cluster (distributed PostgreSQL).");
        if let Some(name) = &self.engine.settings.cluster {
            s.push_str(&format!(
                " This endpoint serves the cluster `{name}`; the same server may serve others at other URLs."
            ));
        }
        if !steps.is_empty() {
            s.push_str(&format!(" {}.", steps.join("; ")));
        }
        s.push_str(
            " Everything is read-only unless the server runs in admin mode. Each tool's manual \
             (result columns, rules, examples) is the resource citus://tools/{name}. The prompts \
             are guided workflows.",
        );
        s
    }

    /// A served tool's manual as a markdown resource; tools this server does not serve
    /// (another mode, a toolset not selected) or the caller's token does not grant have
    /// none, as they have no tools/list entry.
    fn read_manual(
        &self,
        name: &str,
        uri: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let registry = self.engine.registry();
        let grant = caller_grant(ctx);
        let tool = registry
            .tools
            .get(name)
            .filter(|t| self.engine.visible(t) && granted(grant.as_deref(), t))
            .ok_or_else(|| {
                ErrorData::resource_not_found(
                    echo::cap(&format!(
                        "no tool `{name}` is served here; tools/list names the tools this server offers"
                    ))
                    .into_owned(),
                    None,
                )
            })?;
        let contents = ResourceContents::text(manual::markdown(tool), uri.to_string())
            .with_mime_type("text/markdown");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

fn describe_resource(r: &crate::spec::ResourceSpec, t: &CompiledTool) -> String {
    r.description
        .clone()
        .unwrap_or_else(|| format!("The result of the `{}` tool as JSON.", t.spec.name))
}

fn resource(r: &crate::spec::ResourceSpec, t: &CompiledTool) -> Resource {
    let mut res = Resource::new(r.uri.clone(), r.name.clone())
        .with_mime_type("application/json")
        .with_description(describe_resource(r, t));
    if let Some(title) = &r.title {
        res = res.with_title(title.clone());
    }
    res
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_completions()
            .build();
        ServerConfig::new(caps)
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(self.instructions())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // An HTTP caller sees only what its token may call.
        let grant = caller_grant(&ctx);
        Ok(ListToolsResult::with_all_items(
            self.engine
                .visible_tools()
                .iter()
                .filter(|t| granted(grant.as_deref(), t))
                .map(|t| mcp_tool(t))
                .collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.engine
            .registry()
            .tools
            .get(name)
            .filter(|t| self.engine.visible(t))
            .map(|t| mcp_tool(t))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = req.arguments.map(Value::Object).unwrap_or(Value::Null);
        let caller = McpCaller {
            peer: ctx.peer.clone(),
            progress: ctx.meta.get_progress_token(),
            identity: caller_name(&ctx),
        };
        let _running = self.metrics.as_ref().map(|m| m.start_call());
        let started = std::time::Instant::now();
        let result = match self.enter(&ctx) {
            Ok(_place) => {
                let answer = self.engine.answer(&req.name, args, &ctx.ct, &caller);
                match &self.shutdown {
                    None => answer.await,
                    // Dropped, the call cancels its statements (the db layer's guard).
                    Some(stop) => tokio::select! {
                        r = answer => r,
                        () = stop.cancelled() => Err(ToolError::new(
                            ErrorCode::Cancelled,
                            "the server is shutting down: the call was cancelled",
                        )
                        .hint("call again once the server is back")),
                    },
                }
                .map_err(ToolError::capped)
            }
            Err(e) => Err(e),
        };
        if let Some(m) = &self.metrics {
            // Only names the registry knows become labels: callers cannot grow the page.
            let known = self.engine.registry().tools.contains_key(req.name.as_ref());
            m.record_call(&CallRecord {
                tool: if known {
                    &req.name
                } else {
                    metrics::UNKNOWN_TOOL
                },
                outcome: result.as_ref().map_or_else(|e| e.code.as_str(), |_| "ok"),
                elapsed: started.elapsed(),
                result: result.as_ref().ok().map(|o| &o.structured),
            });
        }
        match result {
            Ok(out) => {
                let mut r = CallToolResult::success(vec![ContentBlock::text(out.text)]);
                match (out.structured, &self.outbox) {
                    (rows @ Structured::Rows { .. }, Some(outbox)) => outbox.put(ctx.id, rows),
                    (structured, _) => r.structured_content = Some(structured.into_value()),
                }
                Ok(r.into())
            }
            Err(e) if e.code == ErrorCode::UnknownTool => {
                Err(ErrorData::invalid_params(e.message, None))
            }
            Err(e) => {
                tracing::info!(tool = %echo::cap(&req.name), code = e.code.as_str(), "tool call failed: {}", crate::redact::shown(&e.message));
                let mut r = CallToolResult::error(vec![ContentBlock::text(e.text())]);
                r.structured_content = Some(serde_json::json!({"error": e}));
                Ok(r.into())
            }
        }
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let prompts = self
            .engine
            .visible_prompts()
            .iter()
            .map(|p| {
                let args: Vec<PromptArgument> = p
                    .spec
                    .arguments
                    .iter()
                    .map(|a| {
                        let arg = PromptArgument::new(a.name.clone()).with_required(a.required);
                        match &a.description {
                            Some(d) => arg.with_description(d.clone()),
                            None => arg,
                        }
                    })
                    .collect();
                let prompt = Prompt::new(
                    p.spec.name.clone(),
                    Some(p.spec.description.trim().to_string()),
                    Some(args),
                );
                match &p.spec.title {
                    Some(t) => prompt.with_title(t.clone()),
                    None => prompt,
                }
            })
            .collect();
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        req: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let registry = self.engine.registry();
        let prompt = registry.prompts.get(&req.name).ok_or_else(|| {
            ErrorData::invalid_params(
                echo::cap(&format!("unknown prompt `{}`", req.name)).into_owned(),
                None,
            )
        })?;
        if let Some(tool) = self.engine.prompt_needs_unserved_tool(prompt) {
            return Err(ErrorData::invalid_params(
                format!(
                    "prompt `{}` is not served: it uses `{tool}`, outside the toolsets this server serves",
                    prompt.spec.name
                ),
                None,
            ));
        }
        let args: serde_json::Map<String, Value> =
            req.arguments.unwrap_or_default().into_iter().collect();
        let messages = prompt
            .render(&args)
            .map_err(|e| ErrorData::invalid_params(echo::cap(&e).into_owned(), None))?;
        let messages = messages
            .into_iter()
            .map(|(role, text)| {
                PromptMessage::new_text(
                    if role == Role::User {
                        McpRole::User
                    } else {
                        McpRole::Assistant
                    },
                    text,
                )
            })
            .collect();
        Ok(GetPromptResult::new(messages)
            .with_description(prompt.spec.description.trim().to_string())
            .into())
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resources = self
            .resources(false, &ctx)
            .into_iter()
            .map(|(r, t)| resource(&r, &t))
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let templates = self
            .resources(true, &ctx)
            .into_iter()
            .map(|(r, t)| {
                let tpl = ResourceTemplate::new(r.uri.clone(), r.name.clone())
                    .with_mime_type("application/json")
                    .with_description(describe_resource(&r, &t));
                match &r.title {
                    Some(title) => tpl.with_title(title.clone()),
                    None => tpl,
                }
            })
            .chain(std::iter::once(
                ResourceTemplate::new(manual::URI_TEMPLATE, "tool-manual")
                    .with_title("Tool manual")
                    .with_mime_type("text/markdown")
                    .with_description(
                        "The manual of a tool this server serves: what it is for, every parameter, \
                         the result's columns and rules, paging, examples.",
                    ),
            ))
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if let Some(name) = manual::tool_of(&req.uri) {
            return self.read_manual(name, &req.uri, &ctx);
        }
        let _place = self.enter(&ctx).map_err(|e| {
            ErrorData::internal_error(e.text(), Some(serde_json::json!({"error": e})))
        })?;
        match self
            .engine
            .read_resource(&req.uri, &ctx.ct)
            .await
            .map(|r| r.map_err(ToolError::capped))
        {
            None => Err(ErrorData::resource_not_found(
                echo::cap(&format!("no resource `{}`", req.uri)).into_owned(),
                None,
            )),
            Some(Ok(out)) => {
                let text = serde_json::to_string(&out.structured).unwrap_or_default();
                let contents = ResourceContents::text(text, req.uri.clone())
                    .with_mime_type("application/json");
                Ok(ReadResourceResult::new(vec![contents]).into())
            }
            Some(Err(e)) if e.code == ErrorCode::NotFound => {
                Err(ErrorData::resource_not_found(e.text(), None))
            }
            // A URI whose variable the tool refuses: the request's params are at fault.
            Some(Err(e)) if e.code == ErrorCode::InvalidArgument => Err(ErrorData::invalid_params(
                e.text(),
                Some(serde_json::json!({"error": e})),
            )),
            // The rest (a timeout, an unreachable node) is the server's side; the stable
            // code is in `data.error.code`.
            Some(Err(e)) => Err(ErrorData::internal_error(
                e.text(),
                Some(serde_json::json!({"error": e})),
            )),
        }
    }

    async fn complete(
        &self,
        req: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        if let Reference::Resource(r) = &req.r#ref
            && r.uri == manual::URI_TEMPLATE
        {
            let grant = caller_grant(&ctx);
            let values: Vec<String> = self
                .engine
                .visible_tools()
                .iter()
                .filter(|t| granted(grant.as_deref(), t))
                .map(|t| t.spec.name.clone())
                .filter(|n| n.starts_with(&req.argument.value))
                .collect();
            let info = CompletionInfo::with_all_values(values)
                .map_err(|e| ErrorData::internal_error(e, None))?;
            return Ok(CompleteResult::new(info));
        }
        // A caller with all its calls running gets no suggestions rather than an error.
        let Ok(_place) = self.enter(&ctx) else {
            return Ok(CompleteResult::new(CompletionInfo::default()));
        };
        let target = match &req.r#ref {
            Reference::Prompt(p) => CompletionRef::Prompt(&p.name),
            Reference::Resource(r) => CompletionRef::Resource(&r.uri),
            _ => return Ok(CompleteResult::new(CompletionInfo::default())),
        };
        let values = self
            .engine
            .complete(target, &req.argument.name, &req.argument.value)
            .await;
        let info = CompletionInfo::with_all_values(values)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        // A tool compiles on its first call, and the process's first compile also builds
        // what jsonschema keeps for all (issue #8). Build that once the new session is idle
        // (a client lists tools, prompts and resources at once, and calls later), as a task
        // of the runtime: a thread of its own would put it in a malloc arena of its own.
        static WARMING: std::sync::Once = std::sync::Once::new();
        WARMING.call_once(|| {
            tokio::spawn(async {
                tokio::time::sleep(WARM_UP_AFTER).await;
                crate::compile::warm_up();
            });
        });
        // Legacy sessions: push list_changed through this session's peer until it closes.
        let peer = ctx.peer.clone();
        let mut rx = self.changes.subscribe();
        tokio::spawn(async move {
            loop {
                let change = match rx.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(_)) => Change::Tools,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let sent = match change {
                    Change::Tools => peer.notify_tool_list_changed().await,
                    Change::Prompts => peer.notify_prompt_list_changed().await,
                    Change::Resources => peer.notify_resource_list_changed().await,
                };
                if sent.is_err() || peer.is_transport_closed() {
                    break;
                }
            }
        });
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, ctx: SubscriptionContext) -> Result<(), ErrorData> {
        // 2026-07-28 sessions: notifications travel on the client's subscriptions/listen stream.
        let (ended, _open) = match &self.limit {
            Some(limit) => {
                let (stop, guard) =
                    limit.listen(&caller_name(ctx.request_context()).unwrap_or_default());
                (stop, Some(guard))
            }
            None => (CancellationToken::new(), None),
        };
        let mut rx = self.changes.subscribe();
        loop {
            tokio::select! {
                () = ctx.cancelled() => return Ok(()),
                // The caller opened more streams than it may: this, its oldest, ends.
                () = ended.cancelled() => return Ok(()),
                change = rx.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        Err(broadcast::error::RecvError::Lagged(_)) => Change::Tools,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    // NotificationNotAccepted only means the client did not ask for that category.
                    let _ = match change {
                        Change::Tools => ctx.sink().notify_tool_list_changed().await,
                        Change::Prompts => ctx.sink().notify_prompt_list_changed().await,
                        Change::Resources => ctx.sink().notify_resource_list_changed().await,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, Sources};

    /// The average a built-in tool may cost in `tools/list` (issue #8: a session pays for
    /// every entry before the user asks anything; 1 KB is about 250 tokens).
    const AVERAGE_ENTRY_BYTES: usize = 1024;
    /// What any one built-in tool may cost: past this, move text into `details`.
    const ENTRY_CEILING_BYTES: usize = 2048;

    /// Tidy: every built-in tool file, whoever adds it, fits the context budget.
    #[test]
    fn tools_list_fits_the_context_budget() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let sizes: Vec<(usize, &str)> = reg
            .tools
            .values()
            .map(|t| (list_entry_bytes(t), t.spec.name.as_str()))
            .collect();
        let over: Vec<String> = sizes
            .iter()
            .filter(|(bytes, _)| *bytes > ENTRY_CEILING_BYTES)
            .map(|(bytes, name)| format!("{name}: {bytes} bytes"))
            .collect();
        assert!(
            over.is_empty(),
            "tools/list entries over {ENTRY_CEILING_BYTES} bytes (move result columns and rules to `details`): {}",
            over.join(", ")
        );
        let total: usize = sizes.iter().map(|(b, _)| b).sum();
        let average = total / sizes.len().max(1);
        let mut biggest = sizes.clone();
        biggest.sort_unstable_by(|a, b| b.cmp(a));
        let biggest: Vec<String> = biggest
            .iter()
            .take(5)
            .map(|(b, n)| format!("{n} {b}"))
            .collect();
        assert!(
            average <= AVERAGE_ENTRY_BYTES,
            "tools/list averages {average} bytes per tool ({total} for {}), over {AVERAGE_ENTRY_BYTES}; biggest: {}",
            sizes.len(),
            biggest.join(", ")
        );
    }

    #[test]
    fn a_tool_with_details_points_to_its_manual() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        for t in reg.tools.values() {
            let listed = mcp_tool(t);
            let points = listed
                .description
                .as_deref()
                .is_some_and(|d| d.ends_with(&manual::uri(&t.spec.name)));
            assert_eq!(points, t.spec.details.is_some(), "{}", t.spec.name);
        }
    }
}
