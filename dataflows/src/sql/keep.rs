//! What a checkpoint keeps of a SQL input: the rows every view would need to be built again
//! from nothing, as of each checkpoint time.
//!
//! An upsert input keeps each key's latest version (by source position) that this worker read;
//! any other input its distinct rows with their counts (a row read twice is kept once, counted
//! twice). An event-time input whose rows only feed tumbling windows and stateless views
//! ([`super::render::forgettable_inputs`]) forgets a row once the watermark passes the end of
//! its window: the newest row is never forgotten, so the rows kept carry the watermark too.
//! A restart inserts the rows at the checkpoint time, ahead of everything read after it, and
//! the views are computed from them as from the input they stand for.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use super::value::{SqlRow, Value};
use crate::checkpoint::Snapshots;
use crate::ops::{stash_by_time, FastMap, Stash};
use crate::records::Millis;
use crate::{Coll, Time};

/// One worker's rows of one input as of a checkpoint time: `(rank, row, count)`, the rank the
/// row's source position (what an upsert input orders versions by).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeptRows {
    /// the rows
    pub rows: Vec<(u64, SqlRow, isize)>,
}

/// A worker's [`KeptRows`] of one input at checkpoint times, shared with the runtime.
pub type KeptRowsLog = Rc<RefCell<Snapshots<KeptRows>>>;

/// How an event-time input's rows are forgotten: the event-time column, the sizes of the
/// tumbling windows its rows feed (empty: none), and the allowed lateness.
#[derive(Clone, Debug)]
pub struct Forget {
    /// the event-time column
    pub column: usize,
    /// the tumbling windows' sizes, ms
    pub sizes: Vec<i64>,
    /// the input's allowed lateness, ms
    pub lateness_ms: Millis,
}

impl Forget {
    /// The watermark at which a row at `ts` is no longer needed: the end of its newest window,
    /// or just after it with no window.
    fn end(&self, ts: Millis) -> Millis {
        self.sizes.iter().map(|s| ts.div_euclid(*s) * s + s).max().unwrap_or(ts.saturating_add(1))
    }
}

/// The rows kept: each key's latest version, or every distinct row with its count (and, when
/// rows are forgotten, the rows by the watermark that forgets them).
enum Kept {
    Latest { key: Vec<usize>, rows: FastMap<SqlRow, (u64, SqlRow)> },
    Counted { rows: FastMap<SqlRow, isize>, forget: Option<(Forget, BTreeMap<Millis, Vec<SqlRow>>, Option<Millis>)> },
}

impl Kept {
    fn apply(&mut self, rank: u64, row: SqlRow, diff: isize) {
        match self {
            Kept::Latest { key, rows } => {
                let k: SqlRow = key.iter().map(|&c| row[c].clone()).collect();
                match rows.get_mut(&k) {
                    Some(latest) if latest.0 >= rank => {}
                    Some(latest) => *latest = (rank, row),
                    None => {
                        rows.insert(k, (rank, row));
                    }
                }
            }
            Kept::Counted { rows, forget } => {
                if let Some((f, by_end, max)) = forget {
                    if let Value::Timestamp(ts) = row[f.column] {
                        *max = (*max).max(Some(ts));
                        if diff > 0 {
                            by_end.entry(f.end(ts)).or_default().push(row.clone());
                        }
                    }
                }
                match rows.entry(row) {
                    Entry::Occupied(mut e) => {
                        *e.get_mut() += diff;
                        if *e.get() == 0 {
                            e.remove();
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert(diff);
                    }
                }
            }
        }
    }

    /// Forgets the rows whose windows the watermark has passed.
    fn forget(&mut self) {
        let Kept::Counted { rows, forget: Some((f, by_end, Some(max))) } = self else { return };
        let watermark = *max - f.lateness_ms;
        while by_end.first_key_value().is_some_and(|(end, _)| *end <= watermark) {
            for row in by_end.pop_first().expect("checked").1 {
                rows.remove(&row);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Kept::Latest { rows, .. } => rows.len(),
            Kept::Counted { rows, .. } => rows.len(),
        }
    }

    fn state(&self) -> KeptRows {
        let rows = match self {
            Kept::Latest { rows, .. } => rows.values().map(|(rank, row)| (*rank, row.clone(), 1)).collect(),
            Kept::Counted { rows, .. } => rows.iter().map(|(row, n)| (0, row.clone(), *n)).collect(),
        };
        KeptRows { rows }
    }
}

/// Keeps what a checkpoint needs of an input's `(rank, row)`s (after lateness, before any
/// upsert): with `key`, each key's latest version; else every distinct row, forgotten as
/// `forget` says. Records it at every checkpoint time (multiples of `every`) this worker
/// passes.
/// `input` names it in the state metrics (`KeepRows`).
pub fn keep_rows<'s>(rows: Coll<'s, (u64, SqlRow)>, input: &str, key: Vec<usize>, forget: Option<Forget>, every: Time) -> KeptRowsLog {
    let log: KeptRowsLog = Rc::new(RefCell::new(Snapshots::new(every)));
    let size = crate::state::StateSize::new(input, "KeepRows");
    let out = log.clone();
    let mut kept = if key.is_empty() {
        Kept::Counted { rows: FastMap::default(), forget: forget.map(|f| (f, BTreeMap::new(), None)) }
    } else {
        Kept::Latest { key, rows: FastMap::default() }
    };
    rows.inner.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "KeepRows", move |_cap, _info| {
        let mut pending: Stash<(u64, SqlRow)> = BTreeMap::new();
        move |(input, frontier), output| {
            stash_by_time(input, &mut pending, output.output_index());
            while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                let (t, (_cap, updates)) = pending.pop_first().expect("checked");
                log.borrow_mut().passed(t, || kept.state());
                for ((rank, row), diff) in updates {
                    kept.apply(rank, row, diff);
                }
                kept.forget();
                size.set(kept.len());
            }
            let bound = frontier.frontier().iter().min().copied().unwrap_or(Time::MAX);
            log.borrow_mut().passed(bound, || kept.state());
        }
    });
    out
}
