//! The Kafka protocol on the embedded store (`collector.kafka_listen`, `--kafka-listen`).
//!
//! Any Kafka client (librdkafka, the Java client, kafka-python, kcat) produces to and consumes
//! from the same topics, records, groups and committed offsets as the HTTP API; docs/kafka.md
//! has the mapping and what is supported. The messages' codec is the `kafka-protocol` crate;
//! the broker is ours:
//!
//! - this module: the listener, one task per connection reading length-prefixed frames,
//!   answering each request in order (as Kafka does: one request of a connection at a time),
//!   and [`Broker::dispatch`], which routes a request to its handler by API key;
//! - [`produce`]: Produce → ferry batches through the collector's ingest path (routing,
//!   admission, limits, fsync before the answer), idempotent producers on the store's origin
//!   dedup;
//! - [`fetch`]: Fetch and ListOffsets, stored batches re-encoded as Kafka record batches;
//! - [`admin`]: ApiVersions, Metadata, FindCoordinator, CreateTopics, DeleteTopics,
//!   InitProducerId, OffsetCommit, OffsetFetch, ListGroups;
//! - [`groups`]: the classic consumer-group coordinator (JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup, DescribeGroups);
//! - [`records`]: Kafka records ↔ ferry records.
//!
//! A request that cannot be understood is answered, never silently dropped: an unknown API
//! key or version gets `UNSUPPORTED_VERSION` (ApiVersions as Kafka answers it, with the list
//! of what is supported). Only a frame that cannot be framed (a negative or oversized length,
//! a hang-up mid-frame) closes its connection, as in Kafka, since nothing after it can be
//! read; the listener and every other connection go on.

pub mod admin;
pub mod fetch;
pub mod groups;
pub mod produce;
pub mod records;
pub mod sasl;

use crate::api::AppState;
use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_core::shutdown::Shutdown;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The one broker id this listener is.
pub const NODE_ID: i32 = 0;
/// The cluster id Metadata reports.
pub const CLUSTER_ID: &str = "ferry";
/// Time a connection has to send the rest of a frame once its length arrived.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Error codes used here (Kafka's numbering).
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const INVALID_RECORD: i16 = 87;
    pub const THROTTLING_QUOTA_EXCEEDED: i16 = 89;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
}

/// The APIs served and their versions (min, max), as ApiVersions reports them.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 5),
    (ApiKey::DeleteTopics, 0, 5),
    (ApiKey::InitProducerId, 0, 4),
    // v1 is followed by SaslAuthenticate requests; v0 by raw SASL tokens (length-prefixed, no
    // request header), as clients of Kafka before 1.0 send them (`read_raw_sasl`).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// Whether `version` of `key` is served.
fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, lo, hi)| k == key && (lo..=hi).contains(&version))
}

/// What every handler shares.
pub struct Broker {
    pub state: Arc<AppState>,
    /// Host and port Metadata and FindCoordinator advertise.
    pub advertised: (String, i32),
    pub groups: Arc<groups::GroupCoordinator>,
    /// Producer ids handed out by InitProducerId: unique across restarts (they start from
    /// the clock, see [`admin::first_producer_id`]), so an old producer's dedup state never
    /// meets a new producer.
    pub next_producer_id: std::sync::atomic::AtomicI64,
    /// Largest request frame.
    pub max_frame_bytes: usize,
    /// Ends long polls early when the collector stops.
    pub shutdown: Shutdown,
    /// Whether a connection must authenticate (SASL, or a client certificate of a principal)
    /// before anything but ApiVersions and SASL.
    pub auth_required: bool,
    /// Derives SCRAM salts.
    pub salt: sasl::SaltSecret,
}

/// One client connection's state.
pub struct Conn {
    /// The peer's address, as JoinGroup reports it.
    pub host: String,
    /// Who it authenticated as (`None`: not yet, or no authentication is configured).
    pub principal: std::sync::Mutex<Option<crate::auth::Principal>>,
    exchange: std::sync::Mutex<sasl::Exchange>,
    /// A SaslHandshake v0 chose a mechanism: the next frames are raw SASL tokens.
    raw_sasl: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn new(host: String, principal: Option<crate::auth::Principal>) -> Self {
        Self {
            host,
            principal: std::sync::Mutex::new(principal),
            exchange: std::sync::Mutex::new(sasl::Exchange::Start),
            raw_sasl: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn who(&self) -> Option<crate::auth::Principal> {
        self.principal.lock().ok().and_then(|p| p.clone())
    }
}

/// Whether `who` may `perm` on `name`; `None` is a connection of a collector without
/// authentication, which may do everything.
pub fn allowed(
    who: Option<&crate::auth::Principal>,
    perm: crate::auth::Permission,
    name: &str,
) -> bool {
    who.is_none_or(|p| p.may(perm, name))
}

/// The bound listener, before it serves.
pub struct KafkaListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl KafkaListener {
    pub async fn bind(addr: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the Kafka listener on {addr}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` fires; then stops accepting, lets every connection finish the
    /// request it is answering, and returns.
    pub async fn run(
        self,
        state: Arc<AppState>,
        tls: Option<Arc<crate::tls::TlsState>>,
        shutdown: Shutdown,
    ) {
        let advertised = advertised(&state, self.addr);
        let limits = &state.config.limits;
        let max_frame_bytes = limits
            .max_body_bytes
            .as_usize()
            .max(limits.max_fetch_bytes.as_usize())
            .saturating_add(1 << 20);
        let max_connections = limits.max_connections.max(1) as usize;
        let auth_required = state.auth.enabled();
        let handshake_timeout = limits.header_read_timeout.get();
        let coordinator = groups::GroupCoordinator::new(groups::GroupSettings::default());
        let _ = state.kafka_groups.set(coordinator.clone());
        let broker = Arc::new(Broker {
            groups: coordinator,
            state,
            advertised,
            next_producer_id: std::sync::atomic::AtomicI64::new(admin::first_producer_id()),
            max_frame_bytes,
            shutdown: shutdown.clone(),
            auth_required,
            salt: sasl::SaltSecret::default(),
        });
        tracing::info!(addr = %self.addr, advertised = %format!("{}:{}", broker.advertised.0, broker.advertised.1), "kafka listener serving the embedded store");
        let connections = Arc::new(Semaphore::new(max_connections));
        let mut tasks = JoinSet::new();
        let ticker = {
            let groups = broker.groups.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tick.tick() => groups.tick(tokio::time::Instant::now()),
                    }
                }
            })
        };
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait() => break,
                a = self.listener.accept() => a,
            };
            while tasks.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    metrics::counter!("ferry_kafka_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "kafka listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                metrics::counter!("ferry_kafka_connections_refused_total").increment(1);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let broker = broker.clone();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                let _permit = permit;
                metrics::gauge!("ferry_kafka_connections").increment(1.0);
                let host = peer.ip().to_string();
                let r = match tls {
                    None => {
                        serve_connection(&broker, stream, Conn::new(host, None), &shutdown).await
                    }
                    Some(tls) => {
                        let accepted =
                            tokio::time::timeout(handshake_timeout, tls.acceptor().accept(stream))
                                .await;
                        match accepted {
                            Ok(Ok(s)) => {
                                // A verified client certificate of a principal authenticates.
                                let principal = s
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| crate::tls::common_name(c))
                                    .and_then(|cn| broker.state.auth.by_cert_cn(&cn).cloned());
                                serve_connection(&broker, s, Conn::new(host, principal), &shutdown)
                                    .await
                            }
                            Ok(Err(e)) => Err(ConnEnd::Io(e)),
                            Err(_) => Err(ConnEnd::Protocol(
                                "TLS handshake not completed in time".into(),
                            )),
                        }
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "kafka connection closed");
                }
                metrics::gauge!("ferry_kafka_connections").decrement(1.0);
            });
        }
        drop(self.listener);
        while tasks.join_next().await.is_some() {}
        let _ = ticker.await;
    }
}

/// The members of every Kafka group that has some, as `ferry groups` shows members: id,
/// subscribed topics and assigned partitions, read from the consumer protocol's metadata and
/// assignment (a member of another protocol type shows its id alone).
pub fn member_views(
    groups: &groups::GroupCoordinator,
) -> Vec<(String, Vec<ferry_core::client::MemberView>)> {
    use kafka_protocol::messages::{
        ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest, GroupId,
    };
    let names: Vec<GroupId> = groups
        .list()
        .into_iter()
        .map(|(g, _, _)| GroupId(kafka_protocol::protocol::StrBytes::from_string(g)))
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    // A consumer protocol message: its version, then the message of that version.
    fn versioned<T: Decodable>(b: &Bytes) -> Option<T> {
        let mut b = b.clone();
        if b.len() < 2 {
            return None;
        }
        let v = b.get_i16();
        T::decode(&mut b, v).ok()
    }
    let described = groups.describe(DescribeGroupsRequest::default().with_groups(names), 5);
    described
        .groups
        .into_iter()
        .map(|g| {
            let members = g
                .members
                .into_iter()
                .map(|m| {
                    let topics = versioned::<ConsumerProtocolSubscription>(&m.member_metadata)
                        .map(|s| s.topics.iter().map(|t| t.as_str().to_owned()).collect())
                        .unwrap_or_default();
                    let partitions = versioned::<ConsumerProtocolAssignment>(&m.member_assignment)
                        .map(|a| {
                            a.assigned_partitions
                                .iter()
                                .flat_map(|tp| {
                                    let t = tp.topic.0.as_str().to_owned();
                                    tp.partitions.iter().filter_map(move |&p| {
                                        Some((t.clone(), u32::try_from(p).ok()?))
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    ferry_core::client::MemberView {
                        member_id: m.member_id.as_str().to_owned(),
                        topics,
                        partitions,
                    }
                })
                .collect();
            (g.group_id.0.as_str().to_owned(), members)
        })
        .collect()
}

/// Host and port to advertise: `kafka_advertise`, else the bound address (an unspecified
/// bind address such as 0.0.0.0 advertises the host name, which clients elsewhere can reach).
fn advertised(state: &AppState, bound: SocketAddr) -> (String, i32) {
    if let Some((h, p)) = state
        .config
        .kafka_advertise
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        && let Ok(port) = p.parse::<u16>()
    {
        return (h.trim_matches(['[', ']']).to_owned(), i32::from(port));
    }
    let host = if bound.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else {
        bound.ip().to_string()
    };
    (host, i32::from(bound.port()))
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Requests of one connection in flight at once (idempotent produces; see
/// [`Prepared::may_overlap`]).
const PIPELINE: u32 = 8;

/// A request in flight: its running task, and the pipeline room it holds until its response
/// is written.
type InFlight = (
    tokio::task::JoinHandle<Option<Bytes>>,
    tokio::sync::OwnedSemaphorePermit,
);

/// Reads frames and answers them in order until the client hangs up, a frame cannot be
/// read, or the listener shuts down. Reading goes on while earlier requests run (so an
/// idempotent producer's in-flight batches share a group commit); a writer task sends the
/// responses in request order.
async fn serve_connection<S>(
    broker: &Arc<Broker>,
    stream: S,
    conn: Conn,
    shutdown: &Shutdown,
) -> Result<(), ConnEnd>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let conn = Arc::new(conn);
    let room = Arc::new(Semaphore::new(PIPELINE as usize));
    let (tx, rx) = tokio::sync::mpsc::channel::<InFlight>(PIPELINE as usize);
    let writer = tokio::spawn(write_responses(wr, rx));
    let read = read_requests(broker, &mut rd, &conn, &room, &tx, shutdown).await;
    // Responses to what was read still go out, in order, before the connection closes.
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    read?;
    written.map_err(ConnEnd::from)
}

async fn read_requests<R: tokio::io::AsyncRead + Unpin>(
    broker: &Arc<Broker>,
    rd: &mut BufReader<R>,
    conn: &Arc<Conn>,
    room: &Arc<Semaphore>,
    tx: &tokio::sync::mpsc::Sender<InFlight>,
    shutdown: &Shutdown,
) -> Result<(), ConnEnd> {
    // A SaslHandshake v0 was read: once it is answered, the raw tokens it announces may follow.
    let mut handshake_v0 = false;
    loop {
        if std::mem::take(&mut handshake_v0) {
            // Every earlier request answered (they hold the whole pipeline before
            // authentication), the handshake's outcome is known.
            let Ok(all) = room.clone().acquire_many_owned(PIPELINE).await else {
                return Ok(());
            };
            drop(all);
            if conn
                .raw_sasl
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                read_raw_sasl(broker, rd, conn, room, tx, shutdown).await?;
            }
        }
        let len = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            r = rd.read_i32() => match r {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        if len < 8 || len as usize > broker.max_frame_bytes {
            metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "length").increment(1);
            tracing::warn!(
                len,
                max = broker.max_frame_bytes,
                "kafka listener: frame length out of bounds; connection closed"
            );
            // The header may still be readable: answer it, then close (the rest of the frame
            // is not read, so nothing after it could be framed).
            if len >= 8 {
                let mut head = [0u8; 8];
                if tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut head))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                    let answer = bare_error(correlation, code::MESSAGE_TOO_LARGE);
                    queue_answer(room, tx, answer).await;
                }
            }
            return Err(ConnEnd::Protocol(format!("frame length {len}")));
        }
        let mut frame = BytesMut::zeroed(len as usize);
        match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut frame)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "truncated")
                    .increment(1);
                return Err(e.into());
            }
            Err(_) => {
                metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "timeout")
                    .increment(1);
                return Err(ConnEnd::Protocol("frame not completed in time".into()));
            }
        }
        let prepared = broker.prepare(frame.freeze());
        handshake_v0 = matches!(
            prepared,
            Prepared::Request {
                key: ApiKey::SaslHandshake,
                version: 0,
                ..
            }
        );
        let unauthenticated = broker.auth_required && conn.who().is_none();
        // A request that runs alone takes the whole pipeline: it starts once every earlier
        // request was answered, and later ones wait for it. So does every request before the
        // connection authenticated (its SASL exchange must be done first).
        let want = if prepared.may_overlap() && !unauthenticated {
            1
        } else {
            PIPELINE
        };
        let Ok(permit) = room.clone().acquire_many_owned(want).await else {
            return Ok(());
        };
        if broker.auth_required
            && conn.who().is_none()
            && let Some(correlation) = prepared.needs_principal()
        {
            drop(permit);
            metrics::counter!("ferry_kafka_unauthenticated_requests_total").increment(1);
            tracing::info!(host = %conn.host, "kafka listener: request before authentication; connection closed");
            let answer = bare_error(correlation, code::SASL_AUTHENTICATION_FAILED);
            queue_answer(room, tx, answer).await;
            return Err(ConnEnd::Protocol("request before authentication".into()));
        }
        let task = tokio::spawn(broker.clone().execute(prepared, conn.clone()));
        if tx.send((task, permit)).await.is_err() {
            // The writer stopped: the client is gone.
            return Ok(());
        }
    }
}

/// After a SaslHandshake v0: raw SASL tokens, each a length-prefixed frame without a request
/// header, each answered by a length-prefixed frame of the mechanism's reply (empty for PLAIN),
/// until the exchange is done. A failed authentication closes the connection, as Kafka does
/// (v0 has no error code to answer with).
async fn read_raw_sasl<R: tokio::io::AsyncRead + Unpin>(
    broker: &Arc<Broker>,
    rd: &mut BufReader<R>,
    conn: &Arc<Conn>,
    room: &Arc<Semaphore>,
    tx: &tokio::sync::mpsc::Sender<InFlight>,
    shutdown: &Shutdown,
) -> Result<(), ConnEnd> {
    while conn.who().is_none() {
        let len = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            r = rd.read_i32() => r?,
        };
        if len < 0 || len as usize > broker.max_frame_bytes {
            metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "length").increment(1);
            return Err(ConnEnd::Protocol(format!("raw SASL token length {len}")));
        }
        let mut token = vec![0u8; len as usize];
        match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut token)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                return Err(ConnEnd::Protocol(
                    "raw SASL token not completed in time".into(),
                ));
            }
        }
        let reply = broker
            .sasl_step(conn, &token)
            .map_err(|e| ConnEnd::Protocol(format!("SASL authentication failed: {e}")))?;
        queue_answer(room, tx, Bytes::from(reply)).await;
    }
    Ok(())
}

/// Queues an answer behind the connection's other responses (the last one, where the
/// connection closes after it).
async fn queue_answer(
    room: &Arc<Semaphore>,
    tx: &tokio::sync::mpsc::Sender<InFlight>,
    answer: Bytes,
) {
    if let Ok(permit) = room.clone().acquire_owned().await {
        let _ = tx
            .send((tokio::spawn(async move { Some(answer) }), permit))
            .await;
    }
}

/// Writes each request's response, in request order, as it completes.
async fn write_responses<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: tokio::sync::mpsc::Receiver<InFlight>,
) -> std::io::Result<()> {
    while let Some((task, permit)) = rx.recv().await {
        let reply = match task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "kafka request task failed");
                None
            }
        };
        if let Some(reply) = reply {
            write_frame(&mut wr, &reply).await?;
        }
        drop(permit);
    }
    Ok(())
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_i32(body.len() as i32);
    out.extend_from_slice(body);
    wr.write_all(&out).await?;
    wr.flush().await
}

/// A response to a request nothing more can be said about: its correlation id and an error
/// code (what Kafka's clients read first of most responses).
fn bare_error(correlation_id: i32, error: i16) -> Bytes {
    let mut b = BytesMut::with_capacity(6);
    b.put_i32(correlation_id);
    b.put_i16(error);
    b.freeze()
}

impl Broker {
    /// Whether `group` has live members of the HTTP consumer API (its coordinator is not the
    /// Kafka one: a group cannot have members of both).
    fn http_members(&self, group: &str) -> bool {
        self.state
            .coordinator
            .lock()
            .is_ok_and(|c| !c.describe(group).is_empty())
    }

    /// Decodes one request frame: the request to run, or the answer it gets at once (an
    /// unknown API or version, a malformed request).
    pub fn prepare(&self, mut frame: Bytes) -> Prepared {
        let raw_key = frame.clone().get_i16();
        let version = frame.slice(2..4).get_i16();
        let correlation = frame.slice(4..8).get_i32();
        let Ok(key) = ApiKey::try_from(raw_key) else {
            metrics::counter!("ferry_kafka_unsupported_requests_total", "reason" => "api_key")
                .increment(1);
            tracing::debug!(api_key = raw_key, "kafka listener: unknown API key");
            return Prepared::Answer(Some(bare_error(correlation, code::UNSUPPORTED_VERSION)));
        };
        if !supported(key, version) {
            metrics::counter!("ferry_kafka_unsupported_requests_total", "reason" => "version")
                .increment(1);
            tracing::debug!(?key, version, "kafka listener: unsupported version");
            if key == ApiKey::ApiVersions {
                // As Kafka: an ApiVersions v0 body saying what is supported.
                return Prepared::Answer(encode(
                    correlation,
                    ApiKey::ApiVersions,
                    0,
                    &ResponseKind::ApiVersions(admin::api_versions(code::UNSUPPORTED_VERSION)),
                ));
            }
            return Prepared::Answer(Some(bare_error(correlation, code::UNSUPPORTED_VERSION)));
        }
        let header_version = key.request_header_version(version);
        let header = match RequestHeader::decode(&mut frame, header_version) {
            Ok(h) => h,
            Err(e) => {
                metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "header")
                    .increment(1);
                tracing::debug!(error = %e, "kafka listener: malformed request header");
                return Prepared::Answer(Some(bare_error(correlation, code::INVALID_REQUEST)));
            }
        };
        let request = match RequestKind::decode(key, &mut frame, version) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("ferry_kafka_bad_frames_total", "reason" => "body").increment(1);
                tracing::debug!(?key, version, error = %e, "kafka listener: malformed request");
                return Prepared::Answer(Some(bare_error(correlation, code::INVALID_REQUEST)));
            }
        };
        metrics::counter!("ferry_kafka_requests_total", "api" => api_name(key)).increment(1);
        let client_id = header
            .client_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        Prepared::Request {
            correlation,
            key,
            version,
            request: Box::new(request),
            client_id,
        }
    }

    /// Runs a prepared request: its response frame (without the length), or `None` for a
    /// request that gets no response (Produce with acks=0).
    pub async fn execute(self: Arc<Self>, prepared: Prepared, conn: Arc<Conn>) -> Option<Bytes> {
        match prepared {
            Prepared::Answer(a) => a,
            Prepared::Request {
                correlation,
                key,
                version,
                request,
                client_id,
            } => {
                let response = self.dispatch(*request, version, &client_id, &conn).await?;
                encode(correlation, key, version, &response)
            }
        }
    }

    /// Routes a decoded request to its handler, after the checks of who may send it
    /// (docs/kafka.md: the permission each API needs).
    async fn dispatch(
        self: &Arc<Self>,
        request: RequestKind,
        version: i16,
        client_id: &str,
        conn: &Arc<Conn>,
    ) -> Option<ResponseKind> {
        use crate::auth::Permission::Groups;
        let who = conn.who();
        let who = who.as_ref();
        let group_ok = |g: &str| allowed(who, Groups, g);
        Some(match request {
            RequestKind::ApiVersions(_) => {
                ResponseKind::ApiVersions(admin::api_versions(code::NONE))
            }
            RequestKind::SaslHandshake(r) => {
                ResponseKind::SaslHandshake(self.sasl_handshake(conn, r, version))
            }
            RequestKind::SaslAuthenticate(r) => {
                ResponseKind::SaslAuthenticate(self.sasl_authenticate(conn, r))
            }
            RequestKind::Metadata(r) => {
                ResponseKind::Metadata(admin::metadata(self, who, r, version))
            }
            RequestKind::Produce(r) => {
                let acks = r.acks;
                let resp = produce::produce(self, who, r, version).await;
                if acks == 0 {
                    return None;
                }
                ResponseKind::Produce(resp)
            }
            RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(self, who, r, version).await),
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(fetch::list_offsets(self, who, r, version))
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(admin::find_coordinator(self, r, version))
            }
            RequestKind::OffsetCommit(r) => {
                ResponseKind::OffsetCommit(admin::offset_commit(self, who, r, version).await)
            }
            RequestKind::OffsetFetch(r) => {
                ResponseKind::OffsetFetch(admin::offset_fetch(self, who, r, version))
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(admin::create_topics(self, who, r, version))
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(admin::delete_topics(self, who, r, version))
            }
            RequestKind::InitProducerId(r) => {
                // An idempotent producer id is for writing: any produce permission will do.
                if who.is_some_and(|p| !p.may_produce_anything()) {
                    ResponseKind::InitProducerId(
                        kafka_protocol::messages::InitProducerIdResponse::default()
                            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                            .with_producer_epoch(-1),
                    )
                } else {
                    ResponseKind::InitProducerId(admin::init_producer_id(self, r))
                }
            }
            RequestKind::ListGroups(r) => {
                ResponseKind::ListGroups(admin::list_groups(self, who, r))
            }
            RequestKind::JoinGroup(r) => {
                let group = r.group_id.0.as_str();
                ResponseKind::JoinGroup(if !group_ok(group) {
                    kafka_protocol::messages::JoinGroupResponse::default()
                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                } else if self.http_members(group) {
                    // One group, two coordinators that do not share members: refused as Kafka
                    // refuses a member of another protocol type, rather than both consuming
                    // the same partitions.
                    tracing::warn!(
                        group,
                        client_id,
                        "kafka join refused: the group has HTTP consumers (ferry groups shows them); use another group name"
                    );
                    metrics::counter!("ferry_kafka_group_joins_refused_total", "reason" => "group_has_http_members").increment(1);
                    kafka_protocol::messages::JoinGroupResponse::default()
                        .with_error_code(code::INCONSISTENT_GROUP_PROTOCOL)
                } else {
                    self.groups.join(r, version, client_id, &conn.host).await
                })
            }
            RequestKind::SyncGroup(r) => {
                ResponseKind::SyncGroup(if group_ok(r.group_id.0.as_str()) {
                    self.groups.sync(r, version).await
                } else {
                    kafka_protocol::messages::SyncGroupResponse::default()
                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                })
            }
            RequestKind::Heartbeat(r) => {
                ResponseKind::Heartbeat(if group_ok(r.group_id.0.as_str()) {
                    self.groups.heartbeat(r, version)
                } else {
                    kafka_protocol::messages::HeartbeatResponse::default()
                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                })
            }
            RequestKind::LeaveGroup(r) => {
                ResponseKind::LeaveGroup(if group_ok(r.group_id.0.as_str()) {
                    self.groups.leave(r, version)
                } else {
                    kafka_protocol::messages::LeaveGroupResponse::default()
                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                })
            }
            RequestKind::DescribeGroups(r) => {
                let mut resp = self.groups.describe(r, version);
                for g in &mut resp.groups {
                    if !group_ok(g.group_id.0.as_str()) {
                        g.error_code = code::GROUP_AUTHORIZATION_FAILED;
                        g.members.clear();
                    }
                }
                ResponseKind::DescribeGroups(resp)
            }
            other => {
                // `supported` let it through, so a handler is missing: a bug, answered cleanly.
                tracing::error!(request = ?std::mem::discriminant(&other), "kafka listener: no handler");
                return None;
            }
        })
    }

    fn sasl_handshake(
        &self,
        conn: &Conn,
        r: kafka_protocol::messages::SaslHandshakeRequest,
        version: i16,
    ) -> kafka_protocol::messages::SaslHandshakeResponse {
        let offered = sasl::MECHANISMS
            .iter()
            .map(|m| kafka_protocol::protocol::StrBytes::from_static_str(m))
            .collect();
        let resp =
            kafka_protocol::messages::SaslHandshakeResponse::default().with_mechanisms(offered);
        let Ok(mut ex) = conn.exchange.lock() else {
            return resp.with_error_code(code::ILLEGAL_SASL_STATE);
        };
        if !matches!(*ex, sasl::Exchange::Start) {
            return resp.with_error_code(code::ILLEGAL_SASL_STATE);
        }
        match sasl::Mechanism::parse(r.mechanism.as_str()) {
            Some(m) => {
                *ex = sasl::Exchange::Chosen(m);
                if version == 0 {
                    conn.raw_sasl
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                resp
            }
            None => resp.with_error_code(code::UNSUPPORTED_SASL_MECHANISM),
        }
    }

    fn sasl_authenticate(
        &self,
        conn: &Conn,
        r: kafka_protocol::messages::SaslAuthenticateRequest,
    ) -> kafka_protocol::messages::SaslAuthenticateResponse {
        use kafka_protocol::messages::SaslAuthenticateResponse;
        match self.sasl_step(conn, &r.auth_bytes) {
            Ok(reply) => SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply)),
            Err(e) => SaslAuthenticateResponse::default()
                .with_error_code(code::SASL_AUTHENTICATION_FAILED)
                .with_error_message(Some(kafka_protocol::protocol::StrBytes::from_string(e))),
        }
    }

    /// One step of the connection's SASL exchange (a SaslAuthenticate request's bytes, or a raw
    /// v0 token): the bytes to answer; the connection's principal is set once it is done.
    fn sasl_step(&self, conn: &Conn, input: &[u8]) -> Result<Vec<u8>, String> {
        let step = match conn.exchange.lock() {
            Ok(mut ex) => sasl::step(&self.state.auth, &self.salt, &mut ex, input),
            Err(_) => Err("connection state poisoned".into()),
        };
        match step {
            Ok((reply, principal)) => {
                if let Some(p) = principal {
                    tracing::info!(host = %conn.host, principal = %p.name, "kafka client authenticated");
                    metrics::counter!("ferry_kafka_authentications_total", "result" => "ok")
                        .increment(1);
                    if let Ok(mut slot) = conn.principal.lock() {
                        *slot = Some(p);
                    }
                }
                Ok(reply)
            }
            Err(e) => {
                metrics::counter!("ferry_kafka_authentications_total", "result" => "failed")
                    .increment(1);
                tracing::info!(host = %conn.host, error = %e, "kafka client authentication failed");
                Err(e)
            }
        }
    }
}

/// A request frame, decoded.
pub enum Prepared {
    /// Answered without running anything.
    Answer(Option<Bytes>),
    Request {
        correlation: i32,
        key: ApiKey,
        version: i16,
        /// Boxed: a request is large next to an answer, and one moves through a channel.
        request: Box<RequestKind>,
        client_id: String,
    },
}

impl Prepared {
    /// The correlation id of a request only an authenticated connection may send (anything
    /// but ApiVersions and SASL); `None` for the others.
    fn needs_principal(&self) -> Option<i32> {
        match self {
            Prepared::Request {
                request,
                correlation,
                ..
            } => match **request {
                RequestKind::ApiVersions(_)
                | RequestKind::SaslHandshake(_)
                | RequestKind::SaslAuthenticate(_) => None,
                _ => Some(*correlation),
            },
            // Unknown or malformed requests are answered with an error, whoever sends them.
            Prepared::Answer(_) => None,
        }
    }

    /// Whether it may run while the connection's earlier requests are still running. Only an
    /// idempotent producer's Produce may: the store keeps its batches in sequence order
    /// whatever order they arrive in (a batch waits for its predecessor), so they can share
    /// a group commit. Everything else runs alone, in order, as Kafka runs a connection's
    /// requests (a non-idempotent producer relies on that for its order; so do commits).
    fn may_overlap(&self) -> bool {
        match self {
            Prepared::Answer(_) => true,
            Prepared::Request { request, .. } => match &**request {
                RequestKind::Produce(r) => {
                    r.transactional_id.is_none() && r.acks != 0 && produce::idempotent(r)
                }
                _ => false,
            },
        }
    }
}

/// Encodes a response frame body: header, then the message.
fn encode(correlation: i32, key: ApiKey, version: i16, response: &ResponseKind) -> Option<Bytes> {
    let mut out = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation);
    let r = header
        .encode(&mut out, key.response_header_version(version))
        .and_then(|()| response.encode(&mut out, version));
    match r {
        Ok(()) => Some(out.freeze()),
        Err(e) => {
            tracing::error!(?key, version, error = %e, "kafka listener: could not encode a response");
            Some(bare_error(correlation, code::UNKNOWN_SERVER_ERROR))
        }
    }
}

/// A short label per API for metrics.
fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::ListGroups => "list_groups",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::InitProducerId => "init_producer_id",
        _ => "other",
    }
}
