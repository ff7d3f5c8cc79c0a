//! Kafka settings: the connection shared by Kafka inputs and outputs (`[kafka]`), a Kafka
//! input's table (`[inputs.NAME]` with `kind = "kafka"`), and the Kafka output
//! (`[output.kafka]`). Secrets never live in the file: `secret_env` names the environment
//! variable that holds each secret option, and nothing here is ever logged with its value.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

/// librdkafka options that carry secrets and so must come through `secret_env`.
const SECRET_OPTIONS: [&str; 5] =
    ["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret", "ssl.key.pem"];

/// Options the engine sets itself, with the reason; setting them in `options` is an error.
const MANAGED_OPTIONS: [(&str, &str); 5] = [
    ("bootstrap.servers", "set `bootstrap_servers` instead"),
    ("group.id", "set the input's `group_id` instead"),
    ("enable.auto.commit", "the engine commits offsets only after every sink has acknowledged them"),
    ("enable.auto.offset.store", "the engine stores offsets itself"),
    ("enable.idempotence", "the output producer is always idempotent"),
];

/// `[kafka]`: how to reach the cluster.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnection {
    /// `bootstrap.servers`. Default: the `KAFKA_BOOTSTRAP` environment variable, else `localhost:9092`.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// Raw librdkafka options, the escape hatch for the rest: `security.protocol = "SASL_SSL"`,
    /// `sasl.mechanisms = "SCRAM-SHA-256"`, `sasl.username`, `ssl.ca.location`, …
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// librdkafka options whose values come from environment variables, option → variable,
    /// e.g. `"sasl.password" = "KAFKA_PASSWORD"`.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
}

impl KafkaConnection {
    /// `bootstrap.servers` as it will be used.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_servers.clone().or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok()).unwrap_or_else(|| "localhost:9092".to_string())
    }

    /// What to add to a Kafka error that says the brokers could not be reached (a timeout, a
    /// transport failure): where the address came from and how to give another.
    pub fn unreachable_hint(&self, error: &str) -> String {
        let unreachable = ["Timed out", "TimedOut", "Transport", "AllBrokersDown", "Connection refused"].iter().any(|s| error.contains(s));
        if !unreachable {
            return String::new();
        }
        let from = if self.bootstrap_servers.is_some() {
            "the config's `[kafka] bootstrap_servers`"
        } else if std::env::var("KAFKA_BOOTSTRAP").is_ok() {
            "$KAFKA_BOOTSTRAP"
        } else {
            "the default: neither `[kafka] bootstrap_servers` nor $KAFKA_BOOTSTRAP is set"
        };
        format!(
            "; no broker answered at {} ({from}): start one (`docker compose up kafka` gives one on localhost:9094), or point `[kafka] bootstrap_servers` or KAFKA_BOOTSTRAP at yours",
            self.bootstrap()
        )
    }

    /// Checks the options; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for key in self.options.keys() {
            if SECRET_OPTIONS.contains(&key.as_str()) {
                return Err((
                    format!("kafka.options.\"{key}\""),
                    format!("is a secret; remove it and name an environment variable instead: [kafka.secret_env] \"{key}\" = \"MY_VAR\""),
                ));
            }
            if let Some((_, why)) = MANAGED_OPTIONS.iter().find(|(k, _)| k == key) {
                return Err((format!("kafka.options.\"{key}\""), format!("is managed by diffstream; remove it ({why})")));
            }
        }
        Ok(())
    }

    /// A librdkafka configuration with the connection, options and secrets.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        for (k, v) in &self.options {
            c.set(k, v);
        }
        for (option, var) in &self.secret_env {
            let value =
                std::env::var(var).map_err(|_| format!("kafka.secret_env: `{option}` comes from ${var}, which is not set; export it"))?;
            c.set(option, value);
        }
        Ok(c)
    }
}

/// Where a Kafka input starts when its consumer group has committed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// the oldest offset
    Earliest,
    /// the end: only records produced from now on
    Latest,
    /// the group's committed offsets, else the fallback
    Committed,
    /// the first offset at or after this time (milliseconds since the epoch)
    Timestamp(i64),
}

impl Start {
    /// Parses `earliest`, `latest`, `committed` or a time.
    pub fn parse(s: &str) -> Result<Start, String> {
        match s {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            "committed" => Ok(Start::Committed),
            other => crate::codec::parse_time_str(other)
                .map(Start::Timestamp)
                .map_err(|_| format!("`{other}` is not earliest, latest, committed or a time like \"2026-01-01T00:00:00Z\"")),
        }
    }
}

/// A Kafka input's options (the `[inputs.NAME]` table with `kind = "kafka"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaInput {
    /// Topics to read; every partition of each is read by exactly one worker.
    pub topics: Vec<String>,
    /// For SQL views: the records' columns, in order, as `"name type"` (see file inputs).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Fields every record must have that no view reads (see file inputs).
    #[serde(default)]
    pub required: Vec<String>,
    /// For SQL views: the event-time column (see file inputs).
    #[serde(default)]
    pub event_time: Option<super::EventTimeConfig>,
    /// For SQL views: the column(s) that key an upsert input (see file inputs).
    #[serde(default)]
    pub primary_key: Option<super::Names>,
    /// The records' format: `"json"`, the default and the only one.
    #[serde(default)]
    pub format: Option<String>,
    /// Consumer group for committed offsets. Default `diffstream`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// `earliest` (default), `latest`, `committed`, or a time such as `"2026-01-01T00:00:00Z"`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Where `committed` starts a partition the group has not committed: `earliest` (default) or `latest`.
    #[serde(default = "default_start")]
    pub fallback: String,
    /// Records per partition reader per logical time at most (Spark's `maxOffsetsPerTrigger`).
    /// Default 10 000.
    #[serde(default = "default_max")]
    pub max_records_per_batch: usize,
    /// Dead-letter topic. Default `<topic>.dlq` for each source topic.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Stop the input after this long without a record (for batch-like runs and tests).
    /// Default: never stop.
    #[serde(default)]
    pub stop_when_idle: Option<super::Duration>,
}

fn default_group() -> String {
    "diffstream".into()
}
fn default_start() -> String {
    "earliest".into()
}
fn default_max() -> usize {
    10_000
}

impl KafkaInput {
    /// Checks the table; `Err((key, message))` with the key relative to the input.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.topics.is_empty() {
            return Err(("topics".into(), "name at least one topic, e.g. topics = [\"clicks\"]".into()));
        }
        Start::parse(&self.start).map_err(|e| ("start".to_string(), e))?;
        match Start::parse(&self.fallback) {
            Ok(Start::Earliest | Start::Latest) => {}
            _ => return Err(("fallback".into(), "must be \"earliest\" or \"latest\"".into())),
        }
        if self.max_records_per_batch == 0 {
            return Err(("max_records_per_batch".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// How output rows are written to Kafka.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// key = the row's key, value = the row after the change, a tombstone when the key is gone:
    /// a compacted topic holds the current state
    #[default]
    Upsert,
    /// value = `{"before", "after", "time"}`
    Change,
}

/// `[output.kafka]`: every output to a topic.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOutput {
    /// Topic of an output is this prefix and the output's name, unless `topics` names it. Default "".
    #[serde(default)]
    pub topic_prefix: String,
    /// Topic per output name, overriding the prefix rule.
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
    /// `upsert` (default) or `change`.
    #[serde(default)]
    pub envelope: Envelope,
    /// After every output record of a logical time is acknowledged, `{"time", "offsets"}` goes
    /// here: reading each output topic up to those offsets gives a consistent snapshot of all
    /// outputs at that time. Default `<topic_prefix>diffstream.progress`.
    #[serde(default)]
    pub progress_topic: Option<String>,
    /// Create missing topics (output, dead-letter, progress) at start-up. Default true.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of topics it creates. Default 3.
    #[serde(default = "three")]
    pub partitions: i32,
}

fn yes() -> bool {
    true
}
fn three() -> i32 {
    3
}

impl KafkaOutput {
    /// The topic of an output.
    pub fn topic(&self, output: &str) -> String {
        self.topics.get(output).cloned().unwrap_or_else(|| format!("{}{output}", self.topic_prefix))
    }
    /// The progress topic.
    pub fn progress(&self) -> String {
        self.progress_topic.clone().unwrap_or_else(|| format!("{}diffstream.progress", self.topic_prefix))
    }
}
