//! The nonce ledger: each token runs once, across restarts and server processes.
//!
//! [`FileLedger`] appends `nonce expiry` lines to a file, fsynced before the call goes
//! on, under an exclusive lock so that every server process on the host (each stdio
//! client starts its own) sees the others' nonces. [`CoordinatorLedger`] keeps them in
//! a table on the coordinator for replicas on several hosts.
//!
//! A nonce whose token has expired can be forgotten: the expiry check refuses that
//! token before the ledger is asked. Forgetting waits [`FORGET_AFTER`] longer, so a
//! clock stepped back a little cannot bring a used token back.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::engine::ApprovalFuture;

/// How long after its expiry a nonce is kept anyway, in seconds.
pub const FORGET_AFTER: u64 = 3600;

/// Past this many lines, a claim also drops the forgotten ones from the file.
const COMPACT_LINES: usize = 4096;

/// Why the ledger could not answer. The gate refuses the call then: a token that
/// cannot be recorded as used must not run.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the nonce ledger {path} cannot be used: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("the nonce ledger on the coordinator cannot be used: {0}")]
    Db(#[from] crate::db::DbError),
}

/// Records nonces as used.
pub trait Ledger: Send + Sync {
    /// Records `nonce` (of a token valid until `expires`, unix seconds) as used:
    /// `true` the first time, `false` when it was used before.
    fn claim<'a>(
        &'a self,
        nonce: &'a str,
        tool: &'a str,
        expires: u64,
        now: u64,
    ) -> ApprovalFuture<'a, Result<bool, LedgerError>>;
}

/// A ledger file shared by every server process on the host.
pub struct FileLedger {
    path: PathBuf,
    /// One claim at a time within this process; the file lock orders processes.
    local: Arc<Mutex<()>>,
}

impl FileLedger {
    /// Opens (creating folders and file as needed) and compacts the ledger, so a path
    /// that cannot be written stops the server at startup rather than at the first
    /// approved call.
    pub fn open(path: &Path, now: u64) -> Result<FileLedger, LedgerError> {
        let ledger = FileLedger {
            path: path.to_path_buf(),
            local: Arc::default(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ledger.error(e))?;
        }
        let (mut file, text) = ledger.locked().map_err(|e| ledger.error(e))?;
        ledger
            .compact(&mut file, &text, now)
            .map_err(|e| ledger.error(e))?;
        Ok(ledger)
    }

    fn error(&self, source: std::io::Error) -> LedgerError {
        LedgerError::File {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The file, locked, with its whole text. A compaction elsewhere replaces the
    /// file by rename; a lock taken on the replaced file is dropped and taken again
    /// on the current one, so no claim is ever written to a file nobody reads.
    fn locked(&self) -> std::io::Result<(File, String)> {
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&self.path)?;
            lock_exclusive(&file)?;
            if !same_file(&file, &self.path)? {
                continue;
            }
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            return Ok((file, text));
        }
    }

    fn claim_blocking(&self, nonce: &str, expires: u64, now: u64) -> std::io::Result<bool> {
        let _one = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let (mut file, text) = self.locked()?;
        if text.lines().any(|l| l.split(' ').next() == Some(nonce)) {
            return Ok(false);
        }
        // A line cut short by a crash would swallow this one: start a fresh line.
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        file.write_all(format!("{sep}{nonce} {expires}\n").as_bytes())?;
        file.flush()?;
        file.sync_data()?;
        if text.lines().count() >= COMPACT_LINES {
            let mut all = text;
            all.push_str(&format!("{sep}{nonce} {expires}\n"));
            self.compact(&mut file, &all, now)?;
        }
        Ok(true)
        // The lock goes with the file.
    }

    /// Rewrites the file without nonces past [`FORGET_AFTER`], when there are any:
    /// a new file, fsynced, renamed over the old one while the lock is held.
    fn compact(&self, _locked: &mut File, text: &str, now: u64) -> std::io::Result<()> {
        let keep: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.split_once(' ')
                    .and_then(|(_, e)| e.trim().parse::<u64>().ok())
                    .is_some_and(|e| e.saturating_add(FORGET_AFTER) >= now)
            })
            .collect();
        if keep.len() == text.lines().count() {
            return Ok(());
        }
        let tmp = self.path.with_extension("compacting");
        let mut out = File::create(&tmp)?;
        for l in &keep {
            writeln!(out, "{l}")?;
        }
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            // The rename is durable once the folder is; a failure here only risks
            // the old, longer file coming back, which refuses the same nonces.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every nonce in the file (for tests and diagnostics).
    pub fn nonces(&self) -> std::io::Result<HashSet<String>> {
        let mut text = String::new();
        File::open(&self.path)?.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect())
    }
}

impl Ledger for FileLedger {
    fn claim<'a>(
        &'a self,
        nonce: &'a str,
        _tool: &'a str,
        expires: u64,
        now: u64,
    ) -> ApprovalFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            let me = FileLedger {
                path: self.path.clone(),
                local: self.local.clone(),
            };
            let nonce = nonce.to_string();
            // File locks and fsync block; they run off the async workers.
            let result =
                tokio::task::spawn_blocking(move || me.claim_blocking(&nonce, expires, now)).await;
            match result {
                Ok(r) => r.map_err(|e| self.error(e)),
                Err(e) => Err(self.error(std::io::Error::other(e.to_string()))),
            }
        })
    }
}

#[cfg(unix)]
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive).map_err(Into::into)
}

#[cfg(not(unix))]
fn lock_exclusive(_file: &File) -> std::io::Result<()> {
    // Without flock, one server process per ledger file is safe; several are not.
    Ok(())
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(open.ino() == now.ino() && open.dev() == now.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> std::io::Result<bool> {
    Ok(true)
}

/// Nonces in `citus_mcp.approval_nonce` on the coordinator, for several replicas.
pub struct CoordinatorLedger {
    db: Db,
    timeout: Duration,
}

impl CoordinatorLedger {
    /// No connection is made until the first claim, which creates the table.
    pub fn new(db: Db, timeout: Duration) -> CoordinatorLedger {
        CoordinatorLedger { db, timeout }
    }
}

impl Ledger for CoordinatorLedger {
    fn claim<'a>(
        &'a self,
        nonce: &'a str,
        tool: &'a str,
        expires: u64,
        _now: u64,
    ) -> ApprovalFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            let expires = i64::try_from(expires).unwrap_or(i64::MAX);
            let forget = i64::try_from(FORGET_AFTER).unwrap_or(i64::MAX);
            Ok(self
                .db
                .claim_nonce(
                    nonce,
                    tool,
                    expires,
                    forget,
                    self.timeout,
                    &CancellationToken::new(),
                )
                .await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_used_nonce_stays_used_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/nonces");
        let first = FileLedger::open(&path, 100).unwrap();
        assert!(first.claim("aa", "t", 200, 100).await.unwrap());
        assert!(!first.claim("aa", "t", 200, 100).await.unwrap());
        drop(first);
        // A new process: a new ledger object on the same file.
        let again = FileLedger::open(&path, 150).unwrap();
        assert!(!again.claim("aa", "t", 200, 150).await.unwrap());
        assert!(again.claim("bb", "t", 200, 150).await.unwrap());
    }

    #[tokio::test]
    async fn two_ledgers_on_one_file_see_each_others_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let a = FileLedger::open(&path, 0).unwrap();
        let b = FileLedger::open(&path, 0).unwrap();
        assert!(a.claim("n1", "t", 10, 0).await.unwrap());
        assert!(!b.claim("n1", "t", 10, 0).await.unwrap());
    }

    #[tokio::test]
    async fn expired_nonces_are_compacted_away_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let l = FileLedger::open(&path, 0).unwrap();
        assert!(l.claim("old", "t", 10, 0).await.unwrap());
        assert!(l.claim("new", "t", 10_000, 0).await.unwrap());
        // A torn last line (a crash mid-write) is dropped, not glued to the next.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"torn")
            .unwrap();
        let l = FileLedger::open(&path, 10 + FORGET_AFTER + 1).unwrap();
        assert_eq!(l.nonces().unwrap(), HashSet::from(["new".to_string()]));
        assert!(!l.claim("new", "t", 10_000, 5000).await.unwrap());
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let e = FileLedger::open(&file.join("nonces"), 0).err().unwrap();
        assert!(e.to_string().contains("plain"), "{e}");
    }
}
