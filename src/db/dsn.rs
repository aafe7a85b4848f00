//! Connection strings: libpq-style `sslmode` handling on top of tokio-postgres, and
//! redaction for anything that is printed.
//!
//! tokio-postgres parses `sslmode=disable|prefer|require` only. We accept every libpq
//! mode, take `sslmode` and `sslrootcert` out of the string, and build the matching
//! rustls configuration ourselves:
//!
//! | sslmode      | encrypts | checks the chain | checks the host name |
//! |--------------|----------|------------------|----------------------|
//! | disable      | no       | -                | -                    |
//! | prefer       | if it can| only with sslrootcert | no              |
//! | require      | yes      | only with sslrootcert | no              |
//! | verify-ca    | yes      | yes              | no                   |
//! | verify-full  | yes      | yes              | yes                  |
//!
//! That is libpq's behaviour, `sslrootcert` file included. Roots come from
//! `sslrootcert` (a PEM file, or `system`) and default to the system store.

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

/// What went wrong with a connection string (never containing the password).
#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    #[error("invalid connection string: {0}")]
    Invalid(String),
    #[error(
        "unknown sslmode `{0}`; expected disable, allow, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    #[error("cannot read sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
}

/// How strictly the server certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, but accept any certificate (libpq's `prefer` / `require` without a root file).
    Nothing,
    /// The chain must lead to a trusted root; the host name is not checked.
    Chain,
    /// The chain and the host name.
    Full,
}

/// A parsed connection string, ready to connect.
#[derive(Clone)]
pub struct Dsn {
    pub config: tokio_postgres::Config,
    pub verify: Verify,
    pub root_cert: Option<String>,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password; keep it that way.
        f.debug_struct("Dsn")
            .field("config", &self.config)
            .field("verify", &self.verify)
            .finish()
    }
}

impl Dsn {
    /// Parses a URL (`postgres://…?sslmode=verify-full`) or key=value connection string.
    pub fn parse(text: &str) -> Result<Dsn, DsnError> {
        let (rest, sslmode, root_cert) =
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                split_url(text)
            } else {
                split_keywords(text)?
            };
        // tokio-postgres says only "invalid connection string"; the why is its source,
        // which names an option, never a value.
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            DsnError::Invalid(std::error::Error::source(&e).map_or_else(
                || "not a connection string libpq would read".to_string(),
                ToString::to_string,
            ))
        })?;
        let mode = sslmode.as_deref().unwrap_or("prefer");
        let (ssl, verify) = match mode {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "allow" | "prefer" => (
                SslMode::Prefer,
                if root_cert.is_some() {
                    Verify::Chain
                } else {
                    Verify::Nothing
                },
            ),
            "require" => (
                SslMode::Require,
                if root_cert.is_some() {
                    Verify::Chain
                } else {
                    Verify::Nothing
                },
            ),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => return Err(DsnError::SslMode(other.to_string())),
        };
        config.ssl_mode(ssl);
        Ok(Dsn {
            config,
            verify,
            root_cert,
        })
    }

    /// The rustls connector for this DSN (used for connections and cancel requests).
    pub fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DsnError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| DsnError::Invalid(e.to_string()))?;
        let config = match self.verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
            Verify::Chain | Verify::Full => {
                let roots = Arc::new(self.roots()?);
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| DsnError::Invalid(e.to_string()))?;
                if self.verify == Verify::Full {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, DsnError> {
        let mut store = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                let err = |reason: String| DsnError::RootCert {
                    path: path.to_string(),
                    reason,
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                    store
                        .add(cert.map_err(|e| err(e.to_string()))?)
                        .map_err(|e| err(e.to_string()))?;
                }
            }
            _ => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A broken certificate in the system store is not our problem to report.
                    let _ = store.add(cert);
                }
            }
        }
        Ok(store)
    }

    /// `host:port/dbname` for logs and errors; never the user's password.
    pub fn describe(&self) -> String {
        use tokio_postgres::config::Host;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres");
        format!("{host}:{port}/{db}")
    }
}

fn split_url(text: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = text.split_once('?') else {
        return (text.to_string(), None, None);
    };
    let (mut sslmode, mut root) = (None, None);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("sslmode", v)) => {
                sslmode = Some(v.to_string());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
                false
            }
            _ => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, sslmode, root)
}

/// Splits a key=value string, honouring libpq quoting (`key='a b\'c'`).
fn split_keywords(text: &str) -> Result<(String, Option<String>, Option<String>), DsnError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // The stray word may be the tail of an unquoted password: it is not quoted.
            return Err(DsnError::Invalid(match pairs.last() {
                Some((last, _)) => format!(
                    "a word without `=` follows the value of `{last}`; quote a value that holds spaces: {last}='a b'"
                ),
                None => "expected `key=value` settings or a postgres:// URL".to_string(),
            }));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(DsnError::Invalid(format!(
                            "unterminated quote in the value of `{key}`"
                        )));
                    }
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect();
        }
        pairs.push((key, value));
    }
    let (mut sslmode, mut root) = (None, None);
    let mut rest = String::new();
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => sslmode = Some(v),
            "sslrootcert" => root = Some(v),
            _ => {
                let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
                rest.push_str(&format!("{k}='{quoted}' "));
            }
        }
    }
    Ok((rest.trim_end().to_string(), sslmode, root))
}

/// Accepts any certificate: libpq's `prefer` / `require` without a root file, which
/// encrypt but do not authenticate the server.
///
/// The handshake signature is not checked either: it would only prove possession of a
/// key in a certificate nobody vouches for, and webpki cannot even parse the X.509 v1
/// self-signed certificates that Citus generates on `CREATE EXTENSION citus`.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name: libpq's `verify-ca`.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_parse_in_both_forms() {
        let d = Dsn::parse("host=db.example port=6432 user=me password='s3 cr\\'et' dbname=citus sslmode=verify-full sslrootcert=/tmp/ca.pem").unwrap();
        assert_eq!(d.verify, Verify::Full);
        assert_eq!(d.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(d.config.get_password(), Some(&b"s3 cr'et"[..]));
        assert_eq!(d.describe(), "db.example:6432/citus");

        let d =
            Dsn::parse("postgres://me:pw@h:5433/db?sslmode=verify-ca&application_name=x").unwrap();
        assert_eq!(d.verify, Verify::Chain);
        assert_eq!(d.config.get_application_name(), Some("x"));

        let d = Dsn::parse("postgresql://h/db?sslmode=disable").unwrap();
        assert_eq!(d.config.get_ssl_mode(), SslMode::Disable);
        assert!(matches!(
            Dsn::parse("host=h sslmode=sometimes"),
            Err(DsnError::SslMode(_))
        ));
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let d = Dsn::parse("host=h password=hunter2").unwrap();
        assert!(!format!("{d:?}").contains("hunter2"));
        let e = Dsn::parse("host=h password='hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // An unquoted password with a space: its tail is a stray word, not quoted back.
        let e = Dsn::parse("host=h password=hunter2 tail7").unwrap_err();
        assert!(e.to_string().contains("`password`"), "{e}");
        assert!(!e.to_string().contains("tail7"), "{e}");
        // A password given where the whole DSN goes.
        let e = Dsn::parse("hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // tokio-postgres's reason, which names the option.
        let e = Dsn::parse("postgres://u:hunter2@h:port/db").unwrap_err();
        assert!(e.to_string().contains("option `port`"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
