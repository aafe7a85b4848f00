//! Bearer tokens: who may call, and which tools.
//!
//! A token is stored only as its SHA-256 hash, with a name and a grant (safety classes
//! and tool names). A presented token is hashed and compared with every stored hash in
//! constant time. The token itself is never kept, logged or echoed: only its name is.

use std::path::Path;

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
}

/// What a token may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub classes: Vec<Safety>,
    pub tools: Vec<String>,
}

impl Grant {
    /// Whether a tool of this name and class may be called.
    pub fn allows(&self, tool: &str, safety: Safety) -> bool {
        self.classes.contains(&safety) || self.tools.iter().any(|t| t == tool)
    }
}

/// A token that matched: its name and grant.
#[derive(Debug, Clone)]
pub struct Holder {
    pub name: String,
    pub grant: Grant,
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
                    grant: Grant {
                        classes: t.classes,
                        tools: t.tools,
                    },
                },
            });
        }
        Ok(Tokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
