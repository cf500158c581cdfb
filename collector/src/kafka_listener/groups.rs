//! The classic consumer-group coordinator of the Kafka protocol: JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup and DescribeGroups, with the semantics of Kafka's own
//! `GroupCoordinator`, so that every client's group code (librdkafka, the Java client,
//! kafka-python) runs unchanged. Partition assignment stays on the client: the coordinator only
//! gathers the members' metadata for the leader and hands the leader's assignments out.
//!
//! A group moves through Kafka's states:
//!
//! ```text
//!  Empty ─join─▶ PreparingRebalance ─all rejoined, or rebalance timeout─▶ CompletingRebalance
//!    ▲             ▲        │ no member left                                  │ leader's SyncGroup
//!    └─────────────┼────────┘                                                 ▼
//!                  └──────────── join / leave / session expiry ◀────────── Stable
//! ```
//!
//! - **Join** is a long poll, answered when the rebalance completes: every known member has
//!   rejoined (and no member sent away with MEMBER_ID_REQUIRED is still missing), or the rebalance
//!   timeout (the largest of the members') elapsed, and the members that did not rejoin are
//!   removed. The first join of an empty group waits `initial_rebalance_delay`, extended while
//!   new members keep arriving (up to the rebalance timeout), so that consumers started together
//!   share one generation. The leader's answer lists every member's metadata for the chosen
//!   protocol; followers get an empty list.
//! - **Sync**: the leader's SyncGroup carries the assignments and makes the group Stable; a
//!   follower's SyncGroup waits for it. Members that got a join answer but send no SyncGroup
//!   within the rebalance timeout are removed and the group rebalances (Kafka's pending-sync
//!   expiry), so a leader that vanishes between join and sync cannot stall the group.
//! - **Heartbeat** refreshes the session. While a rebalance is in progress it answers
//!   REBALANCE_IN_PROGRESS: that is how the members of a Stable group learn they must rejoin.
//! - **Expiry**: a member that sends nothing for its session timeout is removed and the others
//!   rebalance. A member with a JoinGroup or SyncGroup outstanding counts as alive, unless the
//!   future of that request was dropped (its connection closed).
//!
//! All state is behind one `std::sync::Mutex`, never held across an await: a waiting JoinGroup
//! or SyncGroup holds only the receiving end of a oneshot channel, and the state machine answers
//! it by sending. Time is passed into the state machine. Deadlines are driven both by the waiting
//! requests themselves and by [`GroupCoordinator::tick`], so the group makes progress even when
//! every waiting client has gone.
//!
//! Memory is bounded: [`MAX_MEMBERS_PER_GROUP`] members and pending member ids per group
//! (GROUP_MAX_SIZE_REACHED beyond, as Kafka's `group.max.size`), [`MAX_GROUPS`] groups (empty
//! ones are evicted first; COORDINATOR_NOT_AVAILABLE, which clients retry, when none is empty),
//! and [`MAX_MEMBER_METADATA_BYTES`] of protocol metadata per member and of assignment per
//! member (INVALID_REQUEST beyond: Kafka has no such limit, and no client sends that much).
//!
//! Not implemented: the persistence of groups (a collector restart forgets membership, and
//! members rejoin after UNKNOWN_MEMBER_ID), static membership beyond a simple form (a join with a
//! known `group.instance.id` fences the old member id and rebalances, where Kafka would hand the
//! new id the old assignment without a rebalance), and DescribeGroups' authorized operations.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Members plus member ids handed out with MEMBER_ID_REQUIRED, per group (Kafka's
/// `group.max.size` is unbounded by default; a thousand consumers of one group is far beyond any
/// partition count we store).
pub const MAX_MEMBERS_PER_GROUP: usize = 1_000;
/// Groups kept at once; empty groups are evicted first.
pub const MAX_GROUPS: usize = 10_000;
/// Protocol metadata one member may send (all its protocols together), and assignment bytes the
/// leader may give one member. A consumer's subscription is a few hundred bytes.
pub const MAX_MEMBER_METADATA_BYTES: usize = 1 << 20;
/// Bytes counted for each protocol entry besides its name and metadata, so a list of empty
/// entries is bounded too.
const PROTOCOL_ENTRY_OVERHEAD_BYTES: usize = 64;
/// Characters of the client id kept (in member ids and DescribeGroups).
const MAX_CLIENT_ID_CHARS: usize = 128;
/// How often a waiting request looks at its group when no deadline is due.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The shortest sleep of a waiting request: a deadline that is due but not consumed cannot spin.
const MIN_POLL: Duration = Duration::from_millis(1);

const NONE: i16 = 0;
const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
const INCONSISTENT_GROUP_PROTOCOL: i16 = ResponseError::InconsistentGroupProtocol.code();
const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();
const INVALID_SESSION_TIMEOUT: i16 = ResponseError::InvalidSessionTimeout.code();
const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
const INVALID_REQUEST: i16 = ResponseError::InvalidRequest.code();
const MEMBER_ID_REQUIRED: i16 = ResponseError::MemberIdRequired.code();
const GROUP_MAX_SIZE_REACHED: i16 = ResponseError::GroupMaxSizeReached.code();
const FENCED_INSTANCE_ID: i16 = ResponseError::FencedInstanceId.code();

/// The coordinator's limits and delays (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// How long the first join of an empty group waits for more members before it completes
    /// (`group.initial.rebalance.delay.ms`, 3 s in Kafka). Consumers started together then share
    /// one generation instead of causing one rebalance each. 0 here: a rebalance or two is cheap,
    /// and tests and small deployments do not wait.
    pub initial_rebalance_delay: Duration,
    /// Shortest session timeout a member may ask for (`group.min.session.timeout.ms`, 6 s).
    pub min_session_timeout: Duration,
    /// Longest session timeout a member may ask for (`group.max.session.timeout.ms`, 30 min):
    /// a dead member holds its partitions at most this long.
    pub max_session_timeout: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            initial_rebalance_delay: Duration::ZERO,
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// A group's state, as Kafka names it. "Dead" is never stored: a group we do not hold is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No members (there may be member ids pending).
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Joins answered; waiting for the leader's assignments.
    CompletingRebalance,
    /// Assignments handed out; members heartbeat.
    Stable,
}

impl State {
    /// The name DescribeGroups and ListGroups report.
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// How a JoinGroup is answered, before it is encoded for the request's version.
#[derive(Debug, Clone, Default)]
struct JoinAnswer {
    error: i16,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: String,
    member_id: String,
    /// Every member's metadata for the chosen protocol: for the leader only.
    members: Vec<JoinGroupResponseMember>,
}

impl JoinAnswer {
    /// An error, with the member id the client should use next (Kafka echoes the request's, or
    /// hands out a new one with MEMBER_ID_REQUIRED).
    fn error(error: i16, member_id: &str) -> Self {
        Self {
            error,
            generation: -1,
            member_id: member_id.to_owned(),
            ..Self::default()
        }
    }

    fn into_response(self, version: i16) -> JoinGroupResponse {
        let mut response = JoinGroupResponse::default();
        response.error_code = self.error;
        response.generation_id = self.generation;
        response.protocol_type = self.protocol_type.map(StrBytes::from_string);
        // The protocol name is nullable only from v7; before, Kafka sends "" when there is none.
        response.protocol_name = match self.protocol_name {
            Some(name) => Some(StrBytes::from_string(name)),
            None if version < 7 => Some(StrBytes::new()),
            None => None,
        };
        response.leader = StrBytes::from_string(self.leader);
        response.member_id = StrBytes::from_string(self.member_id);
        response.members = self.members;
        response
    }
}

/// How a SyncGroup is answered.
#[derive(Debug, Clone, Default)]
struct SyncAnswer {
    error: i16,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    assignment: Bytes,
}

impl SyncAnswer {
    fn error(error: i16) -> Self {
        Self {
            error,
            ..Self::default()
        }
    }

    fn into_response(self) -> SyncGroupResponse {
        let mut response = SyncGroupResponse::default();
        response.error_code = self.error;
        response.protocol_type = self.protocol_type.map(StrBytes::from_string);
        response.protocol_name = self.protocol_name.map(StrBytes::from_string);
        response.assignment = self.assignment;
        response
    }
}

/// A request answered now, or one that waits for the group.
#[derive(Debug)]
enum Step<T> {
    Answer(T),
    Wait(oneshot::Receiver<T>),
}

/// A JoinGroup's fields, checked, owned, and copied out of the request's frame.
#[derive(Debug, Clone)]
struct JoinArgs {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
}

impl JoinArgs {
    /// Checks what Kafka checks before it looks at the group.
    fn parse(
        req: &JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
        settings: &GroupSettings,
    ) -> Result<Self, i16> {
        if req.group_id.is_empty() {
            return Err(INVALID_GROUP_ID);
        }
        let session_timeout = millis(req.session_timeout_ms);
        if session_timeout < settings.min_session_timeout
            || session_timeout > settings.max_session_timeout
        {
            return Err(INVALID_SESSION_TIMEOUT);
        }
        // v0 has no rebalance timeout: Kafka waits the session timeout.
        let rebalance_timeout = if version == 0 || req.rebalance_timeout_ms <= 0 {
            session_timeout
        } else {
            millis(req.rebalance_timeout_ms)
        };
        let metadata_bytes: usize = req
            .protocols
            .iter()
            .map(|p| p.name.len() + p.metadata.len() + PROTOCOL_ENTRY_OVERHEAD_BYTES)
            .sum();
        if metadata_bytes > MAX_MEMBER_METADATA_BYTES {
            return Err(INVALID_REQUEST);
        }
        Ok(Self {
            member_id: req.member_id.as_str().to_owned(),
            instance_id: non_empty(req.group_instance_id.as_ref()),
            client_id: client_id.chars().take(MAX_CLIENT_ID_CHARS).collect(),
            client_host: client_host.chars().take(MAX_CLIENT_ID_CHARS).collect(),
            session_timeout,
            rebalance_timeout,
            protocol_type: req.protocol_type.as_str().to_owned(),
            // Copied, so that a member keeps its metadata alive and not the whole request frame.
            protocols: req
                .protocols
                .iter()
                .map(|p| {
                    (
                        p.name.as_str().to_owned(),
                        Bytes::copy_from_slice(&p.metadata),
                    )
                })
                .collect(),
        })
    }
}

/// A SyncGroup's fields, checked and owned.
#[derive(Debug, Clone)]
struct SyncArgs {
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    /// The leader's assignment per member id (followers send none).
    assignments: HashMap<String, Bytes>,
}

impl SyncArgs {
    fn parse(req: &SyncGroupRequest) -> Result<Self, i16> {
        if req.group_id.is_empty() {
            return Err(INVALID_GROUP_ID);
        }
        if req
            .assignments
            .iter()
            .any(|a| a.assignment.len() > MAX_MEMBER_METADATA_BYTES)
        {
            return Err(INVALID_REQUEST);
        }
        Ok(Self {
            member_id: req.member_id.as_str().to_owned(),
            instance_id: non_empty(req.group_instance_id.as_ref()),
            generation: req.generation_id,
            protocol_type: req.protocol_type.as_ref().map(|s| s.as_str().to_owned()),
            protocol_name: req.protocol_name.as_ref().map(|s| s.as_str().to_owned()),
            assignments: req
                .assignments
                .iter()
                .map(|a| {
                    let bytes = Bytes::copy_from_slice(&a.assignment);
                    (a.member_id.as_str().to_owned(), bytes)
                })
                .collect(),
        })
    }
}

/// One member of a group.
#[derive(Debug)]
struct Member {
    /// Static membership's `group.instance.id`, reported to the leader and by DescribeGroups.
    instance_id: Option<String>,
    /// Reported by DescribeGroups.
    client_id: String,
    /// Reported by DescribeGroups.
    client_host: String,
    /// The member is removed when it has sent nothing for this long.
    session_timeout: Duration,
    /// How long a rebalance waits for this member to rejoin; the group waits for the largest.
    rebalance_timeout: Duration,
    protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
    /// The leader's assignment for it in the current generation (empty until the leader syncs).
    assignment: Bytes,
    /// Its last request, or the last answer it was sent: its session runs from here.
    last_seen: Instant,
    /// Whether it has sent a JoinGroup during the rebalance in progress. Invariant: false
    /// outside PreparingRebalance.
    rejoined: bool,
    /// Its outstanding JoinGroup, answered when the rebalance completes.
    join_waiter: Option<oneshot::Sender<JoinAnswer>>,
    /// Its outstanding SyncGroup, answered when the leader's assignments arrive.
    sync_waiter: Option<oneshot::Sender<SyncAnswer>>,
}

impl Member {
    fn new(args: JoinArgs, waiter: oneshot::Sender<JoinAnswer>, now: Instant) -> Self {
        Self {
            instance_id: args.instance_id,
            client_id: args.client_id,
            client_host: args.client_host,
            session_timeout: args.session_timeout,
            rebalance_timeout: args.rebalance_timeout,
            protocol_type: args.protocol_type,
            protocols: args.protocols,
            assignment: Bytes::new(),
            last_seen: now,
            rejoined: true,
            join_waiter: Some(waiter),
            sync_waiter: None,
        }
    }

    /// A rejoin: new protocols and timeouts, and a new JoinGroup to answer.
    fn rejoin(&mut self, args: JoinArgs, waiter: oneshot::Sender<JoinAnswer>, now: Instant) {
        self.session_timeout = args.session_timeout;
        self.rebalance_timeout = args.rebalance_timeout;
        self.protocol_type = args.protocol_type;
        self.protocols = args.protocols;
        self.last_seen = now;
        self.rejoined = true;
        // A JoinGroup sent again (say, on a new connection) replaces the first; the first is
        // told to retry rather than left hanging.
        self.answer_join(JoinAnswer::error(REBALANCE_IN_PROGRESS, ""), now);
        self.join_waiter = Some(waiter);
    }

    /// Whether it rejoins with exactly the protocols it has (Kafka's `matches`).
    fn matches(&self, args: &JoinArgs) -> bool {
        self.protocols == args.protocols
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// Whether a JoinGroup or SyncGroup of its is still waiting on an open connection.
    fn has_live_request(&self) -> bool {
        let open = |closed: Option<bool>| closed == Some(false);
        open(self.join_waiter.as_ref().map(|w| w.is_closed()))
            || open(self.sync_waiter.as_ref().map(|w| w.is_closed()))
    }

    /// When its session ends, if nothing is heard from it (never while it waits for an answer).
    fn session_deadline(&self) -> Option<Instant> {
        (!self.has_live_request()).then(|| self.last_seen + self.session_timeout)
    }

    /// Answers its waiting JoinGroup, if any. Its session restarts from the answer, as in Kafka:
    /// the time it waited does not count against it.
    fn answer_join(&mut self, answer: JoinAnswer, now: Instant) {
        if let Some(waiter) = self.join_waiter.take() {
            self.last_seen = now;
            // The receiver is gone when the client went away: nobody to tell.
            let _ = waiter.send(answer);
        }
    }

    /// Answers its waiting SyncGroup, if any; its session restarts from the answer.
    fn answer_sync(&mut self, answer: SyncAnswer, now: Instant) {
        if let Some(waiter) = self.sync_waiter.take() {
            self.last_seen = now;
            let _ = waiter.send(answer);
        }
    }
}

/// The first join of an empty group waits for more members: Kafka's `InitialDelayedJoin`.
#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    /// How much longer the wait may be extended (the rebalance timeout minus what was waited).
    remaining: Duration,
    /// Whether a member joined during the current delay: then the delay starts once more.
    new_member_added: bool,
}

/// One consumer group: a plain state machine, time passed in.
#[derive(Debug)]
struct Group {
    /// For logs.
    id: String,
    state: State,
    /// Completed rebalances. Kept when the group empties, so that a stale member's generation
    /// never becomes valid again.
    generation: i32,
    /// The protocol type of the first member ("consumer", "connect"); every member must match.
    protocol_type: Option<String>,
    /// The protocol chosen for the current generation. Invariant: Some in CompletingRebalance
    /// and Stable.
    protocol: Option<String>,
    /// The leader: it gets every member's metadata and sends the assignments. Invariant: Some
    /// and a member whenever there are members.
    leader: Option<String>,
    /// The members in the order they joined (the next leader is the oldest member).
    members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with when they lapse if the client does
    /// not come back. A rebalance in progress waits for them.
    pending: HashMap<String, Instant>,
    /// When the rebalance in progress completes even if members are missing. Invariant: Some
    /// exactly in PreparingRebalance.
    join_deadline: Option<Instant>,
    /// Set while the first join of an empty group waits for more members.
    initial_delay: Option<InitialDelay>,
    /// Members that were answered this generation's join but have not sent SyncGroup yet.
    pending_sync: HashSet<String>,
    /// When the members of `pending_sync` are removed. Invariant: Some only while
    /// `pending_sync` is not empty.
    sync_deadline: Option<Instant>,
    /// From the settings, so the state machine needs nothing else.
    initial_rebalance_delay: Duration,
}

impl Group {
    fn new(id: &str, settings: &GroupSettings) -> Self {
        Self {
            id: id.to_owned(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay: None,
            pending_sync: HashSet::new(),
            sync_deadline: None,
            initial_rebalance_delay: settings.initial_rebalance_delay,
        }
    }

    /// Holds nothing worth keeping: may be evicted.
    fn is_vacant(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    fn is_full(&self) -> bool {
        self.members.len() + self.pending.len() >= MAX_MEMBERS_PER_GROUP
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    /// Whether another member id holds this static instance id (Kafka's `isStaticMemberFenced`).
    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|instance| {
            self.members
                .iter()
                .any(|(id, m)| m.instance_id.as_deref() == Some(instance) && id != member_id)
        })
    }

    /// Whether a member with these protocols may be in the group: same protocol type, and one
    /// protocol every member supports (any non-empty list when there are no members).
    fn supports(&self, args: &JoinArgs) -> bool {
        if args.protocol_type.is_empty() || args.protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(args.protocol_type.as_str())
            && args
                .protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    /// The largest rebalance timeout of the members: how long a rebalance waits for them.
    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    // ---- JoinGroup ----

    /// A JoinGroup without a member id. From v4 (KIP-394) the client is first given an id and
    /// sent back with MEMBER_ID_REQUIRED, so that a client whose first answer is lost does not
    /// leave a member behind; static members (with an instance id) are let in at once.
    fn join_new(
        &mut self,
        mut args: JoinArgs,
        require_member_id: bool,
        now: Instant,
    ) -> Step<JoinAnswer> {
        if !self.supports(&args) {
            return Step::Answer(JoinAnswer::error(INCONSISTENT_GROUP_PROTOCOL, ""));
        }
        if self.is_full() {
            return Step::Answer(JoinAnswer::error(GROUP_MAX_SIZE_REACHED, ""));
        }
        let member_id = new_member_id(&args.client_id);
        if let Some(instance) = args.instance_id.clone() {
            self.fence_instance(&instance, now);
        } else if require_member_id {
            self.pending
                .insert(member_id.clone(), now + args.session_timeout);
            return Step::Answer(JoinAnswer::error(MEMBER_ID_REQUIRED, &member_id));
        }
        args.member_id = member_id;
        self.add_member(args, now)
    }

    /// A JoinGroup with a member id: a pending id coming back, or a member rejoining.
    fn join_known(&mut self, args: JoinArgs, now: Instant) -> Step<JoinAnswer> {
        let id = args.member_id.clone();
        if !self.supports(&args) {
            return Step::Answer(JoinAnswer::error(INCONSISTENT_GROUP_PROTOCOL, &id));
        }
        if self.pending.remove(&id).is_some() {
            return self.add_member(args, now);
        }
        if self.is_fenced(&id, args.instance_id.as_deref()) {
            return Step::Answer(JoinAnswer::error(FENCED_INSTANCE_ID, &id));
        }
        let is_leader = self.is_leader(&id);
        let Some(member) = self.members.get_mut(&id) else {
            return Step::Answer(JoinAnswer::error(UNKNOWN_MEMBER_ID, &id));
        };
        member.last_seen = now;
        let unchanged = member.matches(&args);
        match self.state {
            // A member that did not get its join answer asks again: it gets the same one.
            State::CompletingRebalance if unchanged => Step::Answer(self.current_answer(&id)),
            // A follower with nothing new is told the current generation, so it syncs again.
            // The leader's join always rebalances: that is how it reacts to new partitions.
            State::Stable if unchanged && !is_leader => Step::Answer(self.current_answer(&id)),
            State::Empty => Step::Answer(JoinAnswer::error(UNKNOWN_MEMBER_ID, &id)),
            _ => self.rejoin(args, now),
        }
    }

    fn add_member(&mut self, args: JoinArgs, now: Instant) -> Step<JoinAnswer> {
        let (waiter, answer) = oneshot::channel();
        let id = args.member_id.clone();
        if self.members.is_empty() {
            self.protocol_type = Some(args.protocol_type.clone());
        }
        if let Some(delay) = &mut self.initial_delay {
            delay.new_member_added = true;
        }
        self.members
            .insert(id.clone(), Member::new(args, waiter, now));
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        self.maybe_prepare_rebalance(&format!("member {id} joined"), now);
        self.maybe_complete_join(now);
        Step::Wait(answer)
    }

    fn rejoin(&mut self, args: JoinArgs, now: Instant) -> Step<JoinAnswer> {
        let (waiter, answer) = oneshot::channel();
        let id = args.member_id.clone();
        if let Some(member) = self.members.get_mut(&id) {
            member.rejoin(args, waiter, now);
        }
        self.maybe_prepare_rebalance(&format!("member {id} rejoined"), now);
        self.maybe_complete_join(now);
        Step::Wait(answer)
    }

    /// A new join with a static instance id replaces the member that held it. Only dropped
    /// here: the join that follows at once starts the rebalance (so the group does not pass
    /// through Empty and a second generation).
    fn fence_instance(&mut self, instance: &str, now: Instant) {
        let old = self
            .members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.clone());
        if let Some(old) = old {
            tracing::info!(group = %self.id, member = %old, instance, "kafka static member replaced");
            self.drop_member(&old, FENCED_INSTANCE_ID, now);
        }
    }

    /// The answer for the current generation (the leader's lists every member).
    fn current_answer(&self, member_id: &str) -> JoinAnswer {
        let mut answer = self.answer_template();
        answer.member_id = member_id.to_owned();
        if self.is_leader(member_id) {
            answer.members = self.member_list();
        }
        answer
    }

    fn answer_template(&self) -> JoinAnswer {
        JoinAnswer {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: String::new(),
            members: Vec::new(),
        }
    }

    /// Every member's metadata for the chosen protocol, for the leader's assignor.
    fn member_list(&self) -> Vec<JoinGroupResponseMember> {
        let protocol = self.protocol.as_deref().unwrap_or_default();
        self.members
            .iter()
            .map(|(id, m)| {
                let mut entry = JoinGroupResponseMember::default();
                entry.member_id = StrBytes::from_string(id.clone());
                entry.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
                entry.metadata = m.metadata_for(protocol);
                entry
            })
            .collect()
    }

    // ---- Rebalances ----

    fn maybe_prepare_rebalance(&mut self, reason: &str, now: Instant) {
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(reason, now);
        }
    }

    /// Starts a rebalance: members must rejoin within the rebalance timeout.
    fn prepare_rebalance(&mut self, reason: &str, now: Instant) {
        if self.state == State::CompletingRebalance {
            // The assignments the followers wait for will never come: they rejoin instead.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                member.answer_sync(SyncAnswer::error(REBALANCE_IN_PROGRESS), now);
            }
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        let timeout = self.rebalance_timeout();
        let delay = self.initial_rebalance_delay;
        if self.state == State::Empty && !delay.is_zero() {
            self.initial_delay = Some(InitialDelay {
                remaining: timeout.saturating_sub(delay),
                new_member_added: false,
            });
            self.join_deadline = Some(now + delay);
        } else {
            self.initial_delay = None;
            self.join_deadline = Some(now + timeout);
        }
        tracing::info!(group = %self.id, generation = self.generation, reason, "kafka group rebalancing");
        self.state = State::PreparingRebalance;
    }

    /// Completes the rebalance once every member has rejoined and no pending id is outstanding
    /// (never during the initial delay, which always runs its course).
    fn maybe_complete_join(&mut self, now: Instant) {
        let all_joined = self.pending.is_empty() && self.members.values().all(|m| m.rejoined);
        if self.state == State::PreparingRebalance && self.initial_delay.is_none() && all_joined {
            self.complete_join(now);
        }
    }

    /// The next generation: members that did not rejoin are removed, a protocol is chosen, and
    /// every waiting JoinGroup is answered.
    fn complete_join(&mut self, now: Instant) {
        self.join_deadline = None;
        self.initial_delay = None;
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.rejoined)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &missing {
            tracing::info!(group = %self.id, member = %id, "kafka group member did not rejoin in time: removed");
            self.drop_member(id, UNKNOWN_MEMBER_ID, now);
        }
        // Kafka's generation is an int32 that never wraps in practice; stay positive if it does.
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        if self.members.is_empty() {
            self.become_empty();
            tracing::info!(group = %self.id, generation = self.generation, "kafka group is empty");
            return;
        }
        self.protocol = Some(self.choose_protocol(now));
        self.state = State::CompletingRebalance;
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline = Some(now + self.rebalance_timeout());
        metrics::counter!("ferry_kafka_group_rebalances_total").increment(1);
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol.as_deref().unwrap_or_default(),
            leader = self.leader.as_deref().unwrap_or_default(),
            "kafka group rebalanced"
        );
        self.answer_joins(now);
    }

    fn answer_joins(&mut self, now: Instant) {
        let template = self.answer_template();
        let mut everyone = Some(self.member_list());
        for (id, member) in self.members.iter_mut() {
            let mut answer = template.clone();
            answer.member_id = id.clone();
            if *id == template.leader {
                answer.members = everyone.take().unwrap_or_default();
            }
            member.rejoined = false;
            member.last_seen = now;
            member.answer_join(answer, now);
        }
    }

    /// Kafka's vote: among the protocols every member supports, each member votes for the one it
    /// prefers; the most votes win, a tie goes to the one the oldest member prefers. Members that
    /// support none of the candidates (only possible if one changed its list mid-rebalance) are
    /// removed, and the oldest member's first choice is taken.
    fn choose_protocol(&mut self, now: Instant) -> String {
        // A protocol every member supports is in the oldest member's list.
        let candidates: Vec<String> = self
            .members
            .values()
            .next()
            .map(|oldest| oldest.protocols.iter().map(|(name, _)| name.clone()))
            .into_iter()
            .flatten()
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes: Vec<(String, usize)> = Vec::new();
        for member in self.members.values() {
            let Some((vote, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(n))
            else {
                continue;
            };
            match votes.iter_mut().find(|(name, _)| name == vote) {
                Some((_, count)) => *count += 1,
                None => votes.push((vote.clone(), 1)),
            }
        }
        let mut best: Option<(String, usize)> = None;
        for (name, count) in votes {
            if best.as_ref().is_none_or(|(_, most)| count > *most) {
                best = Some((name, count));
            }
        }
        match best {
            Some((name, _)) => name,
            None => self.keep_members_supporting_first_choice(now),
        }
    }

    fn keep_members_supporting_first_choice(&mut self, now: Instant) -> String {
        let first_choice = self
            .members
            .values()
            .next()
            .and_then(|m| m.protocols.first())
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        let unsupported: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.supports(&first_choice))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &unsupported {
            self.drop_member(id, INCONSISTENT_GROUP_PROTOCOL, now);
        }
        first_choice
    }

    fn become_empty(&mut self) {
        self.state = State::Empty;
        self.protocol = None;
        self.leader = None;
        self.pending_sync.clear();
        self.sync_deadline = None;
    }

    /// Removes a member, answering its waiting requests with `error`, and nothing else: the
    /// caller decides whether the group rebalances.
    fn drop_member(&mut self, member_id: &str, error: i16, now: Instant) -> bool {
        let Some(mut member) = self.members.shift_remove(member_id) else {
            return false;
        };
        member.answer_join(JoinAnswer::error(error, member_id), now);
        member.answer_sync(SyncAnswer::error(error), now);
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        true
    }

    /// Removes a member, and rebalances the others (Kafka's `removeMemberAndUpdateGroup`).
    fn remove_member(&mut self, member_id: &str, error: i16, reason: &str, now: Instant) {
        if !self.drop_member(member_id, error, now) {
            return;
        }
        match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(reason, now),
            State::PreparingRebalance | State::Empty => {}
        }
        // The last member gone: the rebalance completes at once and the group is Empty.
        self.maybe_complete_join(now);
    }

    // ---- SyncGroup ----

    fn sync(&mut self, args: SyncArgs, now: Instant) -> Step<SyncAnswer> {
        let id = args.member_id.clone();
        if self.is_fenced(&id, args.instance_id.as_deref()) {
            return Step::Answer(SyncAnswer::error(FENCED_INSTANCE_ID));
        }
        let Some(member) = self.members.get_mut(&id) else {
            return Step::Answer(SyncAnswer::error(UNKNOWN_MEMBER_ID));
        };
        member.last_seen = now;
        if args.generation != self.generation {
            return Step::Answer(SyncAnswer::error(ILLEGAL_GENERATION));
        }
        let type_differs = args.protocol_type.is_some() && args.protocol_type != self.protocol_type;
        let name_differs = args.protocol_name.is_some() && args.protocol_name != self.protocol;
        if type_differs || name_differs {
            return Step::Answer(SyncAnswer::error(INCONSISTENT_GROUP_PROTOCOL));
        }
        match self.state {
            State::Empty => Step::Answer(SyncAnswer::error(UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => Step::Answer(SyncAnswer::error(REBALANCE_IN_PROGRESS)),
            State::Stable => {
                let assignment = member.assignment.clone();
                self.synced(&id);
                Step::Answer(self.sync_answer(assignment))
            }
            State::CompletingRebalance => {
                let (waiter, answer) = oneshot::channel();
                member.answer_sync(SyncAnswer::error(REBALANCE_IN_PROGRESS), now);
                member.sync_waiter = Some(waiter);
                self.synced(&id);
                if self.is_leader(&id) {
                    self.assign(args.assignments, now);
                }
                Step::Wait(answer)
            }
        }
    }

    fn synced(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    fn sync_answer(&self, assignment: Bytes) -> SyncAnswer {
        SyncAnswer {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment,
        }
    }

    /// The leader's assignments: the group is Stable, every waiting follower gets its own
    /// (a member the leader forgot gets an empty assignment, as in Kafka).
    fn assign(&mut self, mut assignments: HashMap<String, Bytes>, now: Instant) {
        let template = self.sync_answer(Bytes::new());
        for (id, member) in self.members.iter_mut() {
            member.assignment = assignments.remove(id).unwrap_or_default();
            if member.sync_waiter.is_some() {
                let mut answer = template.clone();
                answer.assignment = member.assignment.clone();
                member.answer_sync(answer, now);
            }
        }
        self.state = State::Stable;
        tracing::info!(group = %self.id, generation = self.generation, "kafka group stable");
    }

    // ---- Heartbeat, LeaveGroup, OffsetCommit ----

    fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if self.is_fenced(member_id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        member.last_seen = now;
        match self.state {
            State::Empty => UNKNOWN_MEMBER_ID,
            State::PreparingRebalance => REBALANCE_IN_PROGRESS,
            State::CompletingRebalance | State::Stable => NONE,
        }
    }

    /// One member leaving, by member id or (static members, v3+) by instance id.
    fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Instant) -> i16 {
        let id = match instance_id {
            Some(instance) => {
                let holder = self
                    .members
                    .iter()
                    .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
                    .map(|(id, _)| id.clone());
                match holder {
                    None => return UNKNOWN_MEMBER_ID,
                    Some(id) if !member_id.is_empty() && id != member_id => {
                        return FENCED_INSTANCE_ID;
                    }
                    Some(id) => id,
                }
            }
            None => member_id.to_owned(),
        };
        if self.pending.remove(&id).is_some() {
            self.maybe_complete_join(now);
            return NONE;
        }
        if !self.members.contains_key(&id) {
            return UNKNOWN_MEMBER_ID;
        }
        let reason = format!("member {id} left");
        self.remove_member(&id, UNKNOWN_MEMBER_ID, &reason, now);
        NONE
    }

    /// Kafka's checks of an OffsetCommit against the group (`handleCommitOffsets`).
    fn check_commit(&mut self, member_id: &str, generation: i32, now: Instant) -> Result<(), i16> {
        // A consumer that assigns itself partitions and uses the group only for its offsets.
        if generation < 0 && self.state == State::Empty {
            return Ok(());
        }
        // The member has its join answer but not yet its assignment: it should not be committing.
        if self.state == State::CompletingRebalance {
            return Err(REBALANCE_IN_PROGRESS);
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(UNKNOWN_MEMBER_ID);
        };
        if generation != self.generation {
            return Err(ILLEGAL_GENERATION);
        }
        member.last_seen = now;
        Ok(())
    }

    // ---- Time ----

    /// Applies every deadline that is due: lapsed pending ids, expired sessions, the end of the
    /// join and sync waits.
    fn poll(&mut self, now: Instant) {
        self.pending.retain(|_, lapses| *lapses > now);
        for id in self.expired_members(now) {
            metrics::counter!("ferry_kafka_group_members_expired_total").increment(1);
            let reason = format!("member {id}'s session expired");
            self.remove_member(&id, UNKNOWN_MEMBER_ID, &reason, now);
        }
        self.poll_join_deadline(now);
        self.poll_sync_deadline(now);
        self.maybe_complete_join(now);
    }

    fn expired_members(&self, now: Instant) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.session_deadline().is_some_and(|end| end <= now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn poll_join_deadline(&mut self, now: Instant) {
        if self.join_deadline.is_none_or(|deadline| deadline > now) {
            return;
        }
        match self.initial_delay {
            // Someone arrived during the delay: wait once more for whoever follows them.
            Some(delay) if delay.new_member_added && !delay.remaining.is_zero() => {
                let wait = self.initial_rebalance_delay.min(delay.remaining);
                self.initial_delay = Some(InitialDelay {
                    remaining: delay.remaining.saturating_sub(wait),
                    new_member_added: false,
                });
                self.join_deadline = Some(now + wait);
            }
            _ => self.complete_join(now),
        }
    }

    fn poll_sync_deadline(&mut self, now: Instant) {
        if self.sync_deadline.is_none_or(|deadline| deadline > now) {
            return;
        }
        self.sync_deadline = None;
        let late: Vec<String> = self.pending_sync.drain().collect();
        if late.is_empty() {
            return;
        }
        for id in &late {
            tracing::info!(group = %self.id, member = %id, "kafka group member did not sync in time: removed");
            self.drop_member(id, UNKNOWN_MEMBER_ID, now);
        }
        self.prepare_rebalance("members did not sync in time", now);
        self.maybe_complete_join(now);
    }

    /// The earliest moment `poll` has something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self.members.values().filter_map(Member::session_deadline);
        [self.join_deadline, self.sync_deadline]
            .into_iter()
            .flatten()
            .chain(self.pending.values().copied())
            .chain(sessions)
            .min()
    }

    // ---- DescribeGroups ----

    /// Kafka reports metadata and assignments only when the group is Stable.
    fn describe(&self, group_id: &GroupId) -> DescribedGroup {
        let stable = self.state == State::Stable;
        let protocol = if stable { self.protocol.clone() } else { None };
        let mut described = DescribedGroup::default();
        described.group_id = group_id.clone();
        described.group_state = StrBytes::from_static_str(self.state.name());
        described.protocol_type =
            StrBytes::from_string(self.protocol_type.clone().unwrap_or_default());
        described.protocol_data = StrBytes::from_string(protocol.clone().unwrap_or_default());
        described.members = self
            .members
            .iter()
            .map(|(id, m)| {
                let mut entry = DescribedGroupMember::default();
                entry.member_id = StrBytes::from_string(id.clone());
                entry.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
                entry.client_id = StrBytes::from_string(m.client_id.clone());
                entry.client_host = StrBytes::from_string(m.client_host.clone());
                if let Some(protocol) = &protocol {
                    entry.member_metadata = m.metadata_for(protocol);
                    entry.member_assignment = m.assignment.clone();
                }
                entry
            })
            .collect();
        described
    }
}

/// The coordinator of every classic group on this listener.
#[derive(Debug)]
pub struct GroupCoordinator {
    /// Limits and delays, fixed at start.
    settings: GroupSettings,
    /// Every group by id. A std mutex: it is never held across an await (waiting requests hold
    /// only a oneshot receiver), and every critical section is a few map operations.
    groups: Mutex<HashMap<String, Group>>,
}

impl GroupCoordinator {
    pub fn new(settings: GroupSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `group` has members (joined or joining) now.
    pub fn has_members(&self, group: &str) -> bool {
        self.lock().get(group).is_some_and(|g| !g.is_vacant())
    }

    /// JoinGroup v0..=9: waits until the rebalance completes (see the module doc).
    pub async fn join(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        if let Some(reason) = &req.reason {
            tracing::debug!(group = %req.group_id.as_str(), %reason, "kafka join group");
        }
        let answer = match self.start_join(&req, version, client_id, client_host, Instant::now()) {
            Step::Answer(answer) => answer,
            Step::Wait(waiter) => {
                let dropped = JoinAnswer::error(UNKNOWN_MEMBER_ID, req.member_id.as_str());
                self.wait(req.group_id.as_str(), waiter, dropped).await
            }
        };
        answer.into_response(version)
    }

    fn start_join(
        &self,
        req: &JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
        now: Instant,
    ) -> Step<JoinAnswer> {
        let args = match JoinArgs::parse(req, version, client_id, client_host, &self.settings) {
            Ok(args) => args,
            Err(code) => return Step::Answer(JoinAnswer::error(code, req.member_id.as_str())),
        };
        let group_id = req.group_id.as_str();
        let mut groups = self.lock();
        if !args.member_id.is_empty() {
            return match groups.get_mut(group_id) {
                Some(group) => {
                    group.poll(now);
                    group.join_known(args, now)
                }
                None => Step::Answer(JoinAnswer::error(UNKNOWN_MEMBER_ID, &args.member_id)),
            };
        }
        let Some(group) = self.group_for_new_member(&mut groups, group_id) else {
            return Step::Answer(JoinAnswer::error(COORDINATOR_NOT_AVAILABLE, ""));
        };
        group.poll(now);
        let step = group.join_new(args, version >= 4, now);
        // A refused first join leaves no group behind.
        if groups
            .get(group_id)
            .is_some_and(|g| g.is_vacant() && g.generation == 0)
        {
            groups.remove(group_id);
        }
        step
    }

    /// The group a new member joins, created if need be; None when there are already
    /// [`MAX_GROUPS`] groups and none of them is vacant.
    fn group_for_new_member<'a>(
        &self,
        groups: &'a mut HashMap<String, Group>,
        group_id: &str,
    ) -> Option<&'a mut Group> {
        if !groups.contains_key(group_id) {
            if groups.len() >= MAX_GROUPS {
                groups.retain(|_, g| !g.is_vacant());
            }
            if groups.len() >= MAX_GROUPS {
                tracing::warn!(
                    groups = groups.len(),
                    "kafka group coordinator full: join refused"
                );
                return None;
            }
            groups.insert(group_id.to_owned(), Group::new(group_id, &self.settings));
        }
        groups.get_mut(group_id)
    }

    /// SyncGroup v0..=5: the leader's assignments are handed out; followers wait for them.
    pub async fn sync(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let answer = match self.start_sync(&req, Instant::now()) {
            Step::Answer(answer) => answer,
            Step::Wait(waiter) => {
                let dropped = SyncAnswer::error(UNKNOWN_MEMBER_ID);
                self.wait(req.group_id.as_str(), waiter, dropped).await
            }
        };
        let mut response = answer.into_response();
        if version < 5 {
            response.protocol_type = None;
            response.protocol_name = None;
        }
        response
    }

    fn start_sync(&self, req: &SyncGroupRequest, now: Instant) -> Step<SyncAnswer> {
        let args = match SyncArgs::parse(req) {
            Ok(args) => args,
            Err(code) => return Step::Answer(SyncAnswer::error(code)),
        };
        let mut groups = self.lock();
        match groups.get_mut(req.group_id.as_str()) {
            Some(group) => {
                group.poll(now);
                group.sync(args, now)
            }
            None => Step::Answer(SyncAnswer::error(UNKNOWN_MEMBER_ID)),
        }
    }

    /// Waits for a JoinGroup or SyncGroup to be answered, applying the group's deadlines as they
    /// fall due (so the rebalance timeout is kept even without [`Self::tick`]). `dropped` answers
    /// if the group let go of the request without an answer.
    async fn wait<T>(&self, group_id: &str, mut waiter: oneshot::Receiver<T>, dropped: T) -> T {
        loop {
            let now = Instant::now();
            let due = self.next_deadline(group_id).unwrap_or(now + IDLE_POLL);
            tokio::select! {
                biased;
                answer = &mut waiter => return answer.unwrap_or(dropped),
                () = tokio::time::sleep_until(due.max(now + MIN_POLL)) => {
                    self.poll_group(group_id, Instant::now());
                }
            }
        }
    }

    fn next_deadline(&self, group_id: &str) -> Option<Instant> {
        self.lock().get(group_id).and_then(Group::next_deadline)
    }

    fn poll_group(&self, group_id: &str, now: Instant) {
        if let Some(group) = self.lock().get_mut(group_id) {
            group.poll(now);
        }
    }

    /// Heartbeat v0..=4: refreshes the session; REBALANCE_IN_PROGRESS tells the member to rejoin.
    pub fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let mut response = HeartbeatResponse::default();
        response.error_code = if req.group_id.is_empty() {
            INVALID_GROUP_ID
        } else {
            let now = Instant::now();
            let instance_id = non_empty(req.group_instance_id.as_ref());
            match self.lock().get_mut(req.group_id.as_str()) {
                Some(group) => {
                    group.poll(now);
                    group.heartbeat(
                        req.member_id.as_str(),
                        instance_id.as_deref(),
                        req.generation_id,
                        now,
                    )
                }
                None => UNKNOWN_MEMBER_ID,
            }
        };
        response
    }

    /// LeaveGroup v0..=5: the members leave and the others rebalance. v0..=2 name one member and
    /// carry its error at the top; v3+ list members, each with its own error.
    pub fn leave(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut response = LeaveGroupResponse::default();
        if req.group_id.is_empty() {
            response.error_code = INVALID_GROUP_ID;
            return response;
        }
        let leaving: Vec<(StrBytes, Option<StrBytes>)> = if version < 3 {
            vec![(req.member_id.clone(), None)]
        } else {
            req.members
                .iter()
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect()
        };
        let now = Instant::now();
        let mut groups = self.lock();
        let mut group = groups.get_mut(req.group_id.as_str());
        if let Some(group) = group.as_deref_mut() {
            group.poll(now);
        }
        let members: Vec<MemberResponse> = leaving
            .into_iter()
            .map(|(member_id, instance_id)| {
                let instance = non_empty(instance_id.as_ref());
                let error = match group.as_deref_mut() {
                    Some(group) => group.leave(member_id.as_str(), instance.as_deref(), now),
                    None => UNKNOWN_MEMBER_ID,
                };
                let mut entry = MemberResponse::default();
                entry.member_id = member_id;
                entry.group_instance_id = instance_id;
                entry.error_code = error;
                entry
            })
            .collect();
        if version < 3 {
            response.error_code = members.first().map_or(NONE, |m| m.error_code);
        } else {
            response.members = members;
        }
        response
    }

    /// DescribeGroups v0..=5. A group we do not hold is "Dead", without an error, as in Kafka.
    pub fn describe(&self, req: DescribeGroupsRequest, _version: i16) -> DescribeGroupsResponse {
        let groups = self.lock();
        let mut response = DescribeGroupsResponse::default();
        response.groups = req
            .groups
            .iter()
            .map(|id| match groups.get(id.as_str()) {
                Some(group) => group.describe(id),
                None => {
                    let mut dead = DescribedGroup::default();
                    dead.group_id = id.clone();
                    dead.group_state = StrBytes::from_static_str("Dead");
                    dead
                }
            })
            .collect();
        response
    }

    /// Groups that have members, as (group id, protocol type, state name), for ListGroups.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let groups = self.lock();
        let mut listed: Vec<_> = groups
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|(id, g)| {
                let protocol_type = g.protocol_type.clone().unwrap_or_default();
                (id.clone(), protocol_type, g.state.name().to_owned())
            })
            .collect();
        listed.sort();
        listed
    }

    /// Whether an OffsetCommit from (member_id, generation) may commit (Kafka's checks; see
    /// `Group::check_commit`). A group we do not hold accepts only a commit without a
    /// generation (-1): any other comes from a generation we no longer know.
    pub fn check_commit(&self, group: &str, member_id: &str, generation: i32) -> Result<(), i16> {
        let now = Instant::now();
        match self.lock().get_mut(group) {
            Some(held) => {
                held.poll(now);
                held.check_commit(member_id, generation, now)
            }
            None if generation < 0 => Ok(()),
            None => Err(ILLEGAL_GENERATION),
        }
    }

    /// Applies every due deadline of every group: expired sessions, lapsed pending ids, the end
    /// of join and sync waits. Called every ~250 ms.
    pub fn tick(&self, now: Instant) {
        for group in self.lock().values_mut() {
            group.poll(now);
        }
    }

    /// The groups, even if a thread panicked while holding the lock: every update leaves the
    /// state consistent before anything that could panic.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        match self.groups.lock() {
            Ok(groups) => groups,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Kafka's member id: the client id, a dash, and a random UUID.
fn new_member_id(client_id: &str) -> String {
    let id: u128 = rand::random();
    let hex = format!("{id:032x}");
    format!(
        "{client_id}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A millisecond count from the wire; negative is zero.
fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// An optional string from the wire, with "" read as absent.
fn non_empty(value: Option<&StrBytes>) -> Option<String> {
    value
        .filter(|s| !s.is_empty())
        .map(|s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::protocol::Encodable;

    const SESSION_MS: i32 = 10_000;
    const REBALANCE_MS: i32 = 20_000;

    fn settings(initial_rebalance_delay: Duration) -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay,
            ..GroupSettings::default()
        }
    }

    fn group_id(id: &str) -> GroupId {
        GroupId(StrBytes::from_string(id.to_owned()))
    }

    fn s(value: &str) -> StrBytes {
        StrBytes::from_string(value.to_owned())
    }

    fn join_req(
        group: &str,
        member: &str,
        protocols: &[(&str, &'static [u8])],
    ) -> JoinGroupRequest {
        let mut req = JoinGroupRequest::default();
        req.group_id = group_id(group);
        req.member_id = s(member);
        req.session_timeout_ms = SESSION_MS;
        req.rebalance_timeout_ms = REBALANCE_MS;
        req.protocol_type = s("consumer");
        req.protocols = protocols
            .iter()
            .map(|(name, metadata)| {
                let mut p = JoinGroupRequestProtocol::default();
                p.name = s(name);
                p.metadata = Bytes::from_static(metadata);
                p
            })
            .collect();
        req
    }

    fn range(member: &str) -> JoinGroupRequest {
        join_req("g", member, &[("range", b"meta")])
    }

    fn sync_req(
        member: &str,
        generation: i32,
        assignments: &[(&str, &'static [u8])],
    ) -> SyncGroupRequest {
        let mut req = SyncGroupRequest::default();
        req.group_id = group_id("g");
        req.member_id = s(member);
        req.generation_id = generation;
        req.assignments = assignments
            .iter()
            .map(|(member, bytes)| {
                let mut a = SyncGroupRequestAssignment::default();
                a.member_id = s(member);
                a.assignment = Bytes::from_static(bytes);
                a
            })
            .collect();
        req
    }

    fn heartbeat(c: &GroupCoordinator, member: &str, generation: i32) -> i16 {
        let mut req = HeartbeatRequest::default();
        req.group_id = group_id("g");
        req.member_id = s(member);
        req.generation_id = generation;
        c.heartbeat(req, 4).error_code
    }

    fn describe_g(c: &GroupCoordinator) -> DescribedGroup {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![group_id("g")];
        let mut response = c.describe(req, 5);
        assert_eq!(response.groups.len(), 1);
        response.groups.remove(0)
    }

    /// Lets spawned requests run up to their waits, without moving the clock by more than 1 ms.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Two members joined with v3 (no MEMBER_ID_REQUIRED) and synced: (leader, follower, generation).
    async fn stable_pair(c: &GroupCoordinator) -> (String, String, i32) {
        let (a, b) = tokio::join!(
            c.join(range(""), 3, "a", "/h"),
            c.join(range(""), 3, "b", "/h")
        );
        assert_eq!((a.error_code, b.error_code), (NONE, NONE));
        assert_eq!(a.generation_id, b.generation_id);
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        let generation = leader.generation_id;
        let (l, f) = (leader.member_id.to_string(), follower.member_id.to_string());
        let assignments = [
            (l.as_str(), &b"to-leader"[..]),
            (f.as_str(), &b"to-follower"[..]),
        ];
        let (ls, fs) = tokio::join!(
            c.sync(sync_req(&l, generation, &assignments), 3),
            c.sync(sync_req(&f, generation, &[]), 3)
        );
        assert_eq!((ls.error_code, fs.error_code), (NONE, NONE));
        assert_eq!(&ls.assignment[..], b"to-leader");
        assert_eq!(&fs.assignment[..], b"to-follower");
        (l, f, generation)
    }

    #[tokio::test(start_paused = true)]
    async fn two_members_share_one_generation_and_the_leader_sees_both() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (a, b) = tokio::join!(
            c.join(
                join_req("g", "", &[("range", b"a-range"), ("roundrobin", b"a-rr")]),
                5,
                "a",
                "/h"
            ),
            c.join(
                join_req("g", "", &[("roundrobin", b"b-rr"), ("range", b"b-range")]),
                5,
                "b",
                "/h"
            ),
        );
        // v5: both first get their ids with MEMBER_ID_REQUIRED.
        assert_eq!(
            (a.error_code, b.error_code),
            (MEMBER_ID_REQUIRED, MEMBER_ID_REQUIRED)
        );
        let (a_id, b_id) = (a.member_id.to_string(), b.member_id.to_string());
        assert!(a_id.starts_with("a-") && b_id.starts_with("b-") && a_id != b_id);
        let (a, b) = tokio::join!(
            c.join(
                join_req(
                    "g",
                    &a_id,
                    &[("range", b"a-range"), ("roundrobin", b"a-rr")]
                ),
                5,
                "a",
                "/h"
            ),
            c.join(
                join_req(
                    "g",
                    &b_id,
                    &[("roundrobin", b"b-rr"), ("range", b"b-range")]
                ),
                5,
                "b",
                "/h"
            ),
        );
        assert_eq!((a.error_code, b.error_code), (NONE, NONE));
        assert_eq!((a.generation_id, b.generation_id), (1, 1));
        assert_eq!(a.leader.as_str(), a_id);
        assert_eq!(b.leader.as_str(), a_id);
        // One vote each: the tie goes to the oldest member's preference.
        assert_eq!(a.protocol_name.as_deref(), Some("range"));
        assert_eq!(b.protocol_name.as_deref(), Some("range"));
        let seen: Vec<(String, Bytes)> = a
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), m.metadata.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (a_id.clone(), Bytes::from_static(b"a-range")),
                (b_id.clone(), Bytes::from_static(b"b-range"))
            ]
        );
        assert!(b.members.is_empty(), "followers do not get the members");
        assert_eq!(describe_g(&c).group_state.as_str(), "CompletingRebalance");
        assert_eq!(
            c.list(),
            vec![(
                "g".to_owned(),
                "consumer".to_owned(),
                "CompletingRebalance".to_owned()
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_sync_waits_for_the_leader() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (a, b) = tokio::join!(
            c.join(range(""), 3, "a", "/h"),
            c.join(range(""), 3, "b", "/h")
        );
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        let (l, f) = (leader.member_id.to_string(), follower.member_id.to_string());
        let c2 = Arc::clone(&c);
        let f2 = f.clone();
        let waiting = tokio::spawn(async move { c2.sync(sync_req(&f2, 1, &[]), 5).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiting.is_finished(),
            "the follower's sync must wait for the leader's"
        );
        assert_eq!(
            heartbeat(&c, &f, 1),
            NONE,
            "heartbeats are fine while completing"
        );
        let leader_sync = c
            .sync(
                sync_req(&l, 1, &[(f.as_str(), b"f-part"), (l.as_str(), b"l-part")]),
                5,
            )
            .await;
        assert_eq!(leader_sync.error_code, NONE);
        assert_eq!(&leader_sync.assignment[..], b"l-part");
        assert_eq!(leader_sync.protocol_name.as_deref(), Some("range"));
        assert_eq!(leader_sync.protocol_type.as_deref(), Some("consumer"));
        let followed = waiting.await.expect("sync task");
        assert_eq!(followed.error_code, NONE);
        assert_eq!(&followed.assignment[..], b"f-part");
        let group = describe_g(&c);
        assert_eq!(group.group_state.as_str(), "Stable");
        // A follower's sync in a Stable group is answered at once with its assignment.
        let again = c.sync(sync_req(&f, 1, &[]), 3).await;
        assert_eq!(
            (again.error_code, &again.assignment[..]),
            (NONE, &b"f-part"[..])
        );
        assert_eq!(again.protocol_name, None, "v3 has no protocol name");
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_member_makes_the_others_rejoin() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        let c2 = Arc::clone(&c);
        let third = tokio::spawn(async move { c2.join(range(""), 3, "c", "/h").await });
        settle().await;
        assert_eq!(describe_g(&c).group_state.as_str(), "PreparingRebalance");
        assert_eq!(heartbeat(&c, &l, generation), REBALANCE_IN_PROGRESS);
        assert_eq!(heartbeat(&c, &f, generation), REBALANCE_IN_PROGRESS);
        assert!(
            !third.is_finished(),
            "the rebalance waits for the known members"
        );
        let (a, b) = tokio::join!(
            c.join(range(&l), 3, "a", "/h"),
            c.join(range(&f), 3, "b", "/h")
        );
        let third = third.await.expect("join task");
        for answer in [&a, &b, &third] {
            assert_eq!(answer.error_code, NONE);
            assert_eq!(answer.generation_id, generation + 1);
            assert_eq!(answer.leader.as_str(), l);
        }
        assert_eq!(a.members.len(), 3);
        assert!(b.members.is_empty() && third.members.is_empty());
        assert_eq!(heartbeat(&c, &f, generation), ILLEGAL_GENERATION);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_member_expires_and_the_others_rebalance() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(heartbeat(&c, &l, generation), NONE);
        c.tick(Instant::now());
        assert_eq!(describe_g(&c).members.len(), 2, "not expired yet");
        tokio::time::advance(Duration::from_secs(5)).await;
        c.tick(Instant::now());
        // The follower has been silent for 11 s of a 10 s session.
        assert_eq!(heartbeat(&c, &l, generation), REBALANCE_IN_PROGRESS);
        assert_eq!(heartbeat(&c, &f, generation), UNKNOWN_MEMBER_ID);
        let rejoined = c.join(range(&l), 3, "a", "/h").await;
        assert_eq!(rejoined.error_code, NONE);
        assert_eq!(rejoined.generation_id, generation + 1);
        assert_eq!(rejoined.members.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn members_that_do_not_rejoin_are_removed_at_the_rebalance_timeout() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        let start = Instant::now();
        let c2 = Arc::clone(&c);
        let third = tokio::spawn(async move { c2.join(range(""), 3, "c", "/h").await });
        settle().await;
        // The leader rejoins; the follower keeps heartbeating but never rejoins.
        let c3 = Arc::clone(&c);
        let l2 = l.clone();
        let leader = tokio::spawn(async move { c3.join(range(&l2), 3, "a", "/h").await });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(heartbeat(&c, &f, generation), REBALANCE_IN_PROGRESS);
        }
        let (leader, third) = (leader.await.expect("join"), third.await.expect("join"));
        assert!(Instant::now() - start >= Duration::from_millis(REBALANCE_MS as u64));
        assert_eq!((leader.error_code, third.error_code), (NONE, NONE));
        assert_eq!(leader.generation_id, generation + 1);
        let members: Vec<String> = leader
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect();
        assert_eq!(members, vec![l.clone(), third.member_id.to_string()]);
        assert_eq!(heartbeat(&c, &f, generation + 1), UNKNOWN_MEMBER_ID);
    }

    #[tokio::test(start_paused = true)]
    async fn leave_rebalances_and_the_last_leave_empties_the_group() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        let mut v0 = LeaveGroupRequest::default();
        v0.group_id = group_id("g");
        v0.member_id = s(&f);
        assert_eq!(c.leave(v0.clone(), 0).error_code, NONE);
        assert_eq!(
            c.leave(v0, 0).error_code,
            UNKNOWN_MEMBER_ID,
            "v0 carries the member's error on top"
        );
        assert_eq!(heartbeat(&c, &l, generation), REBALANCE_IN_PROGRESS);
        let alone = c.join(range(&l), 3, "a", "/h").await;
        assert_eq!(
            (alone.error_code, alone.generation_id),
            (NONE, generation + 1)
        );
        let mut v3 = LeaveGroupRequest::default();
        v3.group_id = group_id("g");
        v3.members = [l.as_str(), "nobody"]
            .iter()
            .map(|id| {
                let mut m = MemberIdentity::default();
                m.member_id = s(id);
                m
            })
            .collect();
        let left = c.leave(v3, 3);
        assert_eq!(left.error_code, NONE);
        let errors: Vec<i16> = left.members.iter().map(|m| m.error_code).collect();
        assert_eq!(errors, vec![NONE, UNKNOWN_MEMBER_ID]);
        let group = describe_g(&c);
        assert_eq!(group.group_state.as_str(), "Empty");
        assert!(group.members.is_empty());
        assert!(c.list().is_empty(), "only groups with members are listed");
        // The generation keeps counting: the next member starts at generation + 3.
        let next = c.join(range(""), 3, "d", "/h").await;
        assert_eq!(
            (next.error_code, next.generation_id),
            (NONE, generation + 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn member_id_required_then_rejoin_and_unknown_ids() {
        let c = GroupCoordinator::new(GroupSettings::default());
        let first = c.join(range(""), 4, "client-1", "/h").await;
        assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
        assert_eq!(first.generation_id, -1);
        assert_eq!(
            first.protocol_name.as_deref(),
            Some(""),
            "v4 has no null protocol name"
        );
        let id = first.member_id.to_string();
        assert!(
            id.starts_with("client-1-") && id.len() == "client-1-".len() + 36,
            "{id}"
        );
        // The pending id holds the group in Empty, not rebalancing.
        assert_eq!(describe_g(&c).group_state.as_str(), "Empty");
        let second = c.join(range(&id), 4, "client-1", "/h").await;
        assert_eq!(second.error_code, NONE);
        assert_eq!(
            (second.generation_id, second.leader.as_str()),
            (1, id.as_str())
        );
        assert_eq!(second.members.len(), 1);
        let unknown = c.join(range("made-up"), 9, "x", "/h").await;
        assert_eq!(unknown.error_code, UNKNOWN_MEMBER_ID);
        assert_eq!(
            unknown.protocol_name, None,
            "v7+ answers a null protocol name"
        );
        let other_group = c
            .join(
                join_req("other", "made-up", &[("range", b"")]),
                9,
                "x",
                "/h",
            )
            .await;
        assert_eq!(other_group.error_code, UNKNOWN_MEMBER_ID);
        assert!(
            c.describe_state("other").is_none(),
            "a refused join leaves no group"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_member_id_lapses_after_the_session_timeout() {
        let c = GroupCoordinator::new(GroupSettings::default());
        let first = c.join(range(""), 5, "a", "/h").await;
        assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
        tokio::time::advance(Duration::from_millis(SESSION_MS as u64 + 1)).await;
        c.tick(Instant::now());
        let late = c.join(range(first.member_id.as_str()), 5, "a", "/h").await;
        assert_eq!(late.error_code, UNKNOWN_MEMBER_ID);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_generations_and_unknown_members_are_refused() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        assert_eq!(heartbeat(&c, &f, generation - 1), ILLEGAL_GENERATION);
        assert_eq!(heartbeat(&c, "stranger", generation), UNKNOWN_MEMBER_ID);
        let stale = c.sync(sync_req(&l, generation + 1, &[]), 3).await;
        assert_eq!(stale.error_code, ILLEGAL_GENERATION);
        let stranger = c.sync(sync_req("stranger", generation, &[]), 3).await;
        assert_eq!(stranger.error_code, UNKNOWN_MEMBER_ID);
        let mut wrong_protocol = sync_req(&f, generation, &[]);
        wrong_protocol.protocol_name = Some(s("roundrobin"));
        assert_eq!(
            c.sync(wrong_protocol, 5).await.error_code,
            INCONSISTENT_GROUP_PROTOCOL
        );
        let mut no_group = HeartbeatRequest::default();
        no_group.group_id = group_id("nowhere");
        no_group.member_id = s(&l);
        assert_eq!(c.heartbeat(no_group, 0).error_code, UNKNOWN_MEMBER_ID);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_rejoining_unchanged_keeps_the_generation_and_the_leader_rebalances() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        let same = c.join(range(&f), 3, "b", "/h").await;
        assert_eq!((same.error_code, same.generation_id), (NONE, generation));
        assert_eq!(describe_g(&c).group_state.as_str(), "Stable");
        let c2 = Arc::clone(&c);
        let l2 = l.clone();
        let leader = tokio::spawn(async move { c2.join(range(&l2), 3, "a", "/h").await });
        settle().await;
        assert_eq!(heartbeat(&c, &f, generation), REBALANCE_IN_PROGRESS);
        let follower = c.join(range(&f), 3, "b", "/h").await;
        assert_eq!(follower.generation_id, generation + 1);
        assert_eq!(leader.await.expect("join").generation_id, generation + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_never_syncs_is_removed_and_the_group_rebalances() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (a, b) = tokio::join!(
            c.join(range(""), 3, "a", "/h"),
            c.join(range(""), 3, "b", "/h")
        );
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        let f = follower.member_id.to_string();
        let c2 = Arc::clone(&c);
        let f2 = f.clone();
        let waiting = tokio::spawn(async move { c2.sync(sync_req(&f2, 1, &[]), 3).await });
        let answer = waiting.await.expect("sync task");
        assert_eq!(answer.error_code, REBALANCE_IN_PROGRESS);
        assert_eq!(
            heartbeat(&c, leader.member_id.as_str(), 1),
            UNKNOWN_MEMBER_ID
        );
        let alone = c.join(range(&f), 3, "b", "/h").await;
        assert_eq!(
            (alone.error_code, alone.generation_id, alone.leader.as_str()),
            (NONE, 2, f.as_str())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn commits_are_checked_as_kafka_checks_them() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        assert_eq!(
            c.check_commit("g", "", -1),
            Ok(()),
            "a group-less consumer commits"
        );
        assert_eq!(
            c.check_commit("g", "m", 3),
            Err(ILLEGAL_GENERATION),
            "a generation we never knew"
        );
        let (l, f, generation) = stable_pair(&c).await;
        assert_eq!(c.check_commit("g", &l, generation), Ok(()));
        assert_eq!(
            c.check_commit("g", &f, generation - 1),
            Err(ILLEGAL_GENERATION)
        );
        assert_eq!(
            c.check_commit("g", "stranger", generation),
            Err(UNKNOWN_MEMBER_ID)
        );
        assert_eq!(
            c.check_commit("g", "", -1),
            Err(UNKNOWN_MEMBER_ID),
            "the group has members"
        );
        // Commits keep a member alive: 8 s + 8 s of a 10 s session, with commits only.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(heartbeat(&c, &l, generation), NONE);
        assert_eq!(c.check_commit("g", &f, generation), Ok(()));
        tokio::time::advance(Duration::from_secs(8)).await;
        c.tick(Instant::now());
        assert_eq!(c.check_commit("g", &f, generation), Ok(()));
        // During a rebalance the current generation may still commit (revocation commits)...
        let c2 = Arc::clone(&c);
        let third = tokio::spawn(async move { c2.join(range(""), 3, "c", "/h").await });
        settle().await;
        assert_eq!(c.check_commit("g", &f, generation), Ok(()));
        let (_a, _b) = tokio::join!(
            c.join(range(&l), 3, "a", "/h"),
            c.join(range(&f), 3, "b", "/h")
        );
        let _ = third.await.expect("join");
        // ...but not between the join answers and the leader's sync.
        assert_eq!(
            c.check_commit("g", &f, generation + 1),
            Err(REBALANCE_IN_PROGRESS)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn describe_reports_states_members_and_dead_groups() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let dead = describe_g(&c);
        assert_eq!((dead.error_code, dead.group_state.as_str()), (NONE, "Dead"));
        assert_eq!(dead.group_id, group_id("g"));
        let (l, f, _) = stable_pair(&c).await;
        let group = describe_g(&c);
        assert_eq!(group.group_state.as_str(), "Stable");
        assert_eq!(group.protocol_type.as_str(), "consumer");
        assert_eq!(group.protocol_data.as_str(), "range");
        let members: Vec<(String, String, String, Bytes, Bytes)> = group
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.client_id.to_string(),
                    m.client_host.to_string(),
                    m.member_metadata.clone(),
                    m.member_assignment.clone(),
                )
            })
            .collect();
        let leader_client = if l.starts_with("a-") { "a" } else { "b" };
        let follower_client = if leader_client == "a" { "b" } else { "a" };
        assert_eq!(
            members,
            vec![
                (
                    l,
                    leader_client.into(),
                    "/h".into(),
                    Bytes::from_static(b"meta"),
                    Bytes::from_static(b"to-leader")
                ),
                (
                    f,
                    follower_client.into(),
                    "/h".into(),
                    Bytes::from_static(b"meta"),
                    Bytes::from_static(b"to-follower")
                ),
            ]
        );
        assert_eq!(
            c.list(),
            vec![("g".to_owned(), "consumer".to_owned(), "Stable".to_owned())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_joins_get_kafka_errors() {
        let c = GroupCoordinator::new(GroupSettings::default());
        let no_group = c
            .join(join_req("", "", &[("range", b"")]), 3, "a", "/h")
            .await;
        assert_eq!(no_group.error_code, INVALID_GROUP_ID);
        let mut short = range("");
        short.session_timeout_ms = 1_000;
        assert_eq!(
            c.join(short, 3, "a", "/h").await.error_code,
            INVALID_SESSION_TIMEOUT
        );
        let mut negative = range("");
        negative.session_timeout_ms = -5;
        assert_eq!(
            c.join(negative, 3, "a", "/h").await.error_code,
            INVALID_SESSION_TIMEOUT
        );
        let none = c.join(join_req("g", "", &[]), 3, "a", "/h").await;
        assert_eq!(none.error_code, INCONSISTENT_GROUP_PROTOCOL);
        let huge: &'static [u8] =
            Box::leak(vec![0u8; MAX_MEMBER_METADATA_BYTES].into_boxed_slice());
        let too_big = c
            .join(join_req("g", "", &[("range", huge)]), 3, "a", "/h")
            .await;
        assert_eq!(too_big.error_code, INVALID_REQUEST);
        let first = c.join(range(""), 3, "a", "/h").await;
        assert_eq!(first.error_code, NONE);
        let other = c
            .join(join_req("g", "", &[("roundrobin", b"")]), 3, "b", "/h")
            .await;
        assert_eq!(other.error_code, INCONSISTENT_GROUP_PROTOCOL);
        let mut connect = range("");
        connect.protocol_type = s("connect");
        assert_eq!(
            c.join(connect, 3, "b", "/h").await.error_code,
            INCONSISTENT_GROUP_PROTOCOL
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_is_capped_at_max_members() {
        let c = GroupCoordinator::new(GroupSettings::default());
        for i in 0..MAX_MEMBERS_PER_GROUP {
            let answer = c.join(range(""), 4, "m", "/h").await;
            assert_eq!(answer.error_code, MEMBER_ID_REQUIRED, "member {i}");
        }
        let over = c.join(range(""), 4, "m", "/h").await;
        assert_eq!(over.error_code, GROUP_MAX_SIZE_REACHED);
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_whose_client_went_away_expires_with_its_session() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        // The follower rejoins with new metadata (a real rejoin, which waits), and its
        // connection drops while it waits.
        let c2 = Arc::clone(&c);
        let f2 = f.clone();
        let gone = tokio::spawn(async move {
            c2.join(join_req("g", &f2, &[("range", b"new")]), 3, "b", "/h")
                .await
        });
        settle().await;
        gone.abort();
        let _ = gone.await;
        // Counted as rejoined, so the leader's join completes the rebalance at once...
        let leader = c.join(range(&l), 3, "a", "/h").await;
        assert_eq!(
            (leader.generation_id, leader.members.len()),
            (generation + 1, 2)
        );
        // ...and the member nobody answered expires with its session.
        tokio::time::advance(Duration::from_millis(SESSION_MS as u64 + 1)).await;
        c.tick(Instant::now());
        assert_eq!(heartbeat(&c, &f, generation + 1), UNKNOWN_MEMBER_ID);
    }

    /// The codec refuses fields a version does not have: every answer must encode in every
    /// version the coordinator serves.
    #[tokio::test(start_paused = true)]
    async fn every_answer_encodes_in_every_version() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let (l, f, generation) = stable_pair(&c).await;
        let encode = |result: anyhow::Result<()>, what: &str, version: i16| {
            assert!(result.is_ok(), "{what} v{version}: {result:?}");
        };
        for version in 0..=9 {
            let mut buf = BytesMut::new();
            let ok = c.join(range(&f), version, "b", "/h").await;
            encode(ok.encode(&mut buf, version), "join", version);
            let err = c.join(range("nobody"), version, "b", "/h").await;
            encode(err.encode(&mut buf, version), "join error", version);
        }
        for version in 0..=5 {
            let mut buf = BytesMut::new();
            let ok = c.sync(sync_req(&f, generation, &[]), version).await;
            assert_eq!(ok.error_code, NONE);
            encode(ok.encode(&mut buf, version), "sync", version);
            let err = c.sync(sync_req("nobody", generation, &[]), version).await;
            encode(err.encode(&mut buf, version), "sync error", version);
            let mut req = DescribeGroupsRequest::default();
            req.groups = vec![group_id("g"), group_id("dead")];
            encode(
                c.describe(req, version).encode(&mut buf, version),
                "describe",
                version,
            );
            let mut leave = LeaveGroupRequest::default();
            leave.group_id = group_id("g");
            leave.member_id = s("nobody");
            let mut m = MemberIdentity::default();
            m.member_id = s("nobody");
            leave.members = vec![m];
            encode(
                c.leave(leave, version).encode(&mut buf, version),
                "leave",
                version,
            );
        }
        for version in 0..=4 {
            let mut buf = BytesMut::new();
            let mut req = HeartbeatRequest::default();
            req.group_id = group_id("g");
            req.member_id = s(&l);
            req.generation_id = generation;
            encode(
                c.heartbeat(req, version).encode(&mut buf, version),
                "heartbeat",
                version,
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_protocol_most_members_prefer_wins() {
        let c = GroupCoordinator::new(settings(Duration::from_millis(100)));
        let range_first: &[(&str, &'static [u8])] = &[("range", b"r"), ("roundrobin", b"rr")];
        let rr_first: &[(&str, &'static [u8])] = &[("roundrobin", b"rr"), ("range", b"r")];
        let (a, b, d) = tokio::join!(
            c.join(join_req("g", "", range_first), 3, "a", "/h"),
            c.join(join_req("g", "", rr_first), 3, "b", "/h"),
            c.join(join_req("g", "", rr_first), 3, "d", "/h"),
        );
        for answer in [&a, &b, &d] {
            assert_eq!(answer.error_code, NONE);
            assert_eq!(answer.protocol_name.as_deref(), Some("roundrobin"));
        }
        let metadata: Vec<Bytes> = a.members.iter().map(|m| m.metadata.clone()).collect();
        assert_eq!(metadata, vec![Bytes::from_static(b"rr"); 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_static_member_rejoining_fences_its_old_member_id() {
        let c = GroupCoordinator::new(GroupSettings::default());
        let mut first = range("");
        first.group_instance_id = Some(s("instance-1"));
        let old = c.join(first.clone(), 5, "a", "/h").await;
        assert_eq!(
            (old.error_code, old.generation_id),
            (NONE, 1),
            "static members skip MEMBER_ID_REQUIRED"
        );
        let new = c.join(first, 5, "a", "/h").await;
        assert_eq!((new.error_code, new.generation_id), (NONE, 2));
        assert_ne!(new.member_id, old.member_id);
        let mut stale = HeartbeatRequest::default();
        stale.group_id = group_id("g");
        stale.member_id = old.member_id.clone();
        stale.group_instance_id = Some(s("instance-1"));
        stale.generation_id = 2;
        assert_eq!(c.heartbeat(stale, 4).error_code, FENCED_INSTANCE_ID);
        assert_eq!(describe_g(&c).members.len(), 1);
    }

    impl GroupCoordinator {
        fn describe_state(&self, group: &str) -> Option<&'static str> {
            self.lock().get(group).map(|g| g.state.name())
        }
    }
}
