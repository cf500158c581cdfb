//! A real Kafka-protocol broker for tests: `tansu` with memory storage on a free port.
//!
//! The binary comes from `$FERRY_TANSU_BIN`, or else from `scripts/install-tansu` (idempotent;
//! it downloads the broker once into `.tools/bin`). [`Tansu::start`] waits until a metadata
//! request succeeds; dropping the handle kills the broker, and prints its log if the test is
//! failing. Memory storage: a restarted broker starts empty.
//!
//! [`TlsTansu`] is the same broker reachable only over TLS, for tests of `security_protocol:
//! ssl`. tansu 0.6.0 has `--cert` and `--key` flags, but its command line puts both in one
//! exclusive argument group, so they cannot be given together ("the argument '--cert <CERT>'
//! cannot be used with '--key <KEY>'"), and its listener only turns TLS on when it has both: a
//! broker started with either alone still speaks plaintext. So the TLS end is a proxy here:
//! the broker listens on a private port and advertises the proxy's, and the proxy terminates
//! TLS (OpenSSL, with a certificate for `127.0.0.1` signed by a CA made for the test) and
//! forwards the bytes. Every connection a client makes, bootstrap or advertised, is TLS.
#![allow(clippy::unwrap_used)]

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    /// Holds the log file's directory for the broker's lifetime.
    _dir: tempfile::TempDir,
}

/// The tansu binary: `$FERRY_TANSU_BIN`, or what `scripts/install-tansu` installs.
pub fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FERRY_TANSU_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-tansu");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), out.status));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

impl Tansu {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port`, retrying for a while if the port is still held (a broker
    /// restarted on its old port can meet AddrInUse while old connections linger).
    pub fn start_on(port: u16) -> Self {
        Self::start_advertising(port, port)
    }

    /// Starts a broker listening on `port` that tells clients (in metadata) to connect to
    /// `advertised` instead: a proxy in front of it, as [`TlsTansu`] puts there.
    pub fn start_advertising(port: u16, advertised: u16) -> Self {
        let bin = tansu_bin().unwrap_or_else(|e| panic!("no tansu broker: {e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("tansu.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let file = std::fs::File::create(&log).expect("log file");
            let err = file.try_clone().expect("log file");
            let url = format!("tcp://127.0.0.1:{port}");
            let advertised_url = format!("tcp://127.0.0.1:{advertised}");
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised_url,
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .env_remove("LISTENER_URL")
                .env_remove("ADVERTISED_LISTENER_URL")
                .env_remove("STORAGE_ENGINE")
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut t = Tansu {
                child: Some(child),
                port,
                log: log.clone(),
                _dir: tempfile::tempdir().expect("temp dir"),
            };
            let ready = if advertised == port {
                t.wait_ready(Duration::from_secs(20))
            } else {
                // Metadata would send a plaintext client on to the advertised address (a TLS
                // proxy): wait for the listener itself instead.
                t.wait_listening(Duration::from_secs(20))
            };
            match ready {
                Ok(()) => {
                    t._dir = dir;
                    return t;
                }
                Err(e) if Instant::now() < deadline && t.log().contains("AddrInUse") => {
                    t.kill();
                    eprintln!("tansu: port {port} still in use ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("tansu did not start: {e}\n--- tansu log\n{}", t.log()),
            }
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let addr: std::net::SocketAddr = self.brokers().parse().map_err(|e| format!("{e}"))?;
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("tansu exited with {status}"));
            }
            if self.log().contains("ready in")
                && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not listening on {addr} after {timeout:?}"))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "0")
            .create()
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("tansu exited with {status}"));
            }
            match consumer.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => last = "metadata without brokers".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no metadata after {timeout:?}: {last}"))
    }

    /// SIGSTOP: the broker stops answering — its connections stay open, requests time out —
    /// until [`Tansu::resume`]; unlike a restart (memory storage) it keeps what it holds. An
    /// outage with the data intact, as a hung broker or a network partition gives.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Tansu::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("tansu running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill {sig} {pid}: {e}"));
        assert!(status.success(), "kill {sig} {pid}: {status}");
    }

    /// SIGKILL: the broker and (memory storage) everything it held are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- tansu log (port {})\n{}", self.port, self.log());
        }
    }
}

/// A certificate authority and a server certificate for `127.0.0.1` / `localhost` signed by it,
/// plus an unrelated CA (to show that a client trusting the wrong CA is refused), as PEM files.
pub struct TestCerts {
    pub ca: PathBuf,
    pub wrong_ca: PathBuf,
    server_cert: openssl::x509::X509,
    server_key: openssl::pkey::PKey<openssl::pkey::Private>,
}

type Key = openssl::pkey::PKey<openssl::pkey::Private>;

fn new_key() -> Key {
    use openssl::ec::{EcGroup, EcKey};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    openssl::pkey::PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `cn`, signed by `issuer` (self-signed when `None`).
fn certificate(
    cn: &str,
    key: &Key,
    issuer: Option<(&openssl::x509::X509, &Key)>,
) -> openssl::x509::X509 {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
        SubjectAlternativeName, SubjectKeyIdentifier,
    };
    use openssl::x509::{X509, X509NameBuilder};
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_serial()).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match issuer {
        None => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let ski = SubjectKeyIdentifier::new()
                .build(&b.x509v3_context(None, None))
                .unwrap();
            b.append_extension(ski).unwrap();
        }
        Some((ca, _)) => {
            b.append_extension(BasicConstraints::new().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
                .unwrap();
            let san = SubjectAlternativeName::new()
                .ip("127.0.0.1")
                .dns("localhost")
                .build(&b.x509v3_context(Some(ca), None))
                .unwrap();
            b.append_extension(san).unwrap();
            let aki = AuthorityKeyIdentifier::new()
                .keyid(false)
                .build(&b.x509v3_context(Some(ca), None))
                .unwrap();
            b.append_extension(aki).unwrap();
        }
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn rand_serial() -> u32 {
    use std::time::SystemTime;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    nanos | 1
}

impl TestCerts {
    /// Generates the CAs and the server certificate; writes the CA files into `dir`.
    pub fn generate(dir: &std::path::Path) -> Self {
        let ca_key = new_key();
        let ca = certificate("ferry test CA", &ca_key, None);
        let server_key = new_key();
        let server_cert = certificate("127.0.0.1", &server_key, Some((&ca, &ca_key)));
        let wrong_key = new_key();
        let wrong = certificate("some other CA", &wrong_key, None);
        let ca_path = dir.join("ca.pem");
        let wrong_path = dir.join("wrong-ca.pem");
        std::fs::write(&ca_path, ca.to_pem().unwrap()).unwrap();
        std::fs::write(&wrong_path, wrong.to_pem().unwrap()).unwrap();
        Self {
            ca: ca_path,
            wrong_ca: wrong_path,
            server_cert,
            server_key,
        }
    }
}

/// Accepts TLS on a local port and forwards each connection, decrypted, to `127.0.0.1:upstream`.
/// Runs on its own runtime; dropping it stops accepting and closes every connection.
pub struct TlsProxy {
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsProxy {
    pub fn start(upstream: u16, certs: &TestCerts) -> Self {
        use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
        let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acc.set_private_key(&certs.server_key).unwrap();
        acc.set_certificate(&certs.server_cert).unwrap();
        acc.check_private_key().unwrap();
        let acc = acc.build();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tls-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(ssl) = Ssl::new(acc.context()) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, client) else {
                        return;
                    };
                    // A client that does not trust the certificate aborts here.
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Self {
            port,
            runtime: Some(runtime),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A tansu broker that clients reach only over TLS (see the module docs for why a proxy).
pub struct TlsTansu {
    pub certs: TestCerts,
    pub proxy: TlsProxy,
    pub broker: Tansu,
    _dir: tempfile::TempDir,
}

impl TlsTansu {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = TestCerts::generate(dir.path());
        let private = free_port();
        let proxy = TlsProxy::start(private, &certs);
        let broker = Tansu::start_advertising(private, proxy.port);
        Self {
            certs,
            proxy,
            broker,
            _dir: dir,
        }
    }

    /// The bootstrap address (the TLS proxy).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}
