//! Bytes ⟷ records. Decoding never fails the run: a record that cannot be used becomes a
//! reason string, and the caller keeps the raw bytes next to it as a dead letter.
//!
//! Reasons start with a class, then a colon and the detail: `not_utf8`, `invalid_json`,
//! `not_object`, `missing_field`, `wrong_type`, `bad_time`, `invalid_record`; `future` (decided
//! by the runtime) and `late` (by an event-time input's lateness rule).
//!
//! Times accept `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), the same with a `T` (UTC when it carries no
//! offset), RFC 3339 with `Z` or an offset, and unix seconds or milliseconds as a JSON number
//! (a magnitude of 10¹¹ or more is taken as milliseconds). Output times are RFC 3339 UTC with `Z` and always
//! milliseconds (fixed width: string order is time order); offsets beyond ±23:59 are rejected.

use std::borrow::Cow;

use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use dataflows::records::{DeadLetter, Millis, Position};
use dataflows::{Output, Row};
use serde::{Serialize, Serializer};

/// Parses a time spelled as a string.
pub fn parse_time_str(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    if let Some(ms) = parse_common(s.as_bytes()) {
        return Ok(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(format!("`{s}` is not `YYYY-MM-DD HH:MM:SS`, RFC 3339, or unix seconds/milliseconds"))
}

/// The spellings producers use most, `YYYY-MM-DD[ T]HH:MM:SS[.f…][Z|±HH:MM]`, without
/// chrono's format interpreter (which costs more than decoding the rest of a record).
/// Anything else falls through to chrono.
fn parse_common(b: &[u8]) -> Option<Millis> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    }
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(&b[0..4])? as i32, num(&b[5..7])?, num(&b[8..10])?)?;
    let (h, m, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    let mut ms = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let mut scaled = frac[..digits.min(3)].iter().fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'));
        for _ in digits..3 {
            scaled *= 10;
        }
        ms = scaled;
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] => {
            let (hh, mm) = (num(&[*hh1, *hh2])?, num(&[*mm1, *mm2])?);
            if hh > 23 || mm > 59 {
                return None; // not a UTC offset; chrono rejects it too, with the reason
            }
            let off = i64::from(hh * 3600 + mm * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let t = date.and_hms_milli_opt(h, m, sec, ms)?;
    Some(t.and_utc().timestamp_millis() - offset_s * 1000)
}

/// Interprets a JSON number as unix seconds or milliseconds.
pub fn time_from_number(x: f64) -> Result<Millis, String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a time"));
    }
    let ms = if x.abs() >= 1e11 { x } else { x * 1000.0 };
    if ms.abs() > 8.64e15 {
        return Err(format!("{x} is out of range for a time"));
    }
    Ok(ms.round() as Millis)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with `Z`, always with milliseconds:
/// fixed width, so the strings sort in time order (`…:01.000Z` < `…:01.500Z`).
pub fn format_time(ms: Millis) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// The reason a JSON record could not be read, by the class of its error.
pub(crate) fn classify(text: &str, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
    if e.is_syntax() || e.is_eof() {
        return format!("invalid_json: {msg}");
    }
    if !text.trim_start().starts_with('{') {
        return "not_object: a record must be a JSON object".to_string();
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing_field: {}", rest.trim_matches('`'));
    }
    if msg.starts_with("bad_time: ") {
        return msg.to_string();
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        return format!("wrong_type: {msg}");
    }
    format!("invalid_record: {msg}")
}

/// Decodes the records of one SQL input by its columns: a column missing from a record is a
/// `missing_field` dead letter (JSON `null` is SQL NULL), a value of another type `wrong_type`.
/// Integers fit int and float columns; timestamps are the spellings the engine accepts, or
/// numbers: unix seconds, or milliseconds from 10¹¹ on (`bad_time` when neither).
///
/// Records of one input nearly always spell their fields in one order, so the decoder learns
/// which column (or which other field) the `k`-th field of the last record was and checks that
/// guess first: one name compared per field, instead of a search of the columns (a guess only
/// saves work: a field that does not match its guess is searched as before).
pub struct SqlDecoder {
    /// the columns, then the required fields, which are checked and dropped
    columns: Vec<dataflows::sql::Column>,
    /// how many of `columns` a row keeps
    kept: usize,
    /// the columns whose null is a dead letter
    not_null: Vec<usize>,
    /// what the `k`-th field of the last record was
    order: Vec<FieldGuess>,
    /// room each row keeps for values a view adds in place (a window's start and end)
    spare: usize,
}

/// A field as the last record had it at one place.
enum FieldGuess {
    Column(usize),
    Other(Box<str>),
}

impl SqlDecoder {
    /// A decoder of records with these columns.
    pub fn new(columns: Vec<dataflows::sql::Column>) -> Self {
        SqlDecoder { kept: columns.len(), columns, not_null: Vec::new(), order: Vec::new(), spare: 0 }
    }

    /// The same, its rows with room for `spare` more values: a GROUP BY over a window sets
    /// `window_start` and `window_end` at the end of the row it reads, which then needs no
    /// second allocation and copy.
    pub fn with_spare(self, spare: usize) -> Self {
        SqlDecoder { spare, ..self }
    }

    /// The same, a record whose value of one of these columns is null (or missing) a dead letter.
    pub fn not_null(self, columns: &[usize]) -> Self {
        SqlDecoder { not_null: columns.to_vec(), ..self }
    }

    /// The same, each record also required to have these fields (checked like columns, then
    /// dropped from its row).
    pub fn requiring(mut self, fields: &[dataflows::sql::Column]) -> Self {
        self.columns.extend_from_slice(fields);
        self
    }

    /// The columns it decodes.
    pub fn columns(&self) -> &[dataflows::sql::Column] {
        &self.columns[..self.kept]
    }

    /// Decodes one record.
    pub fn decode(&mut self, raw: &[u8]) -> Result<dataflows::sql::SqlRow, String> {
        let text = std::str::from_utf8(raw).map_err(|e| format!("not_utf8: invalid byte at offset {}", e.valid_up_to()))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = SqlRowSeed { columns: &self.columns, kept: self.kept, order: &mut self.order, spare: self.spare };
        let mut row = serde::de::DeserializeSeed::deserialize(seed, &mut de).map_err(|e| {
            let msg = e.to_string();
            match msg.split_once(" at line ") {
                // (our own messages, which already say what kind they are)
                Some((m, _)) if m.starts_with("missing_field") || m.starts_with("wrong_type") => m.to_string(),
                _ => classify(text, &e),
            }
        })?;
        de.end().map_err(|e| classify(text, &e))?;
        row.truncate(self.kept);
        if let Some(&i) = self.not_null.iter().find(|&&i| row[i].is_null()) {
            return Err(format!("wrong_type: {} is null, and declared not null", self.columns[i].name));
        }
        Ok(row)
    }
}

/// Decodes a record's declared columns straight into values, each by its column's type: no
/// map of the record and no `serde_json::Value` per column is built, and the other fields are
/// skipped unparsed.
struct SqlRowSeed<'a> {
    columns: &'a [dataflows::sql::Column],
    /// how many of `columns` are kept (the rest are required fields)
    kept: usize,
    order: &'a mut Vec<FieldGuess>,
    spare: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for SqlRowSeed<'_> {
    type Value = dataflows::sql::SqlRow;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl SqlRowSeed<'_> {
    /// The column named `key`, the `k`-th field of a record, if any; remembers the answer.
    /// (Inlined into the parser's loop: a call per field of every record cost 3% of the
    /// sensor views' instructions.)
    #[inline]
    fn column(&mut self, k: usize, key: &str) -> Option<usize> {
        let guessed = match self.order.get(k) {
            Some(FieldGuess::Column(i)) if same_name(&self.columns[*i].name, key) => return Some(*i),
            Some(FieldGuess::Other(name)) if same_name(name, key) => return None,
            Some(_) => true,
            None => false,
        };
        let found = self.columns.iter().position(|c| c.name == key);
        let guess = found.map_or_else(|| FieldGuess::Other(key.into()), FieldGuess::Column);
        match guessed {
            true => self.order[k] = guess,
            // (fields past the last record's count: learnt in order)
            false if self.order.len() == k => self.order.push(guess),
            false => {}
        }
        found
    }
}

/// A record's `k`-th field name, matched with the columns where the parser holds it: the name
/// is never copied (a `Cow<str>` key would be a new `String` per field of every record).
struct FieldSeed<'s, 'a> {
    row: &'s mut SqlRowSeed<'a>,
    k: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_, '_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_, '_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.row.column(self.k, name))
    }
}

/// Whether two field names are the same: compared eight bytes at a time in place (a field name
/// is short, and checked once per field of every record: a call to `memcmp` cost more).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("eight bytes"));
    // (the words from the start, then the last eight bytes, which may overlap the one before)
    (0..n / 8).all(|w| word(a, 8 * w) == word(b, 8 * w)) && word(a, n - 8) == word(b, n - 8)
}

impl<'de> serde::de::Visitor<'de> for SqlRowSeed<'_> {
    type Value = dataflows::sql::SqlRow;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let columns = self.columns;
        let mut row = Vec::with_capacity(columns.len() + self.spare);
        row.resize_with(columns.len(), || dataflows::sql::Value::Null);
        // (which declared columns were seen: a word on the stack, and flags on the heap only
        // for the columns past the 64th of a rare wider input)
        let (mut seen, mut seen_past_64) = (0u64, vec![false; columns.len().saturating_sub(64)]);
        let mut k = 0;
        while let Some(found) = map.next_key_seed(FieldSeed { row: &mut self, k })? {
            match found {
                Some(i) => {
                    let seed = ColumnSeed(&columns[i], i < self.kept);
                    row[i] = map.next_value_seed(seed)?.map_err(A::Error::custom)?;
                    match i.checked_sub(64) {
                        None => seen |= 1 << i,
                        Some(j) => seen_past_64[j] = true,
                    }
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            k += 1;
        }
        let missing = |i: usize| match i.checked_sub(64) {
            None => seen & (1 << i) == 0,
            Some(j) => !seen_past_64[j],
        };
        match (0..columns.len()).find(|&i| missing(i)) {
            Some(i) => Err(A::Error::custom(format!("missing_field: {}", columns[i].name))),
            None => Ok(row),
        }
    }
}

/// One JSON value as column `c`'s value, read by the column's type: `null` is NULL; a value of
/// another type is `Err(wrong_type: …)`, which names the column, its type and the value. A json
/// column takes any value (an integer as an int, anything else as its compact JSON text, as
/// `eval::json_value` makes them), read straight from the parser where it is a scalar. The
/// flag: whether the value is kept (a required field's text is only checked).
struct ColumnSeed<'a>(&'a dataflows::sql::Column, bool);

type ColumnValue = Result<dataflows::sql::Value, String>;

impl ColumnSeed<'_> {
    fn wrong(&self, shown: impl std::fmt::Display) -> ColumnValue {
        Err(format!("wrong_type: {} is not {} ({shown})", self.0.name, self.0.ty))
    }

    /// An array or object: a json column's value (its compact text), else the wrong type.
    fn json_or_wrong(&self, v: serde_json::Value) -> ColumnValue {
        match self.0.ty {
            dataflows::sql::Type::Json => Ok(dataflows::sql::eval::json_value(&v)),
            _ => self.wrong(v),
        }
    }

    /// A number as a time, as every input's times: unix seconds, or milliseconds from 10¹¹ on.
    fn time(&self, x: f64) -> ColumnValue {
        time_from_number(x).map(dataflows::sql::Value::Timestamp).map_err(|e| format!("bad_time: {e}"))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ColumnSeed<'_> {
    type Value = ColumnValue;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ColumnSeed<'_> {
    type Value = ColumnValue;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {} value", self.0.ty)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<ColumnValue, E> {
        Ok(Ok(dataflows::sql::Value::Null))
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<ColumnValue, E> {
        use dataflows::sql::{Type, Value};
        Ok(match self.0.ty {
            Type::Bool => Ok(Value::Bool(b)),
            Type::Json => Ok(Value::Text(if b { "true" } else { "false" }.into())),
            _ => self.wrong(b),
        })
    }
    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<ColumnValue, E> {
        use dataflows::sql::{Type, Value};
        Ok(match self.0.ty {
            Type::Int | Type::Json => Ok(Value::Int(i)),
            Type::Float => Ok(Value::Float(i as f64)),
            Type::Timestamp => self.time(i as f64),
            _ => self.wrong(i),
        })
    }
    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<ColumnValue, E> {
        use dataflows::sql::Type;
        match (self.0.ty, i64::try_from(u)) {
            (Type::Float, _) => Ok(Ok(dataflows::sql::Value::Float(u as f64))),
            (_, Ok(i)) => self.visit_i64(i),
            (Type::Json, Err(_)) => Ok(Ok(dataflows::sql::Value::Text(u.to_string().into()))),
            (_, Err(_)) => Ok(self.wrong(u)),
        }
    }
    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<ColumnValue, E> {
        use dataflows::sql::{Type, Value};
        Ok(match self.0.ty {
            Type::Float => Ok(Value::Float(x)),
            Type::Timestamp => self.time(x),
            Type::Json => Ok(dataflows::sql::eval::json_value(&serde_json::Value::from(x))),
            _ => self.wrong(serde_json::Number::from_f64(x).map_or_else(|| x.to_string(), |n| n.to_string())),
        })
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ColumnValue, E> {
        use dataflows::sql::{Type, Value};
        Ok(match self.0.ty {
            // (a required field is checked, not kept)
            Type::Text if !self.1 => Ok(Value::Null),
            Type::Text => Ok(Value::Text(s.into())),
            Type::Json => {
                let mut text = String::with_capacity(s.len() + 2);
                dataflows::output::json_string(&mut text, s);
                Ok(Value::Text(text.into()))
            }
            Type::Timestamp => parse_time_str(s).map(Value::Timestamp).map_err(|e| format!("bad_time: {e}")),
            _ => self.wrong(serde_json::Value::from(s)),
        })
    }
    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<ColumnValue, E> {
        match self.0.ty {
            dataflows::sql::Type::Text if self.1 => Ok(Ok(dataflows::sql::Value::Text(s.into()))),
            _ => self.visit_str(&s),
        }
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ColumnValue, A::Error> {
        let v: serde_json::Value = serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(self.json_or_wrong(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ColumnValue, A::Error> {
        let v: serde_json::Value = serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(self.json_or_wrong(v))
    }
}

/// A position as JSON: `{"line": n}`, `{"topic": t, "partition": p, "offset": o}` or `{"index": i}`.
struct PositionJson<'a>(&'a Position);

impl Serialize for PositionJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match self.0 {
            Position::Line(n) => m.serialize_entry("line", n)?,
            Position::Kafka { topic, partition, offset } => {
                m.serialize_entry("topic", topic)?;
                m.serialize_entry("partition", partition)?;
                m.serialize_entry("offset", offset)?;
            }
            Position::Index(i) => m.serialize_entry("index", i)?,
        }
        m.end()
    }
}

/// UTF-8 bytes as text; anything else as base64, flagged.
fn text_or_base64(bytes: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (Cow::Owned(base64::engine::general_purpose::STANDARD.encode(bytes)), Some("base64")),
    }
}

/// The inverse of [`text_or_base64`].
pub fn bytes_from(text: &str, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_else(|_| text.as_bytes().to_vec()),
        _ => text.as_bytes().to_vec(),
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("output rows serialize")
}

/// An output row: its key and its fields as JSON text, fields in the contract's order.
pub trait OutputRow {
    /// The output's key: a JSON object of the key fields.
    fn key(&self) -> String;
    /// The whole row: a JSON object.
    fn row(&self) -> String;
}

impl OutputRow for Row {
    fn key(&self) -> String {
        self.encoded().key()
    }
    fn row(&self) -> String {
        self.encoded().row()
    }
}

/// The fields of `output`'s key, in the order its key JSON has them (an alert's key is the
/// whole row).
pub fn key_fields(output: Output) -> Vec<String> {
    let names: &[&str] = match output {
        Output::DeadLetters => &["input", "position"],
        Output::View(i) => {
            return dataflows::sql::registry::with_view(i, |v| v.key.iter().map(|&k| v.columns[k].0.to_string()).collect());
        }
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Calls `each` with every field of `row` that holds a time (an RFC 3339 string in its JSON)
/// and its milliseconds since the epoch: a format with a date type (BSON) stores these as dates.
pub fn time_fields(row: &Row, mut each: impl FnMut(&'static str, Millis)) {
    match row {
        Row::View(r) => dataflows::sql::registry::with_view(r.view, |v| {
            for ((name, _), value) in v.columns.iter().zip(&r.values) {
                if let dataflows::sql::Value::Timestamp(ms) = value {
                    each(name, *ms);
                }
            }
        }),
        Row::DeadLetter(_) => {}
    }
}

/// A view row's columns (`key`: its key columns) as a JSON object, written straight from its
/// values into one string, as serde_json writes them (its unit test checks): timestamps as
/// RFC 3339 with milliseconds, like every output's times; a float that is not finite as null;
/// the names escaped once per view ([`dataflows::sql::registry::ViewInfo::json_names`]).
/// (Through a serde map, every column's name was escaped anew in every row: the outputs' JSON
/// took twice a struct's serde encoding.) A view's column names are distinct: the compiler refuses
/// two of one name.
fn view_json(view: &dataflows::sql::registry::ViewInfo, values: &[dataflows::sql::Value], key: bool) -> String {
    use dataflows::sql::Value;
    let mut out = String::with_capacity(24 * values.len() + 2);
    let mut entry = |i: usize| {
        out.push(if out.is_empty() { '{' } else { ',' });
        out.push_str(&view.json_names[i]);
        match &values[i] {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => out.push_str(itoa::Buffer::new().format(*n)),
            Value::Float(x) if x.is_finite() => out.push_str(ryu::Buffer::new().format_finite(*x)),
            Value::Float(_) => out.push_str("null"),
            // (a json column's text is JSON already)
            Value::Text(t) if view.columns[i].1 == dataflows::sql::Type::Json => out.push_str(t),
            Value::Text(t) => dataflows::output::json_string(&mut out, t),
            Value::Timestamp(ms) => {
                out.push('"');
                out.push_str(&format_time(*ms));
                out.push('"');
            }
        }
    };
    if key {
        view.key.iter().for_each(|&i| entry(i));
    } else {
        (0..values.len()).for_each(entry);
    }
    if out.is_empty() {
        out.push('{');
    }
    out.push('}');
    out
}

/// A view's row is keyed by its key columns (the GROUP BY columns, else all of them).
impl OutputRow for dataflows::output::ViewRow {
    fn key(&self) -> String {
        dataflows::sql::registry::with_view(self.view, |view| view_json(view, &self.values, true))
    }
    fn row(&self) -> String {
        dataflows::sql::registry::with_view(self.view, |view| view_json(view, &self.values, false))
    }
}

/// The row's own record, for encoding.
trait Encoded {
    fn encoded(&self) -> &dyn OutputRow;
}

impl Encoded for Row {
    fn encoded(&self) -> &dyn OutputRow {
        match self {
            Row::DeadLetter(r) => &**r,
            Row::View(r) => &**r,
        }
    }
}

impl OutputRow for DeadLetter {
    fn key(&self) -> String {
        #[derive(Serialize)]
        struct K<'a> {
            input: &'a str,
            position: PositionJson<'a>,
        }
        to_json(&K { input: &self.input, position: PositionJson(&self.position) })
    }
    fn row(&self) -> String {
        #[derive(Serialize)]
        struct R<'a> {
            input: &'a str,
            position: PositionJson<'a>,
            reason: &'a str,
            raw: Cow<'a, str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw_encoding: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            key: Option<Cow<'a, str>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            key_encoding: Option<&'static str>,
        }
        let (raw, raw_encoding) = text_or_base64(&self.raw);
        let (key, key_encoding) = match &self.key {
            Some(k) => {
                let (k, e) = text_or_base64(k);
                (Some(k), e)
            }
            None => (None, None),
        };
        to_json(&R {
            input: &self.input,
            position: PositionJson(&self.position),
            reason: &self.reason,
            raw,
            raw_encoding,
            key,
            key_encoding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_same_exactly_when_their_bytes_are() {
        // every length up to three words, and a difference at every place of each
        for n in 0..25 {
            let a: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            assert!(same_name(&a, &a.clone()), "{a}");
            assert!(!same_name(&a, &format!("{a}x")), "{a}");
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'_';
                let b = String::from_utf8(b).expect("ascii");
                assert_eq!(same_name(&a, &b), a == b, "{a} {b}");
            }
        }
    }

    fn decode_sql(raw: &[u8], columns: &[dataflows::sql::Column]) -> Result<dataflows::sql::SqlRow, String> {
        SqlDecoder::new(columns.to_vec()).decode(raw)
    }

    #[test]
    fn sql_records_decode_by_column_type_and_name_what_is_missing_or_wrong() {
        use dataflows::sql::{Column, Type, Value};
        let col = |name: &str, ty| Column { name: name.to_string(), ty };
        let cols = [col("id", Type::Int), col("x", Type::Float), col("s", Type::Text), col("t", Type::Timestamp), col("b", Type::Bool)];
        let row = decode_sql(br#"{"s":"a","extra":[1,{"y":2}],"id":7,"x":3,"t":"2026-01-01 00:00:00","b":null}"#, &cols);
        let want = vec![Value::Int(7), Value::Float(3.0), Value::Text("a".into()), Value::Timestamp(1_767_225_600_000), Value::Null];
        assert_eq!(row, Ok(want.clone()));
        // a field name with escapes (which the parser unescapes into a buffer of its own)
        let escaped = br#"{"\u0073":"a","i\u0064":7,"x":3,"t":"2026-01-01 00:00:00","b":null,"\"e\"":1}"#;
        assert_eq!(decode_sql(escaped, &cols), Ok(want));
        assert_eq!(decode_sql(br#"{"id":1,"x":1,"s":"a","t":0}"#, &cols), Err("missing_field: b".to_string()));
        assert_eq!(decode_sql(br#"{"id":1.5}"#, &cols), Err("wrong_type: id is not int (1.5)".to_string()));
        assert_eq!(decode_sql(br#"{"id":"7"}"#, &cols), Err(r#"wrong_type: id is not int ("7")"#.to_string()));
        assert_eq!(decode_sql(br#"{"s":{"k":[1]}}"#, &cols), Err(r#"wrong_type: s is not text ({"k":[1]})"#.to_string()));
        assert!(decode_sql(br#"{"t":"yesterday"}"#, &cols).is_err_and(|e| e.starts_with("bad_time: `yesterday` is not")));
        // Past 64 columns, a missing one is still named.
        let wide: Vec<Column> = (0..70).map(|i| col(&format!("c{i}"), Type::Int)).collect();
        let all = |skip: usize| {
            let fields: Vec<String> = (0..70).filter(|&i| i != skip).map(|i| format!(r#""c{i}":{i}"#)).collect();
            format!("{{{}}}", fields.join(","))
        };
        assert_eq!(decode_sql(all(99).as_bytes(), &wide).map(|r| r.len()), Ok(70));
        assert_eq!(decode_sql(all(3).as_bytes(), &wide), Err("missing_field: c3".to_string()));
        assert_eq!(decode_sql(all(66).as_bytes(), &wide), Err("missing_field: c66".to_string()));
    }

    /// A `not null` column's null is a dead letter; a required field is checked like a column
    /// (present, of its type) and dropped from the row; a number is a time as every input's is.
    #[test]
    fn not_null_columns_and_required_fields() {
        use dataflows::sql::{Column, Type, Value};
        let col = |name: &str, ty| Column { name: name.to_string(), ty };
        let mut d = SqlDecoder::new(vec![col("id", Type::Json), col("event", Type::Text)])
            .not_null(&[0])
            .requiring(&[col("at", Type::Timestamp), col("page", Type::Text)]);
        assert_eq!(d.columns().len(), 2);
        assert_eq!(
            d.decode(br#"{"page":"/","id":"u1","event":"click","at":1767225600}"#),
            Ok(vec![Value::Text(r#""u1""#.into()), Value::Text("click".into())])
        );
        assert_eq!(
            d.decode(br#"{"id":7,"event":"click","at":1767225600000,"page":"/"}"#),
            Ok(vec![Value::Int(7), Value::Text("click".into())])
        );
        assert_eq!(
            d.decode(br#"{"id":null,"event":"e","at":1,"page":"/"}"#),
            Err("wrong_type: id is null, and declared not null".to_string())
        );
        assert_eq!(d.decode(br#"{"event":"e","at":1,"page":"/"}"#), Err("missing_field: id".to_string()));
        assert_eq!(d.decode(br#"{"id":1,"event":"e","page":"/"}"#), Err("missing_field: at".to_string()));
        assert_eq!(d.decode(br#"{"id":1,"event":"e","at":1,"page":5}"#), Err("wrong_type: page is not text (5)".to_string()));
        assert!(d.decode(br#"{"id":1,"event":"e","at":"soon","page":"/"}"#).is_err_and(|e| e.starts_with("bad_time")));
    }

    /// A json column read straight from the parser holds what `eval::json_value` makes of the
    /// same JSON through `serde_json::Value` (the planner's casts and `->` make them that way).
    #[test]
    fn json_columns_read_from_the_parser_equal_json_values() {
        use dataflows::sql::{Column, Type};
        let cols = [Column { name: "j".into(), ty: Type::Json }];
        for json in [
            "7",
            "-3",
            "0",
            "18446744073709551615",
            "9223372036854775807",
            "2.5",
            "1.0",
            "-0.0",
            "1e300",
            "true",
            "false",
            "null",
            r#""u-42""#,
            r#""with \"quotes\" and \\ and \n and \u0001 and é""#,
            "[1, {\"k\": [true, null]}]",
            r#"{"b": 1, "a": "x"}"#,
        ] {
            let want = dataflows::sql::eval::json_value(&serde_json::from_str(json).unwrap());
            assert_eq!(decode_sql(format!(r#"{{"j": {json}}}"#).as_bytes(), &cols), Ok(vec![want]), "{json}");
        }
    }

    /// One decoder learns the order of the last record's fields; records in other orders, with
    /// fields added, dropped, renamed or repeated, decode as a fresh decoder decodes them.
    #[test]
    fn a_decoder_that_guesses_the_field_order_decodes_as_a_fresh_one() {
        use dataflows::sql::{Column, Type};
        let col = |name: &str, ty| Column { name: name.to_string(), ty };
        let cols = vec![col("id", Type::Int), col("s", Type::Text), col("x", Type::Float), col("b", Type::Bool)];
        let records: [&[u8]; 9] = [
            br#"{"id":1,"s":"a","x":1.5,"b":true}"#,
            br#"{"id":2,"s":"b","x":2,"b":false}"#,
            br#"{"b":null,"x":3,"s":"c","id":3}"#,
            br#"{"id":4,"extra":0,"s":"d","x":4,"b":true}"#,
            br#"{"id":5,"extra":0,"s":"e","x":5,"b":true}"#,
            br#"{"id":6,"s":"f","x":6}"#,
            br#"{"id":7,"id":8,"s":"g","x":7,"b":false,"more":[1]}"#,
            br#"{"id":9,"s":"h","x":"9","b":false}"#,
            br#"{"ID":10,"s":"i","x":10,"b":true}"#,
        ];
        let mut reused = SqlDecoder::new(cols.clone());
        for _ in 0..2 {
            for r in records {
                assert_eq!(reused.decode(r), decode_sql(r, &cols), "{}", String::from_utf8_lossy(r));
            }
        }
    }

    #[test]
    fn time_spellings() {
        let t = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(parse_time_str("2026-01-01 00:00:00"), Ok(t));
        assert_eq!(parse_time_str("2026-01-01T00:00:00Z"), Ok(t));
        assert_eq!(parse_time_str("2026-01-01T01:00:00+01:00"), Ok(t));
        assert_eq!(parse_time_str("2026-01-01T00:00:00.250Z"), Ok(t + 250));
        assert_eq!(parse_time_str("2026-01-01T00:00:00.250"), Ok(t + 250));
        assert_eq!(parse_time_str("2026-01-01T00:00:00.2509Z"), Ok(t + 250));
        assert_eq!(parse_time_str("2025-12-31T19:00:00-05:00"), Ok(t));
        assert_eq!(parse_time_str("2026-01-01 00:00:00.5"), Ok(t + 500));
        assert!(parse_time_str("2026-02-30 00:00:00").is_err());
        assert!(parse_time_str("2026-01-01 25:00:00").is_err());
        assert_eq!(time_from_number(1_767_225_600.0), Ok(t));
        assert_eq!(time_from_number(1_767_225_600_000.0), Ok(t));
        assert!(parse_time_str("yesterday").is_err());
        assert_eq!(format_time(t), "2026-01-01T00:00:00.000Z");
        assert_eq!(format_time(t + 250), "2026-01-01T00:00:00.250Z");
        // fixed width: string order is time order (`…:01Z` sorted after `…:01.500Z` before)
        let (a, b) = (format_time(t + 1000), format_time(t + 1500));
        assert!(a < b && a.len() == b.len(), "{a} {b}");
        // an offset is at most ±23:59, in either spelling
        assert!(parse_time_str("2026-01-01T00:00:00+24:00").is_err());
        assert!(parse_time_str("2026-01-01 00:00:00+99:99").is_err());
        assert!(parse_time_str("2026-01-01T00:00:00-00:60").is_err());
        assert_eq!(parse_time_str("2026-01-01T23:59:00+23:59"), Ok(t));
    }

    #[test]
    fn view_texts_are_escaped_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", b as char)).collect();
        texts.extend(["", "plain", "é and 😀", "\"\\\u{0}\u{1f}\u{7f}", "\\\\\"\""].map(String::from));
        for t in texts {
            let mut got = String::new();
            dataflows::output::json_string(&mut got, &t);
            assert_eq!(got, serde_json::to_string(&t).unwrap(), "{t:?}");
        }
    }

    #[test]
    fn view_rows_encode_as_json_objects_of_their_named_fields() {
        use dataflows::sql::{Type, Value};
        let columns = [
            ("a", Type::Int),
            ("t", Type::Text),
            ("x", Type::Float),
            ("y", Type::Float),
            ("at", Type::Timestamp),
            ("n\"\\\u{7}é", Type::Bool),
        ];
        let columns: Vec<(String, Type)> = columns.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        let view = dataflows::sql::registry::view("codec_test_view", &columns, &[1, 0]);
        let values = vec![
            Value::Int(-3),
            Value::Text("q\"uo\\te\n\u{1}é".into()),
            Value::Float(f64::NAN),
            Value::Float(0.1),
            Value::Timestamp(1_758_000_000_123),
            Value::Null,
        ];
        let row = dataflows::output::ViewRow::new(view, values);
        // the reference: a serde_json object of the columns in order
        let mut object = serde_json::Map::new();
        object.insert("a".into(), serde_json::json!(-3));
        object.insert("t".into(), serde_json::json!("q\"uo\\te\n\u{1}é"));
        object.insert("x".into(), serde_json::Value::Null);
        object.insert("y".into(), serde_json::json!(0.1));
        object.insert("at".into(), serde_json::json!("2025-09-16T05:20:00.123Z"));
        // (a name that needs escaping, as a quoted identifier may)
        object.insert("n\"\\\u{7}é".into(), serde_json::Value::Null);
        assert_eq!(row.row(), serde_json::Value::Object(object).to_string());
        assert_eq!(row.key(), r#"{"t":"q\"uo\\te\n\u0001é","a":-3}"#);
    }
}
