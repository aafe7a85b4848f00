//! `citus_request_approval_token`: asks the person behind the client to approve one
//! call of an execute tool, and returns the token when they do.
//!
//! The policy (who may approve, how long a token lives, the audit) is the approval
//! gate's ([`crate::approval::Gate`]); this is its face as a tool. It is served only
//! where the engine has a gate, that is in admin mode.

use serde_json::{Value, json};

use crate::engine::{Engine, ErrorCode, Plugin, PluginCall, PluginFuture, ToolError};

pub struct RequestToken;

impl Plugin for RequestToken {
    fn name(&self) -> &'static str {
        "approval"
    }

    fn served(&self, engine: &Engine) -> bool {
        engine.approvals().is_some()
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(async move {
            let approvals = call.engine.approvals().ok_or_else(|| {
                ToolError::new(
                    ErrorCode::ExecuteDisabled,
                    "this server issues no approval tokens",
                )
                .hint("approval tokens are issued in admin mode")
            })?;
            // The input schema requires the action and defaults the arguments to {};
            // validation ran before this call.
            let action = call
                .args
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = call
                .args
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            // The schema's integer takes 5.0 as well as 5.
            let ttl = call
                .args
                .get("ttl_seconds")
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
            crate::approval::check_action(call.engine, action, &arguments)?;
            let issued = approvals
                .request(action, &arguments, ttl, call.caller)
                .await?;
            let structured = json!({
                "action": action,
                "approval_token": issued.token,
                "expires_at": crate::approval::audit::timestamp(issued.expires_at),
                "ttl_seconds": issued.ttl_seconds,
                "approval_id": issued.approval_id,
                "next": format!("call `{action}` once with exactly the approved arguments plus approval_token"),
            });
            Ok(super::object(structured))
        })
    }
}
