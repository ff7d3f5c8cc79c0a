//! The record types that flow through the dataflows: decoded inputs, output rows and dead
//! letters. They are plain serde structs so that timely can exchange them with bincode, and
//! `Ord` so that differential can arrange them. Times are milliseconds since the UNIX epoch (UTC);
//! turning them into text is the engine's job, not the dataflows'.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// Event time: milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// Text shared by reference count: a profile's name and e-mail go into every output row of
/// its user, `-old` and `+new` at every time the user's count changes, without a copy.
pub type SharedText = std::sync::Arc<str>;

/// A user identifier as the producer wrote it: a JSON integer or a JSON string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Id {
    /// `"user_id": 42`
    Num(u64),
    /// `"user_id": "u-42"`
    Str(String),
}

/// Where a record came from within its input. Used to order profile versions ("latest wins")
/// and to point a dead letter back at its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Position {
    /// 1-based line number in a JSON Lines file or stream.
    Line(u64),
    /// A Kafka topic, partition and offset.
    Kafka {
        /// topic
        topic: String,
        /// partition number
        partition: i32,
        /// offset within the partition
        offset: i64,
    },
    /// 0-based index of a record made by an in-process generator.
    Index(u64),
}

/// An `f64` with a total order (`f64::total_cmp`), so that readings and rows can live in
/// differential arrangements.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// A user profile version: `{event_timestamp, user_id, email, name}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct User {
    /// who
    pub user_id: Id,
    /// display name in this version
    pub name: SharedText,
    /// e-mail address in this version
    pub email: SharedText,
    /// `event_timestamp`
    pub event_time: Millis,
    /// source position; the highest position of a user is its latest profile
    pub position: Position,
}

/// A click: `{event_timestamp, user_id, page, event}`. `page` is checked when decoding but
/// not kept, since no dataflow reads it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    /// who clicked
    pub user_id: Id,
    /// the event kind (`page_view`, `click`, …)
    pub event: String,
    /// `event_timestamp`
    pub event_time: Millis,
}

/// A sensor reading: `{sensor_id, sensor_type, value, location, timestamp, status, metadata?}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// the sensor
    pub sensor_id: String,
    /// temperature, humidity, …
    pub sensor_type: String,
    /// where the sensor stands
    pub location: String,
    /// the measured value
    pub value: F64,
    /// event time of the reading
    pub timestamp: Millis,
    /// `status == "anomaly"`
    pub anomaly: bool,
    /// source position (names a late reading in the dead letters)
    pub position: Position,
    /// the input batch it was read in (numbered in read order): lateness is judged against the
    /// batches before it, so the result does not depend on how many batches a logical time holds
    pub batch: u64,
}

/// A record's bytes and key exactly as received, kept beside a reading until its lateness is
/// decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Raw {
    /// the value bytes
    pub bytes: Vec<u8>,
    /// the Kafka key, if any
    pub key: Option<Vec<u8>>,
}

/// A record the engine could not use: it keeps the exact bytes, where they came from and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// logical input name (`users`, `clicks`, `sensors`)
    pub input: String,
    /// where in that input
    pub position: Position,
    /// why, e.g. `missing_field: user_id` or `late: window ended at …`
    pub reason: String,
    /// the record's bytes exactly as received
    pub raw: Vec<u8>,
    /// the record's key as received (Kafka)
    pub key: Option<Vec<u8>>,
}

/// Output `user_event_counts`: clicks per user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserEventCount {
    /// key
    pub user_id: Id,
    /// number of clicks
    pub event_count: i64,
}

/// Output `event_type_counts`: clicks per event kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventTypeCount {
    /// key
    pub event: String,
    /// number of clicks of this kind
    pub count: i64,
}

/// Output `user_activity`: a user's latest profile with their click count.
#[derive(Clone, Debug, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserActivity {
    /// key
    pub user_id: Id,
    /// from the latest profile
    pub name: SharedText,
    /// from the latest profile
    pub email: SharedText,
    /// number of clicks
    pub event_count: i64,
}

/// Equal fields, compared cheapest first: a user's `-old +new` rows nearly always differ in
/// the count alone, and share their name and e-mail (the same `Arc`s), which then need no
/// byte comparison.
impl PartialEq for UserActivity {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &SharedText, b: &SharedText| std::sync::Arc::ptr_eq(a, b) || a == b;
        self.event_count == other.event_count
            && self.user_id == other.user_id
            && same(&self.name, &other.name)
            && same(&self.email, &other.email)
    }
}

/// The hash of the fields [`PartialEq`] compares (equal rows hash alike).
impl std::hash::Hash for UserActivity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.user_id.hash(state);
        self.name.hash(state);
        self.email.hash(state);
        self.event_count.hash(state);
    }
}

/// Output `sensor_window_metrics`: aggregates per sensor type, location and event-time window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowMetric {
    /// key part
    pub sensor_type: String,
    /// key part
    pub location: String,
    /// key part: inclusive start
    pub window_start: Millis,
    /// exclusive end
    pub window_end: Millis,
    /// readings in the window
    pub count: u64,
    /// mean value
    pub avg: F64,
    /// least value
    pub min: F64,
    /// greatest value
    pub max: F64,
    /// readings with status `anomaly`
    pub anomaly_count: u64,
}

/// Why an alert fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertType {
    /// above the type's normal range
    High,
    /// below the type's normal range
    Low,
    /// within range, but the sensor said `anomaly`
    Flagged,
}

impl AlertType {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::High => "high",
            AlertType::Low => "low",
            AlertType::Flagged => "flagged",
        }
    }
}

/// Output `anomaly_alerts`, keyed by `(sensor_id, timestamp)`, never retracted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AnomalyAlert {
    /// key part
    pub sensor_id: String,
    /// the sensor's type
    pub sensor_type: String,
    /// the sensor's location
    pub location: String,
    /// the value that fired
    pub value: F64,
    /// key part: event time of the reading
    pub timestamp: Millis,
    /// high, low or flagged
    pub alert_type: AlertType,
}
