//! The `kafka:` config section: brokers, producer settings, topic mapping, security.
//!
//! Everything librdkafka understands can be reached: the named fields cover what ferry users
//! set most, and `options` passes any other `librdkafka.key: value` through unchanged (applied
//! last, so it wins over ferry's defaults).
//!
//! ```yaml
//! kafka:
//!   brokers: "kafka-1:9092,kafka-2:9092"
//!   compression: zstd          # gzip (default), lz4, zstd, snappy, none
//!   message_timeout: 30s       # a record not acknowledged by then fails its whole request
//!   topic_prefix: "ferry."     # ferry topic "orders" -> Kafka topic "ferry.orders"
//!   topics:
//!     orders: { kafka_topic: "shop-orders", key_field: customer }
//!   security_protocol: sasl_ssl
//!   sasl_mechanism: SCRAM-SHA-512
//!   sasl_username: ferry
//!   sasl_password: ${KAFKA_PASSWORD}
//!   options: { "linger.ms": "5" }
//! ```

use ferry_core::config::Duration;
use rdkafka::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Compression of produced message batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Lz4,
    Zstd,
    Snappy,
    None,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::None => "none",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            "snappy" => Ok(Self::Snappy),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown compression {other:?} (use gzip, lz4, zstd, snappy or none)"
            )),
        }
    }
}

/// Per ferry topic: where it goes in Kafka and which field keys its messages.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopicConfig {
    /// The Kafka topic name (default: `topic_prefix` + the ferry topic).
    #[serde(default)]
    pub kafka_topic: Option<String>,
    /// The record field whose value becomes the message key (same key, same partition).
    #[serde(default)]
    pub key_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// `compression.type` of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// `message.timeout.ms`: how long librdkafka keeps retrying one message before it reports
    /// it failed (and the request that carried it is refused).
    #[serde(default = "default_message_timeout")]
    pub message_timeout: Duration,
    /// Prepended to a ferry topic to name its Kafka topic when `topics` has no entry for it.
    #[serde(default)]
    pub topic_prefix: String,
    /// Explicit per-topic mapping and key fields.
    #[serde(default)]
    pub topics: BTreeMap<String, KafkaTopicConfig>,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext, sasl_ssl.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// `ssl.ca.location`: CA certificate file to verify the brokers with.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location` / `ssl.key.location` / `ssl.key.password`: client certificate.
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    #[serde(default)]
    pub ssl_key_password: Option<String>,
    /// Any other librdkafka property, applied last.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_message_timeout() -> Duration {
    Duration::from_secs(30)
}

impl KafkaConfig {
    /// A config with defaults for everything but the brokers (the `--kafka BROKERS` quick form).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            compression: Compression::default(),
            message_timeout: default_message_timeout(),
            topic_prefix: String::new(),
            topics: BTreeMap::new(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            options: BTreeMap::new(),
        }
    }

    /// The Kafka topic a ferry topic is stored in.
    pub fn kafka_topic(&self, ferry_topic: &str) -> String {
        match self
            .topics
            .get(ferry_topic)
            .and_then(|t| t.kafka_topic.as_ref())
        {
            Some(t) => t.clone(),
            None => format!("{}{ferry_topic}", self.topic_prefix),
        }
    }

    /// The key field of a ferry topic, if configured.
    pub fn key_field(&self, ferry_topic: &str) -> Option<&str> {
        self.topics
            .get(ferry_topic)
            .and_then(|t| t.key_field.as_deref())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers is empty: give host:port[,host:port...]".into());
        }
        if self.message_timeout.get().as_millis() == 0 {
            return Err("kafka.message_timeout must be more than 0".into());
        }
        for (name, t) in &self.topics {
            if t.kafka_topic.as_deref() == Some("") {
                return Err(format!("kafka.topics.{name}.kafka_topic is empty"));
            }
        }
        Ok(())
    }

    /// The settings every client (producer or consumer) shares: brokers and security, then
    /// `options`. Role-specific settings are added by the producer and consumer.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        let named = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
            ("ssl.key.password", &self.ssl_key_password),
        ];
        for (k, v) in named {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        c
    }

    /// Applies `options` on top of `c` (last, so users can override ferry's defaults).
    pub fn apply_options(&self, c: &mut ClientConfig) {
        for (k, v) in &self.options {
            c.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<KafkaConfig, String> {
        ferry_core::config::load_str(yaml, std::path::Path::new("test.yaml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn full_section_parses_and_maps_topics() {
        let c = parse(
            "brokers: a:9092,b:9092\ncompression: zstd\nmessage_timeout: 5s\ntopic_prefix: 'ferry.'\n\
             topics:\n  orders: { kafka_topic: shop-orders, key_field: customer }\n\
             security_protocol: sasl_ssl\nsasl_mechanism: PLAIN\nsasl_username: u\nsasl_password: p\n\
             options: { linger.ms: '7' }\n",
        )
        .unwrap();
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.kafka_topic("orders"), "shop-orders");
        assert_eq!(c.kafka_topic("logs"), "ferry.logs");
        assert_eq!(c.key_field("orders"), Some("customer"));
        assert_eq!(c.key_field("logs"), None);
        let mut cc = c.client_config();
        c.apply_options(&mut cc);
        assert_eq!(cc.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cc.get("sasl.password"), Some("p"));
        assert_eq!(cc.get("linger.ms"), Some("7"));
        assert_eq!(cc.get("ssl.ca.location"), None);
        c.validate().unwrap();
    }

    /// Security settings reach librdkafka (and TLS/SCRAM are compiled in): a valid set creates
    /// a client, a CA file that does not exist and an unknown protocol are refused by name.
    #[test]
    fn security_settings_are_passed_to_librdkafka() {
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.security_protocol = Some("sasl_ssl".into());
        c.sasl_mechanism = Some("SCRAM-SHA-512".into());
        c.sasl_username = Some("ferry".into());
        c.sasl_password = Some("secret".into());
        assert!(crate::KafkaSink::new(&c).is_ok());
        c.ssl_ca_location = Some("/nonexistent/ferry-test-ca.pem".into());
        let err = crate::KafkaSink::new(&c).err().expect("missing CA refused");
        assert!(err.to_string().contains("ssl.ca.location"), "{err}");
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.security_protocol = Some("carrier_pigeon".into());
        assert!(crate::KafkaSink::new(&c).is_err());
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.options.insert("no.such.property".into(), "1".into());
        assert!(crate::KafkaSink::new(&c).is_err());
    }

    #[test]
    fn unknown_keys_and_codecs_are_refused() {
        assert!(parse("brokers: a:1\nbroker: b\n").is_err());
        assert!(parse("brokers: a:1\ncompression: brotli\n").is_err());
        assert!(parse("brokers: a:1\ntopics: { t: { partitions: 3 } }\n").is_err());
        assert!(parse("compression: gzip\n").is_err(), "brokers is required");
        assert!(KafkaConfig::new(" ").validate().is_err());
    }
}
