//! How a ferry client proves itself to a collector and checks the collector: the CA that signs
//! the collector's certificate (`ca`), a client certificate and key for mutual TLS (`cert`,
//! `key`), and a bearer token (`token`, `token_file`, or the `FERRY_TOKEN` environment).
//!
//! One type, [`ClientSecurity`], is both the command-line flags of every client command
//! (`--ca`, `--cert`, `--key`, `--token`, `--token-file`) and the YAML keys of the agent's
//! collector output and the processor's `collector:` section, so every client reads them the
//! same way. [`ClientSecurity::http_client`] builds the reqwest client (rustls, with the ring
//! provider); [`explain_tls`] turns a handshake failure into a sentence that says what to fix.

use crate::problems::Problems;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The environment variable a token is read from when no `--token` is given.
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// A client's TLS and token settings. Every field is optional: none at all is plain HTTP (or
/// HTTPS verified against the system's roots) without a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ClientSecurity {
    /// PEM file of the CA(s) that sign the collector's certificate; when given, only these are
    /// trusted (not the system's roots).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Bearer token sent with every request.
    #[arg(
        long,
        value_name = "TOKEN",
        env = TOKEN_ENV,
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the bearer token (surrounding whitespace is ignored).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A client's security settings could not be used. Each variant names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ClientSecurity {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `self` with every setting of `over` that is given replacing this one's (flags over YAML).
    /// A token given in `over` also replaces a `token_file` here, and the other way round.
    pub fn overlay(&self, over: &ClientSecurity) -> ClientSecurity {
        let mut s = self.clone();
        if over.ca.is_some() {
            s.ca = over.ca.clone();
        }
        if over.cert.is_some() || over.key.is_some() {
            s.cert = over.cert.clone();
            s.key = over.key.clone();
        }
        if over.token.is_some() || over.token_file.is_some() {
            s.token = over.token.clone();
            s.token_file = over.token_file.clone();
        }
        s
    }

    /// Records what cannot work, at the keys of the section it is written in: a cert without
    /// its key, a token given twice, files that cannot be read or hold no PEM.
    pub fn check(&self, p: &mut Problems) {
        match (&self.cert, &self.key) {
            (Some(_), None) => p.add_hint(
                "cert",
                "a client certificate needs its private key",
                "add `key: FILE` next to `cert`",
            ),
            (None, Some(_)) => p.add_hint(
                "key",
                "a private key needs its client certificate",
                "add `cert: FILE` next to `key`",
            ),
            _ => {}
        }
        if self.token.is_some() && self.token_file.is_some() {
            p.add(
                "token_file",
                "give either `token` or `token_file`, not both",
            );
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            p.add("token", "the token is empty");
        }
        if let Some(ca) = &self.ca
            && let Err(e) = read_certs(ca, "CA file")
        {
            p.add("ca", e.to_string());
        }
        if let Some(cert) = &self.cert
            && let Err(e) = read_certs(cert, "client certificate")
        {
            p.add("cert", e.to_string());
        }
        if let Some(key) = &self.key
            && let Err(e) = read_key(key)
        {
            p.add("key", e.to_string());
        }
        if let Some(f) = &self.token_file
            && let Err(e) = read_token_file(f)
        {
            p.add("token_file", e.to_string());
        }
    }

    /// The bearer token, from `token` or `token_file`.
    pub fn resolve_token(&self) -> Result<Option<String>, SecurityError> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => {
                let t = t.trim();
                if t.is_empty() {
                    return Err(SecurityError::Invalid(format!(
                        "the token is empty (--token, {TOKEN_ENV} or `token`)"
                    )));
                }
                Ok(Some(t.to_owned()))
            }
            (None, Some(f)) => read_token_file(f).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A reqwest client builder that speaks HTTPS with these settings: rustls, the given CA
    /// (alone) or the system's roots, and the client certificate if any.
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, SecurityError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(false);
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|source| SecurityError::Read {
                what: "CA file",
                path: ca.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SecurityError::Pem {
                    what: "CA file",
                    path: ca.clone(),
                    expected: "certificate",
                    message: crate::error_chain(&e),
                })?;
            if certs.is_empty() {
                return Err(SecurityError::Pem {
                    what: "CA file",
                    path: ca.clone(),
                    expected: "certificate",
                    message: "no `BEGIN CERTIFICATE` block".into(),
                });
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_certs(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend_from_slice(&read_key(key)?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| SecurityError::Pem {
                    what: "client certificate",
                    path: cert.clone(),
                    expected: "certificate and key",
                    message: crate::error_chain(&e),
                })?;
                b = b.identity(id);
            }
            (Some(_), None) => {
                return Err(SecurityError::Invalid(
                    "--cert needs --key (the client certificate's private key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(SecurityError::Invalid(
                    "--key needs --cert (the client certificate)".into(),
                ));
            }
            (None, None) => {}
        }
        Ok(b)
    }
}

/// A PEM file's bytes, if it holds at least one certificate.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    let pem = std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !contains(&pem, b"-----BEGIN CERTIFICATE-----") {
        return Err(SecurityError::Pem {
            what,
            path: path.to_owned(),
            expected: "certificate",
            message: "no `BEGIN CERTIFICATE` block".into(),
        });
    }
    Ok(pem)
}

/// A PEM file's bytes, if it holds a private key.
fn read_key(path: &Path) -> Result<Vec<u8>, SecurityError> {
    let what = "private key";
    let pem = std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !contains(&pem, b"PRIVATE KEY-----") {
        return Err(SecurityError::Pem {
            what,
            path: path.to_owned(),
            expected: "private key",
            message: "no `BEGIN ... PRIVATE KEY` block".into(),
        });
    }
    Ok(pem)
}

fn read_token_file(path: &Path) -> Result<String, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        what: "token file",
        path: path.to_owned(),
        source,
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(SecurityError::Invalid(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(t.to_owned())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A sentence for a TLS failure somewhere in `e`'s causes (the collector's certificate not
/// signed by the CA, expired, not yet valid, for another name; our client certificate refused),
/// or `None` if it is not one.
pub fn explain_tls(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let mut cur = Some(e);
    while let Some(err) = cur {
        let rustls_err = err.downcast_ref::<R>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<R>())
        });
        if let Some(r) = rustls_err {
            return Some(match r {
                R::InvalidCertificate(c) => match c {
                    C::UnknownIssuer | C::BadSignature => format!(
                        "TLS: the collector's certificate is not signed by a trusted CA ({r}); give the CA that signed it with --ca (or `ca:` in the config)"
                    ),
                    C::Expired | C::ExpiredContext { .. } => format!(
                        "TLS: the collector's certificate has expired ({r}); the collector needs a renewed certificate (then SIGHUP it)"
                    ),
                    C::NotValidYet | C::NotValidYetContext { .. } => format!(
                        "TLS: the collector's certificate is not valid yet ({r}); check the clocks, or the certificate's start date"
                    ),
                    C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                        "TLS: the collector's certificate is not for this host name ({r}); use a URL with a name the certificate lists"
                    ),
                    _ => format!("TLS: the collector's certificate was refused: {r}"),
                },
                R::AlertReceived(A::CertificateRequired) => "TLS: the collector requires a client certificate (mutual TLS); give --cert and --key".to_owned(),
                R::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::DecryptError) => format!(
                    "TLS: the collector refused our client certificate ({r}); it must be signed by the collector's client_ca"
                ),
                R::InvalidMessage(_) => format!(
                    "TLS: the collector did not answer TLS ({r}); is it plain HTTP? use http://"
                ),
                other => format!("TLS: {other}"),
            });
        }
        if let Some(sentence) = explain_text(&err.to_string()) {
            return Some(sentence);
        }
        cur = err.source();
    }
    None
}

/// [`explain_tls`] from an error's text, for when the rustls error is wrapped in a type it
/// cannot be downcast through (the HTTP client's connector boxes it).
fn explain_text(text: &str) -> Option<String> {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let sentence = if has(&["UnknownIssuer", "unknown issuer", "BadSignature"]) {
        "the collector's certificate is not signed by a trusted CA; give the CA that signed it with --ca (or `ca:` in the config)"
    } else if has(&["Expired", "certificate expired"]) {
        "the collector's certificate has expired; the collector needs a renewed certificate (then SIGHUP it)"
    } else if has(&["NotValidYet", "not valid yet", "not valid before"]) {
        "the collector's certificate is not valid yet; check the clocks, or the certificate's start date"
    } else if has(&["NotValidForName", "not valid for name"]) {
        "the collector's certificate is not for this host name; use a URL with a name the certificate lists"
    } else if has(&["CertificateRequired"]) {
        "the collector requires a client certificate (mutual TLS); give --cert and --key"
    } else if has(&["UnknownCA", "BadCertificate", "CertificateUnknown"]) {
        "the collector refused our client certificate; it must be signed by the collector's client_ca"
    } else if has(&["InvalidContentType", "corrupt message"]) {
        "the collector did not answer TLS; is it plain HTTP? use http://"
    } else {
        return None;
    };
    Some(format!("TLS: {sentence} ({})", text.trim()))
}
