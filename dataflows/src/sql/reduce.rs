//! GROUP BY in hash maps, without arrangements: each worker folds its updates of a time into
//! one partial [`Group`] per key, the partials are exchanged by key, and each completed time,
//! in order, merges them into the key's running group and emits `-old +new` for its row.
//!
//! A group holds per aggregate only what the aggregate needs: a count, an exact sum and a
//! count (SUM, AVG; floats as [`ExactSum`]s, so the result does not depend on the order rows
//! arrive in, the worker count or the batching), the least or greatest value when the input
//! only grows (MIN, MAX over a monotone plan), else the multiset of distinct values (MIN, MAX
//! with retractions, COUNT(DISTINCT)).
//!
//! A windowed GROUP BY (a key that is `window_end` or `window_start` of a window over an
//! input's event time) also reads that input's maxima: once the watermark passes a window's
//! end its group is final and dropped, so memory holds only the open windows. The input's
//! lateness rule keeps every later row out of final windows (`late` dead letters).

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilderSession;
use timely::dataflow::operators::Capability;

use super::exact::ExactSum;
use super::plan::{AggFunc, Aggregate};
use super::value::{hash_values, Key, SqlRow, Type, Value};
use crate::ops::{new_output, stash_by_time_with, FastMap, Out, Stash, UpdateStream};
use crate::records::Millis;
use crate::watermark::{least, read_maxima, Maxima, MaximaStream};
use crate::{Coll, Time};

/// A float summed by SUM or AVG must be below this in magnitude (its sum is exact).
pub const FLOAT_SUM_LIMIT: f64 = 1e18;

/// Whether `v` is a number a SUM or AVG of floats cannot take ([`FLOAT_SUM_LIMIT`]): the row
/// holding it is a dead letter of the view.
pub fn beyond_float_sums(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| !(x.abs() < FLOAT_SUM_LIMIT))
}

/// One aggregate's running state.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Acc {
    /// COUNT(*), COUNT(x): the (non-NULL) rows
    Count(i64),
    /// SUM, AVG of ints: the sum and the non-NULL count
    Int(i128, i64),
    /// SUM, AVG of floats
    Float(ExactSum, i64),
    /// MIN, MAX over an input that only grows
    Extreme(Option<Value>),
    /// MIN, MAX with retractions, COUNT(DISTINCT): each non-NULL value's count
    Values(BTreeMap<Value, i64>),
}

/// The running state of one group: its row count (which is COUNT(*)) and the state of each
/// other aggregate. Partial groups (one worker's updates of one time) merge into it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    rows: i64,
    /// (empty, so never allocated, when every aggregate is COUNT(*); a slice, not a `Vec`:
    /// a group is an entry of a hash table probed per row, and smaller entries miss the
    /// cache less)
    accs: Box<[Acc]>,
}

/// The aggregates of a reduce, and whether its input only grows.
#[derive(Clone, Debug)]
pub struct Aggregates {
    /// the aggregates, in order
    aggs: Vec<Aggregate>,
    /// no update of the input is a retraction (MIN and MAX keep one value)
    monotone: bool,
    /// the aggregates that keep a state (all but COUNT(*), which is the group's row count),
    /// in order: a group's `accs` and a row's arguments are theirs
    stored: Vec<Aggregate>,
}

impl Aggregates {
    /// These aggregates, over an input that only grows when `monotone`.
    pub fn new(aggs: Vec<Aggregate>, monotone: bool) -> Self {
        let stored = aggs.iter().filter(|a| a.func != AggFunc::CountStar).cloned().collect();
        Aggregates { aggs, monotone, stored }
    }

    /// The aggregates whose arguments a row gives [`Aggregates::add`] (all but COUNT(*)), in order.
    pub fn with_arguments(&self) -> &[Aggregate] {
        &self.stored
    }

    /// The aggregates of no rows (SQL's global aggregate over an empty input).
    pub fn empty_row(&self) -> SqlRow {
        self.finish(&self.empty()).expect("the aggregates of no rows")
    }

    fn empty(&self) -> Group {
        let accs = self
            .stored
            .iter()
            .map(|a| match a.func {
                AggFunc::Count => Acc::Count(0),
                AggFunc::CountStar => unreachable!("COUNT(*) is the group's row count"),
                AggFunc::Sum | AggFunc::Avg if a.arg_type == Type::Int => Acc::Int(0, 0),
                AggFunc::Sum | AggFunc::Avg => Acc::Float(ExactSum::default(), 0),
                AggFunc::Min | AggFunc::Max if self.monotone => Acc::Extreme(None),
                AggFunc::Min | AggFunc::Max | AggFunc::CountDistinct => Acc::Values(BTreeMap::new()),
            })
            .collect();
        Group { rows: 0, accs }
    }

    /// Adds `r` copies of a row whose `i`-th argument of the aggregates that take them
    /// ([`Aggregates::with_arguments`]) is `arg(i)`.
    fn add<'v>(&self, g: &mut Group, arg: impl Fn(usize) -> &'v Value, r: isize) {
        let r = r as i64;
        g.rows += r;
        for (i, (a, acc)) in self.stored.iter().zip(&mut g.accs).enumerate() {
            let v = arg(i);
            match acc {
                Acc::Count(n) => *n += if !v.is_null() { r } else { 0 },
                Acc::Int(sum, n) => {
                    if let Value::Int(i) = v {
                        *sum += *i as i128 * r as i128;
                        *n += r;
                    }
                }
                Acc::Float(sum, n) => {
                    if let Some(x) = v.as_f64() {
                        sum.add_times(x, r);
                        *n += r;
                    }
                }
                Acc::Extreme(m) => {
                    debug_assert!(r > 0, "a monotone input retracts nothing");
                    if !v.is_null() {
                        keep_extreme(m, v, a.func == AggFunc::Min);
                    }
                }
                Acc::Values(values) => {
                    if !v.is_null() {
                        count_value(values, v.clone(), r);
                    }
                }
            }
        }
    }

    /// Adds `r` copies of a row whose arguments are `arg(i)` to its group in `table`: the one
    /// `same` finds under `hash`, else a new one of key `key()` (`rehash`: a stored key's hash).
    #[allow(clippy::too_many_arguments)]
    fn fold_into<'v, K>(
        &self,
        table: &mut hashbrown::HashTable<(K, Group)>,
        hash: u64,
        same: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        rehash: impl Fn(&K) -> u64,
        arg: impl Fn(usize) -> &'v Value,
        r: isize,
    ) {
        match table.find_mut(hash, |(k, _)| same(k)) {
            Some((_, g)) => self.add(g, arg, r),
            None => {
                let mut g = self.empty();
                self.add(&mut g, arg, r);
                table.insert_unique(hash, (key(), g), |(k, _)| rehash(k));
            }
        }
    }

    /// Merges a partial group into `g`.
    fn merge(&self, g: &mut Group, part: Group) {
        g.rows += part.rows;
        for ((a, acc), p) in self.stored.iter().zip(&mut g.accs).zip(part.accs.into_vec()) {
            match (acc, p) {
                (Acc::Count(n), Acc::Count(m)) => *n += m,
                (Acc::Int(sum, n), Acc::Int(s, m)) => {
                    *sum += s;
                    *n += m;
                }
                (Acc::Float(sum, n), Acc::Float(s, m)) => {
                    sum.merge(s);
                    *n += m;
                }
                (Acc::Extreme(m), Acc::Extreme(p)) => {
                    if let Some(v) = p {
                        keep_extreme(m, &v, a.func == AggFunc::Min);
                    }
                }
                (Acc::Values(values), Acc::Values(p)) => {
                    for (v, n) in p {
                        count_value(values, v, n);
                    }
                }
                _ => unreachable!("partials of one reduce have the same aggregates"),
            }
        }
    }

    /// The aggregates' values.
    fn finish(&self, g: &Group) -> Result<SqlRow, String> {
        let mut out = Vec::with_capacity(self.aggs.len());
        self.finish_onto(g, &mut out).map(|()| out)
    }

    /// The group's row: its key and its aggregates' values in one row, or why an aggregate
    /// failed (with the key).
    fn row(&self, key: &[Value], g: &Group) -> Stepped {
        let mut row = Vec::with_capacity(key.len() + self.aggs.len());
        row.extend_from_slice(key);
        match self.finish_onto(g, &mut row) {
            Ok(()) => Ok(row),
            Err(e) => {
                row.truncate(key.len());
                Err((e, row))
            }
        }
    }

    /// Appends the aggregates' values to `out`.
    fn finish_onto(&self, g: &Group, out: &mut SqlRow) -> Result<(), String> {
        let mut accs = g.accs.iter();
        for a in &self.aggs {
            if a.func == AggFunc::CountStar {
                out.push(Value::Int(g.rows));
                continue;
            }
            out.push(match accs.next().expect("a state per aggregate but COUNT(*)") {
                Acc::Count(n) => Value::Int(*n),
                Acc::Int(_, 0) | Acc::Float(_, 0) => Value::Null,
                Acc::Int(sum, n) if a.func == AggFunc::Avg => Value::Float(*sum as f64 / *n as f64),
                Acc::Int(sum, _) => Value::Int(i64::try_from(*sum).map_err(|_| "integer overflow in SUM")?),
                Acc::Float(sum, n) if a.func == AggFunc::Avg => Value::Float(sum.value() / *n as f64),
                Acc::Float(sum, _) => Value::Float(sum.value()),
                Acc::Extreme(m) => m.clone().unwrap_or(Value::Null),
                Acc::Values(values) => match a.func {
                    AggFunc::CountDistinct => Value::Int(values.len() as i64),
                    AggFunc::Min => values.keys().next().cloned().unwrap_or(Value::Null),
                    _ => values.keys().next_back().cloned().unwrap_or(Value::Null),
                },
            });
        }
        Ok(())
    }
}

/// A worker's partial groups of one GROUP BY at one time: those whose key is one int in a
/// table of their own (an entry of 32 bytes, not 56: the per-user counts probe it per row,
/// and at 10 000 users the general table outgrew the core's cache), the others by their key.
#[derive(Default)]
struct Groups {
    ints: hashbrown::HashTable<(i64, Group)>,
    any: hashbrown::HashTable<(Key, Group)>,
}

fn hash_int(i: i64) -> u64 {
    use std::hash::BuildHasher;
    crate::ops::FixedHasher::default().hash_one(i)
}

fn keep_extreme(m: &mut Option<Value>, v: &Value, min: bool) {
    let replace = match m {
        None => true,
        Some(old) => (min && v < old) || (!min && v > old),
    };
    if replace {
        *m = Some(v.clone());
    }
}

fn count_value(values: &mut BTreeMap<Value, i64>, v: Value, n: i64) {
    use std::collections::btree_map::Entry as ValueEntry;
    match values.entry(v) {
        ValueEntry::Vacant(e) => {
            e.insert(n);
        }
        ValueEntry::Occupied(mut e) => {
            *e.get_mut() += n;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// How a windowed reduce drops final windows: the group key column that bounds the window,
/// what to add to it for the window's end, and the input's maxima and allowed lateness.
pub struct Retire<'s> {
    /// the key column
    pub column: usize,
    /// added to the column's timestamp: the window's end
    pub to_end: i64,
    /// the input's maxima, broadcast
    pub maxima: MaximaStream<'s>,
    /// the input's allowed lateness
    pub lateness_ms: Millis,
}

/// How a reduce finds a row's group: `fill(row, key, args)` writes the row's group key (unless
/// the key is `columns` of the row, looked up where they are: then `key` is `None`) and its
/// aggregates' arguments into the (cleared) buffers, or says why it cannot; with `window`
/// (`(time column, size, slide)`), each row is grouped once per window holding its time, its
/// `window_start` and `window_end` appended in place (the windowed rows are never built).
pub struct Grouping {
    /// the key and arguments of a row
    pub fill: Fill,
    /// the row's columns that are the key, when every key is a column
    pub columns: Option<Vec<usize>>,
    /// where each argument of the aggregates that take one is: a column of the row, or the
    /// `fill`'s arguments buffer
    pub args: Vec<Arg>,
    /// a window in FROM under the reduce
    pub window: Option<(usize, i64, i64)>,
}

/// Where an aggregate's argument is read ([`Grouping::args`]).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// the row's column (no copy)
    Column(usize),
    /// the `j`-th value the `fill` wrote
    Computed(usize),
}

/// The `i`-th argument of a row's aggregates: a column of `row`, or a value of `computed`.
fn arg_at<'v>(args: &[Arg], row: &'v SqlRow, computed: &'v SqlRow, i: usize) -> &'v Value {
    match args[i] {
        Arg::Column(c) => &row[c],
        Arg::Computed(j) => &computed[j],
    }
}

/// Writes a row's group key and its aggregates' arguments that are not columns (see [`Grouping`]).
pub type Fill = Box<dyn Fn(&SqlRow, Option<&mut SqlRow>, &mut SqlRow) -> Result<(), String>>;

/// One GROUP BY over an input: its view (for errors and metrics), how it groups, its
/// aggregates and, windowed, how it drops final windows.
pub struct Member<'s> {
    /// the view
    pub view: String,
    /// how a row finds its group
    pub grouping: Grouping,
    /// the aggregates
    pub spec: Aggregates,
    /// a windowed reduce's retirement
    pub retire: Option<Retire<'s>>,
    /// the GROUP BY is its view's whole plan and the view's changes are only counted: the
    /// merge gives them without rows too (a sink that counts them reads those, not a copy of
    /// the rows another view reads)
    pub count: bool,
}

/// A reduce's rows (`key ++ aggregates`), the rows whose key or arguments failed and the
/// groups whose aggregates failed (each with the reason; a group with its key), when it keeps
/// every group (no window dropped at the watermark) the reader of its current rows and, when
/// its [`Member::count`], its rows' changes without the rows.
pub type Reduced<'s> = (Coll<'s, SqlRow>, Coll<'s, (String, SqlRow)>, Option<CurrentSqlRows>, Option<Coll<'s, ()>>);

/// Gives a stateful operator's current rows (each with its multiplicity) once the run is over,
/// taking them out of its state: its output without a second copy kept in a sink as it changes.
pub type CurrentSqlRows = std::rc::Rc<dyn Fn(&mut dyn FnMut(SqlRow, isize))>;

/// A row's result through a chain of stateless steps: a row that goes on, or one an
/// expression failed on (with the reason).
pub type Stepped = Result<SqlRow, (String, SqlRow)>;

/// A chain of stateless steps over an input's rows (filters, maps, windows, lookups): it reads
/// each row where it is and hands on what comes out.
pub type Chain = Box<dyn FnMut(&SqlRow, &mut dyn FnMut(Stepped))>;

/// Every reader of the same `rows` — GROUP BYs (`members`) and chains of stateless steps
/// (`chains`) — in one operator that reads each row once (not a copy of every row per reader):
/// a chain takes the row where it is and its rows leave at once; each GROUP BY folds the
/// worker's rows of a time into one partial group per key, in place — the key is evaluated
/// into a reused buffer and looked up by slice, so a row allocates nothing unless it starts a
/// group — and sends them once the time is complete on the worker; then, per member, the
/// partials are exchanged by key and merged in order of time. Each reader's updates leave on
/// an output of their own (and a GROUP BY's failed rows on another): nothing is split after.
pub fn read_once<'s>(
    rows: Coll<'s, SqlRow>,
    members: Vec<Member<'s>>,
    mut chains: Vec<Chain>,
) -> (Vec<Reduced<'s>>, Vec<Coll<'s, Stepped>>) {
    type Merging<'s> = (String, Aggregates, Option<Retire<'s>>, bool);
    let (folds, merging): (Vec<(Aggregates, Grouping)>, Vec<Merging<'s>>) =
        members.into_iter().map(|m| ((m.spec.clone(), m.grouping), (m.view, m.spec, m.retire, m.count))).unzip();
    let n = folds.len();
    let mut builder = OperatorBuilder::new("ReadOnce".to_string(), rows.inner.scope());
    let mut input = builder.new_input(rows.inner, Pipeline);
    // (ports: each member's partials, 0..n, then each member's failed rows, then each chain's rows)
    let (mut partial_outs, partial_streams): (Vec<Out<(Key, Group)>>, Vec<_>) = (0..n).map(|_| new_output(&mut builder)).unzip();
    let (mut failed_outs, failed_streams): (Vec<Out<(String, SqlRow)>>, Vec<_>) = (0..n).map(|_| new_output(&mut builder)).unzip();
    let (mut chain_outs, chain_streams): (Vec<Out<Stepped>>, Vec<_>) = chains.iter().map(|_| new_output(&mut builder)).unzip();
    // A time's partial groups leave once the time is complete on this worker: a time of many
    // batches sends one partial per group, not one per group and batch (the reduce could not
    // complete the time earlier anyway).
    let mut partials: BTreeMap<Time, (Vec<Capability<Time>>, Vec<Groups>)> = BTreeMap::new();
    let mut spare: Vec<Groups> = Vec::new();
    let (mut key, mut args) = (SqlRow::new(), SqlRow::new());
    builder.build(move |_capabilities| {
        move |frontiers| {
            let mut failed_outs: Vec<_> = failed_outs.iter_mut().map(|o| o.activate()).collect();
            let mut chain_outs: Vec<_> = chain_outs.iter_mut().map(|o| o.activate()).collect();
            input.for_each_stamp(|cap, data| {
                let mut failed: Vec<_> = failed_outs.iter_mut().map(|o| o.session(&cap)).collect();
                let mut chained: Vec<_> = chain_outs.iter_mut().map(|o| o.session(&cap)).collect();
                for batch in data {
                    for (row, t, r) in batch.drain(..) {
                        for (chain, out) in chains.iter_mut().zip(&mut chained) {
                            chain(&row, &mut |s| out.give((s, t, r)));
                        }
                        if n == 0 {
                            continue;
                        }
                        let groups = &mut partials
                            .entry(t)
                            .or_insert_with(|| {
                                let mut maps = std::mem::take(&mut spare);
                                maps.resize_with(n, Groups::default);
                                ((0..n).map(|i| cap.delayed(&t, i)).collect(), maps)
                            })
                            .1;
                        // (the last member takes the row; a windowed one before it, a copy)
                        let mut row = Some(row);
                        for (i, ((local, grouping), groups)) in folds.iter().zip(groups.iter_mut()).enumerate() {
                            let mut fold = |row: &SqlRow| -> Result<(), String> {
                                args.clear();
                                // (a key of one int column: in the table of ints)
                                if let (Some([c]), Groups { ints, .. }) = (grouping.columns.as_deref(), &mut *groups) {
                                    if let Value::Int(i) = row[*c] {
                                        (grouping.fill)(row, None, &mut args)?;
                                        local.fold_into(
                                            ints,
                                            hash_int(i),
                                            |k| *k == i,
                                            || i,
                                            |k| hash_int(*k),
                                            |a| arg_at(&grouping.args, row, &args, a),
                                            r,
                                        );
                                        return Ok(());
                                    }
                                }
                                let rehash = |k: &Key| hash_values(k.values().iter());
                                match &grouping.columns {
                                    // (a key of columns is hashed and compared where the row holds it)
                                    Some(cols) => {
                                        (grouping.fill)(row, None, &mut args)?;
                                        let hash = hash_values(cols.iter().map(|&c| &row[c]));
                                        let same = |k: &Key| k.values().iter().zip(cols).all(|(v, &c)| *v == row[c]);
                                        local.fold_into(
                                            &mut groups.any,
                                            hash,
                                            same,
                                            || Key::at(cols, row),
                                            rehash,
                                            |a| arg_at(&grouping.args, row, &args, a),
                                            r,
                                        );
                                    }
                                    None => {
                                        key.clear();
                                        (grouping.fill)(row, Some(&mut key), &mut args)?;
                                        let hash = hash_values(key.iter());
                                        let same = |k: &Key| k.values() == key.as_slice();
                                        local.fold_into(
                                            &mut groups.any,
                                            hash,
                                            same,
                                            || Key::from_slice(&key),
                                            rehash,
                                            |a| arg_at(&grouping.args, row, &args, a),
                                            r,
                                        );
                                    }
                                }
                                Ok(())
                            };
                            let shared = row.as_ref().expect("taken by the last member only");
                            match grouping.window {
                                None => {
                                    if let Err(e) = fold(shared) {
                                        failed[i].give(((e, shared.clone()), t, r));
                                    }
                                }
                                Some((time, size, slide)) => {
                                    let mut row = if i + 1 == n { row.take().expect("the last member") } else { shared.clone() };
                                    let width = row.len();
                                    let starts = super::render::window_starts(&row[time], size, slide);
                                    row.extend([Value::Null, Value::Null]);
                                    for s in starts {
                                        row[width] = Value::Timestamp(s);
                                        row[width + 1] = Value::Timestamp(s + size);
                                        if let Err(e) = fold(&row) {
                                            // (the row as read: without its window)
                                            failed[i].give(((e, row[..width].to_vec()), t, r));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
            let mut partial_outs: Vec<_> = partial_outs.iter_mut().map(|o| o.activate()).collect();
            while partials.first_key_value().is_some_and(|(t, _)| !frontiers[0].less_equal(t)) {
                let (t, (caps, mut maps)) = partials.pop_first().expect("checked");
                for ((groups, cap), out) in maps.iter_mut().zip(&caps).zip(&mut partial_outs) {
                    let ints = groups.ints.drain().map(|(k, g)| (Key::One(Value::Int(k)), g));
                    out.session(cap).give_iterator(ints.chain(groups.any.drain()).map(|kg| (kg, t, 1isize)));
                }
                // (the emptied maps keep their capacity for the next time)
                spare = maps;
            }
        }
    });
    let chained = chain_streams.into_iter().map(|s| s.as_collection()).collect();
    let reduced = merging
        .into_iter()
        .zip(partial_streams.into_iter().zip(failed_streams))
        .map(|((view, spec, retire, count), (partial, errors))| {
            let (rows, failed, current, counted) = merge(&view, partial, spec, retire, count);
            (rows, errors.as_collection().concat(failed), current, counted)
        })
        .collect();
    (reduced, chained)
}

/// One member's partials, exchanged by key and merged into its groups in order of time: its
/// rows (`key ++ aggregates`), the groups whose aggregates failed (the reason, the key) on an
/// output of their own and, without windows dropped, the reader of its current rows (a group
/// whose aggregates failed has no row).
#[allow(clippy::type_complexity)]
fn merge<'s>(
    view: &str,
    partial: UpdateStream<'s, (Key, Group)>,
    spec: Aggregates,
    retire: Option<Retire<'s>>,
    count: bool,
) -> Reduced<'s> {
    let exchange = Exchange::new(|((k, _), _, _): &((Key, Group), Time, isize)| differential_dataflow::Hashable::hashed(k));
    let windowed = retire.as_ref().map(|r| (r.column, r.to_end, r.lateness_ms));
    let peers = partial.scope().peers();
    let state = State {
        spec,
        windowed,
        peers,
        groups: FastMap::default(),
        merging: FastMap::default(),
        pending: Stash::new(),
        more_caps: BTreeMap::new(),
        by_end: BTreeMap::new(),
        maxima: Maxima::default(),
    };
    let operator = if retire.is_some() { "WindowReduce" } else { "Reduce" };
    let size = crate::state::StateSize::new(view, operator);
    let mut builder = OperatorBuilder::new(operator.to_string(), partial.scope());
    let mut input = builder.new_input(partial, exchange);
    let mut maxima_input = retire.map(|r| builder.new_input(r.maxima, Pipeline));
    // (port 0: the rows; port 1: the failed groups; port 2, counted: the rows' changes)
    let (mut rows_out, rows) = new_output::<SqlRow>(&mut builder);
    let (mut failed_out, failed) = new_output::<(String, SqlRow)>(&mut builder);
    let (mut counts_out, counts) = count.then(|| new_output::<()>(&mut builder)).unzip();
    let shared = std::rc::Rc::new(std::cell::RefCell::new(state));
    // (a windowed reduce drops its final groups: it has no current rows to give at the end)
    let current = maxima_input.is_none().then(|| current_groups(shared.clone()));
    builder.build(move |_capabilities| {
        move |frontiers| {
            let mut state = shared.borrow_mut();
            let State { pending, more_caps, .. } = &mut *state;
            stash_by_time_with(&mut input, pending, 0, |cap, t| {
                more_caps.insert(t, (cap.delayed(&t, 1), count.then(|| cap.delayed(&t, 2))));
            });
            let mut done = least(&frontiers[0]);
            if let Some(maxima) = &mut maxima_input {
                read_maxima(maxima, &mut state.maxima, false);
                done = match (done, least(&frontiers[1])) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            state.apply(done, &mut rows_out.activate(), &mut failed_out.activate(), counts_out.as_mut().map(|o| o.activate()).as_mut());
            size.set(state.groups.len());
        }
    });
    (rows.as_collection(), failed.as_collection(), current, counts.map(|c| c.as_collection()))
}

/// The current rows of a reduce's groups, taken out of its state.
fn current_groups(state: std::rc::Rc<std::cell::RefCell<State>>) -> CurrentSqlRows {
    std::rc::Rc::new(move |each: &mut dyn FnMut(SqlRow, isize)| {
        let mut state = state.borrow_mut();
        let State { spec, groups, .. } = &mut *state;
        for (k, g) in groups.drain() {
            if let Ok(a) = spec.finish(&g) {
                let mut row = k.into_row();
                row.extend(a);
                each(row, 1);
            }
        }
    })
}

/// The reduce's state on one worker.
struct State {
    spec: Aggregates,
    /// the workers that send partials (one: a key has one partial per time)
    peers: usize,
    /// windowed: the key column bounding the window, what to add for its end, the lateness
    windowed: Option<(usize, i64, Millis)>,
    groups: FastMap<Key, Group>,
    /// with several peers, a time's partials by key while they are merged: kept between times
    /// (emptied, its room kept), so a time of many keys does not allocate and fault in a new one
    merging: FastMap<Key, Group>,
    pending: Stash<(Key, Group)>,
    /// a capability for the failed groups' output (port 1) and, counted, for the rows' changes
    /// (port 2) at each pending time
    more_caps: BTreeMap<Time, (Capability<Time>, Option<Capability<Time>>)>,
    /// windowed: the keys of open windows by their end
    by_end: BTreeMap<Millis, Vec<Key>>,
    /// windowed: the input's maxima by logical time
    maxima: Maxima,
}

/// An activated output of updates of `D`.
type Active<'a, D> = OutputBuilderSession<'a, Time, CapacityContainerBuilder<Vec<(D, Time, isize)>>>;

impl State {
    /// Applies every pending time below `done` (all, when `None`), in order, giving each time's
    /// changed rows to one session of `rows` and its changed failed groups to one of `failed`
    /// as they are made (not gathered first: at a million changed keys a time's updates were
    /// tens of megabytes, allocated and faulted in anew each time); windowed, then drops the
    /// windows the watermark made final.
    fn apply(
        &mut self,
        done: Option<Time>,
        rows: &mut Active<'_, SqlRow>,
        failed: &mut Active<'_, (String, SqlRow)>,
        mut counts: Option<&mut Active<'_, ()>>,
    ) {
        let windowed = self.windowed;
        while self.pending.first_key_value().is_some_and(|(t, _)| done.is_none_or(|d| *t < d)) {
            let (t, (cap, partials)) = self.pending.pop_first().expect("checked");
            let (failed_cap, counts_cap) = self.more_caps.remove(&t).expect("a capability per pending time");
            let (mut rows, mut failed) = (rows.session(&cap), failed.session(&failed_cap));
            let mut counts = counts.as_mut().zip(counts_cap.as_ref()).map(|(c, cap)| c.session(cap));
            let mut session = |(update, t, d): (Stepped, Time, isize)| match update {
                Ok(row) => {
                    if let Some(c) = &mut counts {
                        c.give(((), t, d));
                    }
                    rows.give((row, t, d))
                }
                Err(e) => failed.give((e, t, d)),
            };
            // One partial per key: those of a key from several workers merged first (in a
            // map of this time's keys), so each group is looked up and changed once.
            let mut by_key = std::mem::take(&mut self.merging);
            let partials: Box<dyn Iterator<Item = (Key, Group)>> = if self.peers == 1 {
                Box::new(partials.into_iter().map(|(kg, _)| kg))
            } else {
                for ((k, part), _) in partials {
                    match by_key.entry(k) {
                        Entry::Occupied(mut e) => self.spec.merge(e.get_mut(), part),
                        Entry::Vacant(e) => {
                            e.insert(part);
                        }
                    }
                }
                Box::new(by_key.drain())
            };
            for (k, part) in partials {
                match self.groups.entry(k) {
                    Entry::Occupied(mut e) => {
                        let old = self.spec.row(e.key().values(), e.get());
                        let g = e.get_mut();
                        self.spec.merge(g, part);
                        let new = (g.rows > 0).then(|| self.spec.row(e.key().values(), e.get()));
                        if new.as_ref() == Some(&old) {
                            continue;
                        }
                        session((old, t, -1));
                        match new {
                            Some(new) => session((new, t, 1)),
                            None => {
                                e.remove();
                            }
                        }
                    }
                    Entry::Vacant(e) => {
                        let mut g = self.spec.empty();
                        self.spec.merge(&mut g, part);
                        if g.rows <= 0 {
                            continue;
                        }
                        if let Some((c, to_end, _)) = windowed {
                            if let Value::Timestamp(s) = e.key().values()[c] {
                                self.by_end.entry(s + to_end).or_default().push(e.key().clone());
                            }
                        }
                        session((self.spec.row(e.key().values(), &g), t, 1));
                        e.insert(g);
                    }
                }
            }
            self.merging = by_key;
        }
        let Some((_, _, lateness)) = windowed else { return };
        match done {
            Some(d) => {
                if let Some(w) = self.maxima.max_before(d).map(|m| m - lateness) {
                    while self.by_end.first_key_value().is_some_and(|(end, _)| *end <= w) {
                        for k in self.by_end.pop_first().expect("checked").1 {
                            self.groups.remove(&k);
                        }
                    }
                }
                self.maxima.compact(d);
            }
            None => {
                self.groups.clear();
                self.by_end.clear();
            }
        }
    }
}
