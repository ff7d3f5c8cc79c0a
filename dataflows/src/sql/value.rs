//! SQL values and types: what a row of a compiled view holds.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Type {
    /// true or false
    Bool,
    /// 64-bit integer
    Int,
    /// 64-bit float
    Float,
    /// UTF-8 text
    Text,
    /// milliseconds since the Unix epoch, UTC
    Timestamp,
    /// any JSON value but null (an object, an array, a string, a number, a bool), held as its
    /// compact JSON text in a [`Value::Text`]; written into outputs as JSON, not as a string
    Json,
    /// the type of a bare NULL (fits any column)
    Null,
}

impl Type {
    /// The type's name in configs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Float => "float",
            Type::Text => "text",
            Type::Timestamp => "timestamp",
            Type::Json => "json",
            Type::Null => "null",
        }
    }

    /// A config's type name.
    pub fn parse(s: &str) -> Option<Type> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => Type::Bool,
            "int" | "integer" | "bigint" => Type::Int,
            "float" | "double" | "real" => Type::Float,
            "text" | "string" | "varchar" => Type::Text,
            "timestamp" => Type::Timestamp,
            "json" | "jsonb" => Type::Json,
            _ => return None,
        })
    }

    /// Whether a value of `other` may stand where this type is expected (NULL fits anywhere).
    pub fn accepts(self, other: Type) -> bool {
        self == other || other == Type::Null || self == Type::Null
    }

    /// Numeric: int or float.
    pub fn numeric(self) -> bool {
        matches!(self, Type::Int | Type::Float | Type::Null)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value of a row. Floats are ordered and compared by `f64::total_cmp` (so rows are keys).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL
    Null,
    /// a bool
    Bool(bool),
    /// an int
    Int(i64),
    /// a float
    Float(f64),
    /// text
    Text(compact_str::CompactString),
    /// a timestamp, in milliseconds since the epoch
    Timestamp(i64),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Text(_) => 4,
            Value::Timestamp(_) => 5,
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a float, for numbers.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Equal exactly when [`Ord`] says `Equal`, decided without ordering: texts of different
/// lengths differ at once (a text compared by `cmp` is read byte by byte first), floats are equal
/// when their bits are (`total_cmp` orders the bit patterns one to one).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) | (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) | Value::Timestamp(i) => i.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::Text(s) => s.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::Timestamp(t) => write!(f, "TIMESTAMP {t}"),
        }
    }
}

/// A hash of values (a row, a key) for the tables a worker probes per row: each value is one
/// word (a text: the fixed hasher's hash of its bytes) mixed in by a multiply and a rotation
/// (a general hasher fed value by value, through `Hash`, cost about 100 instructions a value).
/// Values that differ collide about as rarely as under a general hash; the same values always
/// hash the same, on every worker and in every run.
pub fn hash_values<'a>(values: impl Iterator<Item = &'a Value>) -> u64 {
    use std::hash::BuildHasher;
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = 0x243F_6A88_85A3_08D3;
    for v in values {
        h = match v {
            Value::Null => mix(h, 1),
            Value::Bool(b) => mix(h, 2 + *b as u64),
            Value::Int(i) => mix(mix(h, 4), *i as u64),
            Value::Float(x) => mix(mix(h, 5), x.to_bits()),
            Value::Timestamp(t) => mix(mix(h, 6), *t as u64),
            Value::Text(s) => mix(mix(h, 7), crate::ops::FixedHasher::default().hash_one(s.as_bytes())),
        };
    }
    h ^ (h >> 32)
}

/// A row of a source or view.
pub type SqlRow = Vec<Value>;

/// A join key: its values, one held in place (most keys are one column: no allocation, and a
/// hash map compares it where it is stored, without reading another heap block).
/// Compared and ordered as its values (a slice); hashed as one word (see its `Hash`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Key {
    /// a one-column key
    One(Value),
    /// a key of other widths (boxed, not a `Vec`: a key is then 24 bytes, as a value is)
    Many(Box<[Value]>),
}

impl Key {
    /// The key of these values (one value: [`Key::One`], so equal keys are equal variants).
    pub fn new(mut values: SqlRow) -> Key {
        match values.len() {
            1 => Key::One(values.pop().expect("one value")),
            _ => Key::Many(values.into_boxed_slice()),
        }
    }

    /// The key of a copy of these values.
    pub fn from_slice(values: &[Value]) -> Key {
        match values {
            [v] => Key::One(v.clone()),
            vs => Key::Many(vs.into()),
        }
    }

    /// The key of `row` in `columns` (one column: held in place, no row allocated).
    pub fn at(columns: &[usize], row: &[Value]) -> Key {
        match columns {
            [c] => Key::One(row[*c].clone()),
            cs => Key::Many(cs.iter().map(|&c| row[c].clone()).collect()),
        }
    }

    /// Its values.
    pub fn values(&self) -> &[Value] {
        match self {
            Key::One(v) => std::slice::from_ref(v),
            Key::Many(vs) => vs,
        }
    }

    /// Its values, as a row.
    pub fn into_row(self) -> SqlRow {
        match self {
            Key::One(v) => vec![v],
            Key::Many(vs) => vs.into_vec(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.values().cmp(other.values())
    }
}

/// A key hashes as one word, its values' [`hash_values`]: the maps of a GROUP BY's groups and a
/// join's keys (a million keys at a million users) and the exchanges by key hash it per update,
/// and fed value by value through `Hash` it cost about 100 instructions a value. (So no
/// hash map of keys may be looked up by a slice of values: their hashes differ.)
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(hash_values(self.values().iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::{hash_values, Key, Value};

    /// A key is as wide as a value (its tag in the value's niche): tables of keys (a join's, a
    /// reduce's) hold a million of them.
    #[test]
    fn a_key_is_one_value_wide() {
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    /// Distinct rows of every kind of value (and of lengths 1 to 3) get distinct hashes; equal
    /// rows, equal ones.
    #[test]
    fn distinct_rows_hash_apart() {
        let mut singles = vec![Value::Null, Value::Bool(false), Value::Bool(true)];
        for i in -300i64..300 {
            singles.extend([Value::Int(i), Value::Timestamp(i), Value::Float(i as f64), Value::Float(i as f64 + 0.5)]);
            singles.extend([Value::Text(i.to_string().into()), Value::Text(format!("{i}\0").into())]);
            singles.push(Value::Text(format!("a text long enough to be kept on the heap {i}").into()));
        }
        let mut rows: Vec<Vec<Value>> = singles.iter().map(|v| vec![v.clone()]).collect();
        for (i, a) in singles.iter().enumerate().step_by(3) {
            for b in singles.iter().skip(i % 7).step_by(11) {
                rows.push(vec![a.clone(), b.clone()]);
                rows.push(vec![a.clone(), b.clone(), Value::Null]);
            }
        }
        let mut seen = std::collections::HashMap::new();
        for row in &rows {
            let h = hash_values(row.iter());
            assert_eq!(h, hash_values(row.clone().iter()), "{row:?}");
            if let Some(other) = seen.insert(h, row) {
                assert_eq!(other, row, "two rows of one hash");
            }
        }
        assert!(seen.len() > 100_000, "{}", seen.len());
    }

    /// `==` is `cmp` saying `Equal`, for every pair of values of every variant.
    #[test]
    fn equality_agrees_with_the_order() {
        let mut values = vec![Value::Null, Value::Bool(false), Value::Bool(true)];
        for x in [0.0, -0.0, 1.5, -1.5, f64::NAN, -f64::NAN, f64::INFINITY, f64::MIN_POSITIVE] {
            values.push(Value::Float(x));
        }
        for i in [-2i64, 0, 1, 7] {
            values.extend([Value::Int(i), Value::Timestamp(i)]);
        }
        for t in ["", "a", "ab", "b", "a\0", "a text long enough to be kept on the heap", "a text long enough to be kept on the heaq"] {
            values.push(Value::Text(t.into()));
        }
        for a in &values {
            for b in &values {
                assert_eq!(a == b, a.cmp(b) == std::cmp::Ordering::Equal, "{a:?} {b:?}");
            }
        }
    }
}
