//! How many sessions a caller may hold: `http.max_sessions_per_caller`.
//!
//! A session costs the server about 70 KB until it is deleted or idle for five minutes
//! (rmcp's keep-alive), and `initialize` is cheap to send: a client that opens a session per
//! call and never deletes it, or anyone with a token who means harm, could otherwise fill
//! the memory of a server a whole team shares (5,000 sessions took 1.4 s and 340 MB). So each
//! caller (a token's holder; everyone alike without tokens) keeps at most that many sessions
//! per endpoint: opening one more closes that caller's oldest, as a DELETE would. A caller
//! within the limit never loses a session to anyone.
//!
//! Closing also takes the session out of rmcp's table, which keeps a session that timed out
//! until it is closed.
//!
//! A session belongs to the caller that opened it: a request that names another caller's
//! session (its id leaked through a proxy's log, say) is answered as if the session did not
//! exist, so no token reads, feeds or deletes a session it did not open.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rmcp::transport::streamable_http_server::session::SessionId;
use rmcp::transport::streamable_http_server::session::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

/// One caller's sessions at one endpoint.
#[derive(Default)]
struct Open {
    ids: VecDeque<SessionId>,
    /// The log has said that this caller goes over the limit (once: a client that leaks
    /// sessions would otherwise fill the log too).
    told: bool,
}

/// The session managers of the MCP endpoints, and each caller's sessions there.
pub struct Sessions {
    managers: Vec<(String, Arc<LocalSessionManager>)>,
    /// (endpoint, caller) → session ids, oldest first.
    open: Mutex<HashMap<(String, String), Open>>,
    max_per_caller: usize,
}

impl Sessions {
    pub fn new(max_per_caller: usize) -> Sessions {
        Sessions {
            managers: Vec::new(),
            open: Mutex::new(HashMap::new()),
            max_per_caller: max_per_caller.max(1),
        }
    }

    /// A new session manager for the endpoint at `path`.
    pub fn manager(&mut self, path: &str) -> Arc<LocalSessionManager> {
        let m = Arc::new(LocalSessionManager::default());
        self.managers.push((path.to_string(), m.clone()));
        m
    }

    /// Whether `caller` opened session `id` at `path` and may use it. Every live session is
    /// in its opener's list: only sessions already deleted or closed leave it.
    pub fn owns(&self, path: &str, caller: &str, id: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&(path.to_string(), caller.to_string()))
            .is_some_and(|mine| mine.ids.iter().any(|s| s.as_ref() == id))
    }

    /// Records that `caller` opened session `id` at `path`, and closes that caller's oldest
    /// sessions there beyond the limit (and forgets those already deleted).
    pub async fn opened(&self, path: &str, caller: &str, id: &str) {
        let Some((_, manager)) = self.managers.iter().find(|(p, _)| p == path) else {
            return;
        };
        let key = (path.to_string(), caller.to_string());
        let mine = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let mine = open.entry(key.clone()).or_default();
            mine.ids.push_back(id.into());
            mine.ids.clone()
        };
        if mine.len() <= self.max_per_caller {
            return;
        }
        // Sessions deleted (DELETE) are forgotten; the oldest beyond the limit are closed.
        let mut live = VecDeque::with_capacity(mine.len());
        let mut forget = Vec::new();
        for id in mine {
            if manager.has_session(&id).await.unwrap_or(false) {
                live.push_back(id);
            } else {
                forget.push(id);
            }
        }
        let mut closing = Vec::new();
        while live.len() > self.max_per_caller {
            closing.extend(live.pop_front());
        }
        forget.extend(closing.iter().cloned());
        let told = {
            // Sessions the same caller opened meanwhile stay, after these.
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let mine = open.entry(key).or_default();
            mine.ids.retain(|id| !forget.contains(id));
            let told = mine.told;
            mine.told |= !closing.is_empty();
            told
        };
        let caller = if caller.is_empty() {
            "anyone (no tokens)"
        } else {
            caller
        };
        if !told && !closing.is_empty() {
            tracing::info!(
                caller = %caller,
                endpoint = %path,
                "the caller opened more than http.max_sessions_per_caller ({}) sessions: its \
                 oldest are closed (said once per caller)",
                self.max_per_caller
            );
        }
        for id in closing {
            tracing::debug!(caller = %caller, "closing the caller's oldest session");
            if let Err(e) = manager.close_session(&id).await {
                tracing::debug!("closing a session: {e}");
            }
        }
    }
}
