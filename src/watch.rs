//! Hot reload: watch the tool and prompt folders, rebuild the registry, swap it in,
//! and tell connected clients that the lists changed.
//!
//! Any relevant event rescans everything (cheap: files are small) and builds a whole
//! new snapshot; a file that fails keeps its last good tool (see `registry`).
//!
//! A configured folder that does not exist yet cannot be watched, so its nearest
//! existing parent is, until the folder appears; then the folder itself is watched
//! and loaded. The same happens when a watched folder is removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::registry::{Registry, Sources, is_spec_file};
use crate::server::Change;
use crate::toolsets::Toolsets;

/// Rebuilds the registry from the configured folders.
#[derive(Clone)]
pub struct Reloader {
    pub engine: Arc<Engine>,
    /// The engines of the other clusters, served from the same files: each gets every
    /// snapshot `engine` gets.
    pub followers: Vec<Arc<Engine>>,
    pub tool_dirs: Vec<PathBuf>,
    pub prompt_dirs: Vec<PathBuf>,
    pub disabled: Vec<String>,
    pub changes: broadcast::Sender<Change>,
    /// Configuration warnings found outside the files (worker DSNs that match no node),
    /// carried into every snapshot so `server_info` shows them. A reload holds this lock
    /// throughout, so reloads never overlap and none swaps in a snapshot that lacks a
    /// warning added meanwhile.
    pub warnings: Arc<Mutex<Vec<String>>>,
}

impl Reloader {
    /// The first snapshot.
    pub fn initial(
        tool_dirs: &[PathBuf],
        prompt_dirs: &[PathBuf],
        disabled: &[String],
        toolsets: &Toolsets,
        config_warnings: &[String],
    ) -> Registry {
        let mut sources = Sources::gather(tool_dirs, prompt_dirs);
        sources.warnings.extend(config_warnings.iter().cloned());
        let mut reg = Registry::build(&sources, None, disabled, crate::plugins::NEEDS);
        let warnings = toolsets.warnings(reg.tools.keys().map(String::as_str));
        reg.warnings.extend(warnings);
        for d in &reg.diagnostics {
            tracing::warn!("{d}");
        }
        for w in &reg.warnings {
            tracing::warn!("{w}");
        }
        reg
    }

    /// Adds configuration warnings to this and every later snapshot.
    pub fn add_warnings(&self, warnings: Vec<String>) {
        lock(&self.warnings).extend(warnings);
        self.reload();
    }

    /// Rescans, swaps, and notifies; returns what changed.
    pub fn reload(&self) -> Vec<Change> {
        let warnings = lock(&self.warnings);
        let old = self.engine.registry();
        let mut sources = Sources::gather(&self.tool_dirs, &self.prompt_dirs);
        sources.warnings.extend(warnings.iter().cloned());
        let mut new = Registry::build(&sources, Some(&old), &self.disabled, crate::plugins::NEEDS);
        // Group members are checked against each snapshot: a tool file added later can
        // make a member real, and a removed one can make it name nothing.
        let toolsets = &self.engine.settings.toolsets;
        let group_warnings = toolsets.warnings(new.tools.keys().map(String::as_str));
        new.warnings.extend(group_warnings);
        for d in new.diagnostics.iter().filter(|d| {
            !old.diagnostics
                .iter()
                .any(|o| o.to_string() == d.to_string())
        }) {
            tracing::warn!("{d}");
        }
        for w in new.warnings.iter().filter(|w| !old.warnings.contains(w)) {
            tracing::warn!("{w}");
        }
        let mut changed = Vec::new();
        if new.tools_differ(&old) {
            changed.push(Change::Tools);
        }
        // Which prompts are listed depends on the tools when toolsets are selected (a
        // prompt that names a tool not served is hidden).
        let selective = toolsets.is_selective()
            || self
                .followers
                .iter()
                .any(|e| e.settings.toolsets.is_selective());
        if new.prompts_differ(&old) || (selective && new.tools_differ(&old)) {
            changed.push(Change::Prompts);
        }
        if new.resources() != old.resources() {
            changed.push(Change::Resources);
        }
        tracing::info!(
            tools = new.tools.len(),
            prompts = new.prompts.len(),
            errors = new.errors().count(),
            "reloaded tool files"
        );
        let new = Arc::new(new);
        for e in &self.followers {
            e.swap_shared(new.clone());
        }
        self.engine.swap_shared(new);
        drop(warnings);
        for c in &changed {
            // No receivers just means no client is connected yet.
            let _ = self.changes.send(*c);
        }
        changed
    }

    /// Watches the folders until the returned guard is dropped.
    pub fn watch(self) -> notify::Result<Watcher> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Events carry absolute paths; compare them with absolute folders.
        let dirs: Vec<PathBuf> = self
            .tool_dirs
            .iter()
            .chain(&self.prompt_dirs)
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
            .collect();
        let folders = dirs.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let relevant = match res {
                Ok(event) => {
                    is_change(&event)
                        && event.paths.iter().any(|p| {
                            // A spec file, or a configured folder (or one of its parents)
                            // appearing or going away.
                            is_spec_file(p) || folders.iter().any(|d| d.starts_with(p))
                        })
                }
                Err(_) => true,
            };
            if relevant {
                // The receiver lives as long as the watcher task.
                let _ = tx.send(());
            }
        })?;
        let watches = Arc::new(Mutex::new(Watches {
            watcher,
            dirs,
            watched: BTreeSet::new(),
            anchors: BTreeSet::new(),
        }));
        lock(&watches).rearm();
        let task_watches = watches.clone();
        let task = tokio::spawn(async move {
            while settled(&mut rx).await.is_some() {
                let me = self.clone();
                let watches = task_watches.clone();
                let done = tokio::task::spawn_blocking(move || {
                    // Re-arm first: files written into a folder before its watch existed
                    // are still read by the reload that follows.
                    lock(&watches).rearm();
                    me.reload();
                });
                if let Err(e) = done.await {
                    tracing::error!("reload failed: {e}");
                }
            }
        });
        Ok(Watcher {
            _watches: watches,
            task,
        })
    }
}

/// Whether a file system event changes what a reload reads. Opening and closing a file
/// (notify reports them as access) change nothing, and a reload opens every file it
/// reads: counting them would make each reload start the next.
pub(crate) fn is_change(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    )
}

/// How long the folders must stay quiet before a reload: an editor's save, a `git
/// checkout` or a `cp -r` is a burst of events, and one reload follows it.
const QUIET: Duration = Duration::from_millis(200);
/// The longest a reload waits for quiet while files keep changing.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// Waits for a change, then for the changes to stop ([`QUIET`], at most [`MAX_WAIT`]
/// in all). `None` once the sender is gone. The timer runs only while changes come in,
/// so an idle server is never woken (notify's own debouncer ticks 20 times a second).
pub(crate) async fn settled(changes: &mut mpsc::UnboundedReceiver<()>) -> Option<()> {
    changes.recv().await?;
    let deadline = Instant::now() + MAX_WAIT;
    loop {
        let until = (Instant::now() + QUIET).min(deadline);
        match tokio::time::timeout_at(until, changes.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return None,
            Err(_) => return Some(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is a single call, so a panicked holder leaves
    // nothing half done.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What is watched: the configured folders that exist, and for each one that does not,
/// its nearest existing parent (an anchor).
struct Watches {
    watcher: RecommendedWatcher,
    dirs: Vec<PathBuf>,
    watched: BTreeSet<PathBuf>,
    anchors: BTreeSet<PathBuf>,
}

impl Watches {
    /// Watches every configured folder that exists and is not watched yet, moves the
    /// anchors of the missing ones, and drops anchors no longer needed.
    fn rearm(&mut self) {
        let mut anchors = BTreeSet::new();
        for dir in &self.dirs {
            if dir.is_dir() {
                if self.watched.contains(dir) {
                    continue;
                }
                match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "watching for tool file changes");
                        self.watched.insert(dir.clone());
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch folder: {e}"),
                }
            } else {
                // Removed (its watch went with it), or not created yet.
                self.watched.remove(dir);
                if let Some(parent) = nearest_existing(dir) {
                    anchors.insert(parent);
                }
            }
        }
        for gone in self.anchors.difference(&anchors) {
            if !self.watched.contains(gone) {
                // The parent may be gone too; nothing to undo then.
                let _ = self.watcher.unwatch(gone);
            }
        }
        for anchor in anchors.difference(&self.anchors) {
            // A watched folder already reports its entries; watching it twice would
            // make unwatching the anchor end the folder's own watch.
            if self.watched.contains(anchor) {
                continue;
            }
            match self.watcher.watch(anchor, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %anchor.display(), "watching for a missing folder")
                }
                Err(e) => tracing::warn!(dir = %anchor.display(), "cannot watch folder: {e}"),
            }
        }
        self.anchors = anchors;
    }
}

/// The nearest parent of `dir` that exists.
fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// Keeps watching while alive.
pub struct Watcher {
    _watches: Arc<Mutex<Watches>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the real watcher: reading the files (what a reload does) is no change;
    /// writing, renaming over and removing them are.
    #[test]
    fn reading_a_file_is_no_change_and_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.yaml");
        std::fs::write(&file, "[]").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            if let Ok(event) = res {
                let _ = tx.send(is_change(&event));
            }
        })
        .unwrap();
        watcher
            .watch(dir.path(), RecursiveMode::NonRecursive)
            .unwrap();
        let settle = Duration::from_millis(300);
        let changes = |rx: &std::sync::mpsc::Receiver<bool>| {
            let mut seen = (0, 0);
            while let Ok(change) = rx.recv_timeout(settle) {
                if change { seen.0 += 1 } else { seen.1 += 1 }
            }
            seen
        };
        for _ in 0..3 {
            std::fs::read_to_string(&file).unwrap();
        }
        let (changed, other) = changes(&rx);
        assert_eq!(changed, 0, "reading counted as a change");
        assert!(
            other > 0,
            "the watcher reported nothing: the test proves nothing"
        );
        std::fs::write(&file, "[] # edited").unwrap();
        assert!(changes(&rx).0 > 0, "an edit was not seen");
        let new = dir.path().join("tokens.yaml.new");
        std::fs::write(&new, "[]").unwrap();
        std::fs::rename(&new, &file).unwrap();
        assert!(changes(&rx).0 > 0, "a rename over the file was not seen");
        std::fs::remove_file(&file).unwrap();
        assert!(changes(&rx).0 > 0, "a removal was not seen");
    }

    #[tokio::test]
    async fn a_burst_of_changes_is_one_reload_after_the_quiet() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            late.send(()).unwrap();
        });
        let start = Instant::now();
        assert_eq!(settled(&mut rx).await, Some(()));
        // Not before the late change plus the quiet (a lower bound: a slow machine only
        // makes it later).
        assert!(start.elapsed() >= Duration::from_millis(100) + QUIET);
        // Every change of the burst was taken: the next wait starts afresh.
        assert!(rx.try_recv().is_err());
        drop(tx);
        assert_eq!(settled(&mut rx).await, None);
    }

    #[tokio::test]
    async fn changes_that_never_stop_still_reload() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while tx.send(()).is_ok() {
                tokio::time::sleep(QUIET / 4).await;
            }
        });
        let settled = tokio::time::timeout(MAX_WAIT * 5, settled(&mut rx)).await;
        assert_eq!(settled, Ok(Some(())), "still waiting long after MAX_WAIT");
    }
}
