//! Security through the real binary: TLS and mutual TLS on the collector (certificates made
//! here with rcgen), what every client says when a certificate is wrong, principals and their
//! permissions over real HTTP (the whole route × credential matrix), and the certificate swap
//! on SIGHUP.

mod util;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use util::{Dir, Service, ferry, free_addr, run, wait_until};

/// A test certificate authority that writes its certificates into a directory.
struct Ca {
    name: String,
    dir: PathBuf,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// Validity of a leaf certificate.
#[derive(Clone, Copy)]
enum Validity {
    Now,
    Expired,
    NotYetValid,
}

impl Ca {
    fn new(dir: &Dir, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write CA");
        Ca {
            name: name.to_owned(),
            dir: dir.path().to_owned(),
            key,
            cert,
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A leaf certificate (server: for `127.0.0.1` and `localhost`; client: with `cn`),
    /// written as `FILE.pem` and `FILE.key`; returns both paths.
    fn leaf(&self, file: &str, cn: &str, server: bool, validity: Validity) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let sans = if server {
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        match validity {
            Validity::Now => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2090, 1, 1);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2019, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 1, 1);
            }
            Validity::NotYetValid => {
                params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Starts a collector with `yaml` (the whole `collector:` section's body) and waits until it
/// listens; over TLS `/healthz` is not plain HTTP, so readiness is its log line.
fn start(dir: &Dir, name: &str, yaml: &str, addr: SocketAddr) -> Service {
    let cfg = dir.write(&format!("{name}.yaml"), format!("collector:\n{yaml}"));
    let data = dir.join(format!("{name}-data"));
    let mut svc = Service::spawn(
        name,
        dir,
        &[
            "collector",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            s(&data),
            "--config",
            s(&cfg),
        ],
    );
    svc.addr = addr;
    let started = std::time::Instant::now();
    while !svc.stderr().contains("collector listening") {
        if let Some(status) = svc.exited() {
            panic!("{name} exited with {status}:\n{}", svc.stderr());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} did not start:\n{}",
            svc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    svc
}

fn tls_yaml(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut y = format!("  tls:\n    cert: {}\n    key: {}\n", s(cert), s(key));
    if let Some(ca) = client_ca {
        y.push_str(&format!("    client_ca: {}\n", s(ca)));
    }
    y
}

/// `--ca CA`, and `--cert CERT --key KEY` when a client identity is given.
fn tls_args(ca: &Path, identity: Option<(&Path, &Path)>) -> Vec<String> {
    let mut a = vec!["--ca".to_owned(), s(ca).to_owned()];
    if let Some((cert, key)) = identity {
        a.extend(["--cert".to_owned(), s(cert).to_owned()]);
        a.extend(["--key".to_owned(), s(key).to_owned()]);
    }
    a
}

/// `ferry topics` against `url` with `extra` flags: (exit code, stderr).
fn topics(url: &str, extra: &[String]) -> (Option<i32>, String) {
    let out = ferry()
        .args(["topics", "--collector", url])
        .args(extra)
        .env("FERRY_REQUEST_TIMEOUT", "10s")
        .env_remove("FERRY_TOKEN")
        .output()
        .expect("run ferry topics");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_handshake_and_what_each_client_says_when_a_certificate_is_wrong() {
    let dir = Dir::new("tls-errors");
    let ca = Ca::new(&dir, "main");
    let other = Ca::new(&dir, "other");
    let (cert, key) = ca.leaf("server", "collector", true, Validity::Now);
    let addr = free_addr();
    let _c = start(&dir, "good", &tls_yaml(&cert, &key, None), addr);
    let url = format!("https://{addr}");

    // The right CA: a handshake, and the topics listed.
    let (code, err) = topics(&url, &tls_args(&ca.ca_path(), None));
    assert_eq!(code, Some(0), "{err}");
    // produce and consume over TLS too.
    run(
        ferry()
            .args(["produce", "--collector", &url])
            .args(tls_args(&ca.ca_path(), None))
            .args(["t"]),
        b"one\ntwo\n",
        0,
    );
    let out = run(
        ferry()
            .args(["consume", "--collector", &url])
            .args(tls_args(&ca.ca_path(), None))
            .args(["t", "--from-beginning", "--max", "2"]),
        b"",
        0,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");

    // Another CA: refused by the client, saying so.
    let (code, err) = topics(&url, &tls_args(&other.ca_path(), None));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not signed by a trusted CA") && err.contains("--ca"),
        "{err}"
    );

    // Plain HTTP to the TLS port: a clear 400, not a hang.
    let (status, body) = util::http_get(addr, "/healthz").expect("plain GET");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("this port speaks TLS"), "{body}");
    // ... and from a ferry client with an http:// URL.
    let (code, err) = topics(&format!("http://{addr}"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("this port speaks TLS"), "{err}");

    // Expired and not yet valid server certificates.
    for (validity, says) in [
        (Validity::Expired, "has expired"),
        (Validity::NotYetValid, "not valid yet"),
    ] {
        let name = if says == "has expired" {
            "expired"
        } else {
            "future"
        };
        let (cert, key) = ca.leaf(name, "collector", true, validity);
        let addr = free_addr();
        let _c = start(&dir, name, &tls_yaml(&cert, &key, None), addr);
        let (code, err) = topics(&format!("https://{addr}"), &tls_args(&ca.ca_path(), None));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[test]
fn mutual_tls_refuses_missing_and_foreign_client_certificates_and_maps_the_cn() {
    let dir = Dir::new("mtls");
    let ca = Ca::new(&dir, "main");
    let other = Ca::new(&dir, "other");
    let (cert, key) = ca.leaf("server", "collector", true, Validity::Now);
    let (web_cert, web_key) = ca.leaf("web", "agent-web", false, Validity::Now);
    let (foreign_cert, foreign_key) = other.leaf("foreign", "agent-web", false, Validity::Now);
    let (stranger_cert, stranger_key) = ca.leaf("stranger", "nobody-knows", false, Validity::Now);
    let addr = free_addr();
    let yaml = format!(
        "{}  topics:\n    web-1: {{ partitions: 1 }}\n    api-1: {{ partitions: 1 }}\n  auth:\n    principals:\n      - {{ name: web, cert_cn: agent-web, produce: [\"web-*\"], consume: [\"web-*\"] }}\n",
        tls_yaml(&cert, &key, Some(&ca.ca_path()))
    );
    let _c = start(&dir, "collector", &yaml, addr);
    let url = format!("https://{addr}");
    let ca_path = ca.ca_path();

    // No client certificate: the handshake is refused, and the client says what is missing.
    let (code, err) = topics(&url, &tls_args(&ca_path, None));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("client certificate"), "{err}");

    // A client certificate from another CA: refused.
    let (code, err) = topics(
        &url,
        &tls_args(&ca_path, Some((&foreign_cert, &foreign_key))),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused our client certificate"), "{err}");

    // A good certificate whose CN is no principal: authenticated by TLS, not by auth (401).
    let (code, err) = topics(
        &url,
        &tls_args(&ca_path, Some((&stranger_cert, &stranger_key))),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401"), "{err}");

    // The CN agent-web is the principal web: may produce to web-1, not to api-1 (403 naming
    // the principal, the permission and the topic).
    let web = tls_args(&ca_path, Some((&web_cert, &web_key)));
    run(
        ferry()
            .args(["produce", "--collector", &url, "web-1"])
            .args(&web),
        b"hello\n",
        0,
    );
    let out = run(
        ferry()
            .args(["produce", "--collector", &url, "api-1"])
            .args(&web),
        b"hello\n",
        1,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403")
            && err.contains("\"web\"")
            && err.contains("produce")
            && err.contains("\"api-1\""),
        "{err}"
    );
}

/// One credential of the matrix.
#[derive(Clone, Copy, Debug)]
enum Who {
    NoToken,
    WrongToken,
    /// A principal that lacks the route's permission.
    Without(&'static str),
    /// A principal that has it.
    With(&'static str),
}

impl Who {
    fn token(self) -> Option<&'static str> {
        match self {
            Who::NoToken => None,
            Who::WrongToken => Some("not-a-token"),
            Who::Without(t) | Who::With(t) => Some(t),
        }
    }
}

const PRODUCER: &str = "tok-producer";
const CONSUMER: &str = "tok-consumer";
const ADMIN: &str = "tok-admin";
const NOBODY: &str = "tok-nobody";

/// One row of the matrix: a request, and the status each credential gets.
struct Row {
    method: &'static str,
    path: String,
    body: Option<String>,
    /// (credential, expected status), in the order sent.
    expect: Vec<(Who, u16)>,
}

fn row(method: &'static str, path: &str, body: Option<&str>, expect: &[(Who, u16)]) -> Row {
    Row {
        method,
        path: path.to_owned(),
        body: body.map(str::to_owned),
        expect: expect.to_vec(),
    }
}

/// A row for a route that needs a permission: no token and a wrong token get 401, `without`
/// (a principal lacking it) 403, and `with` (a principal having it) the status given.
fn guarded(
    method: &'static str,
    path: &str,
    body: Option<&str>,
    without: &'static str,
    with: (&'static str, u16),
) -> Row {
    row(
        method,
        path,
        body,
        &[
            (Who::NoToken, 401),
            (Who::WrongToken, 401),
            (Who::Without(without), 403),
            (Who::With(with.0), with.1),
        ],
    )
}

fn send(
    http: &reqwest::blocking::Client,
    base: &str,
    row: &Row,
    who: Who,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(row.method.as_bytes()).expect("method");
    let mut rb = http.request(method, format!("{base}{}", row.path));
    if let Some(t) = who.token() {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = &row.body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.clone());
    }
    let resp = rb.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn permission_matrix_over_real_http() {
    let dir = Dir::new("auth-matrix");
    let addr = free_addr();
    let yaml = format!(
        r#"  topics:
    web-1: {{ partitions: 1 }}
    api-1: {{ partitions: 1 }}
  auth:
    principals:
      - {{ name: producer, token: {PRODUCER}, produce: ["web-*"], auto_create: ["web-auto-*"] }}
      - {{ name: consumer, token_file: {}, consume: ["web-*"], groups: ["g-*"] }}
      - {{ name: admin, token_env: FERRY_TEST_ADMIN_TOKEN, admin: true }}
      - {{ name: nobody, token: {NOBODY} }}
"#,
        s(&dir.write("consumer.token", format!("{CONSUMER}\n")))
    );
    let cfg = dir.write("c.yaml", format!("collector:\n{yaml}"));
    let data = dir.join("data");
    let svc = {
        let mut cmd_args = vec![
            "collector".to_owned(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            s(&data).into(),
            "--config".into(),
            s(&cfg).into(),
        ];
        // token_env: the admin's token comes from the collector's environment.
        let stderr = std::fs::File::create(dir.join("collector.stderr")).expect("stderr");
        let child = ferry()
            .args(cmd_args.drain(..))
            .env("FERRY_TEST_ADMIN_TOKEN", ADMIN)
            .stderr(stderr)
            .spawn()
            .expect("spawn collector");
        util::Proc {
            name: "collector".into(),
            child: Some(child),
            stderr_path: dir.join("collector.stderr"),
        }
    };
    wait_until(Duration::from_secs(60), "collector healthy", || {
        matches!(util::http_get(addr, "/healthz"), Ok((200, _)))
    });
    let base = format!("http://{addr}");
    let http = reqwest::blocking::Client::new();
    use Who::*;
    let rows = vec![
        row(
            "GET",
            "/healthz",
            None,
            &[(NoToken, 200), (WrongToken, 200), (With(NOBODY), 200)],
        ),
        row(
            "GET",
            "/metrics",
            None,
            &[(NoToken, 401), (WrongToken, 401), (With(NOBODY), 200)],
        ),
        row(
            "POST",
            "/v1/topics/web-1/records",
            Some("a line\n"),
            &[
                (NoToken, 401),
                (WrongToken, 401),
                (Without(CONSUMER), 403),
                (With(PRODUCER), 200),
                (With(ADMIN), 200),
            ],
        ),
        // The pattern web-* allows web-1 (above) and refuses api-1.
        row(
            "POST",
            "/v1/topics/api-1/records",
            Some("a line\n"),
            &[(Without(PRODUCER), 403), (With(ADMIN), 200)],
        ),
        // A topic that does not exist yet: produce alone does not create it.
        row(
            "POST",
            "/v1/topics/web-new/records",
            Some("a line\n"),
            &[(Without(PRODUCER), 403)],
        ),
        row(
            "POST",
            "/v1/topics/web-auto-1/records",
            Some("a line\n"),
            &[(Without(NOBODY), 403), (With(PRODUCER), 200)],
        ),
        row(
            "GET",
            "/v1/topics",
            None,
            &[(NoToken, 401), (WrongToken, 401), (With(NOBODY), 200)],
        ),
        row(
            "GET",
            "/v1/topics/web-1",
            None,
            &[
                (NoToken, 401),
                (WrongToken, 401),
                (Without(NOBODY), 403),
                (With(PRODUCER), 200),
                (With(CONSUMER), 200),
            ],
        ),
        guarded(
            "GET",
            "/v1/topics/web-1/partitions/0/records?offset=0",
            None,
            PRODUCER,
            (CONSUMER, 200),
        ),
        row(
            "GET",
            "/v1/topics/api-1/partitions/0/records?offset=0",
            None,
            &[(Without(CONSUMER), 403), (With(ADMIN), 200)],
        ),
        guarded(
            "GET",
            "/v1/topics/web-1/partitions/0/offset?timestamp_ms=0",
            None,
            PRODUCER,
            (CONSUMER, 200),
        ),
        // auto_create also allows creating the topic outright (a processor's repartition topic).
        row(
            "PUT",
            "/v1/topics/web-auto-2",
            Some(r#"{"partitions":1}"#),
            &[(Without(NOBODY), 403), (With(PRODUCER), 201)],
        ),
        guarded(
            "PUT",
            "/v1/topics/made",
            Some(r#"{"partitions":1}"#),
            PRODUCER,
            (ADMIN, 201),
        ),
        guarded("DELETE", "/v1/topics/made", None, CONSUMER, (ADMIN, 204)),
        guarded(
            "POST",
            "/v1/groups/g-1/join",
            Some(r#"{"topics":["web-1"]}"#),
            PRODUCER,
            (CONSUMER, 200),
        ),
        // groups on g-1 but not consume on api-1.
        row(
            "POST",
            "/v1/groups/g-1/join",
            Some(r#"{"topics":["api-1"]}"#),
            &[(Without(CONSUMER), 403)],
        ),
        // consume on web-1 but not groups on other-g.
        row(
            "POST",
            "/v1/groups/other-g/join",
            Some(r#"{"topics":["web-1"]}"#),
            &[(Without(CONSUMER), 403)],
        ),
        row(
            "GET",
            "/v1/groups",
            None,
            &[(NoToken, 401), (WrongToken, 401), (With(NOBODY), 200)],
        ),
        guarded(
            "GET",
            "/v1/groups/g-1/offsets",
            None,
            PRODUCER,
            (CONSUMER, 200),
        ),
        guarded(
            "POST",
            "/v1/groups/g-1/commit",
            Some(r#"{"offsets":[{"topic":"web-1","partition":0,"offset":1}]}"#),
            PRODUCER,
            (CONSUMER, 204),
        ),
        row(
            "POST",
            "/v1/groups/g-1/commit",
            Some(r#"{"offsets":[{"topic":"api-1","partition":0,"offset":1}]}"#),
            &[(Without(CONSUMER), 403)],
        ),
        // 404: allowed, and there is no checkpoint yet.
        guarded(
            "GET",
            "/v1/groups/g-1/checkpoints/web-1/0",
            None,
            PRODUCER,
            (CONSUMER, 404),
        ),
        row(
            "GET",
            "/v1/groups/g-1/checkpoints/api-1/0",
            None,
            &[(Without(CONSUMER), 403)],
        ),
    ];
    let mut matrix = Vec::new();
    let mut failures = Vec::new();
    for row in &rows {
        for &(who, want) in &row.expect {
            let (got, body) = send(&http, &base, row, who);
            matrix.push(format!(
                "{} {} × {who:?} → {got}",
                row.method,
                row.path.split('?').next().unwrap_or_default()
            ));
            if got != want {
                failures.push(format!(
                    "{} {} as {who:?}: got {got}, want {want}: {body}",
                    row.method, row.path
                ));
            }
            // A 403 names the principal, the permission and the topic or group.
            if got == 403 {
                let msg = body["error"].as_str().unwrap_or_default();
                assert!(
                    msg.contains("lacks the") && body["permission"].is_string(),
                    "{body}"
                );
            }
        }
    }
    // The member-scoped routes, with the member id the join gave.
    let (_, joined) = send(
        &http,
        &base,
        &row(
            "POST",
            "/v1/groups/g-1/join",
            Some(r#"{"topics":["web-1"]}"#),
            &[],
        ),
        With(CONSUMER),
    );
    let member = joined["member_id"].as_str().expect("member id").to_owned();
    for (path, body, who, want) in [
        (
            "/v1/groups/g-1/heartbeat",
            format!(r#"{{"member_id":"{member}","owned":[]}}"#),
            NoToken,
            401,
        ),
        (
            "/v1/groups/g-1/heartbeat",
            format!(r#"{{"member_id":"{member}","owned":[]}}"#),
            Without(PRODUCER),
            403,
        ),
        (
            "/v1/groups/g-1/heartbeat",
            format!(r#"{{"member_id":"{member}","owned":[]}}"#),
            With(CONSUMER),
            200,
        ),
        (
            "/v1/groups/g-1/leave",
            format!(r#"{{"member_id":"{member}"}}"#),
            Without(NOBODY),
            403,
        ),
        (
            "/v1/groups/g-1/leave",
            format!(r#"{{"member_id":"{member}"}}"#),
            With(CONSUMER),
            204,
        ),
    ] {
        let (got, body) = send(&http, &base, &row("POST", path, Some(&body), &[]), who);
        matrix.push(format!("POST {path} × {who:?} → {got}"));
        if got != want {
            failures.push(format!(
                "POST {path} as {who:?}: got {got}, want {want}: {body}"
            ));
        }
    }
    eprintln!("permission matrix:\n{}", matrix.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The clients send the token from --token, FERRY_TOKEN or --token-file.
    let topics_as = |args: &[&str], env: Option<&str>| {
        let mut cmd = ferry();
        cmd.args(["topics", "--collector", &base]).args(args);
        match env {
            Some(t) => cmd.env("FERRY_TOKEN", t),
            None => cmd.env_remove("FERRY_TOKEN"),
        };
        let out = cmd.output().expect("ferry topics");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = topics_as(&[], None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("401") && err.contains("not authenticated"),
        "{err}"
    );
    assert_eq!(topics_as(&["--token", NOBODY], None).0, Some(0));
    assert_eq!(topics_as(&[], Some(NOBODY)).0, Some(0));
    let file = dir.write("nobody.token", format!("  {NOBODY}\n"));
    assert_eq!(topics_as(&["--token-file", s(&file)], None).0, Some(0));
    // A flag wins over the environment.
    let (code, err) = topics_as(&["--token", "wrong"], Some(NOBODY));
    assert_eq!(code, Some(1), "{err}");
    drop(svc);
}

/// A blocking HTTPS client that trusts only `ca` (and keeps its connections open).
fn https_client(ca: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[test]
fn sighup_swaps_the_certificate_and_open_connections_keep_working() {
    let dir = Dir::new("tls-sighup");
    let a = Ca::new(&dir, "a");
    let b = Ca::new(&dir, "b");
    let (cert, key) = a.leaf("server", "collector-a", true, Validity::Now);
    let addr = free_addr();
    let c = start(&dir, "collector", &tls_yaml(&cert, &key, None), addr);
    let url = format!("https://{addr}/v1/topics");
    let old = https_client(&a.ca_path());
    assert_eq!(old.get(&url).send().expect("GET over A").status(), 200);

    // The files now hold a certificate of another CA; SIGHUP.
    b.leaf("server", "collector-b", true, Validity::Now);
    let pid = c.pid().expect("pid").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    wait_until(Duration::from_secs(30), "the TLS reload", || {
        c.stderr().contains("TLS certificate and key reloaded")
    });

    // New handshakes see the new certificate: a client trusting only A is refused, one
    // trusting B gets through.
    let err = https_client(&a.ca_path())
        .get(&url)
        .send()
        .expect_err("A's CA must not verify B's certificate");
    assert!(
        ferry_core_chain(&err).contains("UnknownIssuer"),
        "{}",
        ferry_core_chain(&err)
    );
    assert_eq!(
        https_client(&b.ca_path())
            .get(&url)
            .send()
            .expect("GET over B")
            .status(),
        200
    );
    // The connection opened before the swap still works (a new one would be refused, as just
    // seen: so this request went over the old connection).
    assert_eq!(
        old.get(&url)
            .send()
            .expect("GET on the old connection")
            .status(),
        200
    );
    // A reload that fails (a key that is not PEM) keeps the certificate in force.
    std::fs::write(&key, "not a key").expect("break key");
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    wait_until(Duration::from_secs(30), "the failed reload", || {
        c.stderr().contains("TLS reload failed")
    });
    assert_eq!(
        https_client(&b.ca_path())
            .get(&url)
            .send()
            .expect("GET after a failed reload")
            .status(),
        200
    );
}

fn ferry_core_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn agent_collector_processor_over_mutual_tls_with_least_privilege_principals() {
    let dir = Dir::new("tls-pipeline");
    let ca = Ca::new(&dir, "main");
    let (cert, key) = ca.leaf("server", "collector", true, Validity::Now);
    let (agent_cert, agent_key) = ca.leaf("agent", "agent-1", false, Validity::Now);
    // The processor's certificate names no principal: it is who it is by its token.
    let (proc_cert, proc_key) = ca.leaf("processor", "reader-host", false, Validity::Now);
    let (admin_cert, admin_key) = ca.leaf("admin", "ops", false, Validity::Now);
    let token = dir.write("processor.token", "s3cret-processor-token\n");
    let addr = free_addr();
    let yaml = format!(
        "{}  topics:\n    app: {{ partitions: 2 }}\n  auth:\n    principals:\n      - {{ name: agent, cert_cn: agent-1, produce: [app] }}\n      - {{ name: processor, token_file: {}, consume: [app, \"levels.*\"], groups: [levels, \"levels.*\"], produce: [\"levels.*\"], auto_create: [\"levels.*\"] }}\n      - {{ name: ops, cert_cn: ops, admin: true }}\n",
        tls_yaml(&cert, &key, Some(&ca.ca_path())),
        s(&token)
    );
    let _collector = start(&dir, "collector", &yaml, addr);
    let url = format!("https://{addr}");

    let total = 3000u64;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let mut text: String = (0..total).map(|i| util::json_log_line(i) + "\n").collect();
    // Closes the last windows (its own window never closes, so it is never counted).
    text.push_str("{\"ts\":\"2026-01-01T05:00:00Z\",\"level\":\"closer\",\"seq\":999999}\n");
    std::fs::write(logs.join("app.log"), &text).expect("write log");

    let agent_cfg = dir.write(
        "agent.yaml",
        format!(
            "agent:\n  id: host-1\n  data_dir: {}\n  inputs:\n    - {{ name: app, include: [\"{}/app.log\"], topic: app }}\n  batch: {{ linger: 50ms, max_records: 500 }}\n  output:\n    type: collector\n    urls: [\"{url}\"]\n    ca: {}\n    cert: {}\n    key: {}\n",
            dir.join("agent-data").display(),
            logs.display(),
            s(&ca.ca_path()),
            s(&agent_cert),
            s(&agent_key)
        ),
    );
    let run_check = |cfg: &Path| run(ferry().args(["check", s(cfg)]), b"", 0);
    run_check(&agent_cfg);
    let _agent = util::Proc::start("agent", &dir, &["agent", "--config", s(&agent_cfg)]);

    let results = dir.join("results.jsonl");
    let proc_cfg = dir.write(
        "processor.yaml",
        format!(
            r#"processor:
  collector:
    url: "{url}"
    ca: {}
    cert: {}
    key: {}
    token_file: {}
  pipelines:
    - name: levels
      source: {{ topics: [app], group: levels }}
      parse: json
      event_time: {{ field: ts, format: rfc3339 }}
      group_by: [level]
      window: {{ tumbling: 10s, allowed_lateness: 2s }}
      aggregates:
        - {{ name: count, op: count }}
      sinks:
        - file: {{ path: "{}" }}
"#,
            s(&ca.ca_path()),
            s(&proc_cert),
            s(&proc_key),
            s(&token),
            results.display()
        ),
    );
    run_check(&proc_cfg);
    let _processor = util::Proc::start("processor", &dir, &["processor", "--config", s(&proc_cfg)]);

    // What the files say: per (level, 10 s window) counts.
    let mut expected = std::collections::BTreeMap::new();
    for seq in 0..total {
        let v: serde_json::Value = serde_json::from_str(&util::json_log_line(seq)).expect("json");
        let ts = v["ts"].as_str().expect("ts");
        let ws = format!("{}0Z", &ts[..18]);
        *expected
            .entry((v["level"].as_str().expect("level").to_owned(), ws))
            .or_insert(0u64) += 1;
    }
    wait_until(Duration::from_secs(90), "every window result", || {
        util::window_results_in(&results).len() >= expected.len()
    });
    assert_eq!(util::window_results_in(&results), expected);

    // Every line stored exactly once, read back by the admin over mTLS.
    let out = run(
        ferry()
            .args(["consume", "--collector", &url])
            .args(tls_args(&ca.ca_path(), Some((&admin_cert, &admin_key))))
            .args(["app", "--from-beginning", "--idle-timeout", "1s"]),
        b"",
        0,
    );
    let mut seen = std::collections::BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("stored line");
        *seen.entry(v["seq"].as_u64().expect("seq")).or_insert(0u32) += 1;
    }
    seen.remove(&999_999);
    assert_eq!(seen.len() as u64, total, "lines stored");
    assert!(seen.values().all(|&n| n == 1), "a line stored twice");

    // Least privilege: the agent's certificate may not read, the processor's token may not
    // write.
    let (code, err) = topics(
        &url,
        &tls_args(&ca.ca_path(), Some((&agent_cert, &agent_key))),
    );
    assert_eq!(
        code,
        Some(0),
        "listing topics needs only a principal: {err}"
    );
    let out = run(
        ferry()
            .args(["consume", "--collector", &url])
            .args(tls_args(&ca.ca_path(), Some((&agent_cert, &agent_key))))
            .args(["app", "--from-beginning", "--max", "1"]),
        b"",
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks the consume permission"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        ferry()
            .args([
                "produce",
                "--collector",
                &url,
                "--token-file",
                s(&token),
                "app",
            ])
            .args(tls_args(&ca.ca_path(), Some((&proc_cert, &proc_key))))
            .env_remove("FERRY_TOKEN"),
        b"x\n",
        1,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks the produce permission"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn security_config_problems_are_reported_at_file_line_col() {
    let dir = Dir::new("security-check");
    let cfg = dir.write(
        "bad.yaml",
        "collector:\n  tls:\n    cert: /nonexistent/collector.pem\n    key: /nonexistent/collector.key\n  auth:\n    principals:\n      - name: a\n        token_env: FERRY_TEST_UNSET_VARIABLE\n        cert_cn: host-a\n      - name: b\n        token: same\n      - name: c\n        token: same\n      - name: d\n        produce: [x]\nagent:\n  inputs: [{name: a, include: [/x], topic: t}]\n  output:\n    type: collector\n    urls: [\"https://c:7070\"]\n    cert: /nonexistent/agent.pem\n",
    );
    let out = run(
        ferry()
            .args(["check", s(&cfg)])
            .env_remove("FERRY_TEST_UNSET_VARIABLE"),
        b"",
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let at = |line: u32| format!("bad.yaml:{line}:");
    for (line, says) in [
        (3, "/nonexistent/collector.pem"),
        (8, "FERRY_TEST_UNSET_VARIABLE is not set"),
        (9, "cert_cn needs client certificates"),
        (14, "has no way to authenticate"),
        (21, "needs its private key"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&at(line)) && l.contains(says)),
            "line {line} should say {says:?}:\n{err}"
        );
    }
    assert!(err.contains("same token as another principal"), "{err}");
    assert!(!err.contains("same\""), "a token is never printed:\n{err}");
}
