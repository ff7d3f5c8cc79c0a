//! The shipped inputs' records and outputs as plain structs, decoded by serde derive and
//! encoded by serde: the reference's own reading and writing of them (and the bench baseline's),
//! apart from the engine, which reads them as SQL columns and writes view rows.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use dataflows::records::{Millis, Position};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::codec::{classify, format_time, parse_time_str, time_from_number, OutputRow};

/// Text shared by reference count: a profile's name and e-mail go into every output row of
/// its user, `-old` and `+new` at every time the user's count changes, without a copy.
pub type SharedText = std::sync::Arc<str>;

/// A user identifier as the producer wrote it: any JSON value but null (the shipped inputs'
/// `user_id json not null`), an integer as a number, a string as its text, any other value as
/// its compact JSON.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Id {
    /// `"user_id": 42`
    Num(i64),
    /// `"user_id": "u-42"`
    Str(String),
    /// `"user_id": 2.5`, `[1, 2]`, `true`, …: its compact JSON
    Json(String),
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

/// A time field, decoded from a string or a number.
struct Time(Millis);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Time;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a time (string or unix seconds/milliseconds)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Time, E> {
                parse_time_str(s).map(Time).map_err(|e| E::custom(format!("bad_time: {e}")))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Time, E> {
                self.visit_f64(x as f64)
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Time, E> {
                self.visit_f64(x as f64)
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Time, E> {
                time_from_number(x).map(Time).map_err(|e| E::custom(format!("bad_time: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A user id, decoded from any JSON value but null.
struct JsonId(Id);

impl<'de> Deserialize<'de> for JsonId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value but null")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<JsonId, E> {
                Ok(JsonId(Id::Str(s.to_string())))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<JsonId, E> {
                Ok(JsonId(Id::Num(x)))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<JsonId, E> {
                Ok(JsonId(i64::try_from(x).map_or_else(|_| Id::Json(x.to_string()), Id::Num)))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<JsonId, E> {
                Ok(JsonId(Id::Json(serde_json::Value::from(x).to_string())))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<JsonId, E> {
                Ok(JsonId(Id::Json(b.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonId, E> {
                Err(E::custom("user_id is null, and declared not null"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<JsonId, A::Error> {
                let v: serde_json::Value = Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(JsonId(Id::Json(v.to_string())))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<JsonId, A::Error> {
                let v: serde_json::Value = Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(JsonId(Id::Json(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct UserJson<'a> {
    user_id: JsonId,
    #[serde(borrow)]
    email: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    event_timestamp: Time,
}

#[derive(Deserialize)]
struct ClickJson<'a> {
    user_id: JsonId,
    #[serde(borrow)]
    event: Cow<'a, str>,
    event_timestamp: Time,
    #[serde(borrow, rename = "page")]
    _page: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ReadingJson<'a> {
    #[serde(borrow)]
    sensor_id: Cow<'a, str>,
    #[serde(borrow)]
    sensor_type: Cow<'a, str>,
    value: f64,
    #[serde(borrow)]
    location: Cow<'a, str>,
    timestamp: Time,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

/// Parses one JSON object into `T`, or says why not.
fn parse<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not_utf8: invalid byte at offset {}", e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| classify(text, &e))
}

/// Decodes a user profile version.
pub fn decode_user(raw: &[u8], position: Position) -> Result<User, String> {
    let u: UserJson = parse(raw)?;
    Ok(User {
        user_id: u.user_id.0,
        name: SharedText::from(&*u.name),
        email: SharedText::from(&*u.email),
        event_time: u.event_timestamp.0,
        position,
    })
}

/// Decodes a click.
pub fn decode_click(raw: &[u8]) -> Result<Click, String> {
    let c: ClickJson = parse(raw)?;
    Ok(Click { user_id: c.user_id.0, event: c.event.into_owned(), event_time: c.event_timestamp.0 })
}

/// Decodes a sensor reading.
pub fn decode_reading(raw: &[u8], position: Position) -> Result<Reading, String> {
    let r: ReadingJson = parse(raw)?;
    Ok(Reading {
        sensor_id: r.sensor_id.into_owned(),
        sensor_type: r.sensor_type.into_owned(),
        location: r.location.into_owned(),
        value: F64(r.value),
        timestamp: r.timestamp.0,
        anomaly: r.status == "anomaly",
        position,
        // the reader sets it
        batch: 0,
    })
}

/// A user id as JSON, as the producer wrote it.
struct IdJson<'a>(&'a Id);

impl Serialize for IdJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Id::Num(n) => s.serialize_i64(*n),
            Id::Str(x) => s.serialize_str(x),
            Id::Json(json) => serde_json::from_str::<serde_json::Value>(json).expect("compact JSON").serialize(s),
        }
    }
}

/// A time as RFC 3339 UTC.
struct TimeJson(Millis);

impl Serialize for TimeJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(self.0))
    }
}

/// `{"user_id": …}`, the key of both per-user outputs.
fn user_key(id: &Id) -> String {
    #[derive(Serialize)]
    struct K<'a> {
        user_id: IdJson<'a>,
    }
    to_json(&K { user_id: IdJson(id) })
}

impl OutputRow for UserEventCount {
    fn key(&self) -> String {
        user_key(&self.user_id)
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            user_id: IdJson<'a>,
            event_count: i64,
        }
        to_json(&R { user_id: IdJson(&self.user_id), event_count: self.event_count })
    }
}

impl OutputRow for EventTypeCount {
    fn key(&self) -> String {
        #[derive(Serialize)]
        struct K<'a> {
            event: &'a str,
        }
        to_json(&K { event: &self.event })
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            event: &'a str,
            count: i64,
        }
        to_json(&R { event: &self.event, count: self.count })
    }
}

impl OutputRow for UserActivity {
    fn key(&self) -> String {
        user_key(&self.user_id)
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            user_id: IdJson<'a>,
            name: &'a str,
            email: &'a str,
            event_count: i64,
        }
        to_json(&R { user_id: IdJson(&self.user_id), name: &self.name, email: &self.email, event_count: self.event_count })
    }
}

impl OutputRow for WindowMetric {
    fn key(&self) -> String {
        #[derive(Serialize)]
        struct K<'a> {
            sensor_type: &'a str,
            location: &'a str,
            window_start: TimeJson,
        }
        to_json(&K { sensor_type: &self.sensor_type, location: &self.location, window_start: TimeJson(self.window_start) })
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            sensor_type: &'a str,
            location: &'a str,
            window_start: TimeJson,
            window_end: TimeJson,
            count: u64,
            avg: f64,
            min: f64,
            max: f64,
            anomaly_count: u64,
        }
        to_json(&R {
            sensor_type: &self.sensor_type,
            location: &self.location,
            window_start: TimeJson(self.window_start),
            window_end: TimeJson(self.window_end),
            count: self.count,
            avg: self.avg.0,
            min: self.min.0,
            max: self.max.0,
            anomaly_count: self.anomaly_count,
        })
    }
}

/// An alert's key is all of it: two distinct readings of one sensor at one timestamp are two
/// alerts, and the same reading delivered twice is one.
impl OutputRow for AnomalyAlert {
    fn key(&self) -> String {
        self.row()
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            sensor_id: &'a str,
            sensor_type: &'a str,
            location: &'a str,
            value: f64,
            timestamp: TimeJson,
            alert_type: &'a str,
        }
        to_json(&R {
            sensor_id: &self.sensor_id,
            sensor_type: &self.sensor_type,
            location: &self.location,
            value: self.value.0,
            timestamp: TimeJson(self.timestamp),
            alert_type: self.alert_type.as_str(),
        })
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("output rows serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let reason = |raw: &[u8]| decode_click(raw).unwrap_err();
        assert!(reason(b"{\"user_id\": 1").starts_with("invalid_json"));
        assert!(reason(b"[1, 2]").starts_with("not_object"));
        assert!(reason(b"\xff\xfe").starts_with("not_utf8"));
        assert_eq!(reason(br#"{"user_id": 1, "page": "/", "event": "click"}"#), "missing_field: event_timestamp");
        assert!(reason(br#"{"user_id": null, "page": "/", "event": "click", "event_timestamp": 1}"#).contains("user_id is null"));
        let id = |raw: &[u8]| decode_click(raw).unwrap().user_id;
        assert_eq!(id(br#"{"user_id": [1], "page": "/", "event": "click", "event_timestamp": 1}"#), Id::Json("[1]".into()));
        assert_eq!(id(br#"{"user_id": -3, "page": "/", "event": "click", "event_timestamp": 1}"#), Id::Num(-3));
        assert!(reason(br#"{"user_id": 1, "page": "/", "event": "click", "event_timestamp": "soon"}"#).starts_with("bad_time"));
        let ok = decode_click(br#"{"user_id": "u1", "page": "/", "event": "click", "event_timestamp": 1, "extra": true}"#);
        assert_eq!(ok.unwrap().user_id, Id::Str("u1".into()));
    }
}
