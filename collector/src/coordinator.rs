//! Consumer groups: membership and server-side partition assignment.
//!
//! A member joins a group with the topics it wants, then heartbeats. Each heartbeat tells the
//! coordinator which partitions the member currently consumes (`owned`), and the answer is the
//! partitions it may consume now (`assignment`). When members come or go, the coordinator
//! computes a new *target* owner per partition (round-robin over the members of each topic,
//! sorted by id, so the result is deterministic), and moves partitions in two steps:
//! 1. the old owner's next assignment no longer lists the partition: it commits its position and
//!    stops; its following heartbeat no longer lists it as owned, which releases it;
//! 2. only then is the partition granted to its new target.
//!
//! So a partition never has two consumers at once, and the new one starts from the old one's
//! final commit: in a stable group every record is delivered to exactly one member. A member
//! that misses heartbeats for its session timeout is removed and its partitions are released.
//!
//! Time is passed in (`now_ms`, monotonic) so the whole state machine is tested without a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A topic partition.
pub type Tp = (String, u32);

/// One async lock per group, held by a commit or checkpoint from its ownership check until its
/// write is durable, and by every change of the group's membership (join, heartbeat, leave;
/// expiry skips a group whose lock is held). So "check the owner, then write" is one step: no
/// partition changes hands between the two.
#[derive(Debug, Default)]
pub struct GroupLocks {
    /// A std mutex held only to find or insert a group's lock, never across an await.
    locks: std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// Locks kept for idle groups before unused ones are dropped.
const MAX_IDLE_GROUP_LOCKS: usize = 1024;

impl GroupLocks {
    /// Waits for `group`'s lock.
    pub async fn lock(&self, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = match self.locks.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            if locks.len() > MAX_IDLE_GROUP_LOCKS {
                locks.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            }
            locks.entry(group.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Whether `group`'s lock is held now.
    pub fn is_locked(&self, group: &str) -> bool {
        let locks = match self.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.get(group).is_some_and(|l| l.try_lock().is_err())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoordError {
    #[error(
        "member {member} is not in group {group} (it left, or its session expired): join again"
    )]
    UnknownMember { group: String, member: String },
    #[error("unknown group {0}")]
    UnknownGroup(String),
    #[error("member {member} of group {group} does not own {topic}/{partition}")]
    NotOwner {
        group: String,
        member: String,
        topic: String,
        partition: u32,
    },
    #[error(
        "member {member} of group {group} writes {topic}/{partition} with generation {given}, but was granted it again in generation {granted}: a stale write, refused"
    )]
    StaleGeneration {
        group: String,
        member: String,
        topic: String,
        partition: u32,
        given: u64,
        granted: u64,
    },
}

#[derive(Debug, Clone)]
struct Member {
    topics: Vec<String>,
    session_timeout_ms: u64,
    last_seen_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// The member consuming the partition now (granted and not yet released).
    owner: Option<String>,
    /// The member the current generation assigns it to.
    target: Option<String>,
    /// The generation in which `owner` was granted the partition: a write from the owner that
    /// carries an older generation was made before it lost and regained it, and is stale.
    granted_generation: u64,
}

#[derive(Debug, Default)]
struct Group {
    generation: u64,
    members: BTreeMap<String, Member>,
    slots: BTreeMap<Tp, Slot>,
    /// Partition counts the last assignment was computed with.
    partition_counts: BTreeMap<String, u32>,
}

/// What a member is told after joining or heartbeating.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<Tp>,
}

/// A member as `describe` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberInfo {
    pub member_id: String,
    pub topics: Vec<String>,
    pub partitions: Vec<Tp>,
}

/// Every group's membership. Not thread-safe by itself: the API holds it in a mutex that is never
/// held across an await.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: HashMap<String, Group>,
}

/// A new member id: the group's name and 128 random bits, so that no client can guess another
/// member's id (and commit or checkpoint as it).
fn new_member_id(group: &str) -> String {
    format!("{group}-{:032x}", rand::random::<u128>())
}

impl Coordinator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member, or re-adds `member_id` if it is a live member of the group. Any other
    /// `member_id` (one that expired or left, or one a client made up) is not taken: the member
    /// gets a fresh id, chosen here (the answer's `member_id`). `partitions_of` gives a topic's
    /// partition count (`None` for a topic that does not exist yet: it is assigned once it does).
    pub fn join(
        &mut self,
        group: &str,
        member_id: Option<&str>,
        topics: Vec<String>,
        session_timeout_ms: u64,
        now_ms: u64,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Assignment {
        let g = self.groups.entry(group.to_owned()).or_default();
        let id = match member_id {
            Some(id) if g.members.contains_key(id) => id.to_owned(),
            _ => new_member_id(group),
        };
        g.members.insert(
            id.clone(),
            Member {
                topics,
                session_timeout_ms,
                last_seen_ms: now_ms,
            },
        );
        rebalance(g, partitions_of);
        let partitions = grant(g, &id);
        Assignment {
            member_id: id,
            generation: g.generation,
            partitions,
        }
    }

    /// Records a heartbeat: `owned` is what the member consumes right now. Returns what it may
    /// consume from now on.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        owned: &[Tp],
        now_ms: u64,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Assignment, CoordError> {
        let unknown = || CoordError::UnknownMember {
            group: group.to_owned(),
            member: member_id.to_owned(),
        };
        let g = self.groups.get_mut(group).ok_or_else(unknown)?;
        let m = g.members.get_mut(member_id).ok_or_else(unknown)?;
        m.last_seen_ms = now_ms;
        let owned: BTreeSet<&Tp> = owned.iter().collect();
        for (tp, slot) in g.slots.iter_mut() {
            if slot.owner.as_deref() == Some(member_id) && !owned.contains(tp) {
                slot.owner = None;
            }
        }
        // A topic created or grown since the last assignment is picked up here.
        let counts_changed = g
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .any(|t| partitions_of(t) != g.partition_counts.get(t).copied());
        if counts_changed {
            rebalance(g, partitions_of);
        }
        Ok(Assignment {
            member_id: member_id.to_owned(),
            generation: g.generation,
            partitions: grant(g, member_id),
        })
    }

    /// Removes a member at its request; its partitions are released at once.
    pub fn leave(
        &mut self,
        group: &str,
        member_id: &str,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), CoordError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| CoordError::UnknownGroup(group.to_owned()))?;
        if g.members.remove(member_id).is_none() {
            return Err(CoordError::UnknownMember {
                group: group.to_owned(),
                member: member_id.to_owned(),
            });
        }
        release_all(g, member_id);
        rebalance(g, partitions_of);
        Ok(())
    }

    /// Removes members whose session timed out; returns (group, member) for each. A group for
    /// which `busy` is true (a commit or checkpoint of it is being written) is left for the
    /// next round, so that a write checked against an owner never lands after the owner was
    /// expired and its partition handed on.
    pub fn expire(
        &mut self,
        now_ms: u64,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
        busy: &dyn Fn(&str) -> bool,
    ) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            if busy(name) {
                continue;
            }
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in &dead {
                g.members.remove(id);
                release_all(g, id);
                gone.push((name.clone(), id.clone()));
            }
            rebalance(g, partitions_of);
        }
        gone
    }

    /// Whether `member_id` may commit offsets for `topic/partition`: it must own it, and, when
    /// the write says which `generation` it was made in, not have lost and regained the
    /// partition since.
    pub fn check_owner(
        &self,
        group: &str,
        member_id: &str,
        topic: &str,
        partition: u32,
        generation: Option<u64>,
    ) -> Result<(), CoordError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| CoordError::UnknownMember {
                group: group.to_owned(),
                member: member_id.to_owned(),
            })?;
        if !g.members.contains_key(member_id) {
            return Err(CoordError::UnknownMember {
                group: group.to_owned(),
                member: member_id.to_owned(),
            });
        }
        let slot = g
            .slots
            .get(&(topic.to_owned(), partition))
            .filter(|s| s.owner.as_deref() == Some(member_id));
        if let Some(slot) = slot {
            match generation {
                Some(given) if given < slot.granted_generation => {
                    Err(CoordError::StaleGeneration {
                        group: group.to_owned(),
                        member: member_id.to_owned(),
                        topic: topic.to_owned(),
                        partition,
                        given,
                        granted: slot.granted_generation,
                    })
                }
                _ => Ok(()),
            }
        } else {
            Err(CoordError::NotOwner {
                group: group.to_owned(),
                member: member_id.to_owned(),
                topic: topic.to_owned(),
                partition,
            })
        }
    }

    /// Members of a group with the partitions each owns now.
    pub fn describe(&self, group: &str) -> Vec<MemberInfo> {
        let Some(g) = self.groups.get(group) else {
            return Vec::new();
        };
        g.members
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                topics: m.topics.clone(),
                partitions: g
                    .slots
                    .iter()
                    .filter(|(_, s)| s.owner.as_deref() == Some(id.as_str()))
                    .map(|(tp, _)| tp.clone())
                    .collect(),
            })
            .collect()
    }

    pub fn group_names(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn release_all(g: &mut Group, member: &str) {
    for slot in g.slots.values_mut() {
        if slot.owner.as_deref() == Some(member) {
            slot.owner = None;
        }
    }
}

/// Recomputes every partition's target: per topic, its partitions dealt round-robin to the
/// members subscribed to it, in id order. Bumps the generation if any target changed.
fn rebalance(g: &mut Group, partitions_of: &dyn Fn(&str) -> Option<u32>) {
    let topics: BTreeSet<String> = g
        .members
        .values()
        .flat_map(|m| m.topics.iter().cloned())
        .collect();
    let mut targets: BTreeMap<Tp, String> = BTreeMap::new();
    g.partition_counts.clear();
    for t in &topics {
        let Some(n) = partitions_of(t) else { continue };
        g.partition_counts.insert(t.clone(), n);
        let subs: Vec<&String> = g
            .members
            .iter()
            .filter(|(_, m)| m.topics.contains(t))
            .map(|(id, _)| id)
            .collect();
        for p in 0..n {
            targets.insert((t.clone(), p), subs[p as usize % subs.len()].clone());
        }
    }
    let mut changed = false;
    for (tp, slot) in g.slots.iter_mut() {
        let new = targets.get(tp).cloned();
        if slot.target != new {
            slot.target = new;
            changed = true;
        }
    }
    for (tp, target) in targets {
        g.slots.entry(tp).or_insert_with(|| {
            changed = true;
            Slot {
                owner: None,
                target: Some(target),
                granted_generation: 0,
            }
        });
    }
    // Forget partitions nobody targets and nobody owns.
    g.slots
        .retain(|_, s| s.owner.is_some() || s.target.is_some());
    if changed {
        g.generation += 1;
    }
}

/// The partitions `member` may consume now: its targets that are free or already its own.
/// Free ones are granted to it.
fn grant(g: &mut Group, member: &str) -> Vec<Tp> {
    let mut out = Vec::new();
    for (tp, slot) in g.slots.iter_mut() {
        if slot.target.as_deref() != Some(member) {
            continue;
        }
        match slot.owner.as_deref() {
            None => {
                slot.owner = Some(member.to_owned());
                slot.granted_generation = g.generation;
                out.push(tp.clone());
            }
            Some(o) if o == member => out.push(tp.clone()),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn four(t: &str) -> Option<u32> {
        (t == "app").then_some(4)
    }

    fn tps(v: &[u32]) -> Vec<Tp> {
        v.iter().map(|&p| ("app".to_owned(), p)).collect()
    }

    #[test]
    fn second_member_gets_half_only_after_the_first_releases() {
        let mut c = Coordinator::new();
        let a = c.join("g", None, vec!["app".into()], 10_000, 0, &four);
        assert_eq!(a.partitions, tps(&[0, 1, 2, 3]));
        let b = c.join("g", None, vec!["app".into()], 10_000, 1, &four);
        let (ma, mb) = (a.member_id.clone(), b.member_id.clone());
        let (a_id, b_id) = (ma.as_str(), mb.as_str());
        // Partitions are dealt in member-id order: the first id gets 0 and 2.
        let (keep, give) = if a_id < b_id {
            ([0, 2], [1, 3])
        } else {
            ([1, 3], [0, 2])
        };
        // b's targets are still owned by a.
        assert!(b.partitions.is_empty());
        assert!(b.generation > a.generation);
        // a learns it must give them up.
        let a2 = c
            .heartbeat("g", a_id, &tps(&[0, 1, 2, 3]), 2, &four)
            .unwrap();
        assert_eq!(a2.partitions, tps(&keep));
        // b still waits: a has not released yet.
        assert!(
            c.heartbeat("g", b_id, &[], 3, &four)
                .unwrap()
                .partitions
                .is_empty()
        );
        assert!(
            c.check_owner("g", a_id, "app", give[0], None).is_ok(),
            "a may commit its final offset"
        );
        c.heartbeat("g", a_id, &tps(&keep), 4, &four).unwrap();
        assert_eq!(
            c.heartbeat("g", b_id, &[], 5, &four).unwrap().partitions,
            tps(&give)
        );
        assert!(c.check_owner("g", a_id, "app", give[0], None).is_err());
    }

    #[test]
    fn expired_and_departed_members_release_partitions() {
        let mut c = Coordinator::new();
        let a = c
            .join("g", None, vec!["app".into()], 1_000, 0, &four)
            .member_id;
        let b = c
            .join("g", None, vec!["app".into()], 1_000, 0, &four)
            .member_id;
        // Ids are sorted for assignment: name them so that the test reads "a" first.
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let (a, b) = (a.as_str(), b.as_str());
        c.heartbeat("g", a, &tps(&[0, 1, 2, 3]), 10, &four).unwrap();
        c.heartbeat("g", a, &tps(&[0, 2]), 500, &four).unwrap();
        c.heartbeat("g", b, &tps(&[1, 3]), 500, &four).unwrap();
        // b stops heartbeating; a keeps going.
        c.heartbeat("g", a, &tps(&[0, 2]), 1_400, &four).unwrap();
        assert_eq!(
            c.expire(1_600, &four, &|_| false),
            vec![("g".into(), b.to_owned())]
        );
        let after = c.heartbeat("g", a, &tps(&[0, 2]), 1_700, &four).unwrap();
        assert_eq!(after.partitions, tps(&[0, 1, 2, 3]));
        assert_eq!(
            c.heartbeat("g", b, &[], 1_800, &four),
            Err(CoordError::UnknownMember {
                group: "g".into(),
                member: b.to_owned()
            })
        );
        c.leave("g", a, &four).unwrap();
        assert!(c.leave("g", a, &four).is_err());
    }

    #[test]
    fn member_ids_are_chosen_by_the_collector_and_unguessable() {
        let mut c = Coordinator::new();
        let a = c.join("g", Some("made-up"), vec!["app".into()], 1_000, 0, &four);
        assert_ne!(a.member_id, "made-up", "a client may not choose its id");
        assert_eq!(a.member_id.len(), "g-".len() + 32, "{}", a.member_id);
        // A live member rejoining keeps its id; another join gets a different one.
        let again = c.join("g", Some(&a.member_id), vec!["app".into()], 1_000, 1, &four);
        assert_eq!(again.member_id, a.member_id);
        let b = c.join("g", None, vec!["app".into()], 1_000, 2, &four);
        assert_ne!(b.member_id, a.member_id);
        // Once a member left, its id is not taken back.
        c.leave("g", &b.member_id, &four).unwrap();
        let c2 = c.join("g", Some(&b.member_id), vec!["app".into()], 1_000, 3, &four);
        assert_ne!(c2.member_id, b.member_id);
    }

    #[test]
    fn a_write_from_before_the_partition_came_back_is_stale() {
        let mut c = Coordinator::new();
        let a = c.join("g", None, vec!["app".into()], 10_000, 0, &four);
        let first = a.generation;
        assert!(
            c.check_owner("g", &a.member_id, "app", 0, Some(first))
                .is_ok()
        );
        // b joins: a gives up half, then b leaves and a gets everything back, in a later
        // generation.
        let b = c.join("g", None, vec!["app".into()], 10_000, 1, &four);
        let kept = c
            .heartbeat("g", &a.member_id, &tps(&[0, 1, 2, 3]), 2, &four)
            .unwrap()
            .partitions;
        c.heartbeat("g", &a.member_id, &kept, 3, &four).unwrap();
        c.leave("g", &b.member_id, &four).unwrap();
        let back = c.heartbeat("g", &a.member_id, &kept, 4, &four).unwrap();
        assert_eq!(back.partitions, tps(&[0, 1, 2, 3]));
        let given_up = (0..4)
            .find(|p| !kept.contains(&("app".to_owned(), *p)))
            .unwrap();
        // A write of a partition it regained, made in the first generation: stale (409).
        assert!(matches!(
            c.check_owner("g", &a.member_id, "app", given_up, Some(first)),
            Err(CoordError::StaleGeneration { .. })
        ));
        // The same with the current generation, or of a partition it never gave up: fine.
        assert!(
            c.check_owner("g", &a.member_id, "app", given_up, Some(back.generation))
                .is_ok()
        );
        assert!(
            c.check_owner("g", &a.member_id, "app", kept[0].1, Some(first))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn group_locks_are_per_group_and_seen_held() {
        let locks = GroupLocks::default();
        let g = locks.lock("a").await;
        assert!(locks.is_locked("a"));
        assert!(!locks.is_locked("b"));
        let _other = locks.lock("b").await;
        drop(g);
        assert!(!locks.is_locked("a"));
    }

    #[test]
    fn topic_created_after_join_is_assigned() {
        let mut c = Coordinator::new();
        let a = c.join("g", None, vec!["late".into()], 1_000, 0, &|_| None);
        assert!(a.partitions.is_empty());
        let a = c
            .heartbeat("g", &a.member_id, &[], 10, &|t| (t == "late").then_some(2))
            .unwrap();
        assert_eq!(a.partitions.len(), 2);
    }

    proptest! {
        /// Random joins, leaves, expiries and heartbeats (members acting on their assignments):
        /// no partition is ever owned by two members, and once things settle every partition is
        /// owned by exactly one live member.
        #[test]
        fn never_two_owners_and_settles(ops in proptest::collection::vec((0u8..4, 0usize..4), 1..60)) {
            let mut c = Coordinator::new();
            let mut owned: BTreeMap<String, Vec<Tp>> = BTreeMap::new();
            // The id the collector gave each of the four clients (they rejoin with it).
            let mut ids: BTreeMap<usize, String> = BTreeMap::new();
            let mut now = 0u64;
            for (op, m) in ops {
                now += 100;
                let id = ids.get(&m).cloned().unwrap_or_default();
                match op {
                    0 => {
                        let a = c.join("g", Some(&id), vec!["app".into()], 1_000, now, &four);
                        if a.member_id != id {
                            // A fresh id (the old one expired or left, or there was none).
                            owned.remove(&id);
                        }
                        ids.insert(m, a.member_id.clone());
                        owned.insert(a.member_id, a.partitions);
                    }
                    1 => {
                        if c.leave("g", &id, &four).is_ok() {
                            owned.remove(&id);
                        }
                    }
                    2 => {
                        for (g, gone) in c.expire(now + 2_000, &four, &|_| false) {
                            prop_assert_eq!(g, "g");
                            owned.remove(&gone);
                        }
                        now += 2_000;
                    }
                    _ => {
                        if let Some(mine) = owned.get(&id).cloned() {
                            let a = c.heartbeat("g", &id, &mine, now, &four).unwrap();
                            owned.insert(id, a.partitions);
                        }
                    }
                }
                let mut seen = BTreeSet::new();
                for ps in owned.values() {
                    for p in ps {
                        prop_assert!(seen.insert(p.clone()), "{:?} owned twice", p);
                    }
                }
            }
            // Settle: everyone heartbeats a few rounds.
            for _ in 0..3 {
                now += 10;
                for id in owned.keys().cloned().collect::<Vec<_>>() {
                    let mine = owned[&id].clone();
                    let a = c.heartbeat("g", &id, &mine, now, &four).unwrap();
                    owned.insert(id, a.partitions);
                }
            }
            let total: usize = owned.values().map(Vec::len).sum();
            if owned.is_empty() {
                prop_assert_eq!(total, 0);
            } else {
                prop_assert_eq!(total, 4);
            }
        }
    }
}
