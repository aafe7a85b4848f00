//! The issuer's signing keys (a JWKS), from a file or an https URL, cached.
//!
//! Keys are loaded when first needed and again when a token names a key id the cache
//! does not have (the issuer rotated its keys), at most once per
//! `jwks_min_refetch_seconds`, so a stream of tokens with made-up key ids cannot turn
//! the server into a load generator against the issuer. A failed fetch keeps the keys
//! already known. Only asymmetric keys are kept: a JWKS entry with a shared secret
//! (`kty: oct`) is ignored, so no token can be checked against a public value used as
//! an HMAC key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;

use super::HttpError;

/// The most a JWKS document may take.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take, connection and TLS included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before use (issuers retire keys too).
const MAX_AGE: Duration = Duration::from_secs(3600);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url(Url),
}

/// A checked JWKS URL: https, or http to a loopback address.
#[derive(Debug, Clone)]
pub struct Url {
    text: String,
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, HttpError> {
        let uri: http::Uri = text
            .parse()
            .map_err(|_| HttpError::OAuth("jwks_url is not a URL".into()))?;
        // Quoted without its user information and query, where credentials would be.
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or(""),
            uri.host().unwrap_or(""),
            uri.path()
        );
        let bad = |why: &str| HttpError::OAuth(format!("jwks_url `{shown}`: {why}"));
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("use an https URL")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !https && !is_loopback(&host) {
            return Err(bad(
                "plain http is accepted only for a loopback address: use https",
            ));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("credentials in the URL are not supported"));
        }
        Ok(Url {
            text: text.to_string(),
            https,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            host,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One usable signing key.
struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify (its `alg`, or those its type and curve allow).
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys last loaded, and when.
#[derive(Default)]
struct Loaded {
    keys: Arc<Vec<Key>>,
    at: Option<Instant>,
}

/// The cached keys of one issuer.
pub struct Jwks {
    source: Source,
    min_refetch: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Read by every token; written only by a load.
    loaded: std::sync::RwLock<Loaded>,
    /// When a load was last tried, successful or not (the rate limit). Held during a
    /// load, so that concurrent misses wait for one load instead of starting their own,
    /// while tokens of known keys go on without waiting.
    tried: Mutex<Option<Instant>>,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// The keys could not be loaded at all (yet).
    Unavailable,
    /// The keys are loaded, but none has this id and algorithm.
    Unknown,
}

impl Jwks {
    /// A cache over `source`; nothing is loaded yet. `ca_file` replaces the system's
    /// roots for an https URL (an issuer with a private CA).
    pub fn new(
        source: Source,
        min_refetch: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Jwks, HttpError> {
        let tls = match &source {
            Source::Url(u) if u.https => Some(Arc::new(client_config(ca_file)?)),
            _ => None,
        };
        Ok(Jwks {
            source,
            min_refetch,
            tls,
            loaded: Default::default(),
            tried: Mutex::new(None),
        })
    }

    /// For a `jwks_file`: that it reads and holds a usable key (the startup check).
    pub fn check_file(&self) -> Result<(), HttpError> {
        if let Source::File(path) = &self.source {
            let text = std::fs::read(path).map_err(|e| {
                HttpError::OAuth(format!("cannot read jwks_file {}: {e}", path.display()))
            })?;
            parse(&text)
                .map_err(|e| HttpError::OAuth(format!("jwks_file {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Loads the keys now: the first load once serving (a failure is only logged: the
    /// issuer may come up later).
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut tried = self.tried.lock().await;
        self.load(&mut tried).await
    }

    /// The keys that may verify a token with this key id and algorithm. An unknown key
    /// id, or keys older than an hour, cause a reload when the last one was at least
    /// `min_refetch` ago.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, KeyMiss> {
        if let Some(found) = self.fresh_match(kid, alg) {
            return Ok(found);
        }
        let mut tried = self.tried.lock().await;
        // Another request may have loaded the keys while this one waited.
        if let Some(found) = self.fresh_match(kid, alg) {
            return Ok(found);
        }
        if tried.is_none_or(|t| t.elapsed() >= self.min_refetch)
            && let Err(e) = self.load(&mut tried).await
        {
            tracing::warn!("OAuth signing keys not refreshed: {e}");
        }
        drop(tried);
        let loaded = self.read();
        let found = matching(&loaded.keys, kid, alg);
        match (found.is_empty(), loaded.at.is_some()) {
            (false, _) => Ok(found),
            (true, true) => Err(KeyMiss::Unknown),
            (true, false) => Err(KeyMiss::Unavailable),
        }
    }

    /// The matching keys when there are some and they are less than an hour old.
    fn fresh_match(&self, kid: Option<&str>, alg: Algorithm) -> Option<Vec<DecodingKey>> {
        let loaded = self.read();
        let fresh = loaded.at.is_some_and(|t| t.elapsed() <= MAX_AGE);
        let found = matching(&loaded.keys, kid, alg);
        (fresh && !found.is_empty()).then_some(found)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A load replaces the whole value at once: a panicked writer left nothing half done.
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn load(&self, tried: &mut Option<Instant>) -> Result<usize, String> {
        *tried = Some(Instant::now());
        let text = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?,
            Source::Url(url) => tokio::time::timeout(FETCH_TIMEOUT, self.fetch(url))
                .await
                .map_err(|_| format!("{}: no answer within 10 s", url.text))?
                .map_err(|e| format!("{}: {e}", url.text))?,
        };
        let keys = parse(&text)?;
        let n = keys.len();
        tracing::info!(keys = n, "loaded the OAuth issuer's signing keys");
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Loaded {
            keys: Arc::new(keys),
            at: Some(Instant::now()),
        };
        Ok(n)
    }

    /// One GET over a connection of its own; no redirects, 200 only, 1 MiB at most.
    async fn fetch(&self, url: &Url) -> Result<Vec<u8>, String> {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = http::Request::get(url.path.as_str())
            .header(http::header::HOST, host_header(url))
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("citus-mcp/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|e| format!("bad host name: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(tls, request).await?
            }
            None => send(tcp, request).await?,
        };
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
}

fn host_header(url: &Url) -> String {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    match (url.https, url.port) {
        (true, 443) | (false, 80) => host,
        (_, port) => format!("{host}:{port}"),
    }
}

async fn send<S>(
    stream: S,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        // The connection ends with the exchange; an error shows in the response.
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    if response.is_err() {
        driver.abort();
    }
    response
}

/// A TLS client configuration with the system's roots, or those of `ca_file`.
fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, HttpError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |e: String| HttpError::OAuth(format!("jwks_ca_file {}: {e}", path.display()));
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A broken certificate in the system store is not ours to report.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::OAuth(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The usable signing keys of a JWKS document. Entries that are not signing keys, use
/// a shared secret, or do not parse are skipped; a document with none is an error.
fn parse(text: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value =
        serde_json::from_slice(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no `keys` list")?;
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            tracing::debug!("skipped a JWKS entry of an unsupported kind");
            continue;
        };
        if let Some(key) = usable(&jwk) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable signing key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(keys)
}

fn usable(jwk: &Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // A shared secret (`oct`) is never a key of ours: HS* tokens are refused.
        _ => return None,
    };
    // A key that names its algorithm verifies only that one.
    let algorithms = match &jwk.common.key_algorithm {
        None => by_type,
        Some(named) => by_type
            .into_iter()
            .filter(|a| same_algorithm(*named, *a))
            .collect(),
    };
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

fn same_algorithm(named: KeyAlgorithm, alg: Algorithm) -> bool {
    // Both serialize as the JOSE name ("RS256", "ES256", ...).
    serde_json::to_value(named).ok() == serde_json::to_value(alg).ok()
}

/// The keys for a token: those with its key id (any key when it names none) that may
/// verify its algorithm.
fn matching(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    keys.iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.algorithms.contains(&alg))
        .map(|k| k.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_are_https_or_loopback_http() {
        let u = Url::parse("https://issuer.example/keys?x=1").unwrap();
        assert!(u.https);
        assert_eq!((u.port, u.path.as_str()), (443, "/keys?x=1"));
        assert_eq!(host_header(&u), "issuer.example");
        let u = Url::parse("http://127.0.0.1:9000/jwks").unwrap();
        assert_eq!(host_header(&u), "127.0.0.1:9000");
        assert!(Url::parse("http://[::1]:9/j").is_ok());
        for bad in [
            "http://issuer.example/keys",
            "ftp://x/y",
            "not a url",
            "https://user:pw@issuer.example/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        // The refusal quotes the URL without its user information or query.
        for url in [
            "https://user:UrlPw1@issuer.example/",
            "https://UrlPw1@issuer.example/",
            "https://u:pw'UrlPw1@issuer.example/",
            "http://issuer.example/keys?token=UrlPw1",
            "not a url UrlPw1",
        ] {
            let e = Url::parse(url).unwrap_err();
            assert!(!e.to_string().contains("UrlPw1"), "{url}: {e}");
        }
    }

    #[test]
    fn a_jwks_file_without_usable_keys_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Jwks::new(
            Source::File(dir.path().join("none.json")),
            Duration::from_secs(30),
            None,
        )
        .unwrap();
        let e = missing.check_file().unwrap_err().to_string();
        assert!(e.contains("cannot read jwks_file"), "{e}");
        let path = dir.path().join("hmac.json");
        std::fs::write(&path, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        let hmac_only = Jwks::new(Source::File(path), Duration::from_secs(30), None).unwrap();
        let e = hmac_only.check_file().unwrap_err().to_string();
        assert!(e.contains("no usable signing key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn only_asymmetric_signing_keys_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "mislabelled", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird"}
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert_eq!(matching(&keys, Some("sig"), Algorithm::ES256).len(), 1);
        assert!(matching(&keys, Some("sig"), Algorithm::HS256).is_empty());
        assert!(matching(&keys, Some("hmac"), Algorithm::HS256).is_empty());
        assert_eq!(matching(&keys, None, Algorithm::ES256).len(), 1);
        assert!(parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(b"\xff").is_err());
    }
}
