//! Runs one tool call: check → validate arguments → render → execute → shape →
//! truncate → cache.
//!
//! The engine holds the current registry snapshot (swapped whole by the watcher) and
//! the database. It returns [`ToolOutput`] or [`ToolError`]; it knows nothing about MCP.

mod approvals;
mod caller;
mod complete;
mod error;
pub mod plugin;
pub mod shape;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use approvals::{ApprovalFuture, Approvals, Approved, Issued, TOKEN_KEY};
pub use caller::{Caller, CallerFuture, NoCaller};
pub use complete::CompletionRef;
pub use error::{ErrorCode, ToolError};
pub use plugin::{NodeRows, Plugin, PluginCall, PluginFuture, Plugins};
pub use shape::{Answer, Structured, ToolOutput, json_len};

use crate::compile::CompiledTool;
use crate::db::fanout::{FanOutMode, NodeResult, NodeSet};
use crate::db::{Column, Db, Rows, ServerFacts, Statement};
use crate::registry::Registry;
use crate::spec::{Paging, QuerySpec, Safety, Shape, Target};
use crate::toolsets::Toolsets;
use shape::{Page, Part};

/// Who may run what, and the default limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin: bool,
    pub allow_execute: bool,
    pub max_rows: u32,
    pub max_bytes: u32,
    pub statement_timeout_ms: u32,
    pub cache_ttl_s: u64,
    pub enable_caching: bool,
    /// How fan-out tools reach the nodes.
    pub fanout: FanOutMode,
    /// The toolsets served; tools outside them are neither listed nor callable.
    pub toolsets: Toolsets,
    /// The name of the cluster this engine serves, when the server has several.
    pub cluster: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin: false,
            allow_execute: false,
            max_rows: 1000,
            // About 12k tokens: a result fits a client that accepts 25k tokens (Claude
            // Code's default) with room for the conversation (issue #8).
            max_bytes: 50_000,
            statement_timeout_ms: 30_000,
            cache_ttl_s: 5,
            enable_caching: true,
            fanout: FanOutMode::Coordinator,
            toolsets: Toolsets::all(),
            cluster: None,
        }
    }
}

/// The limits one call runs under.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl Settings {
    /// A tool's limits under this server's: the server's are ceilings, and a tool's
    /// own limit applies only where it is lower, so an operator can always tighten
    /// every tool at once.
    pub fn limits(&self, tool: &crate::spec::Limits) -> CallLimits {
        let lower = |own: Option<u32>, ceiling: u32| own.map_or(ceiling, |o| o.min(ceiling));
        CallLimits {
            max_rows: lower(tool.max_rows, self.max_rows) as usize,
            max_bytes: lower(tool.max_bytes, self.max_bytes) as usize,
            timeout: Duration::from_millis(
                lower(tool.timeout_ms, self.statement_timeout_ms).into(),
            ),
        }
    }
}

const CACHE_CAPACITY: usize = 256;

/// The tool-call engine, shared by every session.
pub struct Engine {
    registry: RwLock<Arc<Registry>>,
    db: Option<Db>,
    pub settings: Settings,
    cache: Mutex<HashMap<String, (Instant, Answer)>>,
    plugins: Plugins,
    approvals: Option<Arc<dyn Approvals>>,
    /// How many snapshots `swap` has put in, for the reload counter of `/metrics`.
    swaps: std::sync::atomic::AtomicU64,
}

impl Engine {
    pub fn new(registry: Registry, db: Option<Db>, settings: Settings) -> Engine {
        Engine::sharing(Arc::new(registry), db, settings)
    }

    /// An engine over a snapshot that other engines serve too (one engine per cluster,
    /// one set of tool files).
    pub fn sharing(registry: Arc<Registry>, db: Option<Db>, settings: Settings) -> Engine {
        Engine {
            registry: RwLock::new(registry),
            db,
            settings,
            cache: Mutex::new(HashMap::new()),
            plugins: Plugins::default(),
            approvals: None,
            swaps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times a reload swapped in a new snapshot.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks the approval token of every execute-class call with `approvals`.
    pub fn with_approvals(mut self, approvals: Arc<dyn Approvals>) -> Engine {
        self.approvals = Some(approvals);
        self
    }

    /// The approval gate, when this server issues and checks tokens (admin mode).
    pub fn approvals(&self) -> Option<&dyn Approvals> {
        self.approvals.as_deref()
    }

    /// Serves these Rust tools for tool files that name them in `plugin:`.
    pub fn with_plugins(mut self, plugins: Plugins) -> Engine {
        self.plugins = plugins;
        self
    }

    /// The current snapshot.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().expect("registry lock").clone()
    }

    /// Swaps in a new snapshot; cached results of the old one are dropped.
    pub fn swap(&self, registry: Registry) -> Arc<Registry> {
        self.swap_shared(Arc::new(registry))
    }

    /// Swaps in a snapshot other engines may hold too; cached results are dropped.
    pub fn swap_shared(&self, new: Arc<Registry>) -> Arc<Registry> {
        let old = std::mem::replace(&mut *self.registry.write().expect("registry lock"), new);
        self.cache.lock().expect("cache lock").clear();
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        old
    }

    pub fn db(&self) -> Option<&Db> {
        self.db.as_ref()
    }

    /// Whether a tool is offered to clients under the current mode and toolsets.
    pub fn visible(&self, tool: &CompiledTool) -> bool {
        self.settings.toolsets.serves(&tool.spec)
            && (tool.spec.safety != Safety::Execute
                || (self.settings.admin && self.settings.allow_execute))
            && tool
                .spec
                .plugin
                .as_deref()
                .and_then(|p| self.plugins.get(p))
                .is_none_or(|p| p.served(self))
    }

    /// The tools offered to clients, in name order.
    pub fn visible_tools(&self) -> Vec<Arc<CompiledTool>> {
        self.registry()
            .tools
            .values()
            .filter(|t| self.visible(t))
            .cloned()
            .collect()
    }

    /// The first tool a prompt names (in a code span) that the selected toolsets do not
    /// serve, or `None`. Such a prompt is not offered: its workflow would lead the model
    /// to calls that fail. Tools hidden by the mode (execute tools) do not count, since
    /// prompts say themselves what needs admin mode.
    pub fn prompt_needs_unserved_tool(
        &self,
        prompt: &crate::compile::CompiledPrompt,
    ) -> Option<String> {
        if !self.settings.toolsets.is_selective() {
            return None;
        }
        let registry = self.registry();
        prompt
            .spec
            .messages
            .iter()
            .flat_map(|m| crate::toolsets::names_in_code_spans(&m.text))
            .find(|n| {
                registry
                    .tools
                    .get(*n)
                    .is_some_and(|t| !self.settings.toolsets.serves(&t.spec))
            })
            .map(str::to_string)
    }

    /// The prompts offered to clients, in name order.
    pub fn visible_prompts(&self) -> Vec<Arc<crate::compile::CompiledPrompt>> {
        self.registry()
            .prompts
            .values()
            .filter(|p| self.prompt_needs_unserved_tool(p).is_none())
            .cloned()
            .collect()
    }

    /// Runs a tool by name for a caller that takes no progress and has nobody to ask.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        cancel: &CancellationToken,
    ) -> Result<ToolOutput, ToolError> {
        self.call_as(name, args, cancel, &NoCaller).await
    }

    /// Runs a tool by name on behalf of `caller` (progress, confirmation, identity).
    pub async fn call_as(
        &self,
        name: &str,
        args: Value,
        cancel: &CancellationToken,
        caller: &dyn Caller,
    ) -> Result<ToolOutput, ToolError> {
        let answer = self.answer(name, args, cancel, caller).await?;
        Ok(answer.into_output())
    }

    /// [`Engine::call_as`] for a transport that serializes the structured result itself:
    /// a SQL tool's rows are not built into a JSON value.
    pub async fn answer(
        &self,
        name: &str,
        args: Value,
        cancel: &CancellationToken,
        caller: &dyn Caller,
    ) -> Result<Answer, ToolError> {
        let registry = self.registry();
        let tool = registry.tools.get(name).cloned().ok_or_else(|| {
            ToolError::new(ErrorCode::UnknownTool, format!("unknown tool `{name}`"))
                .hint("call tools/list for the tools this server offers")
        })?;
        // Outside the toolsets comes first: such a tool is not served in any mode, and the
        // person who can change that needs the toolset's name.
        if let Some(refusal) = self.settings.toolsets.refusal(&tool.spec) {
            let served = refusal.served.join(", ");
            return Err(match refusal.toolset {
                Some(t) => ToolError::new(
                    ErrorCode::ToolsetNotServed,
                    format!(
                        "`{name}` belongs to toolset `{}`, which this server does not serve (it serves: {served})",
                        t.as_str()
                    ),
                )
                .hint(format!(
                    "use the tools tools/list offers; an operator can add `{}` to toolsets (--toolsets, CITUS_MCP_TOOLSETS)",
                    t.as_str()
                )),
                None => ToolError::new(
                    ErrorCode::ToolsetNotServed,
                    format!(
                        "`{name}` belongs to no toolset this server serves (it serves: {served})"
                    ),
                )
                .hint("use the tools tools/list offers; an operator can name the tool in a toolset_groups entry that toolsets selects, or give its file a `toolset:`"),
            });
        }
        if !self.visible(&tool) {
            return Err(if tool.spec.safety == Safety::Execute {
                ToolError::new(
                    ErrorCode::ExecuteDisabled,
                    format!("`{name}` changes the cluster and is disabled"),
                )
                .hint("start the server with --mode admin --allow-execute to offer execute tools")
            } else {
                // A plugin this server does not serve: the approval tool outside admin mode.
                ToolError::new(
                    ErrorCode::ExecuteDisabled,
                    format!("`{name}` is not served in this server's mode"),
                )
                .hint("server_info shows the mode; approval tools are served with --mode admin")
            });
        }
        let mut args = match args {
            Value::Null => Value::Object(Map::new()),
            a => a,
        };
        whole_numbers(&mut args);
        let problems = tool
            .runnable()
            .map_err(not_compiled)?
            .argument_errors(&args);
        // The gate comes before any execute tool runs, SQL or plugin alike. A call without
        // a token learns how to get one rather than that `approval_token` is a required
        // property; a call with one whose arguments do not validate (its tool's file
        // changed since they were approved) is refused before the gate spends the token.
        let mut approved = None;
        let holds_token = args.get(TOKEN_KEY).is_some();
        if tool.spec.safety == Safety::Execute && (problems.is_empty() || !holds_token) {
            let approvals = self.approvals.as_deref().ok_or_else(|| {
                ToolError::new(
                    ErrorCode::ApprovalRequired,
                    format!("`{name}` needs an approval token, and this server issues none"),
                )
                .hint("run the server with --mode admin and an approval_secret")
            })?;
            let none = Map::new();
            approved = Some(
                approvals
                    .verify(name, args.as_object().unwrap_or(&none), caller)
                    .await?,
            );
        }
        if !problems.is_empty() {
            let mut e = ToolError::new(
                ErrorCode::InvalidArgument,
                format!("invalid arguments for `{name}`"),
            )
            .hint("the tool's inputSchema in tools/list says what it accepts");
            e.problems = problems;
            return Err(e);
        }
        let Value::Object(args) = args else {
            return Err(ToolError::new(
                ErrorCode::InvalidArgument,
                "arguments must be a JSON object",
            ));
        };

        // The tool's timeout bounds the whole call: every stage gets what is left of it.
        let deadline = Instant::now() + self.settings.limits(&tool.spec.limits).timeout;
        // What a tool needs of the cluster is checked here for every tool, plugins too.
        if let Some(req) = &tool.spec.requires.citus {
            let db = self.db.as_ref().ok_or_else(not_configured)?;
            check_citus(&db.facts_within(left(deadline)?).await?, req)?;
        }
        if let Some(name) = &tool.spec.plugin {
            let plugin = self.plugins.get(name).ok_or_else(|| {
                ToolError::new(
                    ErrorCode::Internal,
                    format!(
                        "tool `{}` names plugin `{name}`, which this server does not have",
                        tool.spec.name
                    ),
                )
                .hint("check `plugin:` in the tool file against the plugins citus-mcp registers")
            })?;
            let call = PluginCall {
                engine: self,
                tool: &tool,
                args: &args,
                cancel,
                caller,
                limits: self.settings.limits(&tool.spec.limits),
                deadline,
                approved,
            };
            let mut out = plugin.call(call).await?;
            // Plugins cut their own results; the engine says how to get the rest, in the
            // tool's own arguments, the same way for every plugin.
            if out.structured["truncated"] == true
                && out.structured.get(shape::HOW_TO_GET_MORE).is_none()
            {
                let hint = shape::how_to_get_more(
                    &tool.spec,
                    &tool.context(&args),
                    &Page::default(),
                    self.settings.limits(&tool.spec.limits).max_bytes,
                );
                out.text.push_str(&format!("\nhow to get more: {hint}"));
                out.structured[shape::HOW_TO_GET_MORE] = Value::from(hint);
            }
            return Ok(out.into());
        }
        // An approved execute SQL tool runs its statements on the read-write path (each
        // in autocommit, see `flush`); every other tool reads inside READ ONLY.
        let write = approved.is_some();
        let db = self.db.as_ref().ok_or_else(not_configured)?;

        let ttl = self.ttl(&tool);
        // The cache key, only for a cached tool: no copy of the arguments otherwise.
        let key = (ttl > Duration::ZERO).then(|| {
            format!(
                "{name}\u{0}{}",
                serde_json::to_string(&args).unwrap_or_default()
            )
        });
        if let Some(key) = &key
            && let Some((at, out)) = self.cache.lock().expect("cache lock").get(key)
            && at.elapsed() < ttl
        {
            return Ok(out.clone());
        }
        let out = self.run(&tool, args, db, cancel, write, deadline).await?;
        if let Some(key) = key {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), out.clone()));
        }
        Ok(out)
    }

    /// Reads a resource: the tool that serves its URI, called with the URI's variables.
    /// `None` when no tool serves the URI.
    pub async fn read_resource(
        &self,
        uri: &str,
        cancel: &CancellationToken,
    ) -> Option<Result<Answer, ToolError>> {
        let (tool, args) = self.resource_call(uri)?;
        let args = Value::Object(args);
        Some(self.answer(&tool.spec.name, args, cancel, &NoCaller).await)
    }

    /// The tool that serves a resource URI (for a grant to judge before it runs), or
    /// `None`.
    pub fn resource_tool(&self, uri: &str) -> Option<(String, Safety)> {
        self.resource_call(uri)
            .map(|(t, _)| (t.spec.name.clone(), t.spec.safety))
    }

    /// The tool behind a resource URI and its arguments: the URI's variables, typed as
    /// the tool's schema asks.
    fn resource_call(&self, uri: &str) -> Option<(Arc<CompiledTool>, Map<String, Value>)> {
        let registry = self.registry();
        registry
            .tools
            .values()
            .filter(|t| self.visible(t))
            .find_map(|t| {
                t.spec.resources.iter().find_map(|r| {
                    r.matches(uri).map(|vars| {
                        let mut args = r.args.clone();
                        for (name, value) in vars {
                            // URI variables are text; give them the type the schema asks for.
                            let ty = t
                                .spec
                                .input_schema
                                .pointer(&format!("/properties/{name}/type"));
                            let typed = match (ty.and_then(Value::as_str), value.as_str()) {
                                (Some("integer"), Some(v)) => {
                                    v.parse::<i64>().map(Value::from).unwrap_or(value)
                                }
                                (Some("number"), Some(v)) => {
                                    v.parse::<f64>().map(Value::from).unwrap_or(value)
                                }
                                (Some("boolean"), Some(v)) => {
                                    v.parse::<bool>().map(Value::from).unwrap_or(value)
                                }
                                _ => value,
                            };
                            args.insert(name, typed);
                        }
                        (t.clone(), args)
                    })
                })
            })
    }

    fn ttl(&self, tool: &CompiledTool) -> Duration {
        // An approved call runs each time it is approved, never from the cache.
        if !self.settings.enable_caching || tool.spec.safety == Safety::Execute {
            return Duration::ZERO;
        }
        Duration::from_secs(tool.spec.cache_ttl_s.unwrap_or(self.settings.cache_ttl_s))
    }

    /// Renders and runs every query of a SQL tool, then shapes the result.
    async fn run(
        &self,
        tool: &CompiledTool,
        args: Map<String, Value>,
        db: &Db,
        cancel: &CancellationToken,
        write: bool,
        deadline: Instant,
    ) -> Result<Answer, ToolError> {
        let CallLimits {
            max_rows,
            max_bytes,
            ..
        } = self.settings.limits(&tool.spec.limits);

        let run = tool.runnable().map_err(not_compiled)?;
        let mut ctx = tool.context(&args);
        let pager = tool.pager().map(|(q, p)| (q.name.clone(), p.clone()));
        let page = match &pager {
            Some((_, paging)) => Some(PageRequest::from_args(tool, paging, &args, max_rows)?),
            None => None,
        };
        if let Some(p) = &page {
            ctx.insert("page".into(), p.context());
        }
        let mut ctx = Value::Object(ctx);

        // Queries run in order. Consecutive coordinator queries share one READ ONLY
        // transaction; a fan-out query, or one that reads `results` of earlier queries,
        // starts a new stage.
        let mut parts: Vec<Part> = Vec::new();
        // Rows go into `results` only when a later query reads them.
        let keep_results = !run.reads_results.is_empty();
        let mut node_errors = Vec::new();
        let mut batch: Vec<(&QuerySpec, Statement)> = Vec::new();
        for q in &tool.spec.queries {
            let target = q.target.unwrap_or(tool.spec.target);
            let reads_results = run.reads_results.contains(&q.name);
            // A node-health check is a stage of its own: what it finds survives a later
            // statement's failure, and names the node that failure is about.
            let after_health = batch.last().is_some_and(|(p, _)| p.node_health);
            if !batch.is_empty() && (target != Target::Coordinator || reads_results || after_health)
            {
                self.flush(
                    &mut batch,
                    &mut parts,
                    keep_results.then_some(&mut ctx),
                    &mut node_errors,
                    db,
                    left(deadline)?,
                    cancel,
                    write,
                )
                .await?;
            }
            if q.when.is_some()
                && !run
                    .templates
                    .check(&format!("when:{}", q.name), &ctx)
                    .map_err(render_error)?
            {
                continue;
            }
            let r = run.templates.render(&q.name, &ctx).map_err(render_error)?;
            let cap = match (&pager, &page) {
                (Some((n, _)), Some(p)) if *n == q.name => p.size,
                _ if q.shape == Shape::Many => max_rows,
                _ => 1,
            };
            let st = Statement::new(r.sql, r.binds, cap);
            match target {
                Target::Coordinator => batch.push((q, st)),
                Target::Workers | Target::AllNodes => {
                    let set = if target == Target::Workers {
                        NodeSet::Workers
                    } else {
                        NodeSet::AllNodes
                    };
                    let results = db
                        .fan_out(set, self.settings.fanout, &st, left(deadline)?, cancel)
                        .await
                        .map_err(|e| name_silent_nodes(e.into(), &node_errors))?;
                    let (rows, errors) = merge_nodes(results);
                    for e in errors {
                        add_node_error(&mut node_errors, e);
                    }
                    push_part(
                        q,
                        rows,
                        &mut parts,
                        keep_results.then_some(&mut ctx),
                        &mut node_errors,
                    )?;
                }
            }
        }
        self.flush(
            &mut batch,
            &mut parts,
            keep_results.then_some(&mut ctx),
            &mut node_errors,
            db,
            left(deadline)?,
            cancel,
            write,
        )
        .await?;

        // The rows fit what the result's other keys leave of the budget: the node errors,
        // the paging keys and the note on how to get more (at most the unpaged one, plus
        // room for an offset or a cursor).
        let reserve = shape::json_len(&node_errors)
            + shape::how_to_get_more(
                &tool.spec,
                &tool.context(&args),
                &Page::default(),
                max_bytes,
            )
            .len()
            + 256;
        let cut = shape::fit(&mut parts, max_bytes - reserve.min(max_bytes / 2));
        let mut result_page = Page {
            truncated: cut,
            node_errors,
            ..Page::default()
        };
        if let (Some((name, paging)), Some(req)) = (&pager, &page)
            && let Some(part) = parts.iter().find(|p| &p.name == name)
            && part.rows.more
        {
            match paging {
                Paging::Offset => {
                    result_page.next_offset = Some(req.offset + part.rows.rows.len() as u64)
                }
                Paging::Keyset(cols) => {
                    result_page.next_cursor = keyset_cursor(&tool.spec.name, cols, part)
                }
            }
        }
        let truncated =
            result_page.truncated || parts.iter().any(|p| p.rows.more && p.shape == Shape::Many);
        if truncated {
            result_page.how_to_get_more = Some(shape::how_to_get_more(
                &tool.spec,
                &tool.context(&args),
                &result_page,
                max_bytes,
            ));
        }
        Ok(shape::finish(parts, result_page))
    }

    /// Runs the batched coordinator statements in one transaction and shapes them.
    #[allow(clippy::too_many_arguments)]
    async fn flush(
        &self,
        batch: &mut Vec<(&QuerySpec, Statement)>,
        parts: &mut Vec<Part>,
        mut ctx: Option<&mut Value>,
        node_errors: &mut Vec<Value>,
        db: &Db,
        timeout: Duration,
        cancel: &CancellationToken,
        write: bool,
    ) -> Result<(), ToolError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (queries, statements): (Vec<&QuerySpec>, Vec<Statement>) = batch.drain(..).unzip();
        let results = if write {
            // An approved execute tool: each statement alone in autocommit, in order,
            // because Citus's operations refuse or misbehave inside a transaction block.
            let mut out = Vec::with_capacity(statements.len());
            for st in &statements {
                out.push(db.read_write(st, timeout, cancel).await?);
            }
            out
        } else {
            db.read_only(&statements, timeout, cancel)
                .await
                .map_err(|e| name_silent_nodes(e.into(), node_errors))?
        };
        for (q, rows) in queries.into_iter().zip(results) {
            push_part(q, rows, parts, ctx.as_deref_mut(), node_errors)?;
        }
        Ok(())
    }
}

/// Masks the secrets in the query's `redact` columns (`redact::secrets`). A `redact`
/// column the result does not have is an error, not a column left unmasked: the tool file
/// and its SQL disagree (the example test finds it).
pub(crate) fn redact(q: &QuerySpec, rows: &mut Rows) -> Result<(), ToolError> {
    for name in &q.redact {
        let Some(i) = rows.columns.iter().position(|c| &c.name == name) else {
            return Err(ToolError::new(
                ErrorCode::Internal,
                format!("query `{}` has no column `{name}` to redact", q.name),
            )
            .hint("the tool file's `redact` names a column its SQL does not return"));
        };
        for row in &mut rows.rows {
            if let Some(Value::String(text)) = row.get_mut(i)
                && let std::borrow::Cow::Owned(masked) = crate::redact::secrets(text)
            {
                *text = masked;
            }
        }
    }
    Ok(())
}

/// A statement that failed because a node did not answer (Citus often does not say
/// which: "cannot get the size because of a connection error") names the nodes this
/// call's health check already found silent.
fn name_silent_nodes(mut e: ToolError, node_errors: &[Value]) -> ToolError {
    if e.code != ErrorCode::NodeUnreachable {
        return e;
    }
    let silent: Vec<String> = node_errors
        .iter()
        .filter(|n| n["code"] == serde_json::json!(ErrorCode::NodeUnreachable))
        .filter_map(|n| {
            let node = n["node"].as_str()?;
            (!e.message.contains(node)).then(|| format!("{node} (nodeid {})", n["nodeid"]))
        })
        .collect();
    if !silent.is_empty() {
        e.message = format!("{}; unreachable: {}", e.message, silent.join(", "));
    }
    e
}

/// Adds a query's rows to the result (after its `on_empty` check) and to `results`,
/// where later queries can read them; a node-health query's silent nodes go to
/// `node_errors`.
fn push_part(
    q: &QuerySpec,
    mut rows: Rows,
    parts: &mut Vec<Part>,
    ctx: Option<&mut Value>,
    node_errors: &mut Vec<Value>,
) -> Result<(), ToolError> {
    redact(q, &mut rows)?;
    if q.node_health {
        for e in unreachable_nodes(&q.name, &rows)? {
            add_node_error(node_errors, e);
        }
    }
    if let Some(empty) = &q.on_empty {
        let is_empty = rows
            .rows
            .first()
            .is_none_or(|r| q.shape == Shape::Value && r.first().is_none_or(Value::is_null));
        if is_empty {
            let mut e = ToolError::new(ErrorCode::parse(&empty.code), empty.message.clone());
            e.hint = empty.hint.clone();
            return Err(e);
        }
    }
    let part = Part {
        name: q.name.clone(),
        shape: q.shape,
        rows,
    };
    if let Some(Value::Object(c)) = ctx {
        let results = c
            .entry("results")
            .or_insert_with(|| Value::Object(Map::new()));
        results[q.name.as_str()] = part.value();
    }
    if q.output {
        parts.push(part);
    }
    Ok(())
}

/// The nodes a node-health query found silent, as `node_errors` entries. A row counts as
/// silent unless its `reachable` is true: a check that could not say is no proof the
/// node's numbers are in.
fn unreachable_nodes(query: &str, rows: &Rows) -> Result<Vec<Value>, ToolError> {
    let col = |name: &str| rows.columns.iter().position(|c| c.name == name);
    let (Some(nodeid), Some(node), Some(reachable)) =
        (col("nodeid"), col("node"), col("reachable"))
    else {
        return Err(ToolError::new(
            ErrorCode::Internal,
            format!(
                "node_health query `{query}` must return the columns nodeid, node and reachable"
            ),
        )
        .hint("fix the tool file's query"));
    };
    let message = col("message");
    Ok(rows
        .rows
        .iter()
        .filter(|r| r[reachable] != Value::Bool(true))
        .map(|r| {
            let name = r[node].as_str().unwrap_or("?");
            let text = message
                .and_then(|m| r[m].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!("the coordinator cannot reach node {name}: its numbers are missing from this result")
                });
            serde_json::json!({
                "nodeid": r[nodeid],
                "node": name,
                "code": ErrorCode::NodeUnreachable,
                "message": text,
            })
        })
        .collect())
}

/// Adds a per-node error unless the node already has one with the same code: a node seen
/// down by a health check and by a fan-out is one finding.
fn add_node_error(errors: &mut Vec<Value>, e: Value) {
    let same =
        |o: &Value| o["nodeid"] == e["nodeid"] && o["node"] == e["node"] && o["code"] == e["code"];
    if !errors.iter().any(same) {
        errors.push(e);
    }
}

/// Every node's rows in one table, led by the node's id and name; failed nodes become
/// per-node errors instead of silently missing rows.
fn merge_nodes(results: Vec<NodeResult>) -> (Rows, Vec<Value>) {
    let mut columns = vec![
        Column {
            name: "nodeid".into(),
            type_name: "int4".into(),
        },
        Column {
            name: "node".into(),
            type_name: "text".into(),
        },
    ];
    let mut rows = Vec::new();
    let mut more = false;
    let mut errors = Vec::new();
    for NodeResult { node, result } in results {
        match result {
            Ok(r) => {
                for c in &r.columns {
                    if !columns.iter().any(|k| k.name == c.name) {
                        columns.push(c.clone());
                    }
                }
                more |= r.more;
                for row in r.rows {
                    let mut full = vec![Value::Null; columns.len()];
                    full[0] = node.nodeid.map_or(Value::Null, Value::from);
                    full[1] = Value::from(node.name());
                    for (c, v) in r.columns.iter().zip(row) {
                        let i = columns
                            .iter()
                            .position(|k| k.name == c.name)
                            .expect("column was added");
                        full[i] = v;
                    }
                    rows.push(full);
                }
            }
            Err(e) => {
                let e = ToolError::from(e);
                errors.push(serde_json::json!({
                    "nodeid": node.nodeid,
                    "node": node.name(),
                    "code": e.code,
                    "message": e.message,
                }));
            }
        }
    }
    for r in &mut rows {
        r.resize(columns.len(), Value::Null);
    }
    (
        Rows {
            columns,
            rows,
            more,
        },
        errors,
    )
}

/// Writes a whole number sent as a float (`1.0`, `1e3`: JSON Schema's `integer` accepts
/// them) as the integer it is, so that it binds as `1`, not `1.0`, which an integer
/// parameter refuses, and reads as a page's `limit` or `offset`. Only where the integer is
/// exact (up to 2^53): a larger float stays as it is.
pub fn whole_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() <= 9_007_199_254_740_992.0
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(m) => m.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// What is left of a call's time before `deadline`; none left is the call's timeout.
fn left(deadline: Instant) -> Result<Duration, ToolError> {
    let now = Instant::now();
    if now + Duration::from_millis(1) >= deadline {
        return Err(ToolError::new(
            ErrorCode::Timeout,
            "the call used up its time before its next statement",
        )
        .hint(error::TIMEOUT_HINT));
    }
    Ok(deadline - now)
}

/// The error of a tool that needs the database when none is configured.
pub fn not_configured() -> ToolError {
    ToolError::new(ErrorCode::NotConfigured, "no coordinator is configured")
        .hint("pass a DSN (`citus-mcp postgres://user@host:5432/db`), set CITUS_MCP_COORDINATOR_DSN, or coordinator_dsn in the config file")
}

/// A tool whose schema or templates did not compile on first use (a file loaded
/// without its checks: only built-ins are, and the tests lint those in full).
pub(crate) fn not_compiled(e: &str) -> ToolError {
    ToolError::new(ErrorCode::Internal, e.to_string()).hint("run `citus-mcp lint` on the tool file")
}

pub(crate) fn render_error(e: crate::template::RenderError) -> ToolError {
    ToolError::new(
        ErrorCode::Internal,
        format!("the tool's SQL template failed: {e}"),
    )
    .hint("run `citus-mcp lint` on the tool file")
}

/// Checks a `requires.citus` such as `>=11.0` against the server.
pub fn check_citus(facts: &ServerFacts, requirement: &str) -> Result<(), ToolError> {
    let Some(have) = facts.citus_release() else {
        return Err(ToolError::new(ErrorCode::NotCitus, "the database does not have the citus extension")
            .hint("point citus-mcp at the coordinator of a Citus cluster (CREATE EXTENSION citus there), or use the tools that work on plain PostgreSQL: ping, server_info"));
    };
    let want: Vec<u32> = requirement
        .trim_start_matches(">=")
        .trim()
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if have < want {
        let want_s = want
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".");
        let have_s = have
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".");
        return Err(ToolError::new(
            ErrorCode::CitusTooOld,
            format!("this tool needs Citus {want_s} or later; the cluster runs {have_s}"),
        )
        .hint("upgrade Citus, or use another tool"));
    }
    Ok(())
}

/// The page a caller asked for.
struct PageRequest {
    size: usize,
    offset: u64,
    after: Option<Map<String, Value>>,
}

impl PageRequest {
    fn from_args(
        tool: &CompiledTool,
        paging: &Paging,
        args: &Map<String, Value>,
        max_rows: usize,
    ) -> Result<PageRequest, ToolError> {
        // A value the schema let through but that is no page position (a float past 2^53,
        // or no schema bound at all) is refused, not read as the first page.
        let number = |key: &str| match args.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= 1 << 53)
                .map(Some)
                .ok_or_else(|| {
                    ToolError::new(
                        ErrorCode::InvalidArgument,
                        format!("`{key}` must be a whole number from 0 to 2^53, not {v}"),
                    )
                    .hint("page with the next_offset or next_cursor the previous page returned")
                }),
        };
        let size = number("limit")?
            .map_or(max_rows, |l| (l.min(max_rows as u64)) as usize)
            .max(1);
        let offset = number("offset")?.unwrap_or(0);
        let after = match (paging, args.get("cursor").and_then(Value::as_str)) {
            (Paging::Keyset(cols), Some(c)) => Some(decode_cursor(&tool.spec.name, cols, c)?),
            _ => None,
        };
        Ok(PageRequest {
            size,
            offset,
            after,
        })
    }

    fn context(&self) -> Value {
        let mut m = Map::new();
        m.insert("size".into(), Value::from(self.size));
        m.insert("offset".into(), Value::from(self.offset));
        if let Some(a) = &self.after {
            m.insert("after".into(), Value::Object(a.clone()));
        }
        Value::Object(m)
    }
}

fn keyset_cursor(tool: &str, cols: &[String], part: &Part) -> Option<String> {
    let last = part.rows.rows.last()?;
    let mut key = Map::new();
    for c in cols {
        let i = part.rows.columns.iter().position(|col| &col.name == c)?;
        key.insert(c.clone(), last[i].clone());
    }
    let body = serde_json::json!({"t": tool, "k": key});
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string()))
}

fn decode_cursor(
    tool: &str,
    cols: &[String],
    cursor: &str,
) -> Result<Map<String, Value>, ToolError> {
    let bad = || {
        ToolError::new(ErrorCode::InvalidArgument, "the cursor is not one this tool returned").hint("pass next_cursor from the previous page unchanged, or leave cursor out for the first page")
    };
    // A cursor this server wrote holds a row's key columns: far below this.
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if v.get("t").and_then(Value::as_str) != Some(tool) {
        return Err(bad());
    }
    let key = v
        .get("k")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(bad)?;
    if cols.iter().any(|c| !key.contains_key(c)) || key.len() != cols.len() {
        return Err(bad());
    }
    // Its values are bound as the key of the page's first row: scalars, and text without
    // U+0000, which PostgreSQL cannot hold (arguments are checked for it; so is this).
    let scalar = |v: &Value| match v {
        Value::String(s) => !s.contains('\0'),
        Value::Array(_) | Value::Object(_) => false,
        _ => true,
    };
    if !key.values().all(scalar) {
        return Err(bad());
    }
    Ok(key)
}

/// The longest cursor read.
const MAX_CURSOR_CHARS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #8: a built-in tool's validator and templates are compiled by its first call,
    /// and only that tool's: a tool nobody calls costs nothing for them.
    #[tokio::test]
    async fn a_call_compiles_its_own_tool_and_no_other() {
        use crate::registry::{Registry, Sources};
        let builtins = || Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        let engine = Engine::new(builtins(), None, Settings::default());
        let compiled = |name: &str| engine.registry().tools[name].is_compiled();
        assert!(!compiled("list_nodes") && !compiled("list_shards"));
        let e = engine
            .call("list_nodes", Value::Null, &CancellationToken::new())
            .await
            .expect_err("no database is configured");
        assert_eq!(e.code, ErrorCode::NotConfigured, "{e:?}");
        assert!(compiled("list_nodes"));
        assert!(!compiled("list_shards"));
        // A reload keeps an unchanged file's tool, compiled or not; nothing else is compiled.
        let reloaded = Registry::build(
            &Sources::builtin(),
            Some(&engine.registry()),
            &[],
            crate::plugins::NEEDS,
        );
        engine.swap(reloaded);
        assert!(compiled("list_nodes"));
        assert!(!compiled("list_shards"));
        // A snapshot built afresh starts uncompiled.
        engine.swap(builtins());
        assert!(!compiled("list_nodes"));
    }

    /// A plugin is held to the queries it declares, before anything is sent: one that
    /// runs an undeclared query, or a declared one another way, fails with INTERNAL,
    /// even where its tool file has a query of that name.
    #[tokio::test]
    async fn a_plugin_runs_only_the_queries_it_declares() {
        use crate::compile::{PluginNeeds, Runs, SourceFile};
        use crate::registry::{Registry, Sources};
        use serde_json::json;
        struct Wayward;
        impl Plugin for Wayward {
            fn name(&self) -> &'static str {
                "wayward"
            }
            fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
                Box::pin(async move {
                    if let Some(ms) = call.args.get("after_ms").and_then(Value::as_u64) {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let which = call.args["run"].as_str().unwrap_or_default();
                    match which {
                        "fan_out" => call.fan_out("one", json!({})).await.map(|_| ()),
                        _ => call.query(which, json!({})).await.map(|_| ()),
                    }?;
                    Ok(ToolOutput {
                        structured: json!({}),
                        text: String::new(),
                    })
                })
            }
        }
        const NEEDS: &[PluginNeeds] = &[PluginNeeds {
            name: "wayward",
            queries: &[("one", Runs::Read)],
        }];
        let text = "name: wayward\ndescription: d\nsafety: read_only\ninput_schema: {type: object, properties: {run: {type: string}}}\nplugin: wayward\nqueries:\n  - name: one\n    example: {}\n    sql: SELECT 1 AS x\n  - name: spare\n    example: {}\n    sql: SELECT 2 AS x\nexamples:\n  - args: {}\n";
        let sources = Sources {
            tools: vec![vec![SourceFile {
                origin: "t/wayward.yaml".into(),
                text: text.into(),
            }]],
            ..Default::default()
        };
        let engine = Engine::new(
            Registry::build(&sources, None, &[], NEEDS),
            None,
            Settings::default(),
        )
        .with_plugins(Plugins::new(vec![Arc::new(Wayward)]));
        let cancel = CancellationToken::new();
        for run in ["spare", "fan_out"] {
            let e = engine
                .call("wayward", json!({"run": run}), &cancel)
                .await
                .expect_err("an undeclared query");
            assert_eq!(e.code, ErrorCode::Internal, "{run}: {e:?}");
            assert!(
                e.message.contains("which it does not declare"),
                "{run}: {e:?}"
            );
        }
        // The declared query gets as far as the (missing) database.
        let e = engine
            .call("wayward", json!({"run": "one"}), &cancel)
            .await
            .expect_err("no database is configured");
        assert_eq!(e.code, ErrorCode::NotConfigured, "{e:?}");
        // A read-only plugin's queries share the tool's timeout: one that starts after it
        // ran out is a timeout, before it reaches any database.
        let engine = Engine::new(
            Registry::build(&sources, None, &[], NEEDS),
            None,
            Settings {
                statement_timeout_ms: 50,
                ..Settings::default()
            },
        )
        .with_plugins(Plugins::new(vec![Arc::new(Wayward)]));
        let e = engine
            .call("wayward", json!({"run": "one", "after_ms": 80}), &cancel)
            .await
            .expect_err("its time ran out");
        assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
    }

    fn facts(v: Option<&str>) -> ServerFacts {
        ServerFacts {
            server_version: "15.20".into(),
            server_version_num: 150020,
            citus_extension: None,
            citus_version: v.map(str::to_string),
            role: "postgres".into(),
            superuser: false,
            writable_table: None,
        }
    }

    #[test]
    fn citus_requirements() {
        assert_eq!(
            check_citus(&facts(None), ">=11.0").unwrap_err().code,
            ErrorCode::NotCitus
        );
        assert!(
            check_citus(
                &facts(Some("Citus 13.2.2 on x86_64-pc-linux-gnu")),
                ">=11.0"
            )
            .is_ok()
        );
        assert_eq!(
            check_citus(&facts(Some("Citus 10.2.5 on x86_64")), ">=11.0")
                .unwrap_err()
                .code,
            ErrorCode::CitusTooOld
        );
        assert!(check_citus(&facts(Some("Citus 13.2.2 on x")), ">=13.2.2").is_ok());
    }

    fn health_rows(columns: &[&str], rows: Vec<Vec<Value>>) -> Rows {
        Rows {
            columns: columns
                .iter()
                .map(|c| Column {
                    name: (*c).into(),
                    type_name: "text".into(),
                })
                .collect(),
            rows,
            more: false,
        }
    }

    #[test]
    fn a_failure_about_a_silent_node_names_it() {
        let silent = vec![serde_json::json!({
            "nodeid": 3, "node": "127.0.0.1:9702", "code": ErrorCode::NodeUnreachable, "message": "x"
        })];
        let e = ToolError::new(
            ErrorCode::NodeUnreachable,
            "cannot get the size because of a connection error",
        );
        assert_eq!(
            name_silent_nodes(e, &silent).message,
            "cannot get the size because of a connection error; unreachable: 127.0.0.1:9702 (nodeid 3)"
        );
        // Already named, or another kind of failure: unchanged.
        let e = ToolError::new(ErrorCode::NodeUnreachable, "cannot reach 127.0.0.1:9702");
        assert_eq!(
            name_silent_nodes(e, &silent).message,
            "cannot reach 127.0.0.1:9702"
        );
        let e = ToolError::new(ErrorCode::Timeout, "slow");
        assert_eq!(name_silent_nodes(e, &silent).message, "slow");
    }

    #[test]
    fn a_node_health_check_lists_every_node_not_proven_reachable() {
        let rows = health_rows(
            &["nodeid", "node", "reachable"],
            vec![
                vec![1.into(), "127.0.0.1:9700".into(), true.into()],
                vec![3.into(), "127.0.0.1:9702".into(), false.into()],
                vec![4.into(), "127.0.0.1:9703".into(), Value::Null],
            ],
        );
        let errors = unreachable_nodes("reachable", &rows).unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0]["nodeid"], 3);
        assert_eq!(errors[0]["node"], "127.0.0.1:9702");
        assert_eq!(errors[0]["code"], "NODE_UNREACHABLE");
        assert!(
            errors[0]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1:9702")
        );
        assert_eq!(errors[1]["nodeid"], 4);
        let with_message = health_rows(
            &["nodeid", "node", "reachable", "message"],
            vec![vec![
                2.into(),
                "w:5432".into(),
                false.into(),
                "down since noon".into(),
            ]],
        );
        assert_eq!(
            unreachable_nodes("q", &with_message).unwrap()[0]["message"],
            "down since noon"
        );
        let missing = health_rows(&["nodeid", "ok"], vec![]);
        assert_eq!(
            unreachable_nodes("q", &missing).unwrap_err().code,
            ErrorCode::Internal
        );
    }

    #[test]
    fn one_node_down_is_one_node_error() {
        let mut errors = Vec::new();
        let e = serde_json::json!({"nodeid": 3, "node": "h:1", "code": "NODE_UNREACHABLE", "message": "a"});
        add_node_error(&mut errors, e.clone());
        add_node_error(
            &mut errors,
            serde_json::json!({"nodeid": 3, "node": "h:1", "code": "NODE_UNREACHABLE", "message": "b"}),
        );
        add_node_error(
            &mut errors,
            serde_json::json!({"nodeid": 3, "node": "h:1", "code": "DB_ERROR", "message": "c"}),
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0], e);
    }

    #[test]
    fn cursors_round_trip_and_reject_foreign_ones() {
        use crate::db::{Column, Rows};
        let part = Part {
            name: "t".into(),
            shape: Shape::Many,
            rows: Rows {
                columns: vec![
                    Column {
                        name: "s".into(),
                        type_name: "text".into(),
                    },
                    Column {
                        name: "n".into(),
                        type_name: "text".into(),
                    },
                ],
                rows: vec![vec!["public".into(), "orders".into()]],
                more: true,
            },
        };
        let cols = vec!["s".to_string(), "n".to_string()];
        let c = keyset_cursor("tool", &cols, &part).unwrap();
        let k = decode_cursor("tool", &cols, &c).unwrap();
        assert_eq!(k["n"], "orders");
        assert_eq!(
            decode_cursor("other", &cols, &c).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            decode_cursor("tool", &cols, "garbage!").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        // A forged cursor of the right shape: its values must be scalars without U+0000,
        // and it must be of a sane length.
        use serde_json::json;
        let forge = |k: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&json!({"t": "tool", "k": k})).unwrap())
        };
        assert!(decode_cursor("tool", &cols, &forge(json!({"s": "a", "n": 1}))).is_ok());
        for k in [
            json!({"s": "a\0b", "n": "x"}),
            json!({"s": {"o": 1}, "n": "x"}),
            json!({"s": [1], "n": "x"}),
            json!({"s": "x".repeat(5000), "n": "x"}),
        ] {
            let e = decode_cursor("tool", &cols, &forge(k.clone())).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{k}");
        }
    }
}
