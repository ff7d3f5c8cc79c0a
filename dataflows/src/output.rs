//! The outputs the dataflows write and their one compact row type.
//!
//! Every output update travels from the dataflows to the sinks as a typed [`Row`]: no JSON text
//! is built, hashed, compared or consolidated inside the dataflow. Sinks encode a row once,
//! when they write it. A row knows its output and can hash its key, which is how every worker
//! gets its share of every output ([`Row::key_hash`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::records::DeadLetter;

/// Every output a run can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Output {
    /// records the engine could not use (append-only)
    DeadLetters,
    /// a SQL view, by its number in [`crate::sql::registry`]
    View(u8),
}

impl Output {
    /// The output's name in configs, files, topics and collections.
    pub fn as_str(self) -> &'static str {
        match self {
            Output::DeadLetters => "dead_letters",
            Output::View(i) => crate::sql::registry::view_name(i),
        }
    }

    /// A dense index: the dead letters first, then the views.
    pub fn index(self) -> usize {
        match self {
            Output::DeadLetters => 0,
            Output::View(i) => 1 + i as usize,
        }
    }

    /// The output of dense index `i` ([`Output::index`]).
    pub fn from_index(i: usize) -> Option<Output> {
        match i {
            0 => Some(Output::DeadLetters),
            _ => (i < Output::MAX).then(|| Output::View((i - 1) as u8)),
        }
    }

    /// How many outputs a run may have, for counters indexed by [`Output::index`].
    pub const MAX: usize = 1 + crate::sql::registry::MAX;

    /// Whether rows are only ever inserted (never retracted or updated): such outputs can be
    /// streamed out as their times close instead of being held as state.
    pub fn append_only(self) -> bool {
        match self {
            Output::View(i) => crate::sql::registry::append_only(i),
            Output::DeadLetters => true,
        }
    }
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dead_letters" => Ok(Output::DeadLetters),
            _ => {
                crate::sql::registry::find_view(s).map(Output::View).ok_or_else(|| format!("unknown output `{s}`: not a view of this run"))
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of one output, boxed so that a row is one word in exchanges and sink state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Row {
    /// a row of `dead_letters`
    DeadLetter(Box<DeadLetter>),
    /// a row of a SQL view
    View(Box<ViewRow>),
}

/// Appends `s` to `out` as a JSON string, escaped as serde_json escapes it (`"`, `\\`, and
/// control characters; the rest as it stands): what view rows' names and texts are written with.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    // (which bytes need escaping, looked up: one load per byte)
    const ESCAPED: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = true;
            b += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t
    };
    while let Some(at) = rest.bytes().position(|b| ESCAPED[b as usize]) {
        out.push_str(&rest[..at]);
        match rest.as_bytes()[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// A row of a SQL view: its values, in the view's column order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewRow {
    /// the view, by its number in [`crate::sql::registry`]
    pub view: u8,
    /// the values
    pub values: crate::sql::SqlRow,
    /// [`Row::key_hash`], computed once when the row is made: the exchange and every sink ask
    /// for it, and a view without a GROUP BY is keyed by all its values, texts among them
    key_hash: u64,
}

impl ViewRow {
    /// A row of view `view`.
    pub fn new(view: u8, values: crate::sql::SqlRow) -> Self {
        use std::hash::BuildHasher;
        let mut h = crate::ops::FixedHasher::default().build_hasher();
        Output::View(view).hash(&mut h);
        crate::sql::registry::with_view(view, |v| v.key.iter().for_each(|&k| values[k].hash(&mut h)));
        ViewRow { view, values, key_hash: h.finish() }
    }
}

impl Row {
    /// The output the row belongs to.
    pub fn output(&self) -> Output {
        match self {
            Row::DeadLetter(_) => Output::DeadLetters,
            Row::View(r) => Output::View(r.view),
        }
    }

    /// A hash of the output and key (the fields its output is keyed by), the same in every
    /// process: rows of one key always meet on one worker, whatever their other fields. A
    /// view's row hashed its key when it was made ([`ViewRow::new`]).
    pub fn key_hash(&self) -> u64 {
        use std::hash::BuildHasher;
        let mut h = crate::ops::FixedHasher::default().build_hasher();
        self.output().hash(&mut h);
        match self {
            Row::DeadLetter(r) => (&r.input, &r.position).hash(&mut h),
            Row::View(r) => return r.key_hash,
        }
        h.finish()
    }
}

/// An output's current rows taken from the operator that keeps them, once the run is over:
/// calls its argument once per row with the row's multiplicity (this worker's share), and
/// frees the operator's state as it goes (each entry while it is in cache, rather than in a
/// second pass over a map of millions when the dataflow is dropped), so it gives the rows
/// once. A run whose snapshot needs only the final rows takes them here rather than keeping a
/// second copy of every row in its sink as the rows change.
pub type CurrentRows = Box<dyn Fn(&mut dyn FnMut(Row, isize))>;

impl From<DeadLetter> for Row {
    fn from(r: DeadLetter) -> Self {
        Row::DeadLetter(Box::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Position;

    #[test]
    fn key_hash_ignores_non_key_fields_and_indexes_round_trip() {
        let dead = |reason: &str, input: &str| {
            Row::from(DeadLetter { input: input.into(), position: Position::Line(3), reason: reason.into(), raw: Vec::new(), key: None })
        };
        assert_eq!(dead("a", "x").key_hash(), dead("b", "x").key_hash());
        assert_ne!(dead("a", "x").key_hash(), dead("a", "y").key_hash());
        for o in [Output::DeadLetters, Output::View(0), Output::View(3)] {
            assert_eq!(Output::from_index(o.index()), Some(o));
        }
        assert_eq!(Output::from_index(Output::MAX), None);
        assert_eq!("dead_letters".parse::<Output>(), Ok(Output::DeadLetters));
    }
}
