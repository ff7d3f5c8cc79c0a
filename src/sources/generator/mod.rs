//! Synthetic users, clicks and sensor readings, shaped like what the producers in the field
//! send, and deterministic: record `i` of a generator is a pure function of `(seed, i)`, so
//! workers can each make their own share and `diffstream gen` writes the same lines.
//!
//! - users: the first `users` records are each user's first profile; later ones are profile
//!   updates (a new e-mail or name) of a random user. `event_timestamp` is unix seconds.
//! - clicks: five event kinds (page_view 50%, click 25%, add_to_cart 12%, search 8%,
//!   purchase 5%), users drawn with a skew towards low ids, one in eleven without a profile.
//!   `event_timestamp` is `YYYY-MM-DD HH:MM:SS`.
//! - sensors: 1000 sensors of six types in twelve locations (`sites` copies of them, for more
//!   keys: `plant-a/line-1@site-3`), one reading per millisecond of event time; ~5% anomalies (status `anomaly`, most out of range), ~1% out of range
//!   with status `normal`; 30% arrive up to 5 s out of order and 0.1% 45–90 s late (beyond the
//!   default 30 s lateness). `timestamp` is RFC 3339 with milliseconds.
//!
//! Event time starts at 2026-01-01T00:00:00Z, whatever the wall clock says.

use std::io;

mod pipelines;
pub mod to_kafka;

use std::fmt;
use std::str::FromStr;

use dataflows::records::Position;

use crate::codec::format_time;
use crate::sources::{Batch, Record, Source};

/// 2026-01-01T00:00:00Z
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// The generators: the shipped dataflows' inputs, and those of the users' pipelines
/// (`pipelines.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// user profiles
    Users,
    /// clickstream events
    Clicks,
    /// sensor readings
    Sensors,
    /// card transactions (`dataflows/transactions.sql`)
    Transactions,
    /// sales events (`dataflows/sales.sql`)
    Sales,
    /// order applications (`dataflows/applications.sql`)
    Inputs,
}

impl Kind {
    /// Every generator, in `--help` order.
    pub const ALL: [Kind; 6] = [Kind::Users, Kind::Clicks, Kind::Sensors, Kind::Transactions, Kind::Sales, Kind::Inputs];

    /// Its name, which is also the input it feeds by default.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Clicks => "clicks",
            Kind::Sensors => "sensors",
            Kind::Transactions => "transactions",
            Kind::Sales => "sales",
            Kind::Inputs => "inputs",
        }
    }

    /// The field a Kafka message's key is taken from, and the field its kind (for the
    /// producer's summary) is.
    pub fn key_and_kind_fields(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Users => ("user_id", None),
            Kind::Clicks => ("user_id", Some("event")),
            Kind::Sensors => ("sensor_id", Some("sensor_type")),
            Kind::Transactions => ("user_id", Some("status")),
            Kind::Sales => ("region", Some("category")),
            Kind::Inputs => ("id", Some("subject")),
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("there is no generator `{s}`; the generators are {}", names.join(", "))
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSpec {
    /// which generator
    pub kind: Kind,
    /// how many records, or unbounded
    pub count: Option<u64>,
    /// the seed
    pub seed: u64,
    /// number of distinct users (customers, for sales)
    pub users: u64,
    /// sensors: copies of the twelve locations and their 1000 sensors (more sites, more keys
    /// and open windows); 1 is the plain set
    pub sites: u64,
}

/// The sensor types and their normal ranges (the dataflow's defaults).
pub const SENSOR_TYPES: [(&str, f64, f64); 6] = [
    ("temperature", 15.0, 25.0),
    ("humidity", 40.0, 60.0),
    ("pressure", 1000.0, 1020.0),
    ("vibration", 0.1, 1.0),
    ("voltage", 220.0, 230.0),
    ("current", 1.0, 5.0),
];

/// Where sensors stand.
pub const LOCATIONS: [&str; 12] = [
    "plant-a/line-1",
    "plant-a/line-2",
    "plant-a/line-3",
    "plant-a/warehouse",
    "plant-b/line-1",
    "plant-b/line-2",
    "plant-b/boiler-room",
    "plant-b/warehouse",
    "office/floor-1",
    "office/floor-2",
    "office/server-room",
    "yard",
];

/// The click event kinds and their weights (per cent).
pub const EVENTS: [(&str, u64); 5] = [("page_view", 50), ("click", 25), ("add_to_cart", 12), ("search", 8), ("purchase", 5)];

const PAGES: [&str; 8] = ["/", "/products", "/products/42", "/cart", "/checkout", "/search", "/account", "/blog/streaming"];
const FIRST: [&str; 10] = ["Ada", "Alan", "Barbara", "Donald", "Edsger", "Frances", "Grace", "John", "Leslie", "Margaret"];
const LAST: [&str; 10] = ["Lovelace", "Turing", "Liskov", "Knuth", "Dijkstra", "Allen", "Hopper", "Backus", "Lamport", "Hamilton"];
const SENSORS: u64 = 1000;

/// A small counter-based generator: splitmix64 over `(seed, i)`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, i: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl GeneratorSpec {
    /// Record `i`, as a JSON line without the newline.
    pub fn line(&self, i: u64) -> Vec<u8> {
        let mut rng = Rng::new(self.seed, i);
        match self.kind {
            Kind::Users => self.user(i, &mut rng),
            Kind::Clicks => self.click(i, &mut rng),
            Kind::Sensors => sensor(i, self.sites.max(1), &mut rng),
            Kind::Transactions => pipelines::transaction(i, self.users, &mut rng),
            Kind::Sales => pipelines::sale(i, self.users, &mut rng),
            Kind::Inputs => pipelines::application(i, &mut rng),
        }
        .into_bytes()
    }

    fn user(&self, i: u64, rng: &mut Rng) -> String {
        let users = self.users.max(1);
        let (id, version) = if i < users { (i + 1, 0) } else { (rng.below(users) + 1, i) };
        let first = FIRST[((id + version) % 10) as usize];
        let last = LAST[((id / 10 + version / 3) % 10) as usize];
        let domain = if version % 2 == 0 { "example.com" } else { "mail.example.org" };
        let ts = (EPOCH_MS / 1000) + i as i64;
        format!(
            r#"{{"event_timestamp":{ts},"user_id":{id},"email":"{}.{}{id}@{domain}","name":"{first} {last}"}}"#,
            first.to_lowercase(),
            last.to_lowercase()
        )
    }

    fn click(&self, i: u64, rng: &mut Rng) -> String {
        let span = self.users.max(1) + self.users.max(10) / 10;
        let u = rng.unit();
        let id = 1 + ((u * u) * span as f64) as u64;
        let mut pick = rng.below(100);
        let event = EVENTS
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or("page_view", |(e, _)| e);
        let page = PAGES[rng.below(PAGES.len() as u64) as usize];
        let ms = EPOCH_MS + (i as i64) * 10;
        let ts = chrono::DateTime::from_timestamp_millis(ms).expect("in range").format("%Y-%m-%d %H:%M:%S");
        format!(r#"{{"event_timestamp":"{ts}","user_id":{id},"page":"{page}","event":"{event}"}}"#)
    }
}

fn sensor(i: u64, sites: u64, rng: &mut Rng) -> String {
    let sid = i % (SENSORS * sites);
    let (ty, lo, hi) = SENSOR_TYPES[(sid % 6) as usize];
    let location = LOCATIONS[(((sid % SENSORS) / 6) % 12) as usize];
    let location = if sites > 1 { format!("{location}@site-{}", sid / SENSORS) } else { location.to_string() };
    let width = hi - lo;
    let roll = rng.below(1000);
    let (value, status) = if roll < 50 {
        // anomaly: mostly out of range, some within range but flagged by the device
        let v = match roll % 5 {
            0 | 1 => hi + width * (0.1 + rng.unit()),
            2 | 3 => lo - width * (0.1 + rng.unit()),
            _ => lo + width * rng.unit(),
        };
        (v, "anomaly")
    } else if roll < 60 {
        (hi + width * 0.05 * rng.unit(), "normal")
    } else if roll < 80 {
        (lo + width * rng.unit(), "warning")
    } else {
        (lo + width * rng.unit(), "normal")
    };
    let value = (value * 100.0).round() / 100.0;
    let delay = match rng.below(1000) {
        0 => 45_000 + rng.below(45_000) as i64,
        d if d < 300 => rng.below(5_000) as i64,
        _ => 0,
    };
    let ts = format_time(EPOCH_MS + i as i64 - delay);
    let metadata = if rng.below(2) == 0 {
        format!(r#","metadata":{{"firmware":"v1.{}","battery":{}}}"#, rng.below(5), 20 + rng.below(80))
    } else {
        String::new()
    };
    format!(
        r#"{{"sensor_id":"sensor-{sid:04}","sensor_type":"{ty}","value":{value},"location":"{location}","timestamp":"{ts}","status":"{status}"{metadata}}}"#
    )
}

/// One worker's share of a generator: record `i` goes to worker `i % peers`.
pub struct GeneratorSource {
    spec: GeneratorSpec,
    next: u64,
    index: u64,
    peers: u64,
    batch: u64,
}

impl GeneratorSource {
    /// Worker `index` of `peers`, `batch` records (across all workers) per batch.
    pub fn new(spec: GeneratorSpec, index: usize, peers: usize, batch: usize) -> Self {
        GeneratorSource { spec, next: 0, index: index as u64, peers: peers as u64, batch: batch as u64 }
    }
}

impl Source for GeneratorSource {
    fn next_batch(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch> {
        let end = self.next + self.batch;
        let end = self.spec.count.map_or(end, |c| end.min(c));
        for i in self.next..end {
            if i % self.peers == self.index {
                each(Record { position: Position::Index(i), bytes: &self.spec.line(i), key: None });
            }
        }
        self.next = end;
        Ok(Batch { more: self.spec.count.is_none_or(|c| end < c), read_any: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_decode_and_repeat() {
        for kind in [Kind::Users, Kind::Clicks, Kind::Sensors] {
            let spec = GeneratorSpec { kind, count: Some(2000), seed: 7, users: 100, sites: 1 };
            for i in 0..2000 {
                let line = spec.line(i);
                assert_eq!(line, spec.line(i), "deterministic");
                use crate::reference::records;
                let ok = match kind {
                    Kind::Users => records::decode_user(&line, Position::Index(i)).is_ok(),
                    Kind::Clicks => records::decode_click(&line).is_ok(),
                    _ => records::decode_reading(&line, Position::Index(i)).is_ok(),
                };
                assert!(ok, "{kind} record {i} does not decode: {}", String::from_utf8_lossy(&line));
            }
        }
    }
}
