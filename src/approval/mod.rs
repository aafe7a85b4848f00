//! Approval tokens: a person approves one call of one execute tool, and the engine
//! lets that call (and only that call, once, for a short while) run.
//!
//! [`Gate`] implements the engine's [`Approvals`] interface; `main` registers it in
//! admin mode. It owns the policy: who may issue (a person confirming through MCP
//! elicitation or the CLI; the model alone only with `allow_self_issue`), how long a
//! token lives (capped by `approval_max_ttl_seconds`), that each runs once
//! ([`ledger`]), and that every issue, use and refusal is audited ([`audit`]).
//! [`token`] is the format. The engine knows none of this; it only asks.

pub mod audit;
pub mod ledger;
pub mod token;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Config, ConfigError, LedgerKind};
use crate::db::Db;
use crate::engine::{
    ApprovalFuture, Approvals, Approved, Caller, Engine, ErrorCode, Issued, ToolError,
};
use crate::spec::Safety;
use audit::{AuditLog, Entry, Event};
use ledger::{CoordinatorLedger, FileLedger, Ledger};
use token::{Claims, Refusal, Signer, TOKEN_KEY};

/// The lifetime of a token whose issuer asks for none, under the cap.
pub const DEFAULT_TTL_SECONDS: u64 = 300;

/// How far ahead of this server's clock an issuer's clock may run before a token it
/// issued at the TTL cap counts as over the cap.
const CLOCK_SLACK_SECONDS: u64 = 60;

/// The longest arguments a person is asked to approve in the client, in characters: all
/// of them are shown, never a cut, so longer ones are approved with the CLI.
const MAX_SHOWN_CHARS: usize = 20_000;

/// The approval settings of a configuration, checked.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    secret: crate::config::Secret,
    pub max_ttl_seconds: u64,
    pub ledger: LedgerKind,
    pub ledger_path: PathBuf,
    pub audit_path: PathBuf,
    pub allow_self_issue: bool,
    /// How long a claim on the coordinator may take.
    pub ledger_timeout: Duration,
    /// The cluster's name under `clusters`, which the person approving is told.
    pub cluster: Option<String>,
}

impl ApprovalSettings {
    /// Reads and checks the approval keys; `env` gives the default state folder.
    pub fn from_config(
        config: &Config,
        env: &BTreeMap<String, String>,
    ) -> Result<ApprovalSettings, ConfigError> {
        let secret = config.approval_secret.clone().ok_or_else(|| {
            ConfigError(
                "`approval_secret` is required in admin mode (at least 16 bytes; prefer CITUS_MCP_APPROVAL_SECRET)".into(),
            )
        })?;
        if secret.expose().len() < Signer::MIN_SECRET_BYTES {
            return Err(ConfigError(format!(
                "`approval_secret` must be at least {} bytes",
                Signer::MIN_SECRET_BYTES
            )));
        }
        let state = || {
            state_dir(env).ok_or_else(|| {
                ConfigError(
                    "no folder for approval state: set approval_ledger_path and approval_audit_log (or HOME / XDG_STATE_HOME)".into(),
                )
            })
        };
        // Each of several clusters keeps its own ledger and audit log by default.
        let suffix = config
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| format!("-{c}"));
        let ledger_path = match &config.approval_ledger_path {
            Some(p) => p.clone(),
            None => state()?.join(format!("approval-nonces{suffix}")),
        };
        let audit_path = match &config.approval_audit_log {
            Some(p) => p.clone(),
            None => state()?.join(format!("approval-audit{suffix}.jsonl")),
        };
        Ok(ApprovalSettings {
            secret,
            max_ttl_seconds: config.approval_max_ttl_seconds.max(1),
            ledger: config.approval_ledger,
            ledger_path,
            audit_path,
            allow_self_issue: config.allow_self_issue,
            ledger_timeout: Duration::from_millis(config.statement_timeout_ms.min(10_000).into()),
            cluster: config.cluster.clone(),
        })
    }
}

/// `$XDG_STATE_HOME/citus-mcp`, else `~/.local/state/citus-mcp`.
fn state_dir(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(x) = env.get("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("citus-mcp"));
    }
    env.get("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/citus-mcp"))
}

/// What stops approvals from starting.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the approval audit log {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error("approval_ledger: coordinator needs a coordinator_dsn (or use approval_ledger: file)")]
    NoCoordinator,
}

/// The seconds since the epoch; a parameter so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Seals tokens and records that it did: all the CLI needs.
pub struct Issuer {
    signer: Signer,
    max_ttl: u64,
    audit: AuditLog,
    clock: Clock,
}

impl Issuer {
    pub fn open(settings: &ApprovalSettings, clock: Clock) -> Result<Issuer, ApprovalError> {
        let signer = Signer::new(settings.secret.expose().as_bytes()).ok_or_else(|| {
            ConfigError(format!(
                "`approval_secret` must be at least {} bytes",
                Signer::MIN_SECRET_BYTES
            ))
        })?;
        let audit =
            AuditLog::open(&settings.audit_path).map_err(|source| ApprovalError::Audit {
                path: settings.audit_path.display().to_string(),
                source,
            })?;
        Ok(Issuer {
            signer,
            max_ttl: settings.max_ttl_seconds,
            audit,
            clock,
        })
    }

    /// The lifetime a token gets: what was asked (or the default), never more than
    /// the configured maximum, and at least a second.
    pub fn ttl(&self, requested: Option<u64>) -> u64 {
        requested
            .unwrap_or(DEFAULT_TTL_SECONDS)
            .min(self.max_ttl)
            .max(1)
    }

    /// Issues a token for one call of `tool` with `args`. `how` says who approved it
    /// (`confirmed`, `self_issued`, `cli`), for the audit log.
    pub fn issue(
        &self,
        tool: &str,
        args: &Map<String, Value>,
        ttl: Option<u64>,
        how: &'static str,
        via: &'static str,
        caller: Option<String>,
    ) -> Result<Issued, ToolError> {
        let now = (self.clock)();
        let ttl = self.ttl(ttl);
        let nonce = token::nonce().map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!("no random nonce for the token: {e}"),
            )
        })?;
        let claims = Claims {
            tool: tool.to_string(),
            digest: token::args_digest(args),
            expires: now.saturating_add(ttl),
            nonce,
        };
        // Audited before it is handed out: a token the log does not know never exists.
        self.audit
            .record(&Entry {
                time: audit::timestamp(now),
                event: Event::Issue,
                tool,
                args_digest: token::hex(&claims.digest),
                outcome: "issued",
                reason: how,
                approval_id: Some(claims.approval_id()),
                expires_at: Some(audit::timestamp(claims.expires)),
                caller,
                via,
            })
            .map_err(|e| self.audit_failed(&e))?;
        Ok(Issued {
            token: self.signer.seal(&claims),
            expires_at: claims.expires,
            ttl_seconds: ttl,
            approval_id: claims.approval_id(),
        })
    }

    fn audit_failed(&self, e: &std::io::Error) -> ToolError {
        ToolError::new(
            ErrorCode::Internal,
            format!(
                "the approval audit log {} cannot be written: {e}",
                self.audit.path().display()
            ),
        )
        .hint("approvals stop until the audit log can be written: check its disk and permissions")
    }

    /// Records a refusal; a log that cannot be written is only logged, since the call
    /// is refused anyway.
    fn refused(
        &self,
        event: Event,
        tool: &str,
        digest: &[u8; 32],
        reason: &'static str,
        approval_id: Option<String>,
        caller: Option<String>,
    ) {
        let entry = Entry {
            time: audit::timestamp((self.clock)()),
            event,
            tool,
            args_digest: token::hex(digest),
            outcome: "refused",
            reason,
            approval_id,
            expires_at: None,
            caller,
            // A token is used by the server (for an MCP client or `tools call`); it is
            // requested through the MCP tool.
            via: if event == Event::Use { "server" } else { "mcp" },
        };
        if let Err(e) = self.audit.record(&entry) {
            tracing::error!(reason, "cannot write the approval audit log: {e}");
        }
    }
}

/// The approval gate of a server.
pub struct Gate {
    issuer: Issuer,
    ledger: Box<dyn Ledger>,
    allow_self_issue: bool,
    /// Named to the person approving, when the server serves several.
    cluster: Option<String>,
}

impl Gate {
    /// Opens the audit log and the ledger (the file ledger at once, so a bad path
    /// stops the server at startup). `db` is the coordinator for
    /// `approval_ledger: coordinator`.
    pub fn open(
        settings: &ApprovalSettings,
        db: Option<Db>,
        clock: Clock,
    ) -> Result<Gate, ApprovalError> {
        let now = clock();
        let issuer = Issuer::open(settings, clock)?;
        let ledger: Box<dyn Ledger> = match settings.ledger {
            LedgerKind::File => Box::new(FileLedger::open(&settings.ledger_path, now)?),
            LedgerKind::Coordinator => Box::new(CoordinatorLedger::new(
                db.ok_or(ApprovalError::NoCoordinator)?,
                settings.ledger_timeout,
            )),
        };
        let mut gate = Gate::new(issuer, ledger, settings.allow_self_issue);
        gate.cluster = settings.cluster.clone();
        Ok(gate)
    }

    pub fn new(issuer: Issuer, ledger: Box<dyn Ledger>, allow_self_issue: bool) -> Gate {
        Gate {
            issuer,
            ledger,
            allow_self_issue,
            cluster: None,
        }
    }

    async fn check(
        &self,
        tool: &str,
        args: &Map<String, Value>,
        digest: &[u8; 32],
        caller: &dyn Caller,
    ) -> Result<Approved, ToolError> {
        let now = (self.issuer.clock)();
        let refuse = |r: Refusal, id: Option<String>| {
            self.issuer
                .refused(Event::Use, tool, digest, r.reason(), id, caller.identity());
            refusal_error(tool, args, &r, self.issuer.max_ttl)
        };
        let token = match args.get(TOKEN_KEY) {
            None | Some(Value::Null) => return Err(refuse(Refusal::Missing, None)),
            Some(Value::String(t)) => t,
            Some(_) => return Err(refuse(Refusal::Malformed, None)),
        };
        let claims = self
            .issuer
            .signer
            .open(token)
            .map_err(|r| refuse(r, None))?;
        let id = Some(claims.approval_id());
        if claims.tool != tool {
            return Err(refuse(Refusal::OtherTool(claims.tool.clone()), id));
        }
        if claims.digest != *digest {
            return Err(refuse(Refusal::OtherArguments, id));
        }
        if now > claims.expires {
            return Err(refuse(Refusal::Expired(claims.expires), id));
        }
        // The cap holds for tokens issued elsewhere with the same secret (a CLI run
        // with another configuration) too; a minute of slack lets a token issued at
        // the cap on a host whose clock runs a little ahead through.
        if claims.expires > now.saturating_add(self.issuer.max_ttl + CLOCK_SLACK_SECONDS) {
            return Err(refuse(Refusal::OverCap, id));
        }
        // Only a token that is right in every other way is used up, so a call with
        // the wrong arguments does not cost the person their approval.
        match self
            .ledger
            .claim(&claims.nonce_hex(), tool, claims.expires, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(refuse(Refusal::Replayed, id)),
            Err(e) => {
                self.issuer.refused(
                    Event::Use,
                    tool,
                    digest,
                    "ledger_error",
                    id,
                    caller.identity(),
                );
                return Err(ToolError::new(ErrorCode::Internal, e.to_string()).hint(
                    "the token was not used: approvals stop until the nonce ledger can be written",
                ));
            }
        }
        // Fail closed: a use the audit log cannot record does not run.
        self.issuer
            .audit
            .record(&Entry {
                time: audit::timestamp(now),
                event: Event::Use,
                tool,
                args_digest: token::hex(digest),
                outcome: "accepted",
                reason: "valid",
                approval_id: id.clone(),
                expires_at: Some(audit::timestamp(claims.expires)),
                caller: caller.identity(),
                via: "server",
            })
            .map_err(|e| self.issuer.audit_failed(&e))?;
        Ok(Approved {
            approval_id: claims.approval_id(),
        })
    }

    async fn ask(
        &self,
        tool: &str,
        args: &Map<String, Value>,
        ttl: Option<u64>,
        caller: &dyn Caller,
    ) -> Result<Issued, ToolError> {
        let ttl = self.issuer.ttl(ttl);
        let digest = token::args_digest(args);
        // The person sees every character the token binds, or is not asked here.
        let shown = token::shown_args(args);
        let length = shown.chars().count();
        if length > MAX_SHOWN_CHARS {
            return Err(ToolError::new(
                ErrorCode::ApprovalRequired,
                format!(
                    "the arguments of `{tool}` are {length} characters, more than a person is shown to approve here ({MAX_SHOWN_CHARS}); no token was issued"
                ),
            )
            .hint(cli_hint(tool, args)));
        }
        // With several clusters, which one is what the person decides on.
        let which = match &self.cluster {
            Some(name) => format!("the cluster `{name}`"),
            None => "the cluster".to_string(),
        };
        let message = format!(
            "An assistant asks to run `{tool}`, which changes {which}, once with these arguments:\n{shown}\nApprove? The approval is valid for {ttl} seconds."
        );
        let how = match caller.confirm(&message).await {
            Some(true) => "confirmed",
            Some(false) => {
                self.issuer.refused(
                    Event::Request,
                    tool,
                    &digest,
                    "declined",
                    None,
                    caller.identity(),
                );
                return Err(ToolError::new(
                    ErrorCode::ApprovalRequired,
                    format!("the person declined to approve `{tool}`; no token was issued"),
                )
                .hint("do not run it; ask the person what they want instead"));
            }
            None if self.allow_self_issue => "self_issued",
            None => {
                self.issuer.refused(
                    Event::Request,
                    tool,
                    &digest,
                    "no_elicitation",
                    None,
                    caller.identity(),
                );
                return Err(ToolError::new(
                    ErrorCode::ApprovalRequired,
                    "this client cannot ask a person to confirm (it does not support MCP elicitation), so no token was issued",
                )
                .hint(cli_hint(tool, args)));
            }
        };
        self.issuer
            .issue(tool, args, Some(ttl), how, "mcp", caller.identity())
    }
}

/// How a person issues a token by hand.
fn cli_hint(tool: &str, args: &Map<String, Value>) -> String {
    let json = token::canonical_args(args).replace('\'', r"'\''");
    format!(
        "ask the person to run `citus-mcp approve {tool} --args '{json}'` (with the server's configuration) and to give you the token it prints; then call `{tool}` with these arguments and approval_token set to it"
    )
}

/// The error a refused token gives, with what to do about it.
fn refusal_error(tool: &str, args: &Map<String, Value>, r: &Refusal, max_ttl: u64) -> ToolError {
    let (code, message, hint) = match r {
        Refusal::Missing => (
            ErrorCode::ApprovalRequired,
            format!("`{tool}` changes the cluster and needs an approval token"),
            format!(
                "a person must approve this exact call: call citus_request_approval_token with action `{tool}` and these arguments, or {}",
                cli_hint(tool, args)
            ),
        ),
        Refusal::Malformed => (
            ErrorCode::ApprovalInvalid,
            "the approval token is malformed".to_string(),
            "pass the token exactly as it was issued".to_string(),
        ),
        Refusal::OtherSecret => (
            ErrorCode::ApprovalInvalid,
            "the approval token was issued with another approval_secret".to_string(),
            "tokens are checked with this server's approval_secret: issue it with the same configuration".to_string(),
        ),
        Refusal::Forged => (
            ErrorCode::ApprovalInvalid,
            "the approval token is forged or altered".to_string(),
            "use a token as it was issued; a new one needs a person's approval".to_string(),
        ),
        Refusal::OtherTool(other) => (
            ErrorCode::ApprovalInvalid,
            format!("the approval token is for `{other}`, not `{tool}`"),
            format!("a token approves one tool: request one for `{tool}`"),
        ),
        Refusal::OtherArguments => (
            ErrorCode::ApprovalInvalid,
            format!("the approval token is for other arguments of `{tool}`"),
            "call with exactly the approved arguments, or request a token for these".to_string(),
        ),
        Refusal::Expired(at) => (
            ErrorCode::ApprovalInvalid,
            format!("the approval token expired at {}", audit::timestamp(*at)),
            format!("tokens live at most {max_ttl} seconds: request a new one"),
        ),
        Refusal::OverCap => (
            ErrorCode::ApprovalInvalid,
            format!("the approval token is valid for longer than this server allows ({max_ttl} s)"),
            "issue it with this server's configuration (approval_max_ttl_seconds)".to_string(),
        ),
        Refusal::Replayed => (
            ErrorCode::ApprovalInvalid,
            "the approval token was already used".to_string(),
            "a token runs one call: another run needs a new approval".to_string(),
        ),
    };
    let mut e = ToolError::new(code, message).hint(hint);
    e.problems = vec![format!("reason: {}", r.reason())];
    e
}

impl Approvals for Gate {
    fn verify<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Map<String, Value>,
        caller: &'a dyn Caller,
    ) -> ApprovalFuture<'a, Result<Approved, ToolError>> {
        Box::pin(async move {
            let digest = token::args_digest(args);
            self.check(tool, args, &digest, caller).await
        })
    }

    fn request<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Map<String, Value>,
        ttl_seconds: Option<u64>,
        caller: &'a dyn Caller,
    ) -> ApprovalFuture<'a, Result<Issued, ToolError>> {
        Box::pin(self.ask(tool, args, ttl_seconds, caller))
    }
}

/// Checks that `action` names an execute tool of this server and that `args` are
/// arguments it accepts, before anyone is asked to approve them.
pub fn check_action(
    engine: &Engine,
    action: &str,
    args: &Map<String, Value>,
) -> Result<(), ToolError> {
    let registry = engine.registry();
    let tool = registry.tools.get(action).ok_or_else(|| {
        ToolError::new(
            ErrorCode::InvalidArgument,
            format!("there is no tool `{action}` to approve"),
        )
        .hint("name an execute tool of this server (tools/list, or `citus-mcp tools list`)")
    })?;
    // Execute tools need a token; a read-only tool that declares `approval_token` (EXPLAIN
    // ANALYZE of a statement its rules refuse) accepts one.
    let accepts_token = tool
        .spec
        .input_schema
        .pointer(&format!("/properties/{TOKEN_KEY}"))
        .is_some();
    if tool.spec.safety != Safety::Execute && !accepts_token {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("`{action}` does not change the cluster and needs no approval"),
        )
        .hint("call it directly"));
    }
    // The token is not part of what is approved; any string stands in for it here.
    let mut with_token = args.clone();
    with_token.insert(TOKEN_KEY.into(), Value::from("-"));
    let problems = tool.argument_errors(&Value::Object(with_token));
    if !problems.is_empty() {
        let mut e = ToolError::new(
            ErrorCode::InvalidArgument,
            format!("these are not valid arguments for `{action}`"),
        )
        .hint("a token approves exact arguments: fix them first (the tool's inputSchema says what it accepts)");
        e.problems = problems;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
