//! The token itself: what it binds, how it is sealed, and every way it can fail.
//!
//! A token is base64url (no padding) of
//! `version | key id (4) | expiry (u64 BE, unix s) | nonce (16) | argument digest (32) |
//! tool length (1) | tool | HMAC-SHA256 tag (32)`, the tag taken over a domain label and
//! every byte before it. It holds no secret and no argument values: the digest binds
//! the arguments, which the caller sends again with the call.
//!
//! The key id is the start of an HMAC of a fixed label under the secret, so a token
//! sealed under another `approval_secret` is told apart from one that was altered; it
//! tells an attacker nothing the tag does not already.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use base64::Engine as _;

type HmacSha256 = Hmac<Sha256>;

/// The format version; a token of another version is malformed.
pub const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"citus-mcp approval token v1\0";
const KEY_ID_LABEL: &[u8] = b"citus-mcp approval key id";
const TAG_LEN: usize = 32;
const NONCE_LEN: usize = 16;
/// Bytes before the tool name: version, key id, expiry, nonce, digest, tool length.
const HEAD_LEN: usize = 1 + 4 + 8 + NONCE_LEN + 32 + 1;
/// The longest text accepted as a token: a longer one is malformed without decoding.
const MAX_TOKEN_CHARS: usize = 512;

/// The argument key that carries the token, never part of what it approves.
pub use crate::engine::TOKEN_KEY;

/// Why a token was refused. Each has a stable name for the audit log and the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `approval_token` in the call.
    Missing,
    /// Not a token of this format (bad base64, length, version, tool name).
    Malformed,
    /// Sealed under another `approval_secret`.
    OtherSecret,
    /// The key matches but the tag does not: the token was altered or made up.
    Forged,
    /// Issued for another tool (named).
    OtherTool(String),
    /// Issued for other arguments of this tool.
    OtherArguments,
    /// Past its expiry (unix seconds).
    Expired(u64),
    /// Valid for longer than this server allows (issued under a larger cap).
    OverCap,
    /// Already used once.
    Replayed,
}

impl Refusal {
    /// The stable reason, as the audit log and the error's `problems` show it.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::OtherSecret => "other_secret",
            Refusal::Forged => "forged",
            Refusal::OtherTool(_) => "other_tool",
            Refusal::OtherArguments => "other_arguments",
            Refusal::Expired(_) => "expired",
            Refusal::OverCap => "over_cap",
            Refusal::Replayed => "replayed",
        }
    }
}

/// What a token approves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tool: String,
    pub digest: [u8; 32],
    /// Unix seconds; the token is valid up to and including this second.
    pub expires: u64,
    pub nonce: [u8; NONCE_LEN],
}

impl Claims {
    /// The nonce as the ledger stores it.
    pub fn nonce_hex(&self) -> String {
        hex(&self.nonce)
    }

    /// A short name of this approval for logs: a hash of the nonce, so it links the
    /// issue and use lines of one token without giving away any of it.
    pub fn approval_id(&self) -> String {
        hex(&Sha256::digest(self.nonce)[..8])
    }
}

/// The arguments as the token binds them: keys sorted at every level, no whitespace,
/// and the top-level `approval_token` left out.
pub fn canonical_args(args: &Map<String, Value>) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                // serde_json keeps insertion order here (preserve_order), so inserting in
                // sorted order is what makes the text canonical.
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            // `1.0` and `1` are one argument, as the engine reads them.
            other => {
                let mut v = other.clone();
                crate::engine::whole_numbers(&mut v);
                v
            }
        }
    }
    let mut top = args.clone();
    top.remove(TOKEN_KEY);
    sorted(&Value::Object(top)).to_string()
}

/// [`canonical_args`] as a person reads them before approving: every character that
/// does not show, or that changes how the text around it shows (controls, bidirectional
/// overrides and isolates, zero-width and other format characters, line and paragraph
/// separators), written as `\u{XXXX}`, so that what a person reads is what the token
/// binds (a right-to-left override can make a statement read as something else).
pub fn shown_args(args: &Map<String, Value>) -> String {
    let canonical = canonical_args(args);
    let mut out = String::with_capacity(canonical.len());
    for c in canonical.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that do not show as themselves: Unicode's controls (Cc), format characters
/// (Cf), separators that break lines (Zl, Zp), and the fillers and selectors that show
/// as nothing.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// SHA-256 of [`canonical_args`].
pub fn args_digest(args: &Map<String, Value>) -> [u8; 32] {
    Sha256::digest(canonical_args(args).as_bytes()).into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals and opens tokens with one secret.
pub struct Signer {
    /// SHA-256 of the secret. HMAC pads a key shorter than its block with zero bytes and
    /// hashes a longer one, so two secrets that differ only by trailing NUL bytes (or a
    /// long secret and its own hash) would be the same key, and a token sealed for one
    /// cluster would open at another. Every key here is 32 bytes, one per secret.
    key: [u8; 32],
    key_id: [u8; 4],
}

impl Signer {
    /// The shortest secret accepted, in bytes.
    pub const MIN_SECRET_BYTES: usize = 16;

    /// A signer for `secret`; `None` when it is shorter than [`Self::MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Option<Signer> {
        if secret.len() < Self::MIN_SECRET_BYTES {
            return None;
        }
        let key: [u8; 32] = Sha256::digest(secret).into();
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(KEY_ID_LABEL);
        let full = mac.finalize().into_bytes();
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&full[..4]);
        Some(Signer { key, key_id })
    }

    fn mac(&self) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac
    }

    /// The token for `claims`. The tool name fits in a byte of length: tool names are
    /// at most 64 characters.
    pub fn seal(&self, claims: &Claims) -> String {
        let tool = claims.tool.as_bytes();
        let tool_len = u8::try_from(tool.len()).expect("tool names are at most 64 bytes");
        let mut body = Vec::with_capacity(HEAD_LEN + tool.len() + TAG_LEN);
        body.push(VERSION);
        body.extend_from_slice(&self.key_id);
        body.extend_from_slice(&claims.expires.to_be_bytes());
        body.extend_from_slice(&claims.nonce);
        body.extend_from_slice(&claims.digest);
        body.push(tool_len);
        body.extend_from_slice(tool);
        let mut mac = self.mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
    }

    /// The claims of a token sealed by this signer. Only the format and the tag are
    /// checked here; what the claims must match is the caller's to check.
    pub fn open(&self, token: &str) -> Result<Claims, Refusal> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(Refusal::Malformed);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| Refusal::Malformed)?;
        if raw.len() < HEAD_LEN + TAG_LEN || raw[0] != VERSION {
            return Err(Refusal::Malformed);
        }
        let tool_len = usize::from(raw[HEAD_LEN - 1]);
        if raw.len() != HEAD_LEN + tool_len + TAG_LEN {
            return Err(Refusal::Malformed);
        }
        let (body, tag) = raw.split_at(HEAD_LEN + tool_len);
        if body[1..5] != self.key_id {
            return Err(Refusal::OtherSecret);
        }
        let mut mac = self.mac();
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(tag).map_err(|_| Refusal::Forged)?;
        let tool = std::str::from_utf8(&body[HEAD_LEN..])
            .map_err(|_| Refusal::Malformed)?
            .to_string();
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&body[5..13]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&body[13..13 + NONCE_LEN]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&body[13 + NONCE_LEN..13 + NONCE_LEN + 32]);
        Ok(Claims {
            tool,
            digest,
            expires: u64::from_be_bytes(expires),
            nonce,
        })
    }
}

/// A fresh random nonce.
pub fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn canonical_args_sort_keys_drop_the_token_and_have_no_whitespace() {
        let a = obj(
            json!({"b": {"y": 1, "x": [ {"k": 2, "j": 1} ]}, "a": "s p", "approval_token": "t"}),
        );
        assert_eq!(
            canonical_args(&a),
            r#"{"a":"s p","b":{"x":[{"j":1,"k":2}],"y":1}}"#
        );
        let b = obj(json!({"a": "s p", "b": {"y": 1, "x": [ {"j": 1, "k": 2} ]}}));
        assert_eq!(args_digest(&a), args_digest(&b));
        assert_ne!(args_digest(&a), args_digest(&obj(json!({"a": "s p"}))));
        // A whole number is one argument however it is written, as the engine reads it.
        assert_eq!(
            args_digest(&obj(json!({"n": 2.0, "m": [1e3]}))),
            args_digest(&obj(json!({"n": 2, "m": [1000]})))
        );
        assert_ne!(
            args_digest(&obj(json!({"n": 2.5}))),
            args_digest(&obj(json!({"n": 2})))
        );
    }

    #[test]
    fn shown_args_write_what_does_not_show() {
        let a =
            obj(json!({"sql": "SELECT 1 /* \u{202e} ; */", "t": "é中🐘\u{200b}\u{7f}\u{2028}"}));
        assert_eq!(
            shown_args(&a),
            r#"{"sql":"SELECT 1 /* \u{202e} ; */","t":"é中🐘\u{200b}\u{007f}\u{2028}"}"#
        );
        // Controls below 0x20 are JSON escapes already.
        assert_eq!(shown_args(&obj(json!({"a": "x\ny"}))), r#"{"a":"x\ny"}"#);
    }

    #[test]
    fn a_sealed_token_opens_to_its_claims() {
        let s = Signer::new(b"0123456789abcdef").unwrap();
        let c = Claims {
            tool: "t".repeat(64),
            digest: [7; 32],
            expires: 1_900_000_000,
            nonce: [9; NONCE_LEN],
        };
        let token = s.seal(&c);
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        assert_eq!(s.open(&token).unwrap(), c);
    }

    /// Secrets that HMAC alone would take for one key (trailing NUL bytes, a long secret
    /// and its hash) seal tokens the other refuses.
    #[test]
    fn secrets_that_differ_open_each_others_tokens_never() {
        let c = Claims {
            tool: "t".into(),
            digest: [7; 32],
            expires: 1_900_000_000,
            nonce: [9; NONCE_LEN],
        };
        let long = [b'x'; 100];
        let long_hash: [u8; 32] = Sha256::digest(long).into();
        for (a, b) in [
            (
                &b"cluster-a-secret-0123456789"[..],
                &b"cluster-a-secret-0123456789\0"[..],
            ),
            (&long[..], &long_hash[..]),
        ] {
            let (a, b) = (Signer::new(a).unwrap(), Signer::new(b).unwrap());
            assert!(b.open(&a.seal(&c)).is_err());
            assert!(a.open(&b.seal(&c)).is_err());
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Signer::new(b"0123456789abcde").is_none());
    }

    #[test]
    fn every_altered_byte_is_caught() {
        let s = Signer::new(b"0123456789abcdef").unwrap();
        let c = Claims {
            tool: "drop_it".into(),
            digest: [1; 32],
            expires: 5,
            nonce: [2; NONCE_LEN],
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.seal(&c))
            .unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bad);
            assert!(s.open(&t).is_err(), "byte {i} altered and still accepted");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let s = Signer::new(b"0123456789abcdef").unwrap();
        for t in ["", "!!!", "AAAA", &"A".repeat(10_000), "ü"] {
            assert_eq!(s.open(t), Err(Refusal::Malformed), "{t:.20}");
        }
    }
}
