//! Reusable operators, as extension traits on collections.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::{Coll, Time};

/// A fast hasher with a fixed seed: the same hashes in every process of a run.
pub type FixedHasher = foldhash::fast::FixedState;

/// A fast, deterministic hash map for operator state.
pub type FastMap<K, V> = HashMap<K, V, FixedHasher>;

/// A map keyed by a hash that is already well mixed (such as [`crate::Row::key_hash`]), used
/// as is. Hashing it again with the same fixed-seed hasher correlates the two and makes
/// probe sequences long.
pub type HashedMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PassThrough>>;

/// The hasher of [`HashedMap`]: the key is the hash.
#[derive(Default)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Project each record to keys and add up the diffs of equal keys, per logical time, on the
/// worker that holds them, before anything is exchanged.
///
/// The collection means the same thing afterwards; it just carries one `(key, time, n)` update
/// where it carried `n` updates of `(key, time, 1)`. Counting a click stream this way sends
/// one update per user and batch through the exchange and the arrangement instead of one per
/// click, which is what lets the counts keep up with JSON decoding. The closure takes each
/// record by value, so keys can be moved out of it rather than cloned.
///
/// ```
/// use differential_dataflow::input::Input;
/// use dataflows::ops::AggregateLocal;
///
/// timely::example(|scope| {
///     let words = ["a", "b", "a"].map(String::from);
///     let (_input, words) = scope.new_collection_from(words);
///     // ("a", +2) and ("b", +1): the same multiset as `words`, in fewer updates.
///     let _counted = words.aggregate_local(|w: String| [w]).count();
/// });
/// ```
pub trait AggregateLocal<'s, D> {
    /// See the trait's documentation.
    fn aggregate_local<K, I, F>(self, keys: F) -> Coll<'s, K>
    where
        K: Clone + Eq + Hash + 'static,
        I: IntoIterator<Item = K>,
        F: FnMut(D) -> I + 'static;
}

impl<'s, D: Clone + 'static> AggregateLocal<'s, D> for Coll<'s, D> {
    fn aggregate_local<K, I, F>(self, mut keys: F) -> Coll<'s, K>
    where
        K: Clone + Eq + Hash + 'static,
        I: IntoIterator<Item = K>,
        F: FnMut(D) -> I + 'static,
    {
        // Emitting per activation rather than per completed time adds no latency: the input of
        // one batch is normally all queued when the operator runs.
        let mut sums: FastMap<(K, Time), isize> = FastMap::default();
        self.inner
            .unary(Pipeline, "AggregateLocal", move |_cap, _info| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (d, t, r) in batch.drain(..) {
                                for k in keys(d) {
                                    *sums.entry((k, t)).or_insert(0) += r;
                                }
                            }
                        }
                        let mut session = output.session(&cap);
                        for ((k, t), r) in sums.drain() {
                            if r != 0 {
                                session.give((k, t, r));
                            }
                        }
                    });
                }
            })
            .container::<Vec<_>>()
            .as_collection()
    }
}

/// Counts per key for a totally ordered time, kept in a hash map instead of an arrangement:
/// updates are exchanged by key, and each completed time, in order, adds up every key's diffs
/// and emits `-(key, old)` `+(key, new)` for each key whose count changed — the updates
/// differential's `count_total` produces — holding one count per key and no history. Suits
/// counters fed by [`AggregateLocal`], which has already summed each batch's diffs per key.
pub trait CountMap<'s, K> {
    /// See the trait's documentation; `dataflow` names it in the state metrics. Also returns
    /// its map of current counts (this worker's keys, none zero): what the output holds, to
    /// read once the dataflow is done.
    fn count_map(self, dataflow: &str) -> (Coll<'s, (K, isize)>, Rc<RefCell<FastMap<K, isize>>>);
}

impl<'s, K> CountMap<'s, K> for Coll<'s, K>
where
    K: timely::ExchangeData + Clone + Hash + Eq + differential_dataflow::Hashable,
{
    fn count_map(self, dataflow: &str) -> (Coll<'s, (K, isize)>, Rc<RefCell<FastMap<K, isize>>>) {
        use timely::dataflow::channels::pact::Exchange;
        let exchange = Exchange::new(|(k, _, _): &(K, Time, isize)| differential_dataflow::Hashable::hashed(k).into());
        let size = crate::state::StateSize::new(dataflow, "CountMap");
        let shared: Rc<RefCell<FastMap<K, isize>>> = Rc::default();
        let state = shared.clone();
        let counts = self
            .inner
            .unary_frontier(exchange, "CountMap", |_cap, _info| {
                let mut pending: Stash<K> = Default::default();
                // A time's diffs per key; kept from time to time (drained, not dropped) so that
                // a time of many keys neither regrows nor refaults its table.
                let mut deltas: FastMap<K, isize> = FastMap::default();
                move |(input, frontier), output| {
                    stash_by_time(input, &mut pending, output.output_index());
                    let mut counts = state.borrow_mut();
                    while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                        let (t, (cap, updates)) = pending.pop_first().expect("checked");
                        for (k, r) in updates {
                            *deltas.entry(k).or_insert(0) += r;
                        }
                        let mut session = output.session(&cap);
                        for (k, delta) in deltas.drain().filter(|(_, d)| *d != 0) {
                            let old = counts.get(&k).copied().unwrap_or(0);
                            let new = old + delta;
                            if old != 0 {
                                session.give(((k.clone(), old), t, -1));
                            }
                            if new != 0 {
                                session.give(((k.clone(), new), t, 1));
                                counts.insert(k, new);
                            } else {
                                counts.remove(&k);
                            }
                        }
                        size.set(counts.len());
                    }
                }
            })
            .container::<Vec<_>>()
            .as_collection();
        (counts, shared)
    }
}

/// Upsert: of `(key, rank, row)` records (insert-only), each key's row of the highest rank —
/// its latest version by source position — is the current one; a later version retracts the
/// earlier row. Exchanged by key; each completed time, in order, keeps per key the best of its
/// records and emits `-old +new` when that outranks the current version. Holds one version per
/// key: superseded versions are gone.
pub fn upsert<'s, K, R, D>(records: Coll<'s, (K, R, D)>, input: &str) -> Coll<'s, D>
where
    K: timely::ExchangeData + Hash + Eq + differential_dataflow::Hashable,
    R: timely::ExchangeData + Ord,
    D: timely::ExchangeData + Clone,
{
    use timely::dataflow::channels::pact::Exchange;
    let exchange = Exchange::new(|((k, _, _), _, _): &((K, R, D), Time, isize)| differential_dataflow::Hashable::hashed(k).into());
    let size = crate::state::StateSize::new(input, "Upsert");
    records
        .inner
        .unary_frontier(exchange, "Upsert", |_cap, _info| {
            let mut pending: Stash<(K, R, D)> = Default::default();
            let mut current: FastMap<K, (R, D)> = FastMap::default();
            // a time's best record per key, drained each time (its table kept)
            let mut best: FastMap<K, (R, D)> = FastMap::default();
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                    let (t, (cap, records)) = pending.pop_first().expect("checked");
                    for ((k, rank, row), r) in records {
                        debug_assert!(r > 0, "upsert inputs are insert-only");
                        match best.entry(k) {
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert((rank, row));
                            }
                            std::collections::hash_map::Entry::Occupied(mut o) if rank > o.get().0 => {
                                o.insert((rank, row));
                            }
                            std::collections::hash_map::Entry::Occupied(_) => {}
                        }
                    }
                    let mut session = output.session(&cap);
                    for (k, (rank, row)) in best.drain() {
                        match current.get_mut(&k) {
                            Some((r, old)) if rank > *r => {
                                session.give((std::mem::replace(old, row.clone()), t, -1));
                                session.give((row, t, 1));
                                *r = rank;
                            }
                            Some(_) => {}
                            None => {
                                session.give((row.clone(), t, 1));
                                current.insert(k, (rank, row));
                            }
                        }
                    }
                    size.set(current.len());
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection()
}

/// Keep, per key and logical time, only the record that ranks highest among those this worker
/// holds, before anything is exchanged.
///
/// For "latest wins" semantics this changes no result: a record that another record of the
/// same key outranks can never be the latest. It keeps a burst of profile updates from
/// reaching (and staying in) the arrangement that picks the latest. Only for insert-only
/// collections: a retraction could not be matched to a record dropped here.
pub trait LatestLocal<'s, D> {
    /// See the trait's documentation.
    fn latest_local<K, O, F, G>(self, key: F, rank: G) -> Coll<'s, D>
    where
        K: Eq + Hash + 'static,
        O: Ord + 'static,
        F: FnMut(&D) -> K + 'static,
        G: FnMut(&D) -> O + 'static;
}

impl<'s, D: Clone + 'static> LatestLocal<'s, D> for Coll<'s, D> {
    fn latest_local<K, O, F, G>(self, mut key: F, mut rank: G) -> Coll<'s, D>
    where
        K: Eq + Hash + 'static,
        O: Ord + 'static,
        F: FnMut(&D) -> K + 'static,
        G: FnMut(&D) -> O + 'static,
    {
        let mut best: FastMap<(K, Time), (D, isize)> = FastMap::default();
        self.inner
            .unary(Pipeline, "LatestLocal", move |_cap, _info| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (d, t, r) in batch.drain(..) {
                                debug_assert!(r > 0, "latest_local is for insert-only collections");
                                match best.entry((key(&d), t)) {
                                    std::collections::hash_map::Entry::Vacant(v) => {
                                        v.insert((d, r));
                                    }
                                    std::collections::hash_map::Entry::Occupied(mut o) => {
                                        if rank(&d) > rank(&o.get().0) {
                                            o.insert((d, r));
                                        }
                                    }
                                }
                            }
                        }
                        let mut session = output.session(&cap);
                        for ((_, t), (d, r)) in best.drain() {
                            session.give((d, t, r));
                        }
                    });
                }
            })
            .container::<Vec<_>>()
            .as_collection()
    }
}

/// Updates held per logical time, each time with a capability to emit at it.
pub type Stash<D> = std::collections::BTreeMap<Time, (timely::dataflow::operators::Capability<Time>, Batches<D>)>;

/// One time's updates in the containers they came in: stashing moves a container, not each
/// update into a vector that grows (and is copied, and touches fresh pages) as a time fills.
/// Iterates as `(data, diff)`.
#[derive(Debug)]
pub struct Batches<D>(Vec<Vec<(D, Time, isize)>>);

impl<D> Default for Batches<D> {
    fn default() -> Self {
        Batches(Vec::new())
    }
}

/// One container's updates as a time's.
impl<D> From<Vec<(D, Time, isize)>> for Batches<D> {
    fn from(updates: Vec<(D, Time, isize)>) -> Self {
        Batches(vec![updates])
    }
}

impl<D> Batches<D> {
    /// How many updates it holds.
    pub fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Vec::is_empty)
    }
}

impl<D> IntoIterator for Batches<D> {
    type Item = (D, isize);
    type IntoIter = std::iter::Map<std::iter::Flatten<std::vec::IntoIter<Vec<(D, Time, isize)>>>, fn((D, Time, isize)) -> (D, isize)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten().map(|(d, _, r)| (d, r))
    }
}

/// Moves everything `input` has into `stash`, by the time of each update, retaining a
/// capability for output `port` at each new time. Operators that act on whole times (once the
/// frontier has passed them) start with this. A container whose updates share one time (an
/// input batch's always do) is stashed whole; another is split by time.
pub fn stash_by_time<D, P>(
    input: &mut timely::dataflow::operators::generic::InputHandleCore<Time, Vec<(D, Time, isize)>, P>,
    stash: &mut Stash<D>,
    port: usize,
) where
    P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<(D, Time, isize)>>>,
{
    stash_by_time_with(input, stash, port, |_, _| {});
}

/// [`stash_by_time`], calling `new_time` with the input's capability at each time new to the
/// stash (an operator with several outputs takes there its capabilities for the others).
pub fn stash_by_time_with<D, P>(
    input: &mut timely::dataflow::operators::generic::InputHandleCore<Time, Vec<(D, Time, isize)>, P>,
    stash: &mut Stash<D>,
    port: usize,
    mut new_time: impl FnMut(&timely::dataflow::operators::InputCapability<Time>, Time),
) where
    P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<(D, Time, isize)>>>,
{
    input.for_each_stamp(|cap, data| {
        let mut put = |t: Time, updates: Vec<(D, Time, isize)>| {
            let (_, batches) = stash.entry(t).or_insert_with(|| {
                new_time(&cap, t);
                (cap.delayed(&t, port), Batches::default())
            });
            batches.0.push(updates);
        };
        for batch in data {
            let Some(t) = batch.first().map(|(_, t, _)| *t) else { continue };
            if batch.iter().all(|(_, u, _)| *u == t) {
                put(t, std::mem::take(batch));
                continue;
            }
            let mut by_time: std::collections::BTreeMap<Time, Vec<(D, Time, isize)>> = Default::default();
            for update in batch.drain(..) {
                by_time.entry(update.1).or_default().push(update);
            }
            for (t, updates) in by_time {
                put(t, updates);
            }
        }
    });
}

/// Like [`Stash`], but keeping the containers as they came: for large records, moving each one
/// into a per-time vector (and growing it) costs more than the operator's work on it.
/// Each time holds a capability for each of the operator's outputs.
pub type ContainerStash<D> =
    std::collections::BTreeMap<Time, (Vec<timely::dataflow::operators::Capability<Time>>, Vec<Vec<(D, Time, isize)>>)>;

/// [`stash_by_time`] for a [`ContainerStash`] of an operator with `outputs` outputs: a
/// container whose updates share one time (an input batch's always do) is stashed whole;
/// another is split by time.
pub fn stash_containers_by_time<D, P>(
    input: &mut timely::dataflow::operators::generic::InputHandleCore<Time, Vec<(D, Time, isize)>, P>,
    stash: &mut ContainerStash<D>,
    outputs: usize,
) where
    P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<(D, Time, isize)>>>,
{
    input.for_each_stamp(|cap, data| {
        for batch in data {
            let Some(t) = batch.first().map(|(_, t, _)| *t) else { continue };
            if batch.iter().all(|(_, u, _)| *u == t) {
                stash
                    .entry(t)
                    .or_insert_with(|| ((0..outputs).map(|p| cap.delayed(&t, p)).collect(), Vec::new()))
                    .1
                    .push(std::mem::take(batch));
                continue;
            }
            let mut by_time: std::collections::BTreeMap<Time, Vec<(D, Time, isize)>> = Default::default();
            for update in batch.drain(..) {
                by_time.entry(update.1).or_default().push(update);
            }
            for (t, updates) in by_time {
                stash.entry(t).or_insert_with(|| ((0..outputs).map(|p| cap.delayed(&t, p)).collect(), Vec::new())).1.push(updates);
            }
        }
    });
}

/// Adds `changes` to the multiset `values`, dropping what cancels.
pub fn multiset_apply<V: Eq>(values: &mut Vec<(V, isize)>, mut changes: Vec<(V, isize)>) {
    // Retractions first, so that an update's `+new` takes the slot its `-old` emptied.
    changes.sort_by_key(|(_, r)| *r > 0);
    for (v, r) in changes {
        multiset_add(values, v, r);
    }
    values.retain(|(_, r)| *r != 0);
}

/// Adds `diff` copies of `value` to the small multiset `values` (a key's current values), keeping
/// it as small as it can be: a value whose count fell to zero leaves its slot to the next new
/// value, so an update's `-old`, `+new` leave one element, and the first few slots are
/// allocated one at a time (`Vec`'s growth would allocate four at once: at millions of keys,
/// most of the memory). Zero counts stay until the caller drops them.
pub fn multiset_add<V: Eq>(values: &mut Vec<(V, isize)>, value: V, diff: isize) {
    if let Some(e) = values.iter_mut().find(|(x, _)| *x == value) {
        e.1 += diff;
    } else if let Some(e) = values.iter_mut().find(|(_, r)| *r == 0) {
        *e = (value, diff);
    } else {
        if values.len() == values.capacity() && values.len() < 4 {
            values.reserve_exact(1);
        }
        values.push((value, diff));
    }
}

/// A stream of updates of `D`.
pub type UpdateStream<'s, D> = timely::dataflow::Stream<'s, Time, Vec<(D, Time, isize)>>;

/// An output of an operator made with timely's `OperatorBuilder` (one of several outputs), its
/// updates put in containers.
pub type Out<D> =
    timely::dataflow::operators::generic::OutputBuilder<Time, timely::container::CapacityContainerBuilder<Vec<(D, Time, isize)>>>;

/// A new output of `builder` of updates of `D`, and its stream.
pub fn new_output<'s, D: Clone + 'static>(
    builder: &mut timely::dataflow::operators::generic::builder_rc::OperatorBuilder<'s, Time>,
) -> (Out<D>, UpdateStream<'s, D>) {
    let (output, stream) = builder.new_output();
    (timely::dataflow::operators::generic::OutputBuilder::from(output), stream)
}
