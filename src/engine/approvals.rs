//! The interface of the approval gate. The engine owns it and never imports an
//! implementation: `main` registers one ([`Engine::with_approvals`]) in admin mode,
//! as it registers plugins.
//!
//! Every call of an execute-class tool passes [`Approvals::verify`] before the tool
//! runs; [`Approvals::request`] is how a tool asks a person for a token.
//!
//! [`Engine::with_approvals`]: super::Engine::with_approvals

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value};

use super::{Caller, ToolError};

/// The argument that carries an approval token, never part of what it approves.
pub const TOKEN_KEY: &str = "approval_token";

/// A boxed future of the approval gate.
pub type ApprovalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A call that a valid, unused token approved (and that used it up).
#[derive(Debug, Clone)]
pub struct Approved {
    /// Names the approval in the audit log without repeating any token material.
    pub approval_id: String,
}

/// A token issued for one call of one tool.
#[derive(Clone)]
pub struct Issued {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The lifetime granted, after the server's cap.
    pub ttl_seconds: u64,
    pub approval_id: String,
}

/// Checks and issues approval tokens.
pub trait Approvals: Send + Sync {
    /// Checks the `approval_token` of a call of `tool` with `args` and uses it up.
    /// Errors are `APPROVAL_REQUIRED` (no token) or `APPROVAL_INVALID` (with the reason).
    fn verify<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Map<String, Value>,
        caller: &'a dyn Caller,
    ) -> ApprovalFuture<'a, Result<Approved, ToolError>>;

    /// Issues a token for one call of `tool` with `args` once a person confirmed it
    /// through `caller`; `ttl_seconds` is capped by the server.
    fn request<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Map<String, Value>,
        ttl_seconds: Option<u64>,
        caller: &'a dyn Caller,
    ) -> ApprovalFuture<'a, Result<Issued, ToolError>>;
}
