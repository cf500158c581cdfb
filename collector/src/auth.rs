//! Authentication and authorisation of every request, as one layer on the router.
//!
//! - **Principals** (`collector.auth.principals`): a name, how it proves itself (a bearer
//!   token from `token`, `token_file` or `token_env`; and/or the common name of its client
//!   certificate, `cert_cn`, under mutual TLS), and what it may do: `produce`, `consume` and
//!   `groups` as lists of name patterns (`*` matches any run of characters: `web-*`), `admin`
//!   (create and delete topics; everything else too), `auto_create` (topic patterns it may
//!   create, by posting to one or with `PUT`). The old `auth_tokens` are principals with every permission.
//! - **The route table** ([`need`]): from (method, path) to the permission a request needs and
//!   the topic or group it names. Handlers know nothing of it.
//! - **The layer** ([`layer`]): 401 when the request is not authenticated (no token, a token
//!   no principal has, a certificate CN no principal has), 403 naming the principal, the
//!   missing permission and the topic or group otherwise refused. Tokens are compared in
//!   constant time and never logged (`Secret`'s `Debug` prints `***`).
//!
//! | route | needs |
//! | --- | --- |
//! | `GET /healthz`, `GET /`, `GET /console` | nothing (the console's data comes from the API) |
//! | `GET /metrics` | a principal, unless `auth.metrics_public: true` |
//! | `POST /v1/topics/{t}/records` | `produce` on t (and `auto_create` on t or `admin` when t does not exist yet) |
//! | `POST /v1/logs` (OTLP) | the same on each topic the body's records go to (checked by the handler, which knows them; 403 for the whole request) |
//! | `GET /v1/topics/{t}/partitions/{p}/records`, `.../offset` | `consume` on t |
//! | `GET /v1/topics/{t}` | `produce` or `consume` on t |
//! | `PUT /v1/topics/{t}` | `auto_create` on t (or `admin`) |
//! | `DELETE /v1/topics/{t}` | `admin` |
//! | `POST /v1/groups/{g}/join` | `groups` on g and `consume` on each topic of the body |
//! | `POST /v1/groups/{g}/commit` | `groups` on g and `consume` on each topic of the body |
//! | `POST /v1/groups/{g}/heartbeat`, `leave`, `GET .../offsets` | `groups` on g |
//! | `GET`, `PUT /v1/groups/{g}/checkpoints/{t}/{p}` | `groups` on g and `consume` on t |
//! | `GET /v1/agents` (every host and file path) | `admin` |
//! | `PUT /v1/agents/{id}` (an agent's heartbeat), `GET /v1/collectors` | a principal |
//! | `GET /v1/topics`, `GET /v1/groups`, any other route | a principal |

use crate::api::AppState;
use crate::config::CollectorConfig;
use crate::tls::PeerIdentity;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_core::problems::Problems;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// A string that is never printed: `Debug` shows `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// `collector.auth:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Who may connect and what each may do. Empty (and no `auth_tokens`): no authentication.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Serve `/metrics` without a principal (it names every topic and group).
    #[serde(default)]
    pub metrics_public: bool,
}

/// One principal as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The common name of the client certificate that is this principal (mutual TLS).
    #[serde(default)]
    pub cert_cn: Option<String>,
    /// Topic patterns it may post to.
    #[serde(default)]
    pub produce: Vec<String>,
    /// Topic patterns it may fetch from (and join groups on).
    #[serde(default)]
    pub consume: Vec<String>,
    /// Consumer-group patterns it may join, commit and checkpoint in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Topic patterns it may create: by posting to one (when `auto_create_topics` is on) or
    /// with `PUT /v1/topics/{t}`.
    #[serde(default)]
    pub auto_create: Vec<String>,
    /// Create and delete topics, and everything else.
    #[serde(default)]
    pub admin: bool,
}

/// A principal ready to authenticate and authorise.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    token: Option<Secret>,
    cert_cn: Option<String>,
    produce: Vec<String>,
    consume: Vec<String>,
    groups: Vec<String>,
    auto_create: Vec<String>,
    admin: bool,
}

/// What a principal may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Produce,
    Consume,
    Groups,
    AutoCreate,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Produce => "produce",
            Permission::Consume => "consume",
            Permission::Groups => "groups",
            Permission::AutoCreate => "auto_create",
            Permission::Admin => "admin",
        }
    }
}

impl Principal {
    /// Whether it may `perm` on `name` (a topic, or a group for [`Permission::Groups`]).
    pub fn may(&self, perm: Permission, name: &str) -> bool {
        if self.admin {
            return true;
        }
        let patterns = match perm {
            Permission::Produce => &self.produce,
            Permission::Consume => &self.consume,
            Permission::Groups => &self.groups,
            Permission::AutoCreate => &self.auto_create,
            Permission::Admin => return false,
        };
        patterns.iter().any(|p| pattern_matches(p, name))
    }

    /// Whether it may produce to some topic (an idempotent producer id is for writing).
    pub fn may_produce_anything(&self) -> bool {
        self.admin || !self.produce.is_empty()
    }

    /// Its token's bytes (a SCRAM exchange derives its keys from them).
    pub(crate) fn token_bytes(&self) -> Option<&[u8]> {
        self.token.as_ref().map(|t| t.0.as_bytes())
    }

    fn everything(name: String, token: Secret) -> Self {
        Principal {
            name,
            token: Some(token),
            cert_cn: None,
            produce: Vec::new(),
            consume: Vec::new(),
            groups: Vec::new(),
            auto_create: Vec::new(),
            admin: true,
        }
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (none included)
/// and everything else matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Greedy matching with backtracking to the last star: linear in practice, never recursive.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Equality of two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The principals in force, and whether authentication is on at all.
#[derive(Debug, Default)]
pub struct Authorizer {
    principals: Vec<Principal>,
    metrics_public: bool,
}

impl Authorizer {
    /// Resolves tokens (files, environment) from the config. Every problem is recorded in `p`
    /// (paths relative to `collector:`); the principals that resolved are kept.
    pub fn resolve(config: &CollectorConfig, p: &mut Problems) -> Self {
        let mut principals = Vec::new();
        for (i, t) in config.auth_tokens.iter().enumerate() {
            if t.0.trim().is_empty() {
                p.add(&format!("auth_tokens[{i}]"), "the token is empty");
                continue;
            }
            principals.push(Principal::everything(
                format!("auth_tokens[{i}]"),
                Secret(t.0.trim().to_owned()),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut cns = std::collections::HashSet::new();
        for (i, pc) in config.auth.principals.iter().enumerate() {
            let at = format!("auth.principals[{i}]");
            p.nested(&at, |p| {
                if pc.name.trim().is_empty() {
                    p.add("name", "a principal needs a name");
                } else if !names.insert(pc.name.clone()) {
                    p.add("name", format!("two principals are named {:?}", pc.name));
                }
                let token = resolve_token(pc, p);
                if let Some(cn) = &pc.cert_cn {
                    if !cns.insert(cn.clone()) {
                        p.add("cert_cn", format!("two principals have cert_cn {cn:?}"));
                    }
                    if config.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                        p.add_hint(
                            "cert_cn",
                            "cert_cn needs client certificates",
                            "set collector.tls.client_ca (mutual TLS)",
                        );
                    }
                }
                let no_token_given =
                    pc.token.is_none() && pc.token_file.is_none() && pc.token_env.is_none();
                if token.is_none() && no_token_given && pc.cert_cn.is_none() {
                    p.add_hint(
                        "name",
                        format!("principal {:?} has no way to authenticate", pc.name),
                        "give it a token, token_file or token_env, or a cert_cn",
                    );
                }
                for (key, list) in [
                    ("produce", &pc.produce),
                    ("consume", &pc.consume),
                    ("groups", &pc.groups),
                    ("auto_create", &pc.auto_create),
                ] {
                    for (j, pat) in list.iter().enumerate() {
                        if pat.is_empty() {
                            p.add(&format!("{key}[{j}]"), "an empty pattern matches nothing");
                        }
                    }
                }
                principals.push(Principal {
                    name: pc.name.clone(),
                    token,
                    cert_cn: pc.cert_cn.clone(),
                    produce: pc.produce.clone(),
                    consume: pc.consume.clone(),
                    groups: pc.groups.clone(),
                    auto_create: pc.auto_create.clone(),
                    admin: pc.admin,
                });
            });
        }
        let mut seen: Vec<&Secret> = Vec::new();
        for pr in &principals {
            if let Some(t) = &pr.token {
                if seen.contains(&t) {
                    p.add(
                        "auth.principals",
                        format!(
                            "principal {:?} has the same token as another principal (or auth_tokens)",
                            pr.name
                        ),
                    );
                }
                seen.push(t);
            }
        }
        Authorizer {
            principals,
            metrics_public: config.auth.metrics_public,
        }
    }

    /// Whether any request needs a principal.
    pub fn enabled(&self) -> bool {
        !self.principals.is_empty()
    }

    /// The principal named `name` whose token is `password` (SASL PLAIN on the Kafka
    /// listener). Every principal's token is compared, in constant time.
    pub fn by_password(&self, name: &str, password: &[u8]) -> Option<&Principal> {
        let mut found = None;
        for p in &self.principals {
            if let Some(t) = &p.token
                && constant_time_eq(t.0.as_bytes(), password)
                && p.name == name
                && found.is_none()
            {
                found = Some(p);
            }
        }
        found
    }

    /// The principal named `name`, if it has a token (SASL SCRAM proves the token without
    /// sending it).
    pub fn by_name(&self, name: &str) -> Option<&Principal> {
        self.principals
            .iter()
            .find(|p| p.name == name && p.token.is_some())
    }

    /// The principal whose `cert_cn` is `cn` (a verified client certificate).
    pub fn by_cert_cn(&self, cn: &str) -> Option<&Principal> {
        self.principals
            .iter()
            .find(|p| p.cert_cn.as_deref() == Some(cn))
    }

    /// The principal a request is: by its bearer token if it sent one, else by its client
    /// certificate's CN.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<&PeerIdentity>,
    ) -> Result<&Principal, Denied> {
        if let Some(value) = authorization {
            let token = value
                .strip_prefix(b"Bearer ")
                .ok_or(Denied::Unauthenticated(
                    "the Authorization header is not `Bearer <token>`",
                ))?;
            let token = token.trim_ascii();
            // Every principal is compared, so the time taken does not say which one matched.
            let mut found = None;
            for p in &self.principals {
                if let Some(t) = &p.token
                    && constant_time_eq(t.0.as_bytes(), token)
                    && found.is_none()
                {
                    found = Some(p);
                }
            }
            return found.ok_or(Denied::Unauthenticated("token not accepted"));
        }
        if let Some(cn) = peer.and_then(|p| p.cert_cn.as_deref()) {
            return self
                .principals
                .iter()
                .find(|p| p.cert_cn.as_deref() == Some(cn))
                .ok_or(Denied::Unauthenticated(
                    "the client certificate's CN is no principal's cert_cn",
                ));
        }
        Err(Denied::Unauthenticated(
            "missing `Authorization: Bearer <token>` (or a client certificate of a principal)",
        ))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no principal.
    Unauthenticated(&'static str),
    /// 403: the principal lacks `permission` on `on` (a topic or group, `kind` says which).
    Forbidden {
        principal: String,
        permission: Permission,
        kind: &'static str,
        on: Option<String>,
    },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Unauthenticated(why) => write!(f, "not authenticated: {why}"),
            Denied::Forbidden {
                principal,
                permission,
                kind,
                on,
            } => {
                write!(f, "principal {principal:?} may not {}", permission.as_str())?;
                match on {
                    Some(name) => write!(f, " on {kind} {name:?}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Denied::Unauthenticated(why) => {
                metrics::counter!("ferry_collector_auth_denied_total", "reason" => "unauthenticated")
                    .increment(1);
                (
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": format!("not authenticated: {why}") }),
                )
            }
            Denied::Forbidden {
                principal,
                permission,
                kind,
                on,
            } => {
                metrics::counter!("ferry_collector_auth_denied_total", "reason" => "forbidden")
                    .increment(1);
                let what = match on {
                    Some(name) => format!(" on {kind} {name:?}"),
                    None => String::new(),
                };
                tracing::debug!(principal, permission = permission.as_str(), %what, "request forbidden");
                let mut body = serde_json::Map::new();
                body.insert(
                    "error".into(),
                    format!(
                        "principal {principal:?} lacks the {} permission{what}",
                        permission.as_str()
                    )
                    .into(),
                );
                body.insert("principal".into(), principal.as_str().into());
                body.insert("permission".into(), permission.as_str().into());
                if let Some(name) = on {
                    body.insert((*kind).into(), name.as_str().into());
                }
                (StatusCode::FORBIDDEN, serde_json::Value::Object(body))
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// What a request needs, from the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Open to anyone.
    Open,
    /// `/metrics`: a principal unless `metrics_public`.
    Metrics,
    /// Any principal.
    Principal,
    Produce(String),
    Consume(String),
    /// Produce or consume on the topic.
    Describe(String),
    /// `produce` on each topic the body's records go to, which only the handler knows (OTLP):
    /// it gets the [`Principal`] as an extension and calls [`may_produce`].
    ProduceFromBody,
    Admin,
    /// `auto_create` on the topic (or `admin`): creating a topic (a processor creates its
    /// repartition topic so).
    Create(String),
    /// `groups` on the group, and `consume` on the topic if one is named.
    Group {
        group: String,
        topic: Option<String>,
    },
    /// `groups` on the group and `consume` on each topic its JSON body names.
    GroupWithBody(String),
}

/// The route table: what `method path` needs.
pub fn need(method: &Method, path: &str) -> Need {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method;
    let s = |x: &str| x.to_owned();
    match segs.as_slice() {
        ["healthz"] | [""] | ["console"] => Need::Open,
        ["metrics"] => Need::Metrics,
        ["v1", "topics", t, "records"] if m == Method::POST => Need::Produce(s(t)),
        ["v1", "logs"] if m == Method::POST => Need::ProduceFromBody,
        ["v1", "topics", t, "partitions", _, "records" | "offset"] if m == Method::GET => {
            Need::Consume(s(t))
        }
        ["v1", "topics", t] if m == Method::GET => Need::Describe(s(t)),
        ["v1", "topics", t] if m == Method::PUT => Need::Create(s(t)),
        ["v1", "topics", _] if m == Method::DELETE => Need::Admin,
        // The registry shows every host's name and file paths: operators only. Reporting to
        // it (`PUT /v1/agents/{id}`) and `GET /v1/collectors` need any principal (an agent's).
        ["v1", "agents"] if m == Method::GET => Need::Admin,
        ["v1", "groups", g, "join" | "commit"] if m == Method::POST => Need::GroupWithBody(s(g)),
        ["v1", "groups", g, "heartbeat" | "leave"] if m == Method::POST => Need::Group {
            group: s(g),
            topic: None,
        },
        ["v1", "groups", g, "offsets"] if m == Method::GET => Need::Group {
            group: s(g),
            topic: None,
        },
        ["v1", "groups", g, "checkpoints", t, _] if m == Method::GET || m == Method::PUT => {
            Need::Group {
                group: s(g),
                topic: Some(s(t)),
            }
        }
        _ => Need::Principal,
    }
}

/// Whether `principal` may post to `topic`: `produce` on it, and `auto_create` (or `admin`)
/// when the post would create it.
pub fn may_produce(state: &AppState, principal: &Principal, topic: &str) -> Result<(), Denied> {
    require(principal, Permission::Produce, "topic", topic).and_then(|()| {
        if would_create(state, topic) && !principal.may(Permission::AutoCreate, topic) {
            Err(forbid(principal, Permission::AutoCreate, "topic", topic))
        } else {
            Ok(())
        }
    })
}

/// Whether posting to `topic` would create it.
fn would_create(state: &AppState, topic: &str) -> bool {
    state.config.auto_create_topics
        && state
            .ingest
            .store()
            .is_some_and(|s| s.topic_partitions(topic).is_none())
}

fn forbid(p: &Principal, permission: Permission, kind: &'static str, on: &str) -> Denied {
    Denied::Forbidden {
        principal: p.name.clone(),
        permission,
        kind,
        on: Some(on.to_owned()),
    }
}

fn require(p: &Principal, perm: Permission, kind: &'static str, on: &str) -> Result<(), Denied> {
    if p.may(perm, on) {
        Ok(())
    } else {
        Err(forbid(p, perm, kind, on))
    }
}

/// The topics a join or commit body names (`topics`, or `offsets[].topic`); `None` when it is
/// not such JSON (the handler then answers 400).
fn body_topics(body: &[u8]) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Offset {
        topic: String,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        offsets: Vec<Offset>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    Some(
        b.topics
            .into_iter()
            .chain(b.offsets.into_iter().map(|o| o.topic))
            .collect(),
    )
}

/// The layer: authenticates, looks the route up, authorises, then runs the handler.
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let auth = &state.auth;
    if !auth.enabled() {
        return next.run(req).await;
    }
    let need = need(req.method(), req.uri().path());
    match &need {
        Need::Open => return next.run(req).await,
        Need::Metrics if auth.metrics_public => return next.run(req).await,
        _ => {}
    }
    let principal = match auth.authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        req.extensions().get::<PeerIdentity>(),
    ) {
        Ok(p) => p,
        Err(d) => return d.into_response(),
    };
    let checked = match &need {
        Need::Open | Need::Metrics | Need::Principal => Ok(()),
        Need::Produce(t) => may_produce(&state, principal, t),
        Need::ProduceFromBody => {
            let mut req = req;
            req.extensions_mut()
                .insert(AuthenticatedAs(principal.name.clone()));
            req.extensions_mut().insert(principal.clone());
            return next.run(req).await;
        }
        Need::Consume(t) => require(principal, Permission::Consume, "topic", t),
        Need::Create(t) => require(principal, Permission::AutoCreate, "topic", t),
        Need::Describe(t) => {
            if principal.may(Permission::Consume, t) {
                Ok(())
            } else {
                require(principal, Permission::Produce, "topic", t)
            }
        }
        Need::Admin => {
            if principal.admin {
                Ok(())
            } else {
                // A topic route names its topic; the registry's listing names none.
                match req.uri().path().strip_prefix("/v1/topics/") {
                    Some(topic) => Err(forbid(principal, Permission::Admin, "topic", topic)),
                    None => Err(Denied::Forbidden {
                        principal: principal.name.clone(),
                        permission: Permission::Admin,
                        kind: "topic",
                        on: None,
                    }),
                }
            }
        }
        Need::Group { group, topic } => require(principal, Permission::Groups, "group", group)
            .and_then(|()| match topic {
                Some(t) => require(principal, Permission::Consume, "topic", t),
                None => Ok(()),
            }),
        Need::GroupWithBody(group) => {
            if let Err(d) = require(principal, Permission::Groups, "group", group) {
                return d.into_response();
            }
            // The body is small (a JSON route, bounded by MAX_JSON_BODY_BYTES): read it to see
            // its topics, then hand it on to the handler.
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, crate::api::MAX_JSON_BODY_BYTES).await {
                Ok(b) => b,
                Err(_) => {
                    return crate::api::ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "JSON body is over its limit of {} bytes",
                            crate::api::MAX_JSON_BODY_BYTES
                        ),
                    )
                    .into_response();
                }
            };
            for t in body_topics(&bytes).unwrap_or_default() {
                if let Err(d) = require(principal, Permission::Consume, "topic", &t) {
                    return d.into_response();
                }
            }
            let mut req = Request::from_parts(parts, Body::from(bytes));
            req.extensions_mut()
                .insert(AuthenticatedAs(principal.name.clone()));
            return next.run(req).await;
        }
    };
    match checked {
        Ok(()) => {
            let mut req = req;
            req.extensions_mut()
                .insert(AuthenticatedAs(principal.name.clone()));
            next.run(req).await
        }
        Err(d) => d.into_response(),
    }
}

/// The principal a request was authenticated as (an extension, for logs).
#[derive(Debug, Clone)]
pub struct AuthenticatedAs(pub String);

fn resolve_token(pc: &PrincipalConfig, p: &mut Problems) -> Option<Secret> {
    let given = [
        pc.token.is_some(),
        pc.token_file.is_some(),
        pc.token_env.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given > 1 {
        p.add(
            "token",
            "give one of token, token_file and token_env, not several",
        );
        return None;
    }
    let raw = if let Some(t) = &pc.token {
        t.0.clone()
    } else if let Some(f) = &pc.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                p.add("token_file", format!("cannot read {}: {e}", f.display()));
                return None;
            }
        }
    } else if let Some(var) = &pc.token_env {
        match std::env::var(var) {
            Ok(t) => t,
            Err(_) => {
                p.add(
                    "token_env",
                    format!("the environment variable {var} is not set (or not UTF-8)"),
                );
                return None;
            }
        }
    } else {
        return None;
    };
    let t = raw.trim();
    if t.is_empty() {
        p.add(
            if pc.token.is_some() {
                "token"
            } else if pc.token_file.is_some() {
                "token_file"
            } else {
                "token_env"
            },
            "the token is empty",
        );
        return None;
    }
    Some(Secret(t.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("web-*", "web-1"));
        assert!(pattern_matches("web-*", "web-"));
        assert!(!pattern_matches("web-*", "api-1"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("app", "app"));
        assert!(!pattern_matches("app", "app2"));
        assert!(!pattern_matches("", "x"));
    }

    /// A naive recursive matcher as the model.
    fn model(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| model(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && model(rest, &n[1..]),
        }
    }

    proptest! {
        #[test]
        fn patterns_match_the_model(p in "[ab*]{0,8}", n in "[ab]{0,10}") {
            prop_assert_eq!(pattern_matches(&p, &n), model(p.as_bytes(), n.as_bytes()));
        }

        #[test]
        fn constant_time_eq_is_eq(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }
    }

    #[test]
    fn route_table() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(need(&g, "/healthz"), Need::Open);
        assert_eq!(need(&g, "/metrics"), Need::Metrics);
        assert_eq!(
            need(&p, "/v1/topics/app/records"),
            Need::Produce("app".into())
        );
        assert_eq!(
            need(&g, "/v1/topics/app/partitions/0/records"),
            Need::Consume("app".into())
        );
        assert_eq!(
            need(&Method::PUT, "/v1/topics/app"),
            Need::Create("app".into())
        );
        assert_eq!(need(&Method::POST, "/v1/logs"), Need::ProduceFromBody);
        assert_eq!(need(&g, "/v1/agents"), Need::Admin);
        assert_eq!(need(&Method::PUT, "/v1/agents/web-1"), Need::Principal);
        assert_eq!(need(&g, "/v1/collectors"), Need::Principal);
        assert_eq!(need(&Method::DELETE, "/v1/topics/app"), Need::Admin);
        assert_eq!(
            need(&p, "/v1/groups/g/join"),
            Need::GroupWithBody("g".into())
        );
        assert_eq!(
            need(&Method::PUT, "/v1/groups/g/checkpoints/app/3"),
            Need::Group {
                group: "g".into(),
                topic: Some("app".into())
            }
        );
        assert_eq!(need(&g, "/v1/topics"), Need::Principal);
        assert_eq!(need(&g, "/v1/nonsense"), Need::Principal);
    }

    #[test]
    fn secrets_are_not_printed() {
        let pc = PrincipalConfig {
            name: "web".into(),
            token: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{pc:?}").contains("hunter2"));
    }
}
