//! Where results go. Every output's updates travel as typed [`Row`]s and are exchanged by the
//! hash of their key ([`Route::ByKey`]), so every worker runs its own sinks for its share of
//! every output: its own Kafka producer, its own MongoDB writer, its own part of the snapshot.
//! What needs every row in one place — change files sorted per time, the demo's live view —
//! is routed to the first worker ([`Route::ToFirst`]), and only when asked for.
//!
//! A sink sees each logical time whole: all of its share's updates of the time, consolidated,
//! once the time is complete, in time order. A sink holds the time's capability until it has
//! applied it (and, for external systems, until they acknowledged it), so the probe that the
//! runtime waits on — and that Kafka offset commits follow — means "written by every worker's
//! sinks", not just "computed". Rows become JSON or BSON only inside the sinks, when written.

pub mod health;
pub mod jsonl;
pub mod kafka;
pub mod mongodb;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dataflows::ops::{stash_by_time, FastMap, Stash};

use crate::codec::OutputRow;
use dataflows::{Coll, Output, Row, Time};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::ProbeHandle;

/// Something that receives complete logical times.
pub trait Sink {
    /// All updates of `time` for this worker's share, consolidated (each row once, no zero
    /// diffs) but in no particular order; called once per time, in time order.
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]);
    /// The same, when the caller hands over the rows: a sink that keeps rows moves them
    /// instead of cloning.
    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        self.apply(time, &updates);
    }
    /// The least applied time that is not yet durably written, if any; the sink operator
    /// holds that time (and so input offset commits) until it is.
    fn unacknowledged(&mut self) -> Option<Time> {
        None
    }
    /// Every time before `frontier` was applied (`None`: every time).
    fn advance(&mut self, _frontier: Option<Time>) {}
    /// For a sink that keeps its share's current rows of the keyed outputs (not append-only
    /// ones): a copy of them, so that the snapshot need not keep them too.
    fn current_rows(&mut self) -> Option<Vec<(Row, isize)>> {
        None
    }
}

impl Sink for Box<dyn Sink> {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        (**self).apply(time, updates);
    }
    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        (**self).apply_owned(time, updates);
    }
    fn unacknowledged(&mut self) -> Option<Time> {
        (**self).unacknowledged()
    }
    fn advance(&mut self, frontier: Option<Time>) {
        (**self).advance(frontier);
    }
    fn current_rows(&mut self) -> Option<Vec<(Row, isize)>> {
        (**self).current_rows()
    }
}

/// Several sinks as one: each gets every time (the last one owns the rows); a time is
/// acknowledged when all have it.
pub struct Fanout(pub Vec<SharedSink>);

impl Sink for Fanout {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        for s in &self.0 {
            s.borrow_mut().apply(time, updates);
        }
    }
    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        if let Some((last, rest)) = self.0.split_last() {
            for s in rest {
                s.borrow_mut().apply(time, &updates);
            }
            last.borrow_mut().apply_owned(time, updates);
        }
    }
    fn unacknowledged(&mut self) -> Option<Time> {
        self.0.iter().filter_map(|s| s.borrow_mut().unacknowledged()).min()
    }
    fn advance(&mut self, frontier: Option<Time>) {
        for s in &self.0 {
            s.borrow_mut().advance(frontier);
        }
    }
}

/// Of every worker's latest progress `(time, workers)`, the layout of the newest record, when
/// every worker of that layout has one: only then does the progress say what all of them wrote.
pub fn complete_layout(latest: &BTreeMap<usize, (Time, usize)>) -> Option<usize> {
    let workers = latest.values().max_by_key(|(t, _)| *t)?.1;
    (0..workers).all(|w| latest.contains_key(&w)).then_some(workers)
}

/// An external sink's restart after a crash. The replayed times are the crashed run's own
/// (see [`crate::runtime::reclock`]), so their outputs equal what it computed; what it wrote is
/// known only up to the sink's own progress (`after`), and it may have written any time up to
/// the last bound one (`until`) — some keys of a time, not others. So times up to `after` are
/// skipped, and the times in `(after, until]` are written as one, at `until`: every key they
/// touched, with its row at `until` (also when that equals the row before: the crashed run may
/// have written a row in between). A reader therefore never sees a key go back to an older
/// row, and a deleted key is not brought back for a moment. Append-only rows are written once
/// more. Until `until` is complete the rows are held here and not acknowledged to the inner
/// sink, which is harmless: offsets commits no longer decide what a restart reads.
pub struct Resuming<S> {
    inner: S,
    after: Time,
    until: Time,
    /// set by the runtime once every bound time was read again
    complete: Rc<std::cell::Cell<bool>>,
    /// per touched key: its row before `after` (+1) and every change since
    touched: FastMap<(Output, String), Vec<(Row, isize)>>,
    appended: Vec<(Row, isize)>,
    done: bool,
}

impl<S: Sink> Resuming<S> {
    /// Wraps `inner`, which durably wrote every time up to `after` (`None`: it knows of none).
    pub fn new(inner: S, after: Option<Time>, until: Time, complete: Rc<std::cell::Cell<bool>>) -> Self {
        let after = after.unwrap_or(0);
        tracing::info!(after, until, "resuming a sink: skipping what it wrote, rewriting the times after as one");
        Resuming { inner, after, until, complete, touched: FastMap::default(), appended: Vec::new(), done: after >= until }
    }

    fn flush(&mut self) {
        self.done = true;
        let mut rows = std::mem::take(&mut self.appended);
        for (_, changes) in std::mem::take(&mut self.touched) {
            // The first change's retraction is the row before; what adds up positive is the row after.
            let before = (changes[0].1 < 0).then(|| changes[0].0.clone());
            let mut net: Vec<(Row, isize)> = Vec::new();
            for (r, d) in before.iter().map(|r| (r.clone(), 1)).chain(changes) {
                match net.iter_mut().find(|(x, _)| *x == r) {
                    Some(e) => e.1 += d,
                    None => net.push((r, d)),
                }
            }
            if let Some(b) = before {
                rows.push((b, -1));
            }
            rows.extend(net.into_iter().filter(|(_, d)| *d > 0).map(|(r, _)| (r, 1)));
        }
        if !rows.is_empty() {
            self.inner.apply_owned(self.until, rows);
        }
    }
}

impl<S: Sink> Sink for Resuming<S> {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        self.apply_owned(time, updates.to_vec());
    }
    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        if time <= self.after {
            return;
        }
        if self.done {
            return self.inner.apply_owned(time, updates);
        }
        if time > self.until {
            self.flush();
            return self.inner.apply_owned(time, updates);
        }
        // Within a time a retraction comes first, so a key's first change starts with its old row.
        let mut updates = updates;
        updates.sort_by_key(|(_, d)| *d);
        for (row, diff) in updates {
            if row.output().append_only() {
                self.appended.push((row, diff));
            } else {
                self.touched.entry((row.output(), row.key())).or_default().push((row, diff));
            }
        }
    }
    fn unacknowledged(&mut self) -> Option<Time> {
        self.inner.unacknowledged()
    }
    fn advance(&mut self, frontier: Option<Time>) {
        let passed = match frontier {
            Some(f) => f > self.until,
            None => self.complete.get(),
        };
        if !self.done && passed {
            self.flush();
        }
        self.inner.advance(frontier);
    }
}

/// A sink shared between the dataflow and the worker loop.
pub type SharedSink = Rc<RefCell<dyn Sink>>;

/// Which worker applies a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// the worker its key hashes to: every worker writes its share
    ByKey,
    /// the first worker of all: for what must see every row in one place
    ToFirst,
    /// by key over the first process's workers (this many): what process 0 must see whole
    FirstProcess(usize),
}

/// Routes `rows` as `route` says and applies each complete time to `sink` there. `probe`
/// passes a time once every worker's sink has applied (and acknowledged) it.
pub fn attach<'s>(rows: Coll<'s, Row>, sink: SharedSink, route: Route, probe: &ProbeHandle<Time>) {
    let scope = rows.inner.scope();
    let exchange = Exchange::new(move |(r, _, _): &(Row, Time, isize)| match route {
        Route::ByKey => r.key_hash(),
        Route::ToFirst => 0,
        Route::FirstProcess(workers) => r.key_hash() % workers as u64,
    });
    rows.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((), Time, isize)>>, _, _, _>(exchange, "Sink", move |_cap, info| {
            let mut pending: Stash<Row> = BTreeMap::new();
            // Applied times whose writes are not yet acknowledged.
            let mut held: BTreeMap<Time, Capability<Time>> = BTreeMap::new();
            let mut consolidator = Consolidator::default();
            let activator = scope.activator_for(info.address);
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (t, (cap, updates)) = entry.remove_entry();
                    sink.borrow_mut().apply_owned(t, consolidator.consolidate(updates));
                    held.insert(t, cap);
                }
                sink.borrow_mut().advance(frontier.frontier().first().copied());
                let unacked = sink.borrow_mut().unacknowledged();
                held.retain(|t, _| unacked.is_some_and(|u| *t >= u));
                if !held.is_empty() {
                    activator.activate_after(std::time::Duration::from_millis(5));
                }
            }
        })
        .probe_with(probe);
}

/// Adds up the diffs of equal rows and drops those that cancel, keeping the first one's place.
/// Rows are found by the hash of their key (cheap: key fields only) in a table of the time's
/// keys, and compared whole only with the rows of the same hash — nearly always one key's
/// `-old +new`. The table and its chains are kept from time to time (emptied, not dropped):
/// a time of many updates would otherwise grow new ones, whose fresh pages the kernel zeroes.
/// (Sorting the updates by hash instead moved every 70-byte update some twenty times: a tenth
/// of a run at a million keys.)
#[derive(Default)]
struct Consolidator {
    /// per key hash, the first of its rows in the output
    first: dataflows::ops::HashedMap<u32>,
    /// per row of the output, the next one of the same key hash
    next: Vec<u32>,
}

impl Consolidator {
    const END: u32 = u32::MAX;

    /// A time's `updates`, consolidated.
    fn consolidate(&mut self, updates: dataflows::ops::Batches<Row>) -> Vec<(Row, isize)> {
        use std::collections::hash_map::Entry;
        self.first.clear();
        self.next.clear();
        let mut out: Vec<(Row, isize)> = Vec::with_capacity(updates.len());
        for (row, diff) in updates {
            let mut i = match self.first.entry(row.key_hash()) {
                Entry::Vacant(v) => {
                    v.insert(out.len() as u32);
                    self.next.push(Self::END);
                    out.push((row, diff));
                    continue;
                }
                Entry::Occupied(o) => *o.get() as usize,
            };
            loop {
                if out[i].0 == row {
                    out[i].1 += diff;
                    break;
                }
                if self.next[i] == Self::END {
                    self.next[i] = out.len() as u32;
                    self.next.push(Self::END);
                    out.push((row, diff));
                    break;
                }
                i = self.next[i] as usize;
            }
        }
        out.retain(|(_, d)| *d != 0);
        out
    }
}

/// Rows and updates per output, added up over the workers of this process: what the status
/// line and the report show when no snapshot is kept.
#[derive(Debug)]
pub struct Tally {
    rows: [AtomicI64; Output::MAX],
    updates: AtomicU64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally { rows: std::array::from_fn(|_| AtomicI64::new(0)), updates: AtomicU64::new(0) }
    }
}

impl Tally {
    /// Current rows of `output` held by this process's workers.
    pub fn rows(&self, output: Output) -> i64 {
        self.rows[output.index()].load(Ordering::Relaxed)
    }
    /// Updates applied so far by this process's workers.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }
}

/// Counts `rows` of `output` in the process's [`Tally`] where they are computed, without
/// sending them to any sink: for an output whose rows only the snapshot wants, and which its
/// operator gives at the end ([`dataflows::output::CurrentRows`]). `probe` passes a time once
/// it is counted.
pub fn tally_here<'s, D: Clone + 'static>(rows: Coll<'s, D>, output: Output, tally: std::sync::Arc<Tally>, probe: &ProbeHandle<Time>) {
    use timely::dataflow::operators::{Inspect, Probe};
    rows.inner
        .inspect_core(move |event| {
            if let Ok((_, updates)) = event {
                let net: i64 = updates.iter().map(|(_, _, d)| *d as i64).sum();
                tally.rows[output.index()].fetch_add(net, Ordering::Relaxed);
                tally.updates.fetch_add(updates.len() as u64, Ordering::Relaxed);
            }
        })
        .probe_with(probe);
}

/// A worker's handle on the process's [`Tally`].
pub struct TallySink(pub std::sync::Arc<Tally>);

impl Sink for TallySink {
    fn apply(&mut self, _time: Time, updates: &[(Row, isize)]) {
        let mut rows = [0i64; Output::MAX];
        for (r, d) in updates {
            rows[r.output().index()] += *d as i64;
        }
        for (o, n) in rows.into_iter().enumerate().filter(|(_, n)| *n != 0) {
            self.0.rows[o].fetch_add(n, Ordering::Relaxed);
        }
        self.0.updates.fetch_add(updates.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::sql::{registry, Type, Value};

    /// Against a plain map of whole rows: equal rows add up, cancelled ones leave, and a key's
    /// several rows (and several keys, over and over, reusing the table) stay apart.
    #[test]
    fn consolidates_like_a_map_of_rows() {
        let mut consolidator = Consolidator::default();
        let mut state = 17u64;
        let mut next = move |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let view = |name: &str, ty| registry::view(name, &[("id".into(), ty), ("n".into(), Type::Int)], &[0]);
        let (per_user, per_kind) = (view("consolidate_test_users", Type::Json), view("consolidate_test_kinds", Type::Text));
        let row = |view, id, n: u64| Row::View(Box::new(dataflows::output::ViewRow::new(view, vec![id, Value::Int(n as i64)])));
        for round in 0..20 {
            let mut updates = Vec::new();
            for _ in 0..200 + round * 50 {
                let row = match next(3) {
                    0 => row(per_user, Value::Int(next(30) as i64), next(4)),
                    1 => row(per_user, Value::Text(format!("\"u{}\"", next(30)).into()), next(4)),
                    _ => row(per_kind, Value::Text(format!("e{}", next(5)).into()), next(3)),
                };
                updates.push((row, 0, next(5) as isize - 2));
            }
            let mut want: BTreeMap<String, isize> = BTreeMap::new();
            for (r, _, d) in &updates {
                *want.entry(format!("{r:?}")).or_default() += d;
            }
            want.retain(|_, d| *d != 0);
            let got = consolidator.consolidate(updates.into());
            let mut seen: BTreeMap<String, isize> = BTreeMap::new();
            for (r, d) in &got {
                assert!(seen.insert(format!("{r:?}"), *d).is_none(), "{r:?} twice");
            }
            assert_eq!(seen, want, "round {round}");
        }
    }
}
