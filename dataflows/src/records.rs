//! The records the dataflows carry beside the views' rows: where a record came from, its raw
//! bytes, and the dead letters. Plain serde structs, so that timely can exchange them with
//! bincode, and `Ord`, so that differential can arrange them. Times are milliseconds since the
//! UNIX epoch (UTC); turning them into text is the engine's job, not the dataflows'.

use serde::{Deserialize, Serialize};

/// Event time: milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

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
