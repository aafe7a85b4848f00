//! The errors a tool call can end in, with stable codes and hints.

use std::fmt;

use serde::Serialize;

use crate::db::DbError;

/// A stable error code. Tool files may add their own (`on_empty.code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    UnknownTool,
    NotConfigured,
    NotCitus,
    CitusTooOld,
    NotFound,
    ExecuteDisabled,
    /// The tool exists but is outside the toolsets this server serves.
    ToolsetNotServed,
    ApprovalRequired,
    ApprovalInvalid,
    /// An HTTP caller has `http.max_calls_per_caller` calls running already.
    TooManyCalls,
    Timeout,
    Cancelled,
    NodeUnreachable,
    PermissionDenied,
    ReadOnly,
    DbError,
    Internal,
    /// A code declared by a tool file.
    Custom(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::UnknownTool => "UNKNOWN_TOOL",
            ErrorCode::NotConfigured => "NOT_CONFIGURED",
            ErrorCode::NotCitus => "NOT_CITUS",
            ErrorCode::CitusTooOld => "CITUS_TOO_OLD",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ExecuteDisabled => "EXECUTE_DISABLED",
            ErrorCode::ToolsetNotServed => "TOOLSET_NOT_SERVED",
            ErrorCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ErrorCode::ApprovalInvalid => "APPROVAL_INVALID",
            ErrorCode::TooManyCalls => "TOO_MANY_CALLS",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::NodeUnreachable => "NODE_UNREACHABLE",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::ReadOnly => "READ_ONLY",
            ErrorCode::DbError => "DB_ERROR",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Custom(c) => c,
        }
    }

    /// The code for a string from a tool file.
    pub fn parse(s: &str) -> ErrorCode {
        [
            ErrorCode::InvalidArgument,
            ErrorCode::UnknownTool,
            ErrorCode::NotConfigured,
            ErrorCode::NotCitus,
            ErrorCode::CitusTooOld,
            ErrorCode::NotFound,
            ErrorCode::ExecuteDisabled,
            ErrorCode::ToolsetNotServed,
            ErrorCode::ApprovalRequired,
            ErrorCode::ApprovalInvalid,
            ErrorCode::TooManyCalls,
            ErrorCode::Timeout,
            ErrorCode::Cancelled,
            ErrorCode::NodeUnreachable,
            ErrorCode::PermissionDenied,
            ErrorCode::ReadOnly,
            ErrorCode::DbError,
            ErrorCode::Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .unwrap_or_else(|| ErrorCode::Custom(s.to_string()))
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A failed tool call: what the model sees, with `isError: true`.
#[derive(Debug, Clone, Serialize)]
pub struct ToolError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Every problem, for errors that have several (invalid arguments).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl ToolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ToolError {
            code,
            message: message.into(),
            hint: None,
            problems: vec![],
            sqlstate: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same error with every echoed value cut to a readable size ([`crate::echo::cap`]).
    /// Callers may send megabytes of arguments; an error that quotes them back whole
    /// (in the text and again in the structured result) costs the model its context.
    pub fn capped(mut self) -> Self {
        fn cap(s: String) -> String {
            match crate::echo::cap(&s) {
                std::borrow::Cow::Borrowed(_) => s,
                std::borrow::Cow::Owned(c) => c,
            }
        }
        self.message = cap(self.message);
        self.problems = self.problems.into_iter().map(cap).collect();
        self.hint = self.hint.map(cap);
        self
    }

    /// The compact text form: `ERROR CODE: message` plus problems and hint.
    pub fn text(&self) -> String {
        let mut s = format!("ERROR {}: {}", self.code.as_str(), self.message);
        for p in &self.problems {
            s.push_str("\n- ");
            s.push_str(p);
        }
        if let Some(h) = &self.hint {
            s.push_str("\nhint: ");
            s.push_str(h);
        }
        s
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// What to do about a call that ran out of time.
pub(crate) const TIMEOUT_HINT: &str = "narrow the call (a table, a smaller limit) or raise statement_timeout_ms / the tool's limits.timeout_ms";

impl From<DbError> for ToolError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Connect { .. } => ToolError::new(ErrorCode::NodeUnreachable, e.to_string())
                .hint("check coordinator_dsn, that the coordinator is up, and the network; the next call reconnects"),
            DbError::Busy { .. } => ToolError::new(ErrorCode::Timeout, e.to_string())
                .hint("the database is up but this server's connections are all in use: try again when other calls finish, cancel those no longer needed, or raise pool_size"),
            DbError::Timeout(_) => ToolError::new(ErrorCode::Timeout, e.to_string())
                .hint(TIMEOUT_HINT),
            DbError::Cancelled => ToolError::new(ErrorCode::Cancelled, e.to_string()),
            DbError::Decode { .. } => ToolError::new(ErrorCode::Internal, e.to_string()),
            DbError::Ended(_) => ToolError::new(ErrorCode::NodeUnreachable, e.to_string())
                .hint("the server ended the session while the call ran (an administrator terminated it, or the server restarted); it was not run again: call again if the answer is still wanted"),
            DbError::Sql { sqlstate, message, detail, hint } => {
                let code = match sqlstate.as_str() {
                    // invalid_text_representation, numeric out of range, invalid name syntax, ...
                    s if s.starts_with("22") || s == "42602" || s == "42704" || s == "3F000" => ErrorCode::InvalidArgument,
                    "42501" => ErrorCode::PermissionDenied,
                    "25006" => ErrorCode::ReadOnly,
                    s if s.starts_with("08") || s.starts_with("57P") => ErrorCode::NodeUnreachable,
                    _ => ErrorCode::DbError,
                };
                let message = match detail {
                    Some(d) => format!("{message} ({d})"),
                    None => message,
                };
                // PostgreSQL's own hint where it gives one; otherwise what the class means.
                let hint = hint.or_else(|| {
                    Some(match sqlstate.as_str() {
                        _ if code == ErrorCode::InvalidArgument => "a value does not fit what the statement reads it as (its type or range); if it is one of the arguments, check it against the tool's inputSchema",
                        "42P01" | "42703" | "42883" | "3F000" => "a name in the statement does not exist, or this role cannot see it: check it, schema-qualified (citus_list_distributed_tables lists the tables)",
                        "42501" => "the role citus-mcp connects as lacks a privilege this needs: README, Least privilege, lists what to grant",
                        _ => return None,
                    }.to_string())
                });
                ToolError { code, message, hint, problems: vec![], sqlstate: Some(sqlstate) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error without PostgreSQL's own hint gets one from its class.
    #[test]
    fn database_errors_carry_a_hint() {
        let sql = |sqlstate: &str, hint: Option<&str>| {
            ToolError::from(DbError::Sql {
                sqlstate: sqlstate.into(),
                message: "m".into(),
                detail: None,
                hint: hint.map(str::to_string),
            })
        };
        let e = sql("22P02", None);
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.hint.unwrap().contains("inputSchema"));
        assert!(sql("42P01", None).hint.unwrap().contains("does not exist"));
        assert_eq!(sql("22003", Some("theirs")).hint.as_deref(), Some("theirs"));
        assert_eq!(sql("XX000", None).hint, None);
    }

    #[test]
    fn capped_errors_stay_small() {
        let mut e = ToolError::new(
            ErrorCode::InvalidArgument,
            format!("bad `{}`", "n".repeat(100_000)),
        );
        e.problems = vec![format!(
            r#"/a: "{}" is not of type "integer""#,
            "x".repeat(1 << 20)
        )];
        let e = e.hint("a hint").capped();
        assert!(e.text().len() < 2000, "{}", e.text().len());
        assert!(e.problems[0].ends_with(r#"…(1048576 bytes)" is not of type "integer""#));
    }
}
