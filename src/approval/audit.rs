//! The audit log: one JSON line for every token issued, used or refused.
//!
//! A line names the tool, the digest of the arguments (not their values, which may be
//! sensitive), the outcome and its reason, who asked, and an approval id that links
//! the lines of one token. It never holds a token or the secret: [`Entry`] has no
//! field that could carry either.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A token was issued.
    Issue,
    /// A token was presented with a call of an execute tool.
    Use,
    /// A request for a token was answered without one.
    Request,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub event: Event,
    pub tool: &'a str,
    /// Hex SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// `issued`, `accepted` or `refused`.
    pub outcome: &'static str,
    /// Why it was refused, or how a token was issued (`confirmed`, `self_issued`, `cli`).
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `Caller::identity`, or the operating-system user for the CLI; null when unknown.
    pub caller: Option<String>,
    /// Where it happened: `cli` (`citus-mcp approve`), `mcp` (the token tool) or
    /// `server` (a call presenting a token).
    pub via: &'static str,
}

/// An append-only JSON-lines file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating folders and file as needed) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it to disk: the line of an accepted token is on disk
    /// before the tool runs.
    pub fn record(&self, entry: &Entry<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())?;
        file.flush()?;
        file.sync_data()
    }
}

/// Now, as the audit log writes times.
pub fn timestamp(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
