//! Hot reload: watch the tool and prompt folders, rebuild the registry, swap it in,
//! and tell connected clients that the lists changed.
//!
//! Any relevant event rescans everything (cheap: files are small) and builds a whole
//! new snapshot; a file that fails keeps its last good tool (see `registry`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{broadcast, mpsc};

use crate::engine::Engine;
use crate::registry::{Registry, Sources, is_spec_file};
use crate::server::Change;

/// Rebuilds the registry from the configured folders.
#[derive(Clone)]
pub struct Reloader {
    pub engine: Arc<Engine>,
    pub tool_dirs: Vec<PathBuf>,
    pub prompt_dirs: Vec<PathBuf>,
    pub disabled: Vec<String>,
    pub changes: broadcast::Sender<Change>,
}

impl Reloader {
    /// The first snapshot.
    pub fn initial(
        tool_dirs: &[PathBuf],
        prompt_dirs: &[PathBuf],
        disabled: &[String],
    ) -> Registry {
        let reg = Registry::build(
            &Sources::gather(tool_dirs, prompt_dirs),
            None,
            disabled,
            crate::plugins::NAMES,
        );
        for d in &reg.diagnostics {
            tracing::warn!("{d}");
        }
        reg
    }

    /// Rescans, swaps, and notifies; returns what changed.
    pub fn reload(&self) -> Vec<Change> {
        let old = self.engine.registry();
        let new = Registry::build(
            &Sources::gather(&self.tool_dirs, &self.prompt_dirs),
            Some(&old),
            &self.disabled,
            crate::plugins::NAMES,
        );
        for d in new.diagnostics.iter().filter(|d| {
            !old.diagnostics
                .iter()
                .any(|o| o.to_string() == d.to_string())
        }) {
            tracing::warn!("{d}");
        }
        let mut changed = Vec::new();
        if new.tools_differ(&old) {
            changed.push(Change::Tools);
        }
        if new.prompts_differ(&old) {
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
        self.engine.swap(new);
        for c in &changed {
            // No receivers just means no client is connected yet.
            let _ = self.changes.send(*c);
        }
        changed
    }

    /// Watches the folders until the returned guard is dropped.
    pub fn watch(self) -> notify::Result<Watcher> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut debouncer = new_debouncer(
            Duration::from_millis(200),
            None,
            move |res: DebounceEventResult| {
                let relevant = match res {
                    Ok(events) => events.iter().any(|e| {
                        matches!(
                            e.event.kind,
                            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                        ) && e.event.paths.iter().any(|p| is_spec_file(p))
                    }),
                    Err(_) => true,
                };
                if relevant {
                    // The receiver lives as long as the watcher task.
                    let _ = tx.send(());
                }
            },
        )?;
        for dir in self.tool_dirs.iter().chain(&self.prompt_dirs) {
            match debouncer.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::info!(dir = %dir.display(), "watching for tool file changes"),
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch folder: {e}"),
            }
        }
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let me = self.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || me.reload()).await {
                    tracing::error!("reload failed: {e}");
                }
            }
        });
        Ok(Watcher {
            _debouncer: Box::new(debouncer),
            task,
        })
    }
}

/// Keeps watching while alive.
pub struct Watcher {
    _debouncer: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
