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
    CallLimits, Caller, Engine, ErrorCode, ToolError, ToolOutput, not_configured, render_error,
};
use crate::compile::CompiledTool;
use crate::db::{AfterCall, Db, Rows, Statement};
use crate::spec::Shape;

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
}

impl PluginCall<'_> {
    /// The coordinator, or the error to return when none is configured.
    pub fn db(&self) -> Result<&Db, ToolError> {
        self.engine.db().ok_or_else(not_configured)
    }

    /// Runs the tool file's query `name` read-only, its template rendered with `vars`.
    pub async fn query(&self, name: &str, vars: Value) -> Result<Rows, ToolError> {
        let st = self.statement(name, &vars)?;
        let mut rows = self
            .db()?
            .read_only(&[st], self.limits.timeout, self.cancel)
            .await?;
        Ok(rows.pop().expect("one statement, one result"))
    }

    /// Runs a statement built from the caller's text (checked by the plugin) read-only,
    /// prepared for this call only, so the server keeps nothing of it.
    pub async fn caller_statement(
        &self,
        sql: String,
        max_rows: usize,
        after: AfterCall,
    ) -> Result<Rows, ToolError> {
        let st = Statement::new(sql, vec![], max_rows).once();
        let mut rows = self
            .db()?
            .read_only_then(&[st], self.limits.timeout, self.cancel, after)
            .await?;
        Ok(rows.pop().expect("one statement, one result"))
    }

    fn statement(&self, name: &str, vars: &Value) -> Result<Statement, ToolError> {
        let q = self
            .tool
            .spec
            .queries
            .iter()
            .find(|q| q.name == name)
            .ok_or_else(|| {
                ToolError::new(
                    ErrorCode::Internal,
                    format!("tool `{}` has no query `{name}`", self.tool.spec.name),
                )
                .hint("the plugin and its tool file disagree: run `citus-mcp lint` on the file")
            })?;
        let r = self
            .tool
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
