//! The TOML configuration: plain serde data, strict (`deny_unknown_fields`), every field
//! documented, defaults that say where they come from, and validation whose errors name the
//! file, the key and what to write instead.

pub mod builtin;
mod duration;
pub mod kafka;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use builtin::{default_normal_ranges, SensorParams};
use serde::Deserialize;

pub use duration::Duration;

/// A configuration problem: which file, which key, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: `{key}`: {message}")]
pub struct ConfigError {
    /// the file, or `command line`
    pub file: String,
    /// the dotted key path
    pub key: String,
    /// what is wrong and what to write instead
    pub message: String,
}

/// A whole config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dataflows to run when the command line names none:
    /// `user_event_counts`, `user_activity`, `sensor_metrics`, or views of the `views` files.
    #[serde(default)]
    pub dataflows: Vec<String>,
    /// SQL files of views (`CREATE VIEW name AS SELECT …;`, several per file), compiled in
    /// order: a view may read the inputs that have `columns` and the views before it.
    /// `dataflows` names the views written as outputs. Relative paths are relative to the
    /// config file's folder.
    #[serde(default)]
    pub views: Vec<PathBuf>,
    /// The columns that key a view's rows in the sinks (`keys = { processed = ["id"] }`),
    /// for views without GROUP BY, which are otherwise keyed by all their columns. The
    /// columns must identify a row: Kafka keys and MongoDB `_id`s are made of them.
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<String>>,
    /// Workers and batching.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Logical inputs (`users`, `clicks`, `sensors`) bound to where their records come from.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputConfig>,
    /// Where the outputs go.
    #[serde(default)]
    pub output: OutputConfig,
    /// Parameters of the `sensor_metrics` dataflow.
    #[serde(default)]
    pub sensor_metrics: SensorConfig,
    /// How to reach Kafka, for Kafka inputs and outputs.
    #[serde(default)]
    pub kafka: kafka::KafkaConnection,
    /// The HTTP server (dashboard, current rows, subscriptions, metrics).
    #[serde(default)]
    pub http: HttpConfig,
}

/// `[http]`: the engine's HTTP server, on the first process. `--http` wins.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. `"127.0.0.1:9898"`. Default: no server.
    #[serde(default)]
    pub listen: Option<String>,
    /// Allow an address other machines can reach (the server has no authentication). Default false.
    #[serde(default)]
    pub allow_remote: bool,
}

/// `[runtime]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads per process (timely's `-w`); the command line's `-w` wins. Default 1.
    pub workers: usize,
    /// Records per input per batch; the sensor watermark advances once per batch. A logical time
    /// holds one batch, or, for files read by a per-user dataflow, about 200 000 records' worth
    /// (`--batches-per-time`). Default 10 000 (Spark's `maxOffsetsPerTrigger` plays a like role).
    pub batch_size: usize,
    /// Batches a source may run ahead of the outputs before it waits (at least one logical time).
    /// Default 4.
    pub max_inflight: u64,
    /// How often the status line is refreshed. Default `1s`.
    pub status_interval: Duration,
    /// Where a run that reads Kafka keeps its durable state: the bindings of logical times to
    /// input offsets that let a restart reproduce the same times. Default
    /// `$XDG_STATE_HOME/diffstream/<group_id>` (else `~/.local/state/diffstream/<group_id>`), with
    /// the `group_id` of the first Kafka input. Delete it together with the consumer groups to
    /// start over.
    pub state_dir: Option<PathBuf>,
    /// A Kafka topic (on `[kafka]`'s cluster) that also keeps the state, for clusters whose
    /// hosts come and go: every binding and checkpoint part written under `state_dir` is also
    /// written to it and waited for, and at start-up each process rebuilds its `state_dir` from
    /// it — a process on a new host, or whose disk was lost, restarts as if its directory had
    /// been there. One partition, compacted; created when missing. Each process then needs a
    /// `state_dir` of its own. Default: none (the state directory alone).
    pub state_topic: Option<String>,
    /// How often a run that reads Kafka checkpoints its dataflows' state (with the input offsets
    /// of that time) under `state_dir/checkpoints`, so that a restart reads only the input after
    /// the latest checkpoint. `0s` turns checkpoints off. Default `10s`.
    pub checkpoint_interval: Duration,
    /// What a restart starts from: `"checkpoint"` (the latest complete checkpoint, else the
    /// beginning) or `"replay"` (read every input again from where it began, ignoring
    /// checkpoints: the input must still be there). Default `"checkpoint"`.
    pub restart: Restart,
}

/// What a streaming run's restart starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// the latest complete checkpoint
    #[default]
    Checkpoint,
    /// the beginning of every input
    Replay,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 1,
            batch_size: 10_000,
            max_inflight: 4,
            status_interval: Duration::from_millis(1000),
            state_dir: None,
            state_topic: None,
            checkpoint_interval: Duration::from_millis(10_000),
            restart: Restart::Checkpoint,
        }
    }
}

impl InputConfig {
    /// The `columns` it declares (none: a built-in input).
    pub fn columns(&self) -> &[String] {
        match self {
            InputConfig::File { columns, .. } | InputConfig::Stdin { columns, .. } => columns,
            InputConfig::Kafka(k) => &k.columns,
            InputConfig::Generator { columns, .. } => columns,
        }
    }

    /// The `primary_key` and `format` it declares.
    pub fn key_and_format(&self) -> (Option<&Names>, Option<&str>) {
        match self {
            InputConfig::File { primary_key, format, .. }
            | InputConfig::Stdin { primary_key, format, .. }
            | InputConfig::Generator { primary_key, format, .. } => (primary_key.as_ref(), format.as_deref()),
            InputConfig::Kafka(k) => (k.primary_key.as_ref(), k.format.as_deref()),
        }
    }

    /// The `event_time` it declares.
    pub fn event_time(&self) -> Option<&EventTimeConfig> {
        match self {
            InputConfig::File { event_time, .. } | InputConfig::Stdin { event_time, .. } => event_time.as_ref(),
            InputConfig::Kafka(k) => k.event_time.as_ref(),
            InputConfig::Generator { event_time, .. } => event_time.as_ref(),
        }
    }

    /// A generator input's generator: the one it names, else the one of its own name (`name`);
    /// `None` for other inputs.
    pub fn generator(&self, name: &str) -> Option<Result<crate::sources::generator::Kind, String>> {
        match self {
            InputConfig::Generator { generator, .. } => Some(generator.as_deref().unwrap_or(name).parse()),
            _ => None,
        }
    }

    /// The event-time column's index, checked against the columns; `Err((key, message))`.
    pub fn event_time_column(&self, columns: &[dataflows::sql::Column]) -> Result<Option<usize>, (String, String)> {
        let Some(e) = self.event_time() else { return Ok(None) };
        if columns.is_empty() {
            return Err(("event_time".into(), "is for SQL inputs: declare the records' `columns` too".into()));
        }
        let name = e.column.to_ascii_lowercase();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let i = columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| ("event_time.column".to_string(), format!("`{}` is not one of the columns ({})", e.column, names.join(", "))))?;
        if columns[i].ty != dataflows::sql::Type::Timestamp {
            return Err((
                "event_time.column".into(),
                format!("`{name}` is {}, not a timestamp: declare it \"{name} timestamp\"", columns[i].ty),
            ));
        }
        Ok(Some(i))
    }

    /// The declared columns, parsed ([`Schema`]); `Err((key under the input's table, message))`.
    pub fn schema(&self) -> Result<Schema, (String, String)> {
        let (columns, mut key, not_null) = self.columns_and_key().map_err(|(i, m)| (format!("columns[{i}]"), m))?;
        let (primary_key, format) = self.key_and_format();
        if let Some(f) = format.filter(|f| !f.eq_ignore_ascii_case("json")) {
            return Err(("format".into(), format!("`{f}` is not read: records are JSON (format = \"json\", the default)")));
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        for name in primary_key.map(Names::list).unwrap_or_default() {
            let i = names.iter().position(|n| n.eq_ignore_ascii_case(name)).ok_or_else(|| {
                ("primary_key".to_string(), format!("`{name}` is not one of the columns ({}); name a declared column", names.join(", ")))
            })?;
            if !key.contains(&i) {
                key.push(i);
            }
        }
        key.sort_unstable();
        let mut required = Vec::new();
        for (i, c) in self.required().iter().enumerate() {
            let column = parse_column(c).map_err(|m| (format!("required[{i}]"), m))?;
            if columns.iter().chain(&required).any(|x: &dataflows::sql::Column| x.name == column.name) {
                return Err((format!("required[{i}]"), format!("`{}` is declared twice", column.name)));
            }
            required.push(column);
        }
        Ok(Schema { columns, key, not_null, required })
    }

    /// Sets the columns, required fields, event time and primary key of an input that declares
    /// none.
    pub fn declare(&mut self, columns: Vec<String>, required: Vec<String>, event_time: Option<EventTimeConfig>, key: Option<Names>) {
        let d = self.declaration_mut();
        (*d.0, *d.1, *d.2, *d.3) = (columns, required, event_time, key);
    }

    /// This input with `other`'s declaration (columns, required fields, event time, primary key,
    /// format): a file bound on the command line takes the config's declaration of its input.
    pub fn declared_as(mut self, other: Option<&InputConfig>) -> Self {
        if let Some(mut other) = other.cloned() {
            let (a, b) = (self.declaration_mut(), other.declaration_mut());
            std::mem::swap(a.0, b.0);
            std::mem::swap(a.1, b.1);
            std::mem::swap(a.2, b.2);
            std::mem::swap(a.3, b.3);
            std::mem::swap(a.4, b.4);
        }
        self
    }

    /// The fields every record must have that no view reads.
    pub fn required(&self) -> &[String] {
        match self {
            InputConfig::File { required, .. } | InputConfig::Stdin { required, .. } | InputConfig::Generator { required, .. } => required,
            InputConfig::Kafka(k) => &k.required,
        }
    }

    #[allow(clippy::type_complexity)]
    fn declaration_mut(
        &mut self,
    ) -> (&mut Vec<String>, &mut Vec<String>, &mut Option<EventTimeConfig>, &mut Option<Names>, &mut Option<String>) {
        match self {
            InputConfig::File { columns, required, event_time, primary_key, format, .. }
            | InputConfig::Stdin { columns, required, event_time, primary_key, format }
            | InputConfig::Generator { columns, required, event_time, primary_key, format, .. } => {
                (columns, required, event_time, primary_key, format)
            }
            InputConfig::Kafka(k) => (&mut k.columns, &mut k.required, &mut k.event_time, &mut k.primary_key, &mut k.format),
        }
    }

    /// The columns, the primary key's and the `not null` ones, or `(index, message)`.
    #[allow(clippy::type_complexity)]
    fn columns_and_key(&self) -> Result<(Vec<dataflows::sql::Column>, Vec<usize>, Vec<usize>), (usize, String)> {
        let mut out: Vec<dataflows::sql::Column> = Vec::new();
        let mut key = Vec::new();
        let mut not_null = Vec::new();
        for (i, c) in self.columns().iter().enumerate() {
            let spec = c.trim();
            let lower = spec.to_ascii_lowercase();
            let spec = match lower.strip_suffix("primary key") {
                Some(rest) => {
                    key.push(i);
                    &spec[..rest.trim_end().len()]
                }
                None => spec,
            };
            let lower = spec.to_ascii_lowercase();
            let spec = match lower.strip_suffix("not null") {
                Some(rest) => {
                    not_null.push(i);
                    &spec[..rest.trim_end().len()]
                }
                None => spec,
            };
            let column = parse_column(spec).map_err(|m| (i, m))?;
            if out.iter().any(|x| x.name == column.name) {
                return Err((i, format!("`{}` is declared twice", column.name)));
            }
            out.push(column);
        }
        Ok((out, key, not_null))
    }
}

/// `"name type"`, parsed.
fn parse_column(spec: &str) -> Result<dataflows::sql::Column, String> {
    let (name, ty) = spec
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(format!("`{spec}`: write \"name type\", e.g. \"id int\" or \"id int primary key\""))?;
    let ty = dataflows::sql::Type::parse(ty.trim())
        .ok_or(format!("`{spec}`: the type `{}` is not one of int, float, text, bool, timestamp, json", ty.trim()))?;
    Ok(dataflows::sql::Column { name: name.to_ascii_lowercase(), ty })
}

/// An input's declared columns, parsed.
pub struct Schema {
    /// the columns, in order
    pub columns: Vec<dataflows::sql::Column>,
    /// the primary key's columns (`"id int primary key"`, or `primary_key`): an upsert input,
    /// whose latest version of a key by source position is its row
    pub key: Vec<usize>,
    /// the columns declared `not null`: a record whose value is null is a dead letter
    pub not_null: Vec<usize>,
    /// the fields every record must have that no view reads (`required`)
    pub required: Vec<dataflows::sql::Column>,
}

/// One name or a list of them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// `"id"`
    One(String),
    /// `["a", "b"]`
    Many(Vec<String>),
}

impl Names {
    fn list(&self) -> Vec<&str> {
        match self {
            Names::One(n) => vec![n.as_str()],
            Names::Many(ns) => ns.iter().map(String::as_str).collect(),
        }
    }
}

/// Where one input's records come from.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputConfig {
    /// A JSON Lines file, one record per line.
    File {
        /// Path of the file; relative paths are relative to the working directory.
        path: PathBuf,
        /// Replay at most this many records per second (default: as fast as possible).
        #[serde(default)]
        rate: Option<f64>,
        /// For SQL views: the records' columns, in order, as `"name type"` (types: int,
        /// float, text, bool, timestamp, json), e.g. `["id int", "product text"]`; `"id int not
        /// null"` makes a record whose `id` is null a dead letter.
        #[serde(default)]
        columns: Vec<String>,
        /// Fields every record must have, as `"name type"`, that no view reads: checked like
        /// columns (a record without one, or with a value of another type, is a dead letter)
        /// but not kept, so no row or checkpoint holds them.
        #[serde(default)]
        required: Vec<String>,
        /// For SQL views: the column that dates each record, and how late it may arrive.
        #[serde(default)]
        event_time: Option<EventTimeConfig>,
        /// For SQL views: the column(s) that key an upsert input, whose latest version of a key
        /// (by source position) is its row: `primary_key = "id"` or `["a", "b"]` (the same as
        /// `"id int primary key"` in `columns`).
        #[serde(default)]
        primary_key: Option<Names>,
        /// The records' format: `"json"`, the default and the only one (a JSON object per line
        /// or per Kafka message).
        #[serde(default)]
        format: Option<String>,
    },
    /// JSON Lines on standard input (read by the first worker).
    Stdin {
        /// For SQL views: the records' columns (see `File`).
        #[serde(default)]
        columns: Vec<String>,
        /// Fields every record must have that no view reads (see `File`).
        #[serde(default)]
        required: Vec<String>,
        /// For SQL views: the event-time column (see `File`).
        #[serde(default)]
        event_time: Option<EventTimeConfig>,
        /// For SQL views: the column(s) that key an upsert input, whose latest version of a key
        /// (by source position) is its row: `primary_key = "id"` or `["a", "b"]` (the same as
        /// `"id int primary key"` in `columns`).
        #[serde(default)]
        primary_key: Option<Names>,
        /// The records' format: `"json"`, the default and the only one (a JSON object per line
        /// or per Kafka message).
        #[serde(default)]
        format: Option<String>,
    },
    /// Kafka topics (see `[kafka]` for the connection).
    Kafka(kafka::KafkaInput),
    /// A built-in synthetic generator (see `diffstream gen`).
    Generator {
        /// Which one: users, clicks, sensors, transactions, sales or inputs. Default: the
        /// input's name.
        #[serde(default)]
        generator: Option<String>,
        /// Stop after this many records (default: run until stopped).
        #[serde(default)]
        count: Option<u64>,
        /// Records per second (default: as fast as possible).
        #[serde(default)]
        rate: Option<f64>,
        /// Seed; the same seed gives the same records. Default 1.
        #[serde(default = "one")]
        seed: u64,
        /// Number of distinct users (users, clicks and transactions; customers of sales).
        /// Default 1000.
        #[serde(default = "thousand")]
        users: u64,
        /// For SQL views: the records' columns (see `File`).
        #[serde(default)]
        columns: Vec<String>,
        /// Fields every record must have that no view reads (see `File`).
        #[serde(default)]
        required: Vec<String>,
        /// For SQL views: the event-time column (see `File`).
        #[serde(default)]
        event_time: Option<EventTimeConfig>,
        /// For SQL views: the column(s) that key an upsert input, whose latest version of a key
        /// (by source position) is its row: `primary_key = "id"` or `["a", "b"]` (the same as
        /// `"id int primary key"` in `columns`).
        #[serde(default)]
        primary_key: Option<Names>,
        /// The records' format: `"json"`, the default and the only one (a JSON object per line
        /// or per Kafka message).
        #[serde(default)]
        format: Option<String>,
    },
}

fn one() -> u64 {
    1
}
fn thousand() -> u64 {
    1000
}

/// `[output]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Directory for `<output>.jsonl` snapshots and `dead_letters.jsonl`, written when the run
    /// ends. Default: none (only the status line).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Also write every update, as it happens, to `<output>.changes.jsonl`. Default false.
    #[serde(default)]
    pub changes: bool,
    /// Also write every output to Kafka topics.
    #[serde(default)]
    pub kafka: Option<kafka::KafkaOutput>,
    /// Also keep every output's current rows in MongoDB collections.
    #[serde(default)]
    pub mongodb: Option<MongoOutput>,
}

/// `[output.mongodb]`: every output's current rows as documents, one per key.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoOutput {
    /// The environment variable that holds the connection URI (credentials included; the URI
    /// is never logged). Default `MONGODB_URI`.
    #[serde(default = "default_uri_env")]
    pub uri_env: String,
    /// Database. Default `diffstream`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Collection per output name, where it differs from the output's name.
    #[serde(default)]
    pub collections: BTreeMap<String, String>,
    /// Only these outputs (names). Default: every output of the run.
    #[serde(default)]
    pub outputs: Option<Vec<String>>,
    /// Indexes per output name, each a list of fields (ascending). Default: what the IoT
    /// dashboards filter on — `anomaly_alerts`: timestamp, sensor_id+timestamp,
    /// alert_type+timestamp; `sensor_window_metrics`: sensor_type+location, window_start.
    #[serde(default)]
    pub indexes: Option<BTreeMap<String, Vec<Vec<String>>>>,
    /// Operations per bulk write at most; a flush starts as soon as this many keys changed.
    /// Default 1000.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest a changed key waits before it is written. Changes of several logical times
    /// within it become one write per key. Default `100ms`.
    #[serde(default = "default_flush")]
    pub max_flush_interval: Duration,
}

fn default_flush() -> Duration {
    Duration::from_millis(100)
}

fn default_uri_env() -> String {
    "MONGODB_URI".into()
}
fn default_database() -> String {
    "diffstream".into()
}
fn default_batch() -> usize {
    1000
}

impl MongoOutput {
    /// Whether the output is written to MongoDB.
    pub fn writes(&self, output: &str) -> bool {
        self.outputs.as_ref().is_none_or(|o| o.iter().any(|x| x == output))
    }
    /// The collection of an output.
    pub fn collection(&self, output: &str) -> String {
        self.collections.get(output).cloned().unwrap_or_else(|| output.to_string())
    }
    /// The indexes of an output.
    pub fn indexes_of(&self, output: &str) -> Vec<Vec<String>> {
        if let Some(all) = &self.indexes {
            return all.get(output).cloned().unwrap_or_default();
        }
        let f = |fields: &[&str]| fields.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match output {
            "anomaly_alerts" => vec![f(&["timestamp"]), f(&["sensor_id", "timestamp"]), f(&["alert_type", "timestamp"])],
            "sensor_window_metrics" => vec![f(&["sensor_type", "location"]), f(&["window_start"])],
            _ => Vec::new(),
        }
    }
}

/// Tumbling or sliding windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// back to back, `size` long (the default)
    #[default]
    Tumbling,
    /// `size` long, one starting every `slide`
    Sliding,
}

/// `[sensor_metrics]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// `tumbling` (default) or `sliding`.
    pub window: WindowKind,
    /// Window length. Default `60s`.
    pub size: Duration,
    /// Distance between window starts, sliding windows only; must divide `size`.
    pub slide: Option<Duration>,
    /// How far behind the greatest event time seen a reading may arrive. Default `30s`.
    pub allowed_lateness: Duration,
    /// How far ahead of the clock a reading's event time may be (for a stream the clock when
    /// the record was read, for a file the clock when the run began); one further ahead is a
    /// dead letter with reason `future` and does not move the watermark. Default `1h`.
    pub max_future: Duration,
    /// Normal ranges per sensor type, `type = { min = …, max = … }`, inclusive; they replace
    /// the default for that type (temperature 15–25, humidity 40–60, pressure 1000–1020,
    /// vibration 0.1–1.0, voltage 220–230, current 1–5).
    pub normal_ranges: BTreeMap<String, Range>,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            window: WindowKind::Tumbling,
            size: Duration::from_millis(60_000),
            slide: None,
            allowed_lateness: Duration::from_millis(30_000),
            max_future: Duration::from_millis(3_600_000),
            normal_ranges: BTreeMap::new(),
        }
    }
}

/// An input's event time (`event_time = { column = "ts", allowed_lateness = "30s" }`): the
/// watermark is the greatest event time read less the allowed lateness; a record that could
/// only land in windows the watermark has passed is a dead letter (`late`), and one dated
/// more than `max_future` ahead of the clock is one too (`future`) and does not move it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// The column, of type timestamp.
    pub column: String,
    /// How far behind the greatest event time seen a record may arrive. Default `0s`.
    #[serde(default = "zero")]
    pub allowed_lateness: Duration,
    /// How far ahead of the clock a record may be dated (a stream's: when it was read; a
    /// file's: when the run began). Default `1h`.
    #[serde(default = "an_hour")]
    pub max_future: Duration,
}

fn zero() -> Duration {
    Duration::from_millis(0)
}

fn an_hour() -> Duration {
    Duration::from_millis(3_600_000)
}

/// An inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// least normal value
    pub min: f64,
    /// greatest normal value
    pub max: f64,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read it: {e}; pass an existing TOML file to --config"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            let at = inner
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError {
                file: file.to_string(),
                key: if key == "." { "(top level)".into() } else { key },
                message: format!("{}{at}", message.trim_end()),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError { file: file.to_string(), key: key.to_string(), message };
        // (with `views`, a name may be a view's: checked once they are compiled)
        for (i, d) in self.dataflows.iter().enumerate().filter(|_| self.views.is_empty()) {
            if !builtin::DATAFLOWS.contains(&d.as_str()) {
                return Err(err(
                    &format!("dataflows[{i}]"),
                    format!(
                        "unknown dataflow `{d}`; the dataflows are {}, or views of the files `views` names",
                        builtin::DATAFLOWS.join(", ")
                    ),
                ));
            }
        }
        for (name, input) in &self.inputs {
            let key = format!("inputs.{name}");
            if input.columns().is_empty() {
                if !builtin::declares(name) {
                    return Err(err(
                        &key,
                        "declare the records' `columns` for SQL views (only the inputs users, clicks and sensors have theirs declared for them)".into(),
                    ));
                }
            } else {
                let columns = input.schema().map_err(|(k, m)| err(&format!("{key}.{k}"), m))?.columns;
                input.event_time_column(&columns).map_err(|(k, m)| err(&format!("{key}.{k}"), m))?;
            }
            if input.columns().is_empty() && input.event_time().is_some() {
                return Err(err(&format!("{key}.event_time"), "is for SQL inputs: declare the records' `columns` too".into()));
            }
            if input.columns().is_empty() && input.key_and_format().0.is_some() {
                return Err(err(&format!("{key}.primary_key"), "is for SQL inputs: declare the records' `columns` too".into()));
            }
            if let Some(Err(e)) = input.generator(name) {
                return Err(err(
                    &format!("{key}.generator"),
                    format!("{e}: name one with `generator = \"…\"`, or read a file or topic instead"),
                ));
            }
            let rate = match input {
                InputConfig::File { rate, .. } | InputConfig::Generator { rate, .. } => *rate,
                InputConfig::Stdin { .. } => None,
                InputConfig::Kafka(k) => {
                    k.validate().map_err(|(sub, m)| err(&format!("{key}.{sub}"), m))?;
                    None
                }
            };
            if rate.is_some_and(|r| !(r > 0.0)) {
                return Err(err(
                    &format!("{key}.rate"),
                    "must be a positive number of records per second; remove it to read as fast as possible".into(),
                ));
            }
        }
        if self.runtime.workers == 0 {
            return Err(err("runtime.workers", "must be at least 1".into()));
        }
        if self.runtime.batch_size == 0 {
            return Err(err("runtime.batch_size", "must be at least 1; 10000 is a good start".into()));
        }
        if self.runtime.max_inflight == 0 {
            return Err(err("runtime.max_inflight", "must be at least 1".into()));
        }
        self.kafka.validate().map_err(|(k, m)| err(&k, m))?;
        if let Some(k) = &self.output.kafka {
            if k.partitions < 1 {
                return Err(err("output.kafka.partitions", "must be at least 1".into()));
            }
        }
        self.sensor_params(file)?;
        Ok(())
    }

    /// The window and normal ranges of `[sensor_metrics]`, checked.
    pub fn sensor_params(&self, file: &str) -> Result<SensorParams, ConfigError> {
        let s = &self.sensor_metrics;
        let err = |key: &str, message: String| ConfigError { file: file.to_string(), key: format!("sensor_metrics.{key}"), message };
        let size = s.size.millis();
        if size <= 0 {
            return Err(err("size", "must be positive, e.g. \"60s\"".into()));
        }
        let slide = match (s.window, s.slide) {
            (WindowKind::Tumbling, None) => size,
            (WindowKind::Tumbling, Some(_)) => {
                return Err(err("slide", "is only for sliding windows; remove it, or set window = \"sliding\"".into()))
            }
            (WindowKind::Sliding, None) => {
                return Err(err("slide", format!("is required for sliding windows, e.g. slide = \"{}\"", Duration::from_millis(size / 2))))
            }
            (WindowKind::Sliding, Some(slide)) => slide.millis(),
        };
        if slide <= 0 || slide > size || size % slide != 0 {
            return Err(err(
                "slide",
                format!("must be positive and divide size ({}); for example \"{}\"", s.size, Duration::from_millis(size / 2)),
            ));
        }
        let mut ranges = default_normal_ranges();
        for (t, r) in &s.normal_ranges {
            if !(r.min <= r.max) {
                return Err(err(&format!("normal_ranges.{t}"), format!("min ({}) must not exceed max ({})", r.min, r.max)));
            }
            ranges.retain(|(name, _, _)| name != t);
            ranges.push((t.clone(), r.min, r.max));
        }
        Ok(SensorParams {
            size_ms: size,
            slide_ms: slide,
            allowed_lateness_ms: s.allowed_lateness.millis(),
            normal_ranges: ranges,
            max_future_ms: s.max_future.millis(),
        })
    }
}
