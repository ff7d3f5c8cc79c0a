//! The inner equi-join of two collections of keyed rows, in hash maps ([`inner_join`]): both
//! sides exchanged by key; per key, each side's current rows (a multiset, no history); each
//! completed time, in order, emits `ΔL ⋈ R + L ⋈ ΔR + ΔL ⋈ ΔR` and then applies the deltas.
//!
//! A side may be an upsert input's ranked records ([`JoinSide::Latest`]): the join then keeps,
//! per key, the record of the highest rank it has seen (the input's latest version), and its
//! delta at a time is `-old +new` when a record outranks the current one — the rows
//! [`crate::ops::upsert`] would give, without holding them twice and exchanging them twice.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::rc::Rc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::reduce::CurrentSqlRows;
use super::value::{Key, SqlRow};
use crate::ops::{multiset_apply, stash_by_time, FastMap, Stash};
use crate::{Coll, Time};

/// A record of one side of an inner join: its key, its row and, from a side that keeps each
/// key's latest version only (an upsert input joined on its key), the row's rank.
pub trait SideRecord: differential_dataflow::ExchangeData {
    /// The key.
    fn key(&self) -> &Key;
    /// Its key, rank (`None`: a side of every row) and row.
    fn parts(self) -> (Key, Option<u64>, SqlRow);
}

impl SideRecord for (Key, SqlRow) {
    fn key(&self) -> &Key {
        &self.0
    }
    fn parts(self) -> (Key, Option<u64>, SqlRow) {
        (self.0, None, self.1)
    }
}

impl SideRecord for (Key, (u64, SqlRow)) {
    fn key(&self) -> &Key {
        &self.0
    }
    fn parts(self) -> (Key, Option<u64>, SqlRow) {
        (self.0, Some(self.1 .0), self.1 .1)
    }
}

/// One side of an inner join: rows keyed, or an upsert input's ranked records keyed by its
/// key, of which the join keeps each key's latest version.
pub enum JoinSide<'s> {
    Rows(Coll<'s, (Key, SqlRow)>),
    Latest(Coll<'s, (Key, (u64, SqlRow))>),
}

/// Makes a joined row of a pair of rows (the join's current rows at the end of a run). The
/// rows are the join's own, taken from its state: `[a, b]` says whether this is the last pair
/// each row is in, when its values may be moved into the joined row instead of copied (a
/// text copied is an allocation, and at a million keys most of the time of the last step).
pub type JoinedRow = Rc<dyn Fn(&mut SqlRow, &mut SqlRow, [bool; 2]) -> SqlRow>;

/// The joined row `left ++ right`.
pub fn concat_rows() -> JoinedRow {
    Rc::new(|a: &mut SqlRow, b: &mut SqlRow, [a_last, b_last]: [bool; 2]| {
        let mut row = if a_last { std::mem::take(a) } else { a.clone() };
        if b_last {
            row.append(b);
        } else {
            row.extend_from_slice(b);
        }
        row
    })
}

/// The inner join of two sides, each pair of rows made one by `make`; also the reader of its
/// current rows (each pair made one by `current_row`).
pub fn inner_join<'s, O: differential_dataflow::Data>(
    view: &str,
    left: JoinSide<'s>,
    right: JoinSide<'s>,
    make: impl Fn(&SqlRow, &SqlRow) -> O + 'static,
    current_row: JoinedRow,
) -> (Coll<'s, O>, CurrentSqlRows) {
    use JoinSide::{Latest, Rows};
    match (left, right) {
        (Rows(l), Rows(r)) => hash_join(view, l, r, make, current_row),
        (Rows(l), Latest(r)) => hash_join(view, l, r, make, current_row),
        (Latest(l), Rows(r)) => hash_join(view, l, r, make, current_row),
        (Latest(l), Latest(r)) => hash_join(view, l, r, make, current_row),
    }
}

/// A key's current rows on one side: nearly always one row, once, held in place (a vector
/// of rows per side was one more allocation, and one more cache miss at every change and at
/// the end, for each of a million keys). 24 bytes: the other multisets are boxed.
#[derive(Default)]
enum Side {
    #[default]
    Empty,
    /// one row, present once
    One(SqlRow),
    /// other multisets
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(SqlRow, isize)>>),
}

impl Side {
    /// How many distinct rows.
    fn len(&self) -> usize {
        match self {
            Side::Empty => 0,
            Side::One(_) => 1,
            Side::Many(rows) => rows.len(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Side::Empty)
    }

    /// Its rows and their counts.
    fn iter(&self) -> impl Iterator<Item = (&SqlRow, isize)> {
        let (one, many) = match self {
            Side::Empty => (None, &[][..]),
            Side::One(row) => (Some(row), &[][..]),
            Side::Many(rows) => (None, &rows[..]),
        };
        one.map(|r| (r, 1)).into_iter().chain(many.iter().map(|(r, n)| (r, *n)))
    }

    /// Its rows, to be taken, and their counts.
    fn iter_mut(&mut self) -> impl Iterator<Item = (&mut SqlRow, isize)> {
        let (one, many) = match self {
            Side::Empty => (None, &mut [][..]),
            Side::One(row) => (Some(row), &mut [][..]),
            Side::Many(rows) => (None, &mut rows[..]),
        };
        one.map(|r| (r, 1)).into_iter().chain(many.iter_mut().map(|(r, n)| (r, *n)))
    }

    /// Adds `changes` (rows and counts) to the multiset, emptying `changes`.
    fn apply(&mut self, changes: &mut Vec<(SqlRow, isize)>) {
        // the usual ones: a first row, and the one row updated (`-old +new`, from a reduce)
        match (&mut *self, changes.as_mut_slice()) {
            (Side::Empty, [(_, 1)]) => {
                *self = Side::One(changes.pop().expect("one change").0);
                return;
            }
            (Side::One(current), [(old, -1), (new, 1)] | [(new, 1), (old, -1)]) if old == current => {
                std::mem::swap(current, new);
                changes.clear();
                return;
            }
            _ => {}
        }
        let mut rows = match std::mem::take(self) {
            Side::Empty => Vec::new(),
            Side::One(row) => vec![(row, 1)],
            Side::Many(rows) => *rows,
        };
        multiset_apply(&mut rows, std::mem::take(changes));
        *self = match &mut rows[..] {
            [] => Side::Empty,
            [(_, 1)] => Side::One(rows.pop().expect("one row").0),
            _ => Side::Many(Box::new(rows)),
        };
    }
}

/// A change of a key's rows on one side.
enum Change<'d> {
    /// rows added and removed
    Rows(&'d mut Vec<(SqlRow, isize)>),
    /// every current row leaves and this one comes (a newer version of an upsert input's key)
    Replace(SqlRow),
    /// nothing
    Nothing,
}

impl Change<'_> {
    /// Its rows and counts, given the side's current rows (before it).
    fn iter<'a>(&'a self, current: &'a Side) -> impl Iterator<Item = (&'a SqlRow, isize)> {
        let (rows, replaced): (&[(SqlRow, isize)], _) = match self {
            Change::Rows(rows) => (rows, None),
            Change::Replace(new) => (&[], Some(new)),
            Change::Nothing => (&[], None),
        };
        let replaced = replaced.into_iter().flat_map(move |new| current.iter().map(|(r, n)| (r, -n)).chain([(new, 1)]));
        rows.iter().map(|(r, n)| (r, *n)).chain(replaced)
    }

    fn apply_to(self, side: &mut Side) {
        match self {
            Change::Rows(rows) if rows.is_empty() => {}
            Change::Rows(rows) => side.apply(rows),
            Change::Replace(row) => *side = Side::One(row),
            Change::Nothing => {}
        }
    }
}

/// A key's updates on one side, gathered: rows, or the best-ranked record. (One, reused.)
#[derive(Default)]
struct Delta {
    rows: Vec<(SqlRow, isize)>,
    best: Option<(u64, SqlRow)>,
}

impl Delta {
    fn add(&mut self, rank: Option<u64>, row: SqlRow, d: isize) {
        match rank {
            None => self.rows.push((row, d)),
            Some(r) if self.best.as_ref().is_none_or(|(b, _)| r > *b) => self.best = Some((r, row)),
            Some(_) => {}
        }
    }

    /// The change, given the side's current rows and the rank of its latest version: a record
    /// that does not outrank it, or brings the same row, changes nothing. (Empties the delta.)
    fn change(&mut self, current: &Side, rank: &mut u64) -> Change<'_> {
        match self.best.take() {
            None => Change::Rows(&mut self.rows),
            Some((r, row)) if current.is_empty() || r > *rank => {
                *rank = r;
                match current {
                    Side::One(same) if *same == row => Change::Nothing,
                    _ => Change::Replace(row),
                }
            }
            Some(_) => Change::Nothing,
        }
    }
}

/// A key's current rows on each side, and each side's latest rank.
type Held = (Side, Side, [u64; 2]);

/// Applies one side's updates of one time (`left`: the left side's) to the join's state, each
/// run of updates of one key at once (a reduce's `-old +new` come together), emitting each
/// change joined with the other side's current rows. Applied one after the other, a time's
/// updates of both sides emit `ΔL ⋈ R + (L + ΔL) ⋈ ΔR`, which is `ΔL ⋈ R + L ⋈ ΔR + ΔL ⋈ ΔR`;
/// a key's updates need not be gathered first (in a map of the time's keys, as large as the
/// time).
fn apply_side<X: SideRecord>(
    state: &mut FastMap<Key, Held>,
    updates: impl IntoIterator<Item = (X, isize)>,
    left: bool,
    delta: &mut Delta,
    held: &mut usize,
    give: &mut impl FnMut(&SqlRow, &SqlRow, isize),
) {
    let mut run: Option<Key> = None;
    for (x, d) in updates {
        let (k, rank, row) = x.parts();
        if run.as_ref() != Some(&k) {
            if let Some(done) = run.replace(k) {
                apply_key(state, done, left, delta, held, give);
            }
        }
        delta.add(rank, row, d);
    }
    if let Some(done) = run {
        apply_key(state, done, left, delta, held, give);
    }
}

/// Applies `delta`, the updates of key `k` on one side, to the state (see [`apply_side`]).
fn apply_key(
    state: &mut FastMap<Key, Held>,
    k: Key,
    left: bool,
    delta: &mut Delta,
    held: &mut usize,
    give: &mut impl FnMut(&SqlRow, &SqlRow, isize),
) {
    let mut apply = |(cl, cr, ranks): &mut Held| {
        let (mine, other, rank) = if left { (&mut *cl, &*cr, &mut ranks[0]) } else { (&mut *cr, &*cl, &mut ranks[1]) };
        let change = delta.change(mine, rank);
        if left {
            pairs(change.iter(mine), || other.iter(), give);
        } else {
            pairs(other.iter(), || change.iter(mine), give);
        }
        *held -= mine.len();
        change.apply_to(mine);
        *held += mine.len();
        cl.is_empty() && cr.is_empty()
    };
    // (the key moves into the state, or is dropped: no copy)
    match state.entry(k) {
        Entry::Occupied(mut e) => {
            if apply(e.get_mut()) {
                e.remove();
            }
        }
        Entry::Vacant(e) => {
            let mut sides = Default::default();
            if !apply(&mut sides) {
                e.insert(sides);
            }
        }
    }
}

/// [`inner_join`] of one kind of side with one kind of side.
fn hash_join<'s, L: SideRecord, R: SideRecord, O: differential_dataflow::Data>(
    view: &str,
    left: Coll<'s, L>,
    right: Coll<'s, R>,
    make: impl Fn(&SqlRow, &SqlRow) -> O + 'static,
    current_row: JoinedRow,
) -> (Coll<'s, O>, CurrentSqlRows) {
    let exchange_l = Exchange::new(|(x, _, _): &(L, Time, isize)| differential_dataflow::Hashable::hashed(x.key()));
    let exchange_r = Exchange::new(|(x, _, _): &(R, Time, isize)| differential_dataflow::Hashable::hashed(x.key()));
    let size = crate::state::StateSize::new(view, "HashJoin");
    let mut held = 0usize;
    let shared: Rc<RefCell<FastMap<Key, Held>>> = Default::default();
    let current = {
        let shared = shared.clone();
        Rc::new(move |each: &mut dyn FnMut(SqlRow, isize)| {
            for (_, (mut l, mut r, _)) in shared.borrow_mut().drain() {
                let (ln, rn) = (l.len(), r.len());
                for (i, (x, n)) in l.iter_mut().enumerate() {
                    for (j, (y, m)) in r.iter_mut().enumerate() {
                        each(current_row(x, y, [j + 1 == rn, i + 1 == ln]), n * m);
                    }
                }
            }
        })
    };
    let joined = left
        .inner
        .binary_frontier(right.inner, exchange_l, exchange_r, "HashJoin", |_cap, _info| {
            let (mut pending_l, mut pending_r): (Stash<L>, Stash<R>) = Default::default();
            let mut delta = Delta::default();
            move |(l, lf), (r, rf), output| {
                let mut state = shared.borrow_mut();
                let port = output.output_index();
                stash_by_time(l, &mut pending_l, port);
                stash_by_time(r, &mut pending_r, port);
                loop {
                    let next = [pending_l.first_key_value().map(|(t, _)| *t), pending_r.first_key_value().map(|(t, _)| *t)];
                    let Some(t) = next.into_iter().flatten().min().filter(|t| !lf.less_equal(t) && !rf.less_equal(t)) else { break };
                    let (l, r) = (pending_l.remove(&t), pending_r.remove(&t));
                    let cap = l.as_ref().map(|(c, _)| c).or(r.as_ref().map(|(c, _)| c)).expect("a time with updates").clone();
                    let mut session = output.session(&cap);
                    let mut give = |x: &SqlRow, y: &SqlRow, d: isize| session.give((make(x, y), t, d));
                    if let Some((_, updates)) = l {
                        apply_side(&mut state, updates, true, &mut delta, &mut held, &mut give);
                    }
                    if let Some((_, updates)) = r {
                        apply_side(&mut state, updates, false, &mut delta, &mut held, &mut give);
                    }
                    size.set(held);
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection();
    (joined, current)
}

/// Every pair of a row of `a` and a row of `b`, with the product of their counts.
fn pairs<'a, B: Iterator<Item = (&'a SqlRow, isize)>>(
    a: impl Iterator<Item = (&'a SqlRow, isize)>,
    b: impl Fn() -> B,
    give: &mut impl FnMut(&SqlRow, &SqlRow, isize),
) {
    for (x, n) in a {
        for (y, m) in b() {
            give(x, y, n * m);
        }
    }
}
