//! The cluster, topic and offset APIs: ApiVersions, Metadata, FindCoordinator, CreateTopics,
//! DeleteTopics, InitProducerId, OffsetCommit, OffsetFetch, ListGroups.
//!
//! The listener is a cluster of one broker (node [`NODE_ID`]) that leads every partition and
//! coordinates every group. Committed offsets are the store's (what `ferry groups` shows, with
//! lag); the Kafka group coordinator ([`super::groups`]) only decides who may commit.

use super::{Broker, NODE_ID, SUPPORTED, code};
use crate::store::StoreError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    InitProducerIdRequest, InitProducerIdResponse, ListGroupsRequest, ListGroupsResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

pub fn api_versions(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|&(k, lo, hi)| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(lo)
                        .with_max_version(hi)
                })
                .collect(),
        )
}

/// The first producer id of this process: the clock in ms times 1,024, so ids handed out
/// later by another run of the collector are larger than any this one hands out (unless it
/// hands out more than 1,024 per millisecond on average).
pub fn first_producer_id() -> i64 {
    ferry_core::now_ms().max(1) << 10
}

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub fn metadata(broker: &Broker, req: MetadataRequest, version: i16) -> MetadataResponse {
    let ingest = &broker.state.ingest;
    let (host, port) = &broker.advertised;
    let brokers = vec![
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(text(host.clone()))
            .with_port(*port),
    ];
    let store = ingest.store();
    let requested: Option<Vec<String>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.as_str().to_owned()))
                .collect(),
        ),
    };
    let auto_create = version < 4 || req.allow_auto_topic_creation;
    let names: Vec<String> = match requested {
        None => store
            .map(|s| s.topics().into_iter().map(|t| t.name).collect())
            .unwrap_or_default(),
        Some(n) => n,
    };
    let topics = names
        .into_iter()
        .map(|name| {
            let t = MetadataResponseTopic::default().with_name(Some(TopicName(text(name.clone()))));
            let known = store.and_then(|s| s.topic_partitions(&name));
            let partitions = match known {
                Some(n) => Ok(n),
                None if auto_create => ingest.ensure_topic(&name).map_err(|e| match e {
                    crate::ingest::IngestError::BadRequest(_) => code::INVALID_TOPIC_EXCEPTION,
                    crate::ingest::IngestError::Busy(_) => code::THROTTLING_QUOTA_EXCEEDED,
                    _ => code::UNKNOWN_TOPIC_OR_PARTITION,
                }),
                None if ferry_core::topic::validate_name(&name).is_err() => {
                    Err(code::INVALID_TOPIC_EXCEPTION)
                }
                None => Err(code::UNKNOWN_TOPIC_OR_PARTITION),
            };
            match partitions {
                Ok(n) => t.with_partitions(
                    (0..n as i32)
                        .map(|i| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i)
                                .with_leader_id(BrokerId(NODE_ID))
                                .with_leader_epoch(0)
                                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                                .with_isr_nodes(vec![BrokerId(NODE_ID)])
                        })
                        .collect(),
                ),
                Err(e) => t.with_error_code(e),
            }
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(text(super::CLUSTER_ID)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

/// Every group and transaction coordinator is this broker.
pub fn find_coordinator(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let (host, port) = &broker.advertised;
    // v4 answers per key, and its top-level fields must stay unset (the codec refuses them).
    if version < 4 {
        return FindCoordinatorResponse::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(text(host.clone()))
            .with_port(*port);
    }
    {
        use kafka_protocol::messages::find_coordinator_response::Coordinator;
        FindCoordinatorResponse::default().with_coordinators(
            req.coordinator_keys
                .into_iter()
                .map(|k| {
                    Coordinator::default()
                        .with_key(k)
                        .with_node_id(BrokerId(NODE_ID))
                        .with_host(text(host.clone()))
                        .with_port(*port)
                })
                .collect(),
        )
    }
}

/// A partition of an OffsetCommit: its index, and the offset to commit or the error.
type PartitionCommit = (i32, Result<u64, i16>);

pub async fn offset_commit(
    broker: &Broker,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.0.as_str().to_owned();
    let allowed = if group.is_empty() {
        Err(code::INVALID_REQUEST)
    } else {
        broker.groups.check_commit(
            &group,
            req.member_id.as_str(),
            req.generation_id_or_member_epoch,
        )
    };
    let store = broker.state.ingest.store();
    // Per partition: the error, or the offset to commit.
    let mut plan: Vec<(TopicName, Vec<PartitionCommit>)> = Vec::new();
    for t in req.topics {
        let name = t.name.0.as_str().to_owned();
        let parts = t
            .partitions
            .into_iter()
            .map(|p| {
                let r = allowed.and_then(|()| {
                    let i = u32::try_from(p.partition_index)
                        .map_err(|_| code::UNKNOWN_TOPIC_OR_PARTITION)?;
                    store
                        .and_then(|s| s.bounds(&name, i).ok())
                        .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
                    u64::try_from(p.committed_offset).map_err(|_| code::OFFSET_OUT_OF_RANGE)
                });
                (p.partition_index, r)
            })
            .collect();
        plan.push((t.name, parts));
    }
    let offsets: Vec<(String, u32, u64)> = plan
        .iter()
        .flat_map(|(t, parts)| {
            parts
                .iter()
                .filter_map(move |(i, r)| r.ok().map(|o| (t.0.as_str().to_owned(), *i as u32, o)))
        })
        .collect();
    let stored = match (store, offsets.is_empty()) {
        (_, true) => Ok(()),
        (Some(s), false) => s.commit_offsets(&group, &offsets).await.map_err(|e| {
            tracing::warn!(group, error = %e, "kafka offset commit failed");
            match e {
                StoreError::UnknownTopic(_) | StoreError::UnknownPartition { .. } => {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                }
                _ => code::KAFKA_STORAGE_ERROR,
            }
        }),
        (None, false) => Err(code::KAFKA_STORAGE_ERROR),
    };
    if stored.is_ok() && !offsets.is_empty() {
        metrics::counter!("ferry_kafka_offset_commits_total").increment(1);
    }
    let topics = plan
        .into_iter()
        .map(|(name, parts)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(i, r)| {
                            let error = match r {
                                Ok(_) => stored.err().unwrap_or(code::NONE),
                                Err(e) => e,
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(i)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub fn offset_fetch(
    broker: &Broker,
    req: OffsetFetchRequest,
    _version: i16,
) -> OffsetFetchResponse {
    let group = req.group_id.0.as_str().to_owned();
    let committed: BTreeMap<(String, u32), u64> = broker
        .state
        .ingest
        .store()
        .map(|s| s.committed_offsets(&group))
        .unwrap_or_default()
        .into_iter()
        .map(|(t, p, o)| ((t, p), o))
        .collect();
    let wanted: Vec<(TopicName, Vec<i32>)> = match req.topics {
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (t, p) in committed.keys() {
                by_topic.entry(t.clone()).or_default().push(*p as i32);
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| (TopicName(text(t)), ps))
                .collect()
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, parts)| {
            let n = name.0.as_str().to_owned();
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|i| {
                            let o = u32::try_from(i)
                                .ok()
                                .and_then(|p| committed.get(&(n.clone(), p)))
                                .map_or(-1, |&o| o as i64);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(i)
                                .with_committed_offset(o)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

pub fn create_topics(
    broker: &Broker,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let config = &broker.state.config;
    let store = broker.state.ingest.store();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.as_str().to_owned();
            let n = if t.num_partitions == -1 {
                config.default_partitions as i32
            } else {
                t.num_partitions
            };
            let res = CreatableTopicResult::default().with_name(t.name);
            let err = |code: i16, msg: String| {
                CreatableTopicResult::default()
                    .with_name(TopicName(text(name.clone())))
                    .with_error_code(code)
                    .with_error_message(Some(text(msg)))
            };
            if let Err(e) = ferry_core::topic::validate_name(&name) {
                return err(code::INVALID_TOPIC_EXCEPTION, e);
            }
            if n < 1 || n as u32 > config.limits.max_partitions_per_topic {
                return err(
                    code::INVALID_PARTITIONS,
                    format!(
                        "partitions must be 1 to {} (limits.max_partitions_per_topic), got {n}",
                        config.limits.max_partitions_per_topic
                    ),
                );
            }
            if t.replication_factor > 1 {
                return err(
                    code::INVALID_REPLICATION_FACTOR,
                    format!(
                        "replication factor {} is larger than the 1 broker ferry is",
                        t.replication_factor
                    ),
                );
            }
            let Some(store) = store else {
                return err(code::KAFKA_STORAGE_ERROR, "no embedded store".into());
            };
            if store.topic_partitions(&name).is_some() {
                return err(
                    code::TOPIC_ALREADY_EXISTS,
                    format!("topic {name} already exists"),
                );
            }
            if req.validate_only {
                return res.with_num_partitions(n).with_replication_factor(1);
            }
            match store.create_topic_bounded(&name, n as u32, config.limits.max_topics as usize) {
                Ok(_) => {
                    tracing::info!(
                        topic = name,
                        partitions = n,
                        "topic created (kafka CreateTopics)"
                    );
                    res.with_num_partitions(n)
                        .with_replication_factor(1)
                        .with_error_message(None)
                }
                Err(StoreError::TooManyTopics { max }) => err(
                    code::POLICY_VIOLATION,
                    format!("the collector holds at most {max} topics (limits.max_topics)"),
                ),
                Err(e) => err(code::KAFKA_STORAGE_ERROR, e.to_string()),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

pub fn delete_topics(
    broker: &Broker,
    req: DeleteTopicsRequest,
    _version: i16,
) -> DeleteTopicsResponse {
    let store = broker.state.ingest.store();
    let responses = req
        .topic_names
        .into_iter()
        .map(|name| {
            let n = name.0.as_str().to_owned();
            let r = DeletableTopicResult::default().with_name(Some(name));
            match store.map(|s| s.delete_topic(&n)) {
                Some(Ok(true)) => {
                    metrics::counter!("ferry_collector_topics_deleted_total").increment(1);
                    r
                }
                Some(Ok(false)) => r.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
                Some(Err(e)) => r
                    .with_error_code(code::KAFKA_STORAGE_ERROR)
                    .with_error_message(Some(text(e.to_string()))),
                None => r.with_error_code(code::KAFKA_STORAGE_ERROR),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// A fresh producer id for every call: an idempotent producer's sequence numbers restart at
/// 0 with each id, and the store's dedup is keyed by the id. Transactions are refused.
pub fn init_producer_id(broker: &Broker, req: InitProducerIdRequest) -> InitProducerIdResponse {
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        return InitProducerIdResponse::default()
            .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let id = broker.next_producer_id.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("ferry_kafka_producer_ids_total").increment(1);
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(0)
}

pub fn list_groups(broker: &Broker, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut groups: BTreeMap<String, (String, String)> = broker
        .state
        .ingest
        .store()
        .map(|s| s.groups())
        .unwrap_or_default()
        .into_iter()
        .map(|g| (g, ("consumer".to_owned(), "Empty".to_owned())))
        .collect();
    for (g, protocol_type, state) in broker.groups.list() {
        groups.insert(g, (protocol_type, state));
    }
    let states: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let listed = groups
        .into_iter()
        .filter(|(_, (_, st))| states.is_empty() || states.contains(&st.to_ascii_lowercase()))
        .map(|(g, (pt, st))| {
            ListedGroup::default()
                .with_group_id(GroupId(text(g)))
                .with_protocol_type(text(pt))
                .with_group_state(text(st))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}
