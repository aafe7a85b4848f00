//! OAuth resource-server mode, the tokens file's hot reload, and https, end to end: the
//! built binary with `--http 127.0.0.1:0` and an issuer made by the tests (ES256 keys from
//! ring, RS256 keys from the openssl CLI, all generated at test time), its JWKS served from
//! a file and from a loopback server of the test's own (plain http, and https with a CA the
//! test makes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use libtest_mimic::Trial;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::e2e::bin;
use crate::httpd::{ACCEPT, Answer, HttpServer, meta_2026, structured};
use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![
        trial(
            ctx,
            "oauth::valid_jwts_list_and_call_only_what_their_scopes_grant",
            valid_tokens,
        ),
        trial(
            ctx,
            "oauth::no_token_401_points_to_the_metadata_document",
            metadata,
        ),
        trial(ctx, "oauth::bad_tokens_are_401_invalid_token", bad_tokens),
        trial(
            ctx,
            "oauth::every_cluster_endpoint_is_protected_and_described",
            with_clusters,
        ),
        trial(
            ctx,
            "oauth::jwks_url_is_refetched_for_a_new_key_at_most_once_per_interval",
            jwks_url,
        ),
        trial(
            ctx,
            "oauth::jwks_url_over_https_is_verified_against_its_ca",
            jwks_https,
        ),
        trial(
            ctx,
            "http::tokens_file_edits_take_effect_without_a_restart",
            tokens_reload,
        ),
        trial(
            ctx,
            "http::tls_serves_https_and_half_a_pair_does_not_start",
            tls,
        ),
    ]
}

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://mcp.test/mcp";
const METADATA_URL: &str = "https://mcp.test/.well-known/oauth-protected-resource/mcp";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key of the test issuer.
struct Key {
    kid: String,
    signer: Signer,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl Key {
    fn es256(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Key {
            kid: kid.into(),
            signer: Signer::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()),
        }
    }

    /// An RSA key from the openssl CLI (ring cannot generate RSA keys).
    fn rs256(kid: &str, dir: &Path) -> Key {
        let path = dir.join(format!("{kid}.der"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
            "-out",
            path.to_str().unwrap(),
        ]);
        let der = std::fs::read(&path).unwrap();
        Key {
            kid: kid.into(),
            // openssl 3 writes PKCS#1 for `-outform DER`; other versions PKCS#8.
            signer: Signer::Rs256(
                RsaKeyPair::from_der(&der)
                    .or_else(|_| RsaKeyPair::from_pkcs8(&der))
                    .unwrap(),
            ),
        }
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// The public key as a JWKS entry.
    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Es256(k) => {
                // An uncompressed point: 0x04, x, y.
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Rs256(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                    "n": b64(&c.n), "e": b64(&c.e)})
            }
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Es256(k) => k.sign(&rng, message.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    message.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
        };
        format!("{message}.{}", b64(&signature))
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Claims a valid token carries, with `extra` replacing or adding some.
fn claims(sub: &str, scope: &str, extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
        "iat": now(), "exp": now() + 300});
    // A null in `extra` removes the claim.
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI makes the tests' keys and certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `http.oauth` section with the tests' scopes; `jwks` is the `jwks_file: ...` or
/// `jwks_url: ...` line and anything else to add to the section.
fn oauth_section(jwks: &str) -> String {
    format!(
        "  oauth:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    leeway_seconds: 5\n    {jwks}\n    scopes:\n      citus:read: {{classes: [read_only]}}\n      citus:plan: {{classes: [plan]}}\n      citus:ping: {{tools: [ping]}}\n"
    )
}

fn write_config(dir: &Path, http: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, format!("http:\n{http}")).unwrap();
    path
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The names `tools/list` gives in a legacy session.
async fn tool_names(s: &HttpServer, auth: &str) -> Vec<String> {
    let session = s.initialize(&[("authorization", auth)]).await;
    let r = s
        .post(
            &[
                ("authorization", auth),
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
        )
        .await;
    names(&r)
}

/// The names `tools/list` gives to a 2026-07-28 request (no session).
async fn tool_names_2026(s: &HttpServer, auth: &str) -> Vec<String> {
    let r = s
        .post(
            &[
                ("authorization", auth),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ],
            &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": meta_2026()}}),
        )
        .await;
    names(&r)
}

fn names(r: &Answer) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text);
    let mut names: Vec<String> = r.response()["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {}", r.text))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn valid_tokens(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let es = Key::es256("es-1");
    let rs = Key::rs256("rs-1", dir.path());
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&es, &rs])).unwrap();
    const CI: &str = "ci-bearer-token-beside-oauth";
    let config = write_config(
        dir.path(),
        &format!(
            "{}  tokens:\n    - name: ci\n      sha256: {}\n      tools: [ping]\n",
            oauth_section(&format!("jwks_file: {}", jwks_file.display())),
            citus_mcp::httpd::auth::hash_hex(CI)
        ),
    );
    // Admin mode with an execute tool, so that an approval records its caller.
    std::fs::write(dir.path().join("dangerous.yaml"), crate::e2e::EXEC_TOOL).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let s = HttpServer::start(
        ctx,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tools-dirs",
            dir.path().to_str().unwrap(),
            "--mode",
            "admin",
            "--allow-execute",
            "--allow-self-issue",
            "--approval-ledger-path",
            dir.path().join("nonces").to_str().unwrap(),
            "--approval-audit-log",
            audit.to_str().unwrap(),
        ],
        &[(
            "CITUS_MCP_APPROVAL_SECRET",
            "oauth-approval-secret-never-print",
        )],
    );
    let pinger = es.sign(&claims("alice@example.com", "openid citus:ping", json!({})));
    let reader = rs.sign(&claims(
        "bob@example.com",
        "",
        json!({"scope": null, "scp": ["citus:read"]}),
    ));
    let planner = es.sign(&claims("carol", "citus:read citus:plan", json!({})));
    let nothing = es.sign(&claims("dave", "openid profile", json!({})));
    ctx.rt.block_on(async {
        // The ping scope lists and calls ping, and nothing else.
        let auth = bearer(&pinger);
        assert_eq!(tool_names(&s, &auth).await, ["ping"]);
        assert_eq!(tool_names_2026(&s, &auth).await, ["ping"]);
        let r = s
            .call_2026(
                &[("authorization", &auth)],
                1,
                "ping",
                json!({"message": "jwt"}),
            )
            .await;
        assert_eq!(structured(&r)["message"], "jwt", "{}", r.text);
        let r = s
            .call_2026(&[("authorization", &auth)], 2, "list_nodes", json!({}))
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        let challenge = r.header("www-authenticate").unwrap();
        for part in [
            "error=\"insufficient_scope\"",
            "scope=\"citus:read\"",
            &format!("resource_metadata=\"{METADATA_URL}\""),
        ] {
            assert!(challenge.contains(part), "{part} missing: {challenge}");
        }
        assert_eq!(r.response()["id"], 2);
        assert!(
            r.text
                .contains("`oauth:alice@example.com` may not call `list_nodes`"),
            "{}",
            r.text
        );

        // RS256 with `scp`: every read-only tool, and no plan tool.
        let auth = bearer(&reader);
        let listed = tool_names(&s, &auth).await;
        assert!(listed.iter().any(|n| n == "list_nodes"), "{listed:?}");
        assert!(listed.iter().any(|n| n == "ping"), "{listed:?}");
        assert!(
            !listed.iter().any(|n| n == "citus_rebalance_plan"),
            "{listed:?}"
        );
        let r = s
            .call_2026(&[("authorization", &auth)], 3, "list_nodes", json!({}))
            .await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
        let r = s
            .call_2026(
                &[("authorization", &auth)],
                4,
                "citus_rebalance_plan",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("scope=\"citus:plan\""),
            "{:?}",
            r.headers
        );
        // Two scopes grant the union of their tools.
        let both = tool_names_2026(&s, &bearer(&planner)).await;
        assert!(both.len() > listed.len(), "{both:?} vs {listed:?}");
        assert!(both.iter().any(|n| n == "citus_rebalance_plan"), "{both:?}");
        assert!(!both.iter().any(|n| n == "dangerous"), "{both:?}");

        // The token's subject is the caller in the approval audit log.
        let r = s
            .call_2026(
                &[("authorization", &bearer(&planner))],
                7,
                "citus_request_approval_token",
                json!({"action": "dangerous", "arguments": {}}),
            )
            .await;
        assert_eq!(r.response()["result"]["isError"], false, "{}", r.text);
        let log = std::fs::read_to_string(&audit).unwrap();
        let issued: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(issued["caller"], "oauth:carol", "{log}");

        // A token none of whose scopes is configured may do nothing, and is told which
        // scopes exist.
        let r = s
            .call_2026(
                &[("authorization", &bearer(&nothing))],
                5,
                "ping",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("scope=\"citus:ping citus:plan citus:read\""),
            "{:?}",
            r.headers
        );

        // A bearer token works beside OAuth, and its list is filtered the same way.
        assert_eq!(tool_names(&s, &bearer(CI)).await, ["ping"]);
        let r = s
            .call_2026(
                &[("authorization", &bearer(CI))],
                6,
                "list_nodes",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
    });
    let log = s.log_with("caller=oauth:alice@example.com");
    assert!(log.contains("caller=oauth:alice@example.com"), "{log}");
    for secret in [pinger.as_str(), &reader, &planner, &nothing, CI] {
        assert!(!log.contains(secret), "a token reached the log:\n{log}");
    }
}

fn metadata(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let es = Key::es256("k");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&es])).unwrap();
    let config = write_config(
        dir.path(),
        &oauth_section(&format!("jwks_file: {}", jwks_file.display())),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);
    ctx.rt.block_on(async {
        let r = s.call_2026(&[], 1, "ping", json!({})).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            format!("Bearer realm=\"citus-mcp\", resource_metadata=\"{METADATA_URL}\"")
        );
        let r = s.send("GET", "/metrics", &[], vec![]).await;
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("resource_metadata=")
        );
        // Both the root form and the one for /mcp (RFC 9728 §3.1), without a token.
        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            let r = s.send("GET", path, &[], vec![]).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            assert_eq!(r.header("content-type"), Some("application/json"));
            let doc: Value = serde_json::from_str(&r.text).unwrap();
            assert_eq!(doc["resource"], AUDIENCE);
            assert_eq!(doc["authorization_servers"], json!([ISSUER]));
            assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
            assert_eq!(
                doc["scopes_supported"],
                json!(["citus:ping", "citus:plan", "citus:read"])
            );
        }
    });
    drop(s);

    // Without OAuth there is no metadata document.
    let s = HttpServer::start(ctx, &[], &[]);
    ctx.rt.block_on(async {
        let r = s
            .send("GET", "/.well-known/oauth-protected-resource", &[], vec![])
            .await;
        assert_eq!(r.status, 404);
    });
}

/// With `clusters`, each `/mcp/{cluster}` takes the same tokens, answers 401 with the
/// metadata pointer, has its metadata document at its own well-known path, and holds a
/// token to its scopes.
fn with_clusters(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let es = Key::es256("k");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&es])).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "clusters:\n  east:\n    dsn: \"{dsn}\"\n  west:\n    dsn: \"{dsn}\"\nhttp:\n{oauth}",
            dsn = ctx.dsn(),
            oauth = oauth_section(&format!("jwks_file: {}", jwks_file.display())),
        ),
    )
    .unwrap();
    let mut cmd = crate::e2e::bin();
    cmd.env_remove("CITUS_MCP_COORDINATOR_DSN")
        .env("XDG_STATE_HOME", dir.path())
        .arg("--config")
        .arg(&config);
    let s = HttpServer::launch(cmd, &[], &[]);
    let pinger = bearer(&es.sign(&claims("alice", "citus:ping", json!({}))));
    let reader = bearer(&es.sign(&claims("bob", "citus:read", json!({}))));
    ctx.rt.block_on(async {
        for (i, path) in ["/mcp/east", "/mcp/west"].into_iter().enumerate() {
            let ep = s.ep.at(path);
            let id = 10 * i as u64;
            let r = ep.call_2026(&[], id, "ping", json!({})).await;
            assert_eq!(r.status, 401, "{path}: {}", r.text);
            // The document the challenge names is served, and its resource is a prefix of
            // this endpoint's URL (what clients check before asking for a token).
            let challenge = r.header("www-authenticate").unwrap().to_string();
            let named = challenge
                .split("resource_metadata=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("{path}: {challenge}"));
            let named_path = named.strip_prefix("https://mcp.test").unwrap();
            let r = s.send("GET", named_path, &[], vec![]).await;
            assert_eq!(r.status, 200, "{named}: {}", r.text);
            let doc: Value = serde_json::from_str(&r.text).unwrap();
            let resource = doc["resource"].as_str().unwrap();
            assert!(
                format!("https://mcp.test{path}").starts_with(resource),
                "{resource} for {path}"
            );
            let doc = format!("/.well-known/oauth-protected-resource{path}");
            let r = s.send("GET", &doc, &[], vec![]).await;
            assert_eq!(r.status, 200, "{doc}: {}", r.text);
            let doc: Value = serde_json::from_str(&r.text).unwrap();
            assert_eq!(doc["authorization_servers"], json!([ISSUER]));

            let r = ep
                .call_2026(&[("authorization", &pinger)], id + 1, "ping", json!({}))
                .await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            let r = ep
                .call_2026(
                    &[("authorization", &pinger)],
                    id + 2,
                    "list_nodes",
                    json!({}),
                )
                .await;
            assert_eq!(r.status, 403, "{path}: {}", r.text);
            assert!(
                r.header("www-authenticate")
                    .unwrap()
                    .contains("insufficient_scope"),
                "{path}"
            );
            let r = ep
                .call_2026(
                    &[("authorization", &reader)],
                    id + 3,
                    "list_nodes",
                    json!({}),
                )
                .await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            assert!(!r.text.contains("\"isError\":true"), "{path}: {}", r.text);
        }
    });
}

fn bad_tokens(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let good = Key::es256("good");
    let rsa = Key::rs256("rsa", dir.path());
    // Another key that claims to be `good`: its tokens must not verify.
    let impostor = Key::es256("good");
    let jwks_text = jwks(&[&good, &rsa]);
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks_text).unwrap();
    let config = write_config(
        dir.path(),
        &oauth_section(&format!("jwks_file: {}", jwks_file.display())),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);

    let valid = claims("mallory", "citus:read", json!({}));
    let forged = {
        let t = good.sign(&valid);
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        sig[10] ^= 1;
        format!("{head}.{}", b64(&sig))
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "good"}).to_string().as_bytes()),
        b64(valid.to_string().as_bytes())
    );
    // HS256 with the issuer's public key (the JWKS text, or the RSA modulus) as secret.
    let hs256 = |secret: &[u8]| {
        use hmac::{KeyInit as _, Mac as _};
        let message = format!(
            "{}.{}",
            b64(json!({"alg": "HS256", "kid": "rsa", "typ": "JWT"})
                .to_string()
                .as_bytes()),
            b64(valid.to_string().as_bytes())
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(message.as_bytes());
        format!("{message}.{}", b64(&mac.finalize().into_bytes()))
    };
    let rsa_n = rsa.jwk()["n"].as_str().unwrap().to_string();
    // An RS256 header on a token signed by the EC key: the algorithm and the key differ.
    let mismatched = good.sign_with(&json!({"alg": "RS256", "kid": "good"}), &valid);

    let cases: Vec<(&str, String, &str)> = vec![
        ("forged signature", forged, "signature does not verify"),
        (
            "another key with the same kid",
            impostor.sign(&valid),
            "signature does not verify",
        ),
        (
            "an unknown kid",
            Key::es256("elsewhere").sign(&valid),
            "not signed by a key of the issuer",
        ),
        ("alg none", unsigned, "algorithm is not accepted"),
        (
            "HS256 keyed with the JWKS",
            hs256(jwks_text.as_bytes()),
            "algorithm is not accepted",
        ),
        (
            "HS256 keyed with the modulus",
            hs256(rsa_n.as_bytes()),
            "algorithm is not accepted",
        ),
        (
            "alg and key mismatch",
            mismatched,
            "not signed by a key of the issuer",
        ),
        (
            "expired",
            good.sign(&claims("m", "citus:read", json!({"exp": now() - 60}))),
            "has expired",
        ),
        (
            "not yet valid",
            good.sign(&claims("m", "citus:read", json!({"nbf": now() + 120}))),
            "not valid yet",
        ),
        (
            "a time claim that is not a number",
            good.sign(&claims("m", "citus:read", json!({"nbf": "tomorrow"}))),
            "not a well-formed JWT",
        ),
        (
            "wrong audience",
            good.sign(&claims(
                "m",
                "citus:read",
                json!({"aud": "https://other.test/mcp"}),
            )),
            "another audience",
        ),
        (
            "wrong issuer",
            good.sign(&claims(
                "m",
                "citus:read",
                json!({"iss": "https://evil.test"}),
            )),
            "another issuer",
        ),
        (
            "no exp",
            good.sign(&claims("m", "citus:read", json!({"exp": null}))),
            "lacks a required claim",
        ),
        (
            "no identity",
            good.sign(&claims("m", "citus:read", json!({"sub": 42}))),
            "identity claim",
        ),
        ("not a JWT", "a.b.c".to_string(), "not a well-formed JWT"),
        (
            "not a token at all",
            "x".repeat(3000),
            "the token is not valid",
        ),
    ];
    ctx.rt.block_on(async {
        // The keys work: the same claims, properly signed, pass.
        let r = s
            .call_2026(
                &[("authorization", &bearer(&good.sign(&valid)))],
                1,
                "ping",
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // A token expired less than the leeway ago still passes.
        let late = good.sign(&claims("m", "citus:read", json!({"exp": now() - 2})));
        let r = s
            .call_2026(&[("authorization", &bearer(&late))], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 200, "within the leeway: {}", r.text);
        for (what, token, description) in &cases {
            let r = s
                .call_2026(&[("authorization", &bearer(token))], 2, "ping", json!({}))
                .await;
            assert_eq!(r.status, 401, "{what}: {}", r.text);
            let challenge = r.header("www-authenticate").unwrap();
            assert!(
                challenge.contains("error=\"invalid_token\"")
                    && challenge.contains(&format!("resource_metadata=\"{METADATA_URL}\"")),
                "{what}: {challenge}"
            );
            let body: Value = serde_json::from_str(&r.text).unwrap();
            assert_eq!(body["error"], "invalid_token", "{what}");
            assert!(
                body["error_description"]
                    .as_str()
                    .unwrap()
                    .contains(description),
                "{what}: {}",
                r.text
            );
            assert!(!r.text.contains(token.as_str()) && !challenge.contains(token.as_str()));
        }
    });
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
    for (what, token, _) in &cases {
        assert!(
            !log.contains(token.as_str()),
            "{what}: the token reached the log"
        );
    }
}

/// A loopback server of the test's own that serves one JWKS document and counts
/// requests; https with `tls`.
struct JwksServer {
    port: u16,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    fn start(ctx: &Ctx, body: String, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = ctx
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (b, f) = (body.clone(), fetches.clone());
        let task = ctx.rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (b, f, tls) = (b.clone(), f.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            if let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            {
                                answer(stream, &b, &f).await;
                            }
                        }
                        None => answer(tcp, &b, &f).await,
                    }
                });
            }
        });
        JwksServer {
            port,
            body,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer<S>(mut stream: S, body: &Mutex<String>, fetches: &AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    assert!(request.starts_with(b"GET /jwks HTTP/1.1\r\n"));
    fetches.fetch_add(1, Ordering::SeqCst);
    let body = body.lock().unwrap().clone();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn jwks_url(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let first = Key::es256("2026-a");
    let second = Key::es256("2026-b");
    let jwks_server = JwksServer::start(ctx, jwks(&[&first]), None);
    let config = write_config(
        dir.path(),
        &oauth_section(&format!(
            "jwks_url: http://127.0.0.1:{}/jwks\n    jwks_min_refetch_seconds: 2",
            jwks_server.port
        )),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);
    let call = |token: String| {
        let ep = s.ep.clone();
        async move {
            ep.call_2026(&[("authorization", &bearer(&token))], 1, "ping", json!({}))
                .await
        }
    };
    ctx.rt.block_on(async {
        let r = call(first.sign(&claims("a", "citus:read", json!({})))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Cached: more tokens of a known key fetch nothing.
        let before = jwks_server.fetches();
        for _ in 0..3 {
            let r = call(first.sign(&claims("a", "citus:read", json!({})))).await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        assert_eq!(
            jwks_server.fetches(),
            before,
            "a known key was fetched again"
        );

        // The issuer rotates: a token of the new key is accepted once the keys are
        // fetched again (at most once per 2 s, so it may take a moment).
        jwks_server.serve(jwks(&[&first, &second]));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = call(second.sign(&claims("b", "citus:read", json!({})))).await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 401, "{}", r.text);
            assert!(Instant::now() < deadline, "the new key was never fetched");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Made-up key ids cause at most one fetch per interval, however many arrive.
        let before = jwks_server.fetches();
        let started = Instant::now();
        for i in 0..20 {
            let r = call(Key::es256(&format!("made-up-{i}")).sign(&claims(
                "x",
                "citus:read",
                json!({}),
            )))
            .await;
            assert_eq!(r.status, 401, "{}", r.text);
        }
        let allowed = 1 + started.elapsed().as_secs() as usize / 2;
        let fetched = jwks_server.fetches() - before;
        assert!(
            fetched <= allowed,
            "{fetched} fetches for 20 unknown key ids in {:?}",
            started.elapsed()
        );
    });
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// A CA and a certificate it signed for localhost and 127.0.0.1, made with openssl.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=citus-mcp test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("cert.pem"),
        "-days",
        "2",
        "-extfile",
        &p("leaf.ext"),
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

fn jwks_https(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let key = Key::es256("tls-key");
    let tls = citus_mcp::httpd::tls::server_config(&certs.cert, &certs.key).unwrap();
    let jwks_server = JwksServer::start(ctx, jwks(&[&key]), Some(tls));
    let config = write_config(
        dir.path(),
        &oauth_section(&format!(
            "jwks_url: https://localhost:{}/jwks\n    jwks_ca_file: {}",
            jwks_server.port,
            certs.ca.display()
        )),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);
    let token = key.sign(&claims("tls", "citus:read", json!({})));
    ctx.rt.block_on(async {
        let r = s
            .call_2026(&[("authorization", &bearer(&token))], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 200, "{}\n{}", r.text, s.log());
    });
    assert!(jwks_server.fetches() >= 1);
    drop(s);

    // Without the CA, the system's roots do not trust the issuer: no keys, no entry.
    let config = write_config(
        dir.path(),
        &oauth_section(&format!(
            "jwks_url: https://localhost:{}/jwks",
            jwks_server.port
        )),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);
    ctx.rt.block_on(async {
        let r = s
            .call_2026(&[("authorization", &bearer(&token))], 1, "ping", json!({}))
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(
            r.text.contains("signing keys are not available"),
            "{}",
            r.text
        );
    });
    let log = s.log_with("OAuth signing keys not");
    assert!(log.contains("OAuth signing keys not"), "{log}");

    // A plain http URL to another host is refused at startup.
    let config = write_config(
        dir.path(),
        &oauth_section("jwks_url: http://issuer.example/jwks"),
    );
    let out = bin()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plain http is accepted only for a loopback"),
        "{err}"
    );
}

const OLD: &str = "old-token-5d1c-never-print";
const NEW: &str = "new-token-a77e-never-print";

fn tokens_reload(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let entry = |name: &str, token: &str| {
        format!(
            "- name: {name}\n  sha256: {}\n  classes: [read_only]\n",
            citus_mcp::httpd::auth::hash_hex(token)
        )
    };
    std::fs::write(&tokens, entry("old", OLD)).unwrap();
    let config = write_config(
        dir.path(),
        &format!("  tokens_file: {}\n", tokens.display()),
    );
    let s = HttpServer::start(ctx, &["--config", config.to_str().unwrap()], &[]);
    let status = |token: &str| {
        let ep = s.ep.clone();
        let auth = bearer(token);
        ctx.rt.block_on(async move {
            ep.call_2026(&[("authorization", &auth)], 1, "ping", json!({}))
                .await
                .status
        })
    };
    let wait_for = |token: &str, want: u16, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while status(token) != want {
            assert!(Instant::now() < deadline, "{what}:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(status(OLD), 200);
    assert_eq!(status(NEW), 401);

    // Replaced the way editors and deploy tools do: a new file renamed over the old.
    let staged = dir.path().join("tokens.yaml.new");
    std::fs::write(&staged, entry("new", NEW)).unwrap();
    std::fs::rename(&staged, &tokens).unwrap();
    wait_for(OLD, 401, "the removed token kept working");
    assert_eq!(status(NEW), 200, "{}", s.log());

    // A broken file keeps the last good set, and says so without quoting hashes.
    std::fs::write(&tokens, "- name: [broken\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.log().contains("http.tokens_file not reloaded") {
        assert!(Instant::now() < deadline, "no warning:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(NEW), 200);
    assert_eq!(status(OLD), 401);

    // An empty list refuses everyone: tokens stay required once configured.
    std::fs::write(&tokens, "[]\n").unwrap();
    wait_for(NEW, 401, "an emptied tokens file let the old token in");
    assert_eq!(status(""), 401);

    let log = s.log();
    for secret in [
        OLD.to_string(),
        NEW.to_string(),
        citus_mcp::httpd::auth::hash_hex(OLD),
        citus_mcp::httpd::auth::hash_hex(NEW),
    ] {
        assert!(
            !log.contains(&secret),
            "a token or hash reached the log:\n{log}"
        );
    }
}

/// One HTTP/1.1 request over TLS, verified against `ca` for `name`.
async fn https(
    port: u16,
    ca: &Path,
    name: &str,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn tls(ctx: &Ctx) {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let mut s = HttpServer::start(
        ctx,
        &[],
        &[
            ("CITUS_MCP_HTTP_TLS_CERT", cert),
            ("CITUS_MCP_HTTP_TLS_KEY", key),
        ],
    );
    assert!(
        s.log().contains(&format!(
            "serving MCP on https://127.0.0.1:{}/mcp",
            s.ep.port
        )),
        "{}",
        s.log()
    );
    let call = |host: &str| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"_meta": meta_2026(), "name": "ping", "arguments": {"message": "over tls"}}});
        hyper::Request::post(format!("https://{host}:{}/mcp", s.ep.port))
            .header("host", format!("{host}:{}", s.ep.port))
            .header("content-type", "application/json")
            .header(ACCEPT.0, ACCEPT.1)
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "ping")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    ctx.rt.block_on(async {
        for name in ["localhost", "127.0.0.1"] {
            let (status, text) = https(s.ep.port, &certs.ca, name, call("localhost"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}\n{}", s.log()));
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("over tls"), "{text}");
        }
        // A client that trusts another CA refuses the server.
        let other = tempfile::tempdir().unwrap();
        let other = make_certs(other.path());
        let e = https(s.ep.port, &other.ca, "localhost", call("localhost"))
            .await
            .unwrap_err();
        assert!(e.starts_with("TLS"), "{e}");
        // Plain http to the https port gets no answer.
        let plain = s.ep.try_send("GET", "/healthz", &[], vec![]).await;
        assert!(plain.is_err(), "plain http was answered");
        // The server keeps serving after those.
        let (status, _) = https(s.ep.port, &certs.ca, "localhost", call("localhost"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    });
    // SIGTERM shuts an https server down as gracefully as a plain one.
    s.terminate();
    assert_eq!(
        s.wait_exit(Duration::from_secs(20)).and_then(|e| e.code()),
        Some(0),
        "{}",
        s.log()
    );
    drop(s);

    // Half a pair is a configuration error, before any socket opens.
    for (var, value, missing) in [
        ("CITUS_MCP_HTTP_TLS_CERT", cert, "http.tls_key is not"),
        ("CITUS_MCP_HTTP_TLS_KEY", key, "http.tls_cert is not"),
    ] {
        let out = bin()
            .args(["serve", "--http", "127.0.0.1:0"])
            .env(var, value)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing), "{err}");
    }
    // A key that is not the certificate's is refused too, without quoting it.
    let out = bin()
        .args(["serve", "--http", "127.0.0.1:0"])
        .env("CITUS_MCP_HTTP_TLS_CERT", cert)
        .env("CITUS_MCP_HTTP_TLS_KEY", dir.path().join("ca.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not make a pair"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
