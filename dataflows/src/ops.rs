//! Reusable operators, as extension traits on collections.

use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::AsCollection;
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
