//! TLS on the collector's listener (`collector.tls: {cert, key, client_ca?}`), with rustls and
//! the ring provider.
//!
//! - [`TlsConfig`]: the YAML keys; [`TlsConfig::check`] loads every file so that a bad one is a
//!   config problem at its key, not a failure at the first handshake.
//! - [`TlsState`]: the current `rustls::ServerConfig` behind a lock that is taken only to clone
//!   an `Arc` per accepted connection. [`TlsState::reload`] (on SIGHUP) builds a new one from the
//!   files and swaps it in: handshakes after the swap see the new certificate, connections
//!   already open keep the session they negotiated. A reload that fails keeps the old one.
//! - With `client_ca`, every client must present a certificate signed by it (mutual TLS); its
//!   subject's common name ([`common_name`]) reaches each request as a [`PeerIdentity`], which
//!   the auth layer maps to a principal.
//! - [`TLS_HANDSHAKE`]: the first byte a TLS client sends; a connection that starts with
//!   anything else is a plain-HTTP client on the TLS port and is told so ([`PLAIN_ON_TLS_PORT`]).

use ferry_core::problems::Problems;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the collector (leaf first).
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA(s) that sign client certificates: when set, every client must present one
    /// (mutual TLS), and its common name can name a principal (`auth.principals[].cert_cn`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS settings: {0}")]
    Rustls(String),
}

impl TlsError {
    /// The key of `tls:` the error is about.
    fn key(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. } | TlsError::Pem { what, .. } => match *what {
                "certificate" => "cert",
                "private key" => "key",
                _ => "client_ca",
            },
            TlsError::Rustls(_) => "cert",
        }
    }
}

impl TlsConfig {
    /// Records what cannot work (unreadable files, no PEM in them, a key that does not match
    /// the certificate) at its key, relative to `tls:`.
    pub fn check(&self, p: &mut Problems) {
        if let Err(e) = self.server_config() {
            p.add(e.key(), e.to_string());
        }
    }

    /// A rustls server config from the files as they are now.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert, "certificate")?;
        let key = read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca, "client CA")? {
                    roots.add(c).map_err(|e| TlsError::Pem {
                        what: "client CA",
                        path: ca.clone(),
                        message: e.to_string(),
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Pem {
                    what: "client CA",
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pem {
                what: "private key",
                path: self.key.clone(),
                message: format!(
                    "does not go with the certificate {}: {e}",
                    self.cert.display()
                ),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: format!("not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            message: "holds no `BEGIN CERTIFICATE` block".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        message: format!("holds no PEM private key: {e}"),
    })
}

/// The listener's TLS settings, swappable while serving.
pub struct TlsState {
    config: TlsConfig,
    /// The config new handshakes use; a std lock held only to clone or replace the `Arc`.
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsState {
    pub fn new(config: TlsConfig) -> Result<Self, TlsError> {
        let current = RwLock::new(config.server_config()?);
        Ok(Self { config, current })
    }

    /// An acceptor with the config in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Re-reads the certificate, key and client CA; on success new handshakes use them. On
    /// failure the config in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.config.server_config()?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

/// Who is on the other end of a TLS connection: what its client certificate says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name of the verified client certificate.
    pub cert_cn: Option<String>,
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const TLS_HANDSHAKE: u8 = 0x16;

/// The answer to a plain-HTTP request on the TLS port.
pub const PLAIN_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 53\r\n\r\n{\"error\":\"this port speaks TLS: use https:// to it\"}\n";

/// The subject common name of a DER X.509 certificate, or `None` if it has none or the
/// certificate does not parse. Reads only as far as the subject; never panics on any input.
pub fn common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    //   signature, issuer, validity, subject, ... }, ... }
    let (cert, _) = der::take(der, der::SEQUENCE)?;
    let (mut tbs, _) = der::take(cert, der::SEQUENCE)?;
    if tbs.first() == Some(&der::VERSION) {
        tbs = der::skip(tbs)?;
    }
    // serial, signature algorithm, issuer, validity
    for _ in 0..4 {
        tbs = der::skip(tbs)?;
    }
    let (mut subject, _) = der::take(tbs, der::SEQUENCE)?;
    let mut cn = None;
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !subject.is_empty() {
        let (mut set, rest) = der::take(subject, der::SET)?;
        subject = rest;
        while !set.is_empty() {
            let (atv, rest) = der::take(set, der::SEQUENCE)?;
            set = rest;
            let (oid, value) = der::take(atv, der::OID)?;
            if oid == der::OID_COMMON_NAME {
                let (tag, body, _) = der::element(value)?;
                if matches!(
                    tag,
                    der::UTF8_STRING | der::PRINTABLE_STRING | der::IA5_STRING
                ) {
                    cn = Some(String::from_utf8(body.to_vec()).ok()?);
                }
            }
        }
    }
    cn
}

/// Just enough DER to find a certificate's subject.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const OID: u8 = 0x06;
    pub const VERSION: u8 = 0xa0;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const IA5_STRING: u8 = 0x16;
    /// 2.5.4.3
    pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// (tag, contents, rest) of the element at the start of `input`.
    pub fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, after) = (rest.get(..n)?, rest.get(n..)?);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let body = rest.get(..len)?;
        Some((tag, body, rest.get(len..)?))
    }

    /// The contents of the element at the start of `input` if its tag is `tag`, and the rest.
    pub fn take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, body, rest) = element(input)?;
        (t == tag).then_some((body, rest))
    }

    /// `input` after its first element.
    pub fn skip(input: &[u8]) -> Option<&[u8]> {
        element(input).map(|(_, _, rest)| rest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_name_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ferry");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "agent-web-01");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("agent-web-01"));
        let none = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // rcgen's default subject is CN=rcgen self signed cert; remove it for the None case.
        let mut bare = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let bare = bare.self_signed(&key).unwrap();
        assert!(common_name(none.der()).is_some());
        assert_eq!(common_name(bare.der()), None);
    }

    proptest! {
        /// Any bytes, and every truncation or bit flip of a real certificate: an answer, never
        /// a panic.
        #[test]
        fn common_name_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = common_name(&bytes);
        }

        #[test]
        fn common_name_of_damaged_certificates(cut in 0usize..2000, flip in 0usize..2000, bit in 0u8..8) {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["h".into()]).unwrap().self_signed(&key).unwrap();
            let mut der = cert.der().to_vec();
            let at = flip % der.len();
            if let Some(b) = der.get_mut(at) {
                *b ^= 1 << bit;
            }
            der.truncate(cut.min(der.len()));
            let _ = common_name(&der);
        }
    }
}
