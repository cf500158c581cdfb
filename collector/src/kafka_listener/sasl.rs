//! SASL on the Kafka listener: PLAIN and SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, 7677),
//! against the collector's principals (`collector.auth.principals`): the SASL user name is the
//! principal's `name`, the password its token. A connection that must authenticate (any
//! principal is configured) may send only ApiVersions, SaslHandshake and SaslAuthenticate
//! (or, after a SaslHandshake v0, raw SASL tokens: `read_raw_sasl` in mod.rs) until it has; a
//! verified TLS client certificate whose CN is a principal's `cert_cn` authenticates it at
//! once.
//!
//! SCRAM needs no stored verifier: the server knows the token, so it derives the salted
//! password itself, with a salt per principal made from a secret drawn at start (stable for
//! the process's life, so a client's cached salted password keeps working until a restart).

use crate::auth::{Authorizer, Principal};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// The mechanisms offered, in SaslHandshake's answer.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
/// PBKDF2 iterations of SCRAM (RFC 7677's minimum).
const ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram256,
    Scram512,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-256" => Some(Mechanism::Scram256),
            "SCRAM-SHA-512" => Some(Mechanism::Scram512),
            _ => None,
        }
    }

    fn algorithms(
        self,
    ) -> (
        pbkdf2::Algorithm,
        hmac::Algorithm,
        &'static digest::Algorithm,
    ) {
        match self {
            Mechanism::Scram512 => (
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
            ),
            _ => (
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
            ),
        }
    }
}

/// Where a connection's SASL exchange stands.
#[derive(Debug, Default)]
pub enum Exchange {
    /// No handshake yet.
    #[default]
    Start,
    /// SaslHandshake chose a mechanism; SaslAuthenticate comes next.
    Chosen(Mechanism),
    /// SCRAM: the server-first message was sent.
    ScramSent {
        mechanism: Mechanism,
        principal: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        salted: Vec<u8>,
    },
    /// Authenticated, or failed: nothing more to exchange.
    Done,
}

/// The process's secret that per-principal SCRAM salts are derived from.
pub struct SaltSecret(hmac::Key);

impl Default for SaltSecret {
    fn default() -> Self {
        let bytes: [u8; 32] = rand::random();
        SaltSecret(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }
}

impl SaltSecret {
    fn salt(&self, principal: &str) -> Vec<u8> {
        hmac::sign(&self.0, principal.as_bytes()).as_ref()[..16].to_vec()
    }
}

/// One SaslAuthenticate step: the bytes to answer, and the principal once authenticated.
/// An `Err` is a failed authentication, its message for the client (naming no secret).
pub fn step(
    auth: &Authorizer,
    secret: &SaltSecret,
    exchange: &mut Exchange,
    input: &[u8],
) -> Result<(Vec<u8>, Option<Principal>), String> {
    match std::mem::replace(exchange, Exchange::Done) {
        Exchange::Chosen(Mechanism::Plain) => plain(auth, input).map(|p| (Vec::new(), Some(p))),
        Exchange::Chosen(m) => {
            let (reply, next) = scram_first(auth, secret, m, input)?;
            *exchange = next;
            Ok((reply, None))
        }
        Exchange::ScramSent {
            mechanism,
            principal,
            client_first_bare,
            server_first,
            nonce,
            salted,
        } => {
            let p = auth
                .by_name(&principal)
                .cloned()
                .ok_or("authentication failed")?;
            let reply = scram_final(
                mechanism,
                &client_first_bare,
                &server_first,
                &nonce,
                &salted,
                input,
            )?;
            Ok((reply, Some(p)))
        }
        Exchange::Start | Exchange::Done => {
            Err("SaslAuthenticate out of order: send SaslHandshake first".into())
        }
    }
}

/// PLAIN: `authzid NUL user NUL password`.
fn plain(auth: &Authorizer, input: &[u8]) -> Result<Principal, String> {
    let mut parts = input.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed SASL PLAIN message".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "malformed SASL PLAIN user name")?;
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err("SASL PLAIN: authorization id must be empty or the user name".into());
    }
    auth.by_password(user, password)
        .cloned()
        .ok_or_else(|| "authentication failed: unknown user or wrong password".into())
}

/// Unescapes a SCRAM `saslname` (`=2C` → `,`, `=3D` → `=`).
fn sasl_name(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

fn scram_first(
    auth: &Authorizer,
    secret: &SaltSecret,
    mechanism: Mechanism,
    input: &[u8],
) -> Result<(Vec<u8>, Exchange), String> {
    let msg = std::str::from_utf8(input).map_err(|_| "malformed SCRAM client-first message")?;
    // gs2-header: "n,," (or "y,,"), optionally with "a=authzid".
    let mut it = msg.splitn(3, ',');
    let (Some(cb), Some(_authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err("malformed SCRAM client-first message".into());
    };
    if cb != "n" && cb != "y" {
        return Err("SCRAM channel binding is not supported".into());
    }
    let mut user = None;
    let mut client_nonce = None;
    for attr in bare.split(',') {
        if let Some(u) = attr.strip_prefix("n=") {
            user = Some(sasl_name(u));
        } else if let Some(r) = attr.strip_prefix("r=") {
            client_nonce = Some(r.to_owned());
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
        return Err("malformed SCRAM client-first message".into());
    };
    if client_nonce.is_empty() {
        return Err("malformed SCRAM client-first message".into());
    }
    // An unknown user still gets a salt and a nonce (its own, from the secret): the answer
    // does not say whether the name exists; the proof fails later.
    let token = auth
        .by_name(&user)
        .and_then(|p| p.token_bytes())
        .map(<[u8]>::to_vec);
    let salt = secret.salt(&user);
    let server_nonce: [u8; 18] = rand::random();
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&salt));
    let (pbkdf, _, digest_alg) = mechanism.algorithms();
    let mut salted = vec![0u8; digest_alg.output_len()];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    match &token {
        Some(t) => pbkdf2::derive(pbkdf, iterations, &salt, t, &mut salted),
        None => salted.iter_mut().for_each(|b| *b = rand::random()),
    }
    Ok((
        server_first.clone().into_bytes(),
        Exchange::ScramSent {
            mechanism,
            principal: if token.is_some() { user } else { String::new() },
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
            salted,
        },
    ))
}

fn scram_final(
    mechanism: Mechanism,
    client_first_bare: &str,
    server_first: &str,
    nonce: &str,
    salted: &[u8],
    input: &[u8],
) -> Result<Vec<u8>, String> {
    let msg = std::str::from_utf8(input).map_err(|_| "malformed SCRAM client-final message")?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or("malformed SCRAM client-final message")?;
    let got_nonce = without_proof
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or("malformed SCRAM client-final message")?;
    if got_nonce != nonce {
        return Err("authentication failed: SCRAM nonce mismatch".into());
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| "malformed SCRAM client proof")?;
    let (_, hmac_alg, digest_alg) = mechanism.algorithms();
    let key = hmac::Key::new(hmac_alg, salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(digest_alg, client_key.as_ref());
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac::sign(
        &hmac::Key::new(hmac_alg, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    if proof.len() != signature.as_ref().len() {
        return Err("authentication failed".into());
    }
    let recovered: Vec<u8> = proof
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let check = digest::digest(digest_alg, &recovered);
    if !constant_time_eq(check.as_ref(), stored_key.as_ref()) {
        return Err("authentication failed: unknown user or wrong password".into());
    }
    let server_key = hmac::sign(&key, b"Server Key");
    let server_signature = hmac::sign(
        &hmac::Key::new(hmac_alg, server_key.as_ref()),
        auth_message.as_bytes(),
    );
    Ok(format!("v={}", B64.encode(server_signature.as_ref())).into_bytes())
}

/// Equal lengths and bytes, in time that depends only on the length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectorConfig;

    fn authorizer() -> Authorizer {
        let config: CollectorConfig = ferry_core::config::load_str(
            "auth:\n  principals:\n    - name: app\n      token: s3cret-token\n      produce: [\"app-*\"]\n",
            std::path::Path::new("c.yaml"),
        )
        .expect("config");
        let mut p = ferry_core::problems::Problems::new();
        let a = Authorizer::resolve(&config, &mut p);
        assert!(p.is_empty(), "{}", p.to_lines());
        a
    }

    /// The client side of SCRAM, written from RFC 5802, to check the server against.
    fn scram_client(
        m: Mechanism,
        auth: &Authorizer,
        secret: &SaltSecret,
        user: &str,
        password: &str,
    ) -> Result<Principal, String> {
        let mut ex = Exchange::Chosen(m);
        let first_bare = format!("n={user},r=clientnonce123");
        let (server_first, none) =
            step(auth, secret, &mut ex, format!("n,,{first_bare}").as_bytes())?;
        assert!(none.is_none());
        let server_first = String::from_utf8(server_first).expect("utf8");
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for a in server_first.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                nonce = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).expect("salt");
            } else if let Some(v) = a.strip_prefix("i=") {
                iterations = v.parse().expect("i");
            }
        }
        assert!(nonce.starts_with("clientnonce123") && nonce.len() > 14);
        let (pbkdf, hmac_alg, digest_alg) = m.algorithms();
        let mut salted = vec![0u8; digest_alg.output_len()];
        pbkdf2::derive(
            pbkdf,
            NonZeroU32::new(iterations).expect("iterations"),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac_alg, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored = digest::digest(digest_alg, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let sig = hmac::sign(
            &hmac::Key::new(hmac_alg, stored.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(sig.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let (server_final, p) = step(
            auth,
            secret,
            &mut ex,
            format!("{without_proof},p={}", B64.encode(proof)).as_bytes(),
        )?;
        let server_key = hmac::sign(&key, b"Server Key");
        let want = hmac::sign(
            &hmac::Key::new(hmac_alg, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        assert_eq!(
            String::from_utf8(server_final).expect("utf8"),
            format!("v={}", B64.encode(want.as_ref())),
            "the server proves it knows the password too"
        );
        p.ok_or_else(|| "no principal".into())
    }

    #[test]
    fn scram_authenticates_the_right_password_only() {
        let auth = authorizer();
        let secret = SaltSecret::default();
        for m in [Mechanism::Scram256, Mechanism::Scram512] {
            let p = scram_client(m, &auth, &secret, "app", "s3cret-token").expect("authenticated");
            assert_eq!(p.name, "app");
            let e = scram_client(m, &auth, &secret, "app", "wrong").expect_err("wrong password");
            assert!(e.contains("authentication failed"), "{e}");
            let e = scram_client(m, &auth, &secret, "nobody", "s3cret-token")
                .expect_err("unknown user");
            assert!(e.contains("authentication failed"), "{e}");
        }
    }

    #[test]
    fn plain_checks_name_and_token_and_refuses_garbage() {
        let auth = authorizer();
        let secret = SaltSecret::default();
        let run = |input: &[u8]| {
            let mut ex = Exchange::Chosen(Mechanism::Plain);
            step(&auth, &secret, &mut ex, input).map(|(_, p)| p.map(|p| p.name))
        };
        assert_eq!(run(b"\0app\0s3cret-token"), Ok(Some("app".into())));
        assert_eq!(run(b"app\0app\0s3cret-token"), Ok(Some("app".into())));
        assert!(run(b"\0app\0wrong").is_err());
        assert!(run(b"\0other\0s3cret-token").is_err());
        assert!(run(b"other\0app\0s3cret-token").is_err());
        for garbage in [
            &b""[..],
            b"\0",
            b"no-nul",
            b"\0a\0b\0c",
            &[0xff, 0, 0xfe, 0, 1],
        ] {
            assert!(run(garbage).is_err(), "{garbage:?}");
        }
        let mut ex = Exchange::Start;
        assert!(step(&auth, &secret, &mut ex, b"\0app\0s3cret-token").is_err());
        let mut ex = Exchange::Chosen(Mechanism::Scram256);
        for garbage in [
            &b""[..],
            b"n,,",
            b"x,,n=app,r=abc",
            b"n,,n=app",
            &[0xff, 0xfe],
        ] {
            ex = Exchange::Chosen(Mechanism::Scram256);
            assert!(
                step(&auth, &secret, &mut ex, garbage).is_err(),
                "{garbage:?}"
            );
        }
        drop(ex);
    }
}
