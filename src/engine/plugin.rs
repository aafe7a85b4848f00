//! The interface of tools written in Rust. The engine owns it and never imports an
//! implementation: `main` registers them ([`Engine::with_plugins`]), so plugins depend
//! on the engine and not the reverse.
//!
//! A plugin keeps its SQL in its tool file as named queries; [`PluginCall::query`]
//! runs one read-only under the tool's limits, and the Rust code only judges rows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    Approved, CallLimits, Caller, Engine, ErrorCode, ToolError, ToolOutput, not_configured,
    render_error,
};
use crate::compile::{CompiledTool, Runs};
use crate::db::fanout::NodeSet;
use crate::db::{AfterCall, Db, Rows, Statement};
use crate::spec::{Safety, Shape, Target};

/// What a plugin's call returns.
pub type PluginFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ToolOutput, ToolError>> + Send + 'a>>;

/// A tool implemented in Rust; its header (name, schema, examples) is a YAML file
/// with `plugin: <name>`.
pub trait Plugin: Send + Sync {
    /// The name tool files use in `plugin:`.
    fn name(&self) -> &'static str;
    /// Runs one call with validated arguments.
    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a>;
    /// Whether this engine offers the plugin's tools; a plugin that needs something
    /// only some servers have (the approval gate of admin mode) is hidden elsewhere.
    fn served(&self, _engine: &Engine) -> bool {
        true
    }
}

/// One call of a plugin tool: its arguments, limits, and access to its queries.
pub struct PluginCall<'a> {
    pub engine: &'a Engine,
    pub tool: &'a CompiledTool,
    pub args: &'a Map<String, Value>,
    pub cancel: &'a CancellationToken,
    /// Who made the call: progress, confirmation by a person, identity.
    pub caller: &'a dyn Caller,
    /// The tool's limits under the server's ceilings.
    pub limits: CallLimits,
    /// The approval the gate accepted for this call: set by the engine only, for an
    /// execute-class tool whose token it verified. [`PluginCall::execute`] needs it.
    pub(super) approved: Option<Approved>,
    /// When the tool's timeout runs out, counted from the call's start.
    pub(super) deadline: std::time::Instant,
}

impl PluginCall<'_> {
    /// The time a statement of this call may take: what is left of the tool's timeout, as
    /// for a SQL tool. An execute tool's statements each get the whole timeout instead: a
    /// move that took its time must still be reported, with its placements.
    fn time(&self) -> Result<std::time::Duration, ToolError> {
        if self.tool.spec.safety == Safety::Execute {
            Ok(self.limits.timeout)
        } else {
            super::left(self.deadline)
        }
    }

    /// The coordinator, or the error to return when none is configured.
    pub fn db(&self) -> Result<&Db, ToolError> {
        self.engine.db().ok_or_else(not_configured)
    }

    /// Runs the tool file's query `name` read-only, its template rendered with `vars`.
    pub async fn query(&self, name: &str, vars: Value) -> Result<Rows, ToolError> {
        let st = self.statement(name, Runs::Read, &vars)?;
        let time = self.time()?;
        let mut rows = self.db()?.read_only(&[st], time, self.cancel).await?;
        let mut rows = rows.pop().expect("one statement, one result");
        self.redact(name, &mut rows)?;
        Ok(rows)
    }

    /// Runs the tool file's query `name` in autocommit on a connection of its own (the
    /// read-write path): only for an execute-class tool whose approval token the gate
    /// accepted for exactly this call. The call's timeout bounds the statement.
    pub async fn execute(&self, name: &str, vars: Value) -> Result<Rows, ToolError> {
        if self.tool.spec.safety != Safety::Execute || self.approved.is_none() {
            return Err(ToolError::new(
                ErrorCode::Internal,
                format!(
                    "tool `{}` may not change the cluster: only an approved call of an execute tool can",
                    self.tool.spec.name
                ),
            )
            .hint("declare the tool `safety: execute`; the engine then requires an approval token"));
        }
        let st = self.statement(name, Runs::Execute, &vars)?;
        Ok(self
            .db()?
            .read_write(&st, self.limits.timeout, self.cancel)
            .await?)
    }

    /// The approval this call runs under (execute tools), for the result.
    pub fn approval_id(&self) -> Option<&str> {
        self.approved.as_ref().map(|a| a.approval_id.as_str())
    }

    /// Runs a statement built from the caller's text (checked by the plugin) read-only,
    /// prepared for this call only, on a connection closed afterwards: whatever the
    /// statement leaves on its session (a function whose label lies can take a lock or
    /// change a setting, even while only planned) never goes back to the pool.
    pub async fn caller_statement(&self, sql: String, max_rows: usize) -> Result<Rows, ToolError> {
        let st = Statement::new(sql, vec![], max_rows).once();
        let mut rows = self
            .db()?
            .read_only_then(&[st], self.time()?, self.cancel, AfterCall::Discard)
            .await?;
        Ok(rows.pop().expect("one statement, one result"))
    }

    /// Runs the tool file's fan-out query `name` (`target: workers` or `all_nodes`) on
    /// every node, as a SQL tool would: one table whose rows lead with `nodeid` and
    /// `node`, and the nodes that failed as `node_errors` entries, never silently missing.
    pub async fn fan_out(&self, name: &str, vars: Value) -> Result<NodeRows, ToolError> {
        let st = self.statement(name, Runs::FanOut, &vars)?;
        // The compiler held the file to a fan-out target for this query.
        let set = match self.target(name) {
            Target::Workers => NodeSet::Workers,
            _ => NodeSet::AllNodes,
        };
        let results = self
            .db()?
            .fan_out(
                set,
                self.engine.settings.fanout,
                &st,
                self.time()?,
                self.cancel,
            )
            .await?;
        let (mut rows, node_errors) = super::merge_nodes(results);
        self.redact(name, &mut rows)?;
        Ok(NodeRows { rows, node_errors })
    }

    /// Masks the secrets in query `name`'s `redact` columns, as for a SQL tool.
    fn redact(&self, name: &str, rows: &mut Rows) -> Result<(), ToolError> {
        match self.tool.spec.queries.iter().find(|q| q.name == name) {
            Some(q) => super::redact(q, rows),
            None => Ok(()),
        }
    }

    fn target(&self, name: &str) -> Target {
        let spec = &self.tool.spec;
        spec.queries
            .iter()
            .find(|q| q.name == name)
            .and_then(|q| q.target)
            .unwrap_or(spec.target)
    }

    /// Runs a statement built from the caller's text that a person approved (the plugin
    /// checked the token): read-write, but rolled back, on a connection closed after.
    pub async fn approved_caller_statement(
        &self,
        sql: String,
        max_rows: usize,
    ) -> Result<Rows, ToolError> {
        let st = Statement::new(sql, vec![], max_rows).once();
        let mut rows = self
            .db()?
            .rolled_back(&[st], self.time()?, self.cancel)
            .await?;
        Ok(rows.pop().expect("one statement, one result"))
    }

    /// Query `name` of the tool file, rendered with `vars`. The plugin must declare that
    /// it runs the query this way ([`crate::compile::PluginNeeds`]): the compiler held
    /// the file to that list, and this holds the plugin's code to it.
    fn statement(&self, name: &str, how: Runs, vars: &Value) -> Result<Statement, ToolError> {
        let declared = self.tool.plugin_queries.contains(&(name, how));
        let q = self.tool.spec.queries.iter().find(|q| q.name == name);
        let (true, Some(q)) = (declared, q) else {
            return Err(ToolError::new(
                ErrorCode::Internal,
                format!(
                    "the plugin of tool `{}` runs query `{name}` ({how:?}), which it does not declare",
                    self.tool.spec.name
                ),
            )
            .hint("a bug in the plugin: add the query to its entry in plugins::NEEDS"));
        };
        let r = self
            .tool
            .runnable()
            .map_err(super::not_compiled)?
            .templates
            .render(name, vars)
            .map_err(render_error)?;
        let cap = if q.shape == Shape::Many {
            self.limits.max_rows
        } else {
            1
        };
        Ok(Statement::new(r.sql, r.binds, cap))
    }
}

/// The rows of a fan-out query from every node that answered, and the nodes that did not.
#[derive(Debug)]
pub struct NodeRows {
    pub rows: Rows,
    /// `{nodeid, node, code, message}` per node that failed.
    pub node_errors: Vec<Value>,
}

/// The plugins an engine serves, by name.
#[derive(Default, Clone)]
pub struct Plugins(Vec<Arc<dyn Plugin>>);

impl Plugins {
    pub fn new(list: Vec<Arc<dyn Plugin>>) -> Plugins {
        Plugins(list)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.0.iter().find(|p| p.name() == name)
    }

    /// Every registered name, for the tool-file checks.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|p| p.name()).collect()
    }
}
