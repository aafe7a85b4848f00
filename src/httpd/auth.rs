//! Bearer tokens: who may call, and which tools.
//!
//! A token is stored only as its SHA-256 hash, with a name and a grant (safety classes
//! and tool names). A presented token is hashed and compared with every stored hash in
//! constant time. The token itself is never kept, logged or echoed: only its name is.
//!
//! [`TokenStore`] holds the configured set and re-reads `http.tokens_file` when it
//! changes: a token removed from the file stops working with the reload, and a file
//! that does not load keeps the last good set (the warning names neither tokens nor
//! hashes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::HttpError;
use crate::spec::Safety;

/// One configured token, as the configuration file holds it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token; in the log and the approval audit log.
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// The safety classes of the tools it may call.
    #[serde(default)]
    pub classes: Vec<Safety>,
    /// Tools it may call besides those of its classes.
    #[serde(default)]
    pub tools: Vec<String>,
    /// The clusters (names under `clusters`) where it grants that; empty: every endpoint.
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// What a token may call, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub classes: Vec<Safety>,
    pub tools: Vec<String>,
    /// The clusters it holds at; empty: every endpoint (and `/metrics`, which shows all).
    pub clusters: Vec<String>,
}

impl Grant {
    /// Whether it holds at the endpoint of `cluster` (`None`: a server of one unnamed
    /// cluster, or `/metrics`, where only a grant without clusters holds).
    pub fn holds_at(&self, cluster: Option<&str>) -> bool {
        self.clusters.is_empty() || cluster.is_some_and(|c| self.clusters.iter().any(|n| n == c))
    }

    /// Whether a tool of this name and class may be called.
    pub fn allows(&self, tool: &str, safety: Safety) -> bool {
        self.classes.contains(&safety) || self.tools.iter().any(|t| t == tool)
    }

    /// Whether it allows nothing at all.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.tools.is_empty()
    }

    /// Adds what `other` allows (the union of a token's scopes).
    pub fn extend(&mut self, other: &Grant) {
        for c in &other.classes {
            if !self.classes.contains(c) {
                self.classes.push(*c);
            }
        }
        for t in &other.tools {
            if !self.tools.contains(t) {
                self.tools.push(t.clone());
            }
        }
    }
}

/// A token that matched: its name and grants (a bearer token's one, or an OAuth token's
/// scopes'), each for the clusters it names.
#[derive(Debug, Clone)]
pub struct Holder {
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Holder {
    /// What it may call at the endpoint of `cluster`: the union of its grants that hold
    /// there (see [`Grant::holds_at`]).
    pub fn grant_at(&self, cluster: Option<&str>) -> Grant {
        let mut out = Grant::default();
        for g in self.grants.iter().filter(|g| g.holds_at(cluster)) {
            out.extend(g);
        }
        out
    }
}

struct Token {
    digest: [u8; 32],
    holder: Holder,
}

/// The configured tokens; empty when the server runs without authentication.
#[derive(Default)]
pub struct Tokens(Vec<Token>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a hash is as good as a password to someone who can brute-force it.
        f.debug_list()
            .entries(self.0.iter().map(|t| &t.holder.name))
            .finish()
    }
}

impl Tokens {
    /// The tokens of `http.tokens` and `http.tokens_file`, checked: names unique,
    /// hashes well formed and distinct, every token granted something.
    pub fn load(inline: &[TokenConfig], file: Option<&Path>) -> Result<Tokens, HttpError> {
        let mut all = inline.to_vec();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                HttpError::Tokens(format!("cannot read tokens_file {}: {e}", path.display()))
            })?;
            // The file holds hashes, not tokens, so its parse errors may be shown.
            let listed: Vec<TokenConfig> = serde_yaml::from_str(&text).map_err(|e| {
                HttpError::Tokens(format!(
                    "tokens_file {} is not a list of tokens: {e}",
                    path.display()
                ))
            })?;
            all.extend(listed);
        }
        let mut tokens = Vec::with_capacity(all.len());
        for t in all {
            let digest = parse_digest(&t.sha256).ok_or_else(|| {
                HttpError::Tokens(format!(
                    "token `{}`: sha256 must be 64 lowercase hex digits",
                    t.name
                ))
            })?;
            if t.name.is_empty() {
                return Err(HttpError::Tokens("a token has an empty name".into()));
            }
            if t.name.starts_with(super::oauth::OAUTH_CALLER) {
                return Err(HttpError::Tokens(format!(
                    "token `{}`: a name starting with `{}` is an OAuth caller's",
                    t.name,
                    super::oauth::OAUTH_CALLER
                )));
            }
            if t.classes.is_empty() && t.tools.is_empty() {
                return Err(HttpError::Tokens(format!(
                    "token `{}` may call nothing: give it classes or tools",
                    t.name
                )));
            }
            if tokens.iter().any(|o: &Token| o.holder.name == t.name) {
                return Err(HttpError::Tokens(format!(
                    "two tokens are named `{}`",
                    t.name
                )));
            }
            if tokens.iter().any(|o: &Token| o.digest == digest) {
                return Err(HttpError::Tokens(format!(
                    "token `{}` has the hash of another token",
                    t.name
                )));
            }
            tokens.push(Token {
                digest,
                holder: Holder {
                    name: t.name,
                    grants: vec![Grant {
                        classes: t.classes,
                        tools: t.tools,
                        clusters: t.clusters,
                    }],
                },
            });
        }
        Ok(Tokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same holders with the same hashes and grants.
    fn same_as(&self, other: &Tokens) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| {
                a.digest == b.digest
                    && a.holder.name == b.holder.name
                    && a.holder.grants == b.holder.grants
            })
    }

    /// The holder of `presented`, if it is a configured token. Every stored hash is
    /// compared, in constant time, so timing tells nothing about which one matched.
    pub fn verify(&self, presented: &str) -> Option<&Holder> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(&t.holder);
            }
        }
        found
    }
}

/// The configured tokens, reloaded when `http.tokens_file` changes.
pub struct TokenStore {
    inline: Vec<TokenConfig>,
    file: Option<PathBuf>,
    current: RwLock<Arc<Tokens>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("file", &self.file)
            .field("tokens", &*self.current())
            .finish()
    }
}

impl TokenStore {
    /// The tokens as configured now; an error stops the server from starting.
    pub fn load(inline: &[TokenConfig], file: Option<&Path>) -> Result<TokenStore, HttpError> {
        let tokens = Tokens::load(inline, file)?;
        Ok(TokenStore {
            inline: inline.to_vec(),
            file: file.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Whether tokens are configured at all (inline or a file, even an empty one): then
    /// every request needs one, whatever the file holds later.
    pub fn configured(&self) -> bool {
        !self.inline.is_empty() || self.file.is_some()
    }

    /// The current set.
    pub fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the tokens again. A set that does not load is not swapped in; the warning
    /// says why without quoting the file (it could hold a token pasted by mistake).
    pub fn reload(&self) -> Result<bool, HttpError> {
        let tokens = Tokens::load(&self.inline, self.file.as_deref())?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.same_as(&tokens) {
            return Ok(false);
        }
        tracing::info!(tokens = tokens.0.len(), "reloaded http.tokens_file");
        *current = Arc::new(tokens);
        Ok(true)
    }

    /// Watches the tokens file's folder (editors and secret mounts replace files by
    /// renaming) and reloads after each change, until the guard is dropped. `None`
    /// without a file.
    pub fn watch(self: &Arc<Self>) -> Result<Option<TokensWatch>, HttpError> {
        use notify::{RecursiveMode, Watcher as _};
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Any change in the folder may be the file (a symlink swap of a mounted
            // secret names only the link); a reload of an unchanged file is cheap
            // and quiet. Reading it is no change: the reload itself opens it. The
            // receiver lives as long as the task.
            if res.as_ref().map_or(true, crate::watch::is_change) {
                let _ = tx.send(());
            }
        })
        .map_err(|e| HttpError::Tokens(format!("cannot watch tokens_file: {e}")))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                HttpError::Tokens(format!(
                    "cannot watch {} for tokens_file: {e}",
                    dir.display()
                ))
            })?;
        let store = self.clone();
        let task = tokio::spawn(async move {
            while crate::watch::settled(&mut rx).await.is_some() {
                let store = store.clone();
                let done = tokio::task::spawn_blocking(move || store.reload()).await;
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "http.tokens_file not reloaded, the previous tokens stay in force: {}",
                        redact_hex(&e.to_string())
                    ),
                    Err(e) => tracing::error!("tokens reload failed: {e}"),
                }
            }
        });
        Ok(Some(TokensWatch {
            _watcher: watcher,
            task,
        }))
    }
}

/// Keeps the tokens file watched while alive.
pub struct TokensWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokensWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A message with every run of 16 or more hex digits replaced: a parse error of the
/// tokens file may quote a value, and a hash is not for the log.
fn redact_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 16 {
            out.push_str("<redacted>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The hex SHA-256 of a token, as `sha256:` in the configuration.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A new random token (32 bytes of the operating system's randomness, base64url).
pub fn new_token() -> Result<String, HttpError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| HttpError::Tokens(format!("no randomness for a token: {e}")))?;
    Ok(format!(
        "cmcp_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, token: &str, classes: Vec<Safety>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: hash_hex(token),
            classes,
            tools: vec![],
            clusters: vec![],
        }
    }

    #[test]
    fn a_token_matches_its_hash_and_nothing_else() {
        let tokens = Tokens::load(
            &[
                config("alice", "tok-a", vec![Safety::ReadOnly]),
                config("bob", "tok-b", vec![Safety::ReadOnly, Safety::Plan]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(tokens.verify("tok-b").unwrap().name, "bob");
        assert_eq!(tokens.verify("tok-a").unwrap().name, "alice");
        assert!(tokens.verify("tok-c").is_none());
        assert!(tokens.verify("").is_none());
    }

    #[test]
    fn grants_allow_classes_and_named_tools() {
        let g = Grant {
            classes: vec![Safety::ReadOnly],
            tools: vec!["citus_rebalance_plan".into()],
            ..Grant::default()
        };
        assert!(g.allows("list_nodes", Safety::ReadOnly));
        assert!(g.allows("citus_rebalance_plan", Safety::Plan));
        assert!(!g.allows("citus_move_shard_plan", Safety::Plan));
        assert!(!g.allows("citus_rebalance_execute", Safety::Execute));
    }

    #[test]
    fn bad_token_configurations_are_refused_without_echoing_hashes() {
        let mut dup = config("a", "x", vec![Safety::ReadOnly]);
        let e = Tokens::load(&[dup.clone(), dup.clone()], None).unwrap_err();
        assert!(e.to_string().contains("two tokens are named `a`"), "{e}");
        dup.sha256 = "ABC".into();
        let e = Tokens::load(&[dup], None).unwrap_err();
        assert!(e.to_string().contains("64 lowercase hex"), "{e}");
        let e = Tokens::load(&[config("n", "x", vec![])], None).unwrap_err();
        assert!(e.to_string().contains("may call nothing"), "{e}");
        // OAuth callers are named `oauth:...`: a token may not take such a name.
        let e = Tokens::load(&[config("oauth:ro", "x", vec![Safety::ReadOnly])], None).unwrap_err();
        assert!(e.to_string().contains("OAuth caller"), "{e}");
    }

    #[test]
    fn tokens_file_is_a_yaml_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            format!(
                "- name: ci\n  sha256: {}\n  classes: [read_only]\n",
                hash_hex("ci-token")
            ),
        )
        .unwrap();
        let tokens = Tokens::load(&[], Some(&path)).unwrap();
        assert_eq!(tokens.verify("ci-token").unwrap().name, "ci");
    }

    #[test]
    fn a_reload_swaps_in_a_good_file_and_keeps_the_last_good_set_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let entry = |name: &str, token: &str| {
            format!(
                "- name: {name}\n  sha256: {}\n  classes: [read_only]\n",
                hash_hex(token)
            )
        };
        std::fs::write(&path, entry("old", "old-token")).unwrap();
        let store = TokenStore::load(&[], Some(&path)).unwrap();
        assert!(store.configured());
        assert!(!store.reload().unwrap(), "an unchanged file is no change");
        std::fs::write(&path, entry("new", "new-token")).unwrap();
        assert!(store.reload().unwrap());
        assert!(store.current().verify("old-token").is_none());
        assert_eq!(store.current().verify("new-token").unwrap().name, "new");
        std::fs::write(&path, "- name: broken\n  sha256: 0123456789abcdef0123\n").unwrap();
        let e = store.reload().unwrap_err().to_string();
        assert!(!redact_hex(&e).contains("0123456789abcdef0123"), "{e}");
        assert_eq!(store.current().verify("new-token").unwrap().name, "new");
        assert!(!format!("{store:?}").contains(&hash_hex("new-token")));
    }

    #[test]
    fn redact_hex_hides_long_hex_runs_only() {
        assert_eq!(
            redact_hex("bad `0123456789abcdef0` at line 2"),
            "bad `<redacted>` at line 2"
        );
        assert_eq!(redact_hex("deadbeef cafe"), "deadbeef cafe");
    }

    #[test]
    fn grants_extend_without_duplicates() {
        let mut g = Grant {
            classes: vec![Safety::ReadOnly],
            tools: vec!["a".into()],
            ..Grant::default()
        };
        g.extend(&Grant {
            classes: vec![Safety::ReadOnly, Safety::Plan],
            tools: vec!["a".into(), "b".into()],
            ..Grant::default()
        });
        assert_eq!(g.classes, vec![Safety::ReadOnly, Safety::Plan]);
        assert_eq!(g.tools, vec!["a", "b"]);
        assert!(!g.is_empty());
    }

    /// A grant for some clusters holds only at their endpoints; `/metrics`, which shows
    /// every cluster, and a server of one unnamed cluster take only grants for all.
    #[test]
    fn a_holders_grant_is_the_union_of_those_holding_at_the_endpoint() {
        let h = Holder {
            name: "ci".into(),
            grants: vec![
                Grant {
                    classes: vec![Safety::ReadOnly],
                    clusters: vec!["staging".into(), "dev".into()],
                    ..Grant::default()
                },
                Grant {
                    tools: vec!["ping".into()],
                    ..Grant::default()
                },
            ],
        };
        let staging = h.grant_at(Some("staging"));
        assert!(staging.allows("list_nodes", Safety::ReadOnly));
        assert!(staging.allows("ping", Safety::ReadOnly));
        let prod = h.grant_at(Some("prod"));
        assert!(!prod.allows("list_nodes", Safety::ReadOnly));
        assert!(prod.allows("ping", Safety::ReadOnly));
        assert!(!h.grant_at(None).allows("list_nodes", Safety::ReadOnly));
        let only_staging = Holder {
            grants: h.grants[..1].to_vec(),
            ..h
        };
        assert!(only_staging.grant_at(Some("prod")).is_empty());
        assert!(only_staging.grant_at(None).is_empty());
    }

    #[test]
    fn bearer_reads_the_scheme_case_insensitively() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(new_token().unwrap().starts_with("cmcp_"));
    }
}
