//! OAuth 2.1 resource server: JWT access tokens from an authorization server.
//!
//! A token is accepted when its signature verifies with one of the issuer's keys
//! ([`jwks`](super::jwks)) under an asymmetric algorithm the key allows, its `iss` is the
//! configured issuer, its `aud` names the configured audience, and `exp` / `nbf` hold
//! within `leeway_seconds`. Its scopes (`scope`, space-separated, or `scp`) map to the
//! same [`Grant`] a bearer token has; its identity is one claim (`sub` by default). The
//! protected-resource metadata of RFC 9728 tells clients where to get tokens.
//!
//! Neither the token nor its claims are logged: a rejection is one of [`Rejection`]'s
//! fixed reasons.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::HttpError;
use super::auth::{Grant, Holder};
use super::jwks::{Jwks, KeyMiss, Source, Url};
use crate::spec::Safety;

/// The `http.oauth` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The authorization server's issuer identifier; a token's `iss` must equal it.
    pub issuer: String,
    /// What a token's `aud` must name: this server's resource identifier.
    pub audience: String,
    /// The resource identifier in the metadata document; `audience` when unset.
    #[serde(default)]
    pub resource: Option<String>,
    /// Authorization servers in the metadata document; `[issuer]` when empty.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// The issuer's JWKS as a file ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or a URL (https; http only to a loopback address).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM roots for `jwks_url` instead of the system's.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// The fewest seconds between two loads of the keys caused by unknown key ids.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// The claim that names the caller (log, approval audit log).
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// What each scope grants; when empty, the scopes `read_only`, `plan` and
    /// `execute` grant the safety class of their name.
    #[serde(default)]
    pub scopes: BTreeMap<String, ScopeGrant>,
}

fn default_min_refetch() -> u64 {
    30
}

fn default_identity_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    30
}

/// What one scope grants: the same lists as a bearer token.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeGrant {
    #[serde(default)]
    pub classes: Vec<Safety>,
    #[serde(default)]
    pub tools: Vec<String>,
    /// The clusters where it grants that; empty: every endpoint.
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// The algorithms a token may be signed with: asymmetric ones only, so that nothing
/// public (a JWKS entry, a certificate) can serve as an HMAC secret.
const ALGORITHMS: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Why a token was refused. Each has a fixed description for `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    UnsupportedAlgorithm,
    UnknownKey,
    KeysUnavailable,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    BadIdentity,
}

impl Rejection {
    pub fn description(self) -> &'static str {
        match self {
            Rejection::Malformed => "the token is not a well-formed JWT",
            Rejection::UnsupportedAlgorithm => {
                "the token's algorithm is not accepted (asymmetric signatures only)"
            }
            Rejection::UnknownKey => "the token was not signed by a key of the issuer",
            Rejection::KeysUnavailable => "the issuer's signing keys are not available",
            Rejection::BadSignature => "the token's signature does not verify",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet",
            Rejection::WrongIssuer => "the token is from another issuer",
            Rejection::WrongAudience => "the token is for another audience",
            Rejection::MissingClaim => "the token lacks a required claim (exp, iss, aud)",
            Rejection::BadIdentity => "the token's identity claim is missing or not a name",
        }
    }

    /// A short stable code, for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnsupportedAlgorithm => "unsupported_algorithm",
            Rejection::UnknownKey => "unknown_key",
            Rejection::KeysUnavailable => "keys_unavailable",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::MissingClaim => "missing_claim",
            Rejection::BadIdentity => "bad_identity",
        }
    }
}

/// The checked OAuth configuration and the issuer's key cache.
pub struct OAuth {
    issuer: String,
    audience: String,
    resource: String,
    authorization_servers: Vec<String>,
    identity_claim: String,
    leeway: u64,
    scopes: BTreeMap<String, Grant>,
    /// Where clients find the metadata document (RFC 9728 §3.1), which every 401 names.
    pub metadata_url: String,
    /// That URL's path: served whatever the endpoints are (with `clusters`, the resource's
    /// own path, e.g. `/mcp`, is a prefix of every `/mcp/{cluster}` rather than one of them).
    pub metadata_path: String,
    pub jwks: Jwks,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// Checks the configuration; loads nothing yet.
    pub fn new(c: &OAuthConfig) -> Result<OAuth, HttpError> {
        let bad = |m: String| HttpError::OAuth(m);
        if c.issuer.trim().is_empty() {
            return Err(bad("issuer must not be empty".into()));
        }
        if c.audience.trim().is_empty() {
            return Err(bad(
                "audience must not be empty: it is what a token's aud must name".into(),
            ));
        }
        let source = match (&c.jwks_file, &c.jwks_url) {
            (Some(f), None) => Source::File(f.clone()),
            (None, Some(u)) => Source::Url(Url::parse(u)?),
            (None, None) => return Err(bad("set jwks_file or jwks_url".into())),
            (Some(_), Some(_)) => return Err(bad("set jwks_file or jwks_url, not both".into())),
        };
        if c.jwks_ca_file.is_some() && c.jwks_url.is_none() {
            return Err(bad("jwks_ca_file is for jwks_url".into()));
        }
        if c.identity_claim.trim().is_empty() {
            return Err(bad("identity_claim must not be empty".into()));
        }
        let resource = c.resource.clone().unwrap_or_else(|| c.audience.clone());
        let metadata_url = metadata_url(&resource).ok_or_else(|| {
            bad(format!(
                "resource `{resource}` must be an absolute http(s) URL, e.g. \
                 https://citus-mcp.example.com/mcp (set resource, or an audience that is one)"
            ))
        })?;
        let scopes = if c.scopes.is_empty() {
            [Safety::ReadOnly, Safety::Plan, Safety::Execute]
                .into_iter()
                .map(|s| {
                    (
                        class_name(s).to_string(),
                        Grant {
                            classes: vec![s],
                            ..Grant::default()
                        },
                    )
                })
                .collect()
        } else {
            let mut out = BTreeMap::new();
            for (name, g) in &c.scopes {
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(bad(format!("scope `{name}`: a scope is one word")));
                }
                if g.classes.is_empty() && g.tools.is_empty() {
                    return Err(bad(format!(
                        "scope `{name}` grants nothing: give it classes or tools"
                    )));
                }
                out.insert(
                    name.clone(),
                    Grant {
                        classes: g.classes.clone(),
                        tools: g.tools.clone(),
                        clusters: g.clusters.clone(),
                    },
                );
            }
            out
        };
        let jwks = Jwks::new(
            source,
            Duration::from_secs(c.jwks_min_refetch_seconds),
            c.jwks_ca_file.as_deref(),
        )?;
        Ok(OAuth {
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            authorization_servers: if c.authorization_servers.is_empty() {
                vec![c.issuer.clone()]
            } else {
                c.authorization_servers.clone()
            },
            resource,
            identity_claim: c.identity_claim.clone(),
            leeway: c.leeway_seconds,
            scopes,
            metadata_path: metadata_url
                .parse::<http::Uri>()
                .map(|u| u.path().to_string())
                .unwrap_or_default(),
            metadata_url,
            jwks,
        })
    }

    /// The protected-resource metadata document (RFC 9728 §2).
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": self.scopes_supported(),
            "resource_name": "citus-mcp",
        })
    }

    /// Every configured scope.
    pub fn scopes_supported(&self) -> Vec<&str> {
        self.scopes.keys().map(String::as_str).collect()
    }

    /// The scopes whose grant allows this tool at the endpoint of `cluster`: what a client
    /// could ask for.
    pub fn scopes_allowing(&self, tool: &str, safety: Safety, cluster: Option<&str>) -> Vec<&str> {
        self.scopes
            .iter()
            .filter(|(_, g)| g.holds_at(cluster) && g.allows(tool, safety))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// The holder of a valid access token: its identity and the grant of its scopes
    /// (possibly empty).
    pub async fn verify(&self, token: &str) -> Result<Holder, Rejection> {
        let (alg, kid) = header(token)?;
        let keys = self
            .jwks
            .keys_for(kid.as_deref(), alg)
            .await
            .map_err(|m| match m {
                KeyMiss::Unknown => Rejection::UnknownKey,
                KeyMiss::Unavailable => Rejection::KeysUnavailable,
            })?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut last = Rejection::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
                // A time claim that is not a number is not checked by the library: refuse it.
                Ok(data)
                    if ["exp", "nbf", "iat"]
                        .iter()
                        .any(|k| data.claims.get(*k).is_some_and(|v| !v.is_number())) =>
                {
                    return Err(Rejection::Malformed);
                }
                Ok(data) => return self.holder(&data.claims),
                // Another key with the same id (or none) may still verify it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => last = rejection(e.kind()),
            }
        }
        Err(last)
    }

    fn holder(&self, claims: &Map<String, Value>) -> Result<Holder, Rejection> {
        let name = claims
            .get(&self.identity_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 256 && !n.chars().any(char::is_control))
            .ok_or(Rejection::BadIdentity)?;
        let mut grants: Vec<Grant> = Vec::new();
        for scope in token_scopes(claims) {
            if let Some(g) = self.scopes.get(scope)
                && !grants.contains(g)
            {
                grants.push(g.clone());
            }
        }
        Ok(Holder {
            name: format!("{OAUTH_CALLER}{name}"),
            grants,
        })
    }
}

/// What an OAuth caller's name starts with: an identity provider names its users, the
/// configuration names the bearer tokens, and the two must never meet (a user whose `sub`
/// is a token's name would otherwise share that token's sessions, call limit and audit
/// name). A token's name may not start with it.
pub const OAUTH_CALLER: &str = "oauth:";

/// The scopes of a token: `scope` (RFC 9068, space-separated) or `scp` (a list, or a
/// string, as some issuers send).
fn token_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// The algorithm and key id of a token, read before any key is looked up. `none`,
/// HS* and anything else not in [`ALGORITHMS`] stop here.
fn header(token: &str) -> Result<(Algorithm, Option<String>), Rejection> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| Rejection::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)?;
    let name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Rejection::Malformed)?;
    let alg = ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or(Rejection::UnsupportedAlgorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Rejection::Malformed),
    };
    // `crit` names extensions the recipient must understand or reject the token for
    // (RFC 7515 §4.1.11): this one understands none.
    if header.contains_key("crit") {
        return Err(Rejection::Malformed);
    }
    Ok((alg, kid))
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Rejection::UnsupportedAlgorithm
        }
        _ => Rejection::Malformed,
    }
}

fn class_name(s: Safety) -> &'static str {
    match s {
        Safety::ReadOnly => "read_only",
        Safety::Plan => "plan",
        Safety::Execute => "execute",
    }
}

/// `https://host/.well-known/oauth-protected-resource/path` for a resource
/// `https://host/path` (RFC 9728 §3.1: the well-known part goes before the path).
fn metadata_url(resource: &str) -> Option<String> {
    let uri: http::Uri = resource.parse().ok()?;
    let scheme = uri
        .scheme_str()
        .filter(|s| matches!(*s, "http" | "https"))?;
    let authority = uri.authority()?;
    if uri.query().is_some() || authority.as_str().contains('@') {
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    Some(format!(
        "{scheme}://{authority}/.well-known/oauth-protected-resource{path}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OAuthConfig {
        OAuthConfig {
            issuer: "https://issuer.example".into(),
            audience: "https://mcp.example/mcp".into(),
            resource: None,
            authorization_servers: vec![],
            jwks_file: Some("/nonexistent/jwks.json".into()),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_min_refetch_seconds: 30,
            identity_claim: "sub".into(),
            leeway_seconds: 30,
            scopes: BTreeMap::new(),
        }
    }

    /// A scope for some clusters counts only at their endpoints; the others' hold there too.
    #[test]
    fn scopes_for_clusters_hold_at_those_clusters() {
        let mut c = config();
        c.scopes.insert(
            "staging:write".into(),
            ScopeGrant {
                classes: vec![Safety::Plan],
                clusters: vec!["staging".into()],
                ..ScopeGrant::default()
            },
        );
        c.scopes.insert(
            "read".into(),
            ScopeGrant {
                classes: vec![Safety::ReadOnly],
                ..ScopeGrant::default()
            },
        );
        let o = OAuth::new(&c).unwrap();
        let claims: Map<String, Value> =
            serde_json::from_value(json!({"sub": "ci", "scope": "read staging:write"})).unwrap();
        let h = o.holder(&claims).unwrap();
        assert_eq!(
            h.grant_at(Some("staging")).classes,
            vec![Safety::ReadOnly, Safety::Plan]
        );
        assert_eq!(h.grant_at(Some("prod")).classes, vec![Safety::ReadOnly]);
        assert_eq!(
            o.scopes_allowing("citus_rebalance_plan", Safety::Plan, Some("prod")),
            Vec::<&str>::new()
        );
        assert_eq!(
            o.scopes_allowing("citus_rebalance_plan", Safety::Plan, Some("staging")),
            vec!["staging:write"]
        );
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn metadata_url_puts_the_well_known_part_before_the_path() {
        assert_eq!(
            metadata_url("https://mcp.example/mcp").unwrap(),
            "https://mcp.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example:8443/").unwrap(),
            "https://mcp.example:8443/.well-known/oauth-protected-resource"
        );
        assert!(metadata_url("mcp.example/mcp").is_none());
        assert!(metadata_url("urn:x").is_none());
    }

    #[test]
    fn headers_refuse_none_hmac_and_garbage_before_any_key_lookup() {
        let claims = b64(&json!({"sub": "x"}));
        for (alg, want) in [
            ("none", Rejection::UnsupportedAlgorithm),
            ("HS256", Rejection::UnsupportedAlgorithm),
            ("ES256", Rejection::Malformed),
        ] {
            let t = format!("{}.{claims}.", b64(&json!({"alg": alg, "kid": 7})));
            assert_eq!(header(&t).unwrap_err(), want, "{alg}");
        }
        let t = format!("{}.{claims}.sig", b64(&json!({"alg": "ES256", "kid": "k"})));
        assert_eq!(
            header(&t).unwrap(),
            (Algorithm::ES256, Some("k".to_string()))
        );
        for bad in ["", "a.b", "a.b.c.d", "!!!.a.b", "e30.a.b"] {
            assert!(header(bad).is_err(), "{bad}");
        }
        // An extension the token says must be understood: none is.
        let t = format!(
            "{}.{claims}.sig",
            b64(&json!({"alg": "ES256", "kid": "k", "crit": ["exp"]}))
        );
        assert_eq!(header(&t).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn scopes_map_to_grants_and_unknown_scopes_grant_nothing() {
        let o = OAuth::new(&config()).unwrap();
        let claims: Map<String, Value> = serde_json::from_value(
            json!({"sub": "alice", "scope": "openid read_only", "scp": ["plan"]}),
        )
        .unwrap();
        let h = o.holder(&claims).unwrap();
        assert_eq!(
            h.name, "oauth:alice",
            "an OAuth caller is never a token's holder"
        );
        assert_eq!(
            h.grant_at(None).classes,
            vec![Safety::ReadOnly, Safety::Plan]
        );
        assert_eq!(
            o.scopes_allowing("x", Safety::Execute, None),
            vec!["execute"]
        );
        let none: Map<String, Value> =
            serde_json::from_value(json!({"sub": "bob", "scope": "openid"})).unwrap();
        assert!(o.holder(&none).unwrap().grant_at(None).is_empty());
        let bad: Map<String, Value> =
            serde_json::from_value(json!({"sub": "line\nbreak"})).unwrap();
        assert_eq!(o.holder(&bad).unwrap_err(), Rejection::BadIdentity);
        assert_eq!(
            o.metadata()["scopes_supported"],
            json!(["execute", "plan", "read_only"])
        );
        assert_eq!(
            o.metadata()["authorization_servers"],
            json!(["https://issuer.example"])
        );
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        let mut c = config();
        c.audience = " ".into();
        assert!(OAuth::new(&c).unwrap_err().to_string().contains("audience"));
        let mut c = config();
        c.jwks_url = Some("https://issuer.example/jwks".into());
        assert!(OAuth::new(&c).unwrap_err().to_string().contains("not both"));
        let mut c = config();
        c.jwks_file = None;
        assert!(
            OAuth::new(&c)
                .unwrap_err()
                .to_string()
                .contains("jwks_file or jwks_url")
        );
        let mut c = config();
        c.audience = "citus-mcp".into();
        assert!(OAuth::new(&c).unwrap_err().to_string().contains("resource"));
        c.resource = Some("https://mcp.example/mcp".into());
        assert!(OAuth::new(&c).is_ok());
        let mut c = config();
        c.scopes.insert("empty".into(), ScopeGrant::default());
        assert!(
            OAuth::new(&c)
                .unwrap_err()
                .to_string()
                .contains("grants nothing")
        );
    }
}
