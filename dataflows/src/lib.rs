//! diffstream's dataflows: the SQL compiler and the differential operators it renders views
//! to, no I/O. The engine binds inputs and outputs to files, topics and collections; nothing
//! here knows about those.
//!
//! Logical time is a batch number ([`Time`]); every collection has `isize` diffs.

pub mod checkpoint;
pub mod ops;
pub mod output;
pub mod records;
pub mod sql;
pub mod state;
pub mod watermark;

use std::fmt;
use std::str::FromStr;

use differential_dataflow::VecCollection;

pub use output::{Output, Row};

/// Logical time: the number of the batch a record was read in.
pub type Time = u64;

/// A collection at logical time [`Time`] with `isize` diffs.
pub type Coll<'s, D> = VecCollection<'s, Time, D, isize>;

/// An input of the views (a table: an input with `columns`), by its number in [`sql::registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputName(pub u8);

impl InputName {
    /// How many inputs a run may have, for counters indexed by [`InputName::index`].
    pub const MAX: usize = sql::registry::MAX;
    /// The input's name in configs and dead letters.
    pub fn as_str(self) -> &'static str {
        sql::registry::table_name(self.0)
    }
    /// A dense index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
    /// The input of [`InputName::index`] `i`, if there is one.
    pub fn from_index(i: usize) -> Option<InputName> {
        (i < sql::registry::MAX && sql::registry::table_name(i as u8) != "?").then_some(InputName(i as u8))
    }
}

impl FromStr for InputName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        sql::registry::find_table(s)
            .map(InputName)
            .ok_or_else(|| format!("unknown input `{s}`; the inputs are those the config declares (users, clicks and sensors have their columns declared for them)"))
    }
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
