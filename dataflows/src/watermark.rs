//! Event time: the greatest event time of each input batch, broadcast to every worker, gives
//! one watermark everywhere: after batch `b`, `W(b) = max event time over batches ≤ b −
//! allowed lateness`. A record of batch `b` is judged against `W(b−1)`, so the outcome does not
//! depend on the worker count or on how many batches a logical time holds.

use std::collections::BTreeMap;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::progress::frontier::MutableAntichain;

use crate::records::Millis;
use crate::{Coll, Time};

/// Maximum event time per batch (or per logical time, as the windows keep it), with the
/// logical time each belongs to; those no longer needed are folded into one number.
#[derive(Default)]
pub struct Maxima {
    base: Option<Millis>,
    per_batch: BTreeMap<u64, (Time, Millis)>,
}

impl Maxima {
    pub fn insert(&mut self, batch: u64, t: Time, m: Millis) {
        let e = self.per_batch.entry(batch).or_insert((t, m));
        e.1 = e.1.max(m);
    }
    /// Greatest event time over batches `< b`.
    pub fn max_before(&self, b: u64) -> Option<Millis> {
        self.per_batch.range(..b).map(|(_, (_, m))| *m).max().max(self.base)
    }
    /// Fold the batches of logical times `< t` into `base` (batches follow time order).
    pub fn compact(&mut self, t: Time) {
        while let Some(entry) = self.per_batch.first_entry().filter(|e| e.get().0 < t) {
            let (_, m) = entry.remove();
            self.base = self.base.max(Some(m));
        }
    }
}

/// The least time in a frontier of a totally ordered time; `None` when empty.
pub fn least(frontier: &MutableAntichain<Time>) -> Option<Time> {
    frontier.frontier().iter().min().copied()
}

/// The greatest event time per `(time, batch)` of `(time, batch, event time)` triples.
pub fn batch_maxima(items: impl Iterator<Item = (Time, u64, Millis)>) -> crate::ops::FastMap<(Time, u64), Millis> {
    let mut per_batch = crate::ops::FastMap::default();
    let mut keep = |key, m: Millis| {
        let e = per_batch.entry(key).or_insert(m);
        *e = (*e).max(m);
    };
    // (a container's records are nearly all of one batch: a run of one key is folded in place,
    // and the map, with a fixed fast hasher, is touched once per run)
    let mut run: Option<((Time, u64), Millis)> = None;
    for (t, b, ts) in items {
        match &mut run {
            Some((key, m)) if *key == (t, b) => *m = (*m).max(ts),
            _ => {
                if let Some((key, m)) = run.replace(((t, b), ts)) {
                    keep(key, m);
                }
            }
        }
    }
    if let Some((key, m)) = run {
        keep(key, m);
    }
    per_batch
}

/// `(batch, greatest event time)` pairs at their logical time.
pub type MaximaStream<'s> = timely::dataflow::Stream<'s, Time, Vec<(u64, Millis)>>;

/// Passes `records` through unchanged (each container moved on, not copied) and, beside them,
/// the greatest event time of each `(time, batch)` as `(batch, max)` at that time; `stamp`
/// gives a record's batch and event time. (One consumer of the input: a second would make
/// timely clone every record.)
pub fn event_time_max<'s, D>(records: Coll<'s, D>, stamp: impl Fn(&D) -> (u64, Millis) + 'static) -> (Coll<'s, D>, MaximaStream<'s>)
where
    D: differential_dataflow::Data,
{
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    use timely::dataflow::operators::generic::OutputBuilder;
    let mut builder = OperatorBuilder::new("EventTimeMax".to_string(), records.inner.scope());
    let mut input = builder.new_input(records.inner, Pipeline);
    let (mut through, through_stream): (_, timely::dataflow::Stream<'s, Time, Vec<(D, Time, isize)>>) = builder.new_output();
    let (maxima, maxima_stream) = builder.new_output::<Vec<(u64, Millis)>>();
    let mut maxima = OutputBuilder::<Time, CapacityContainerBuilder<Vec<(u64, Millis)>>>::from(maxima);
    builder.build(move |_capabilities| {
        move |_frontiers| {
            let mut through = through.activate();
            let mut maxima = maxima.activate();
            input.for_each_stamp(|cap, data| {
                for container in data {
                    let per_batch = batch_maxima(container.iter().map(|(d, t, _)| {
                        let (b, ts) = stamp(d);
                        (*t, b, ts)
                    }));
                    for ((t, b), m) in per_batch {
                        maxima.session(&cap.delayed(&t, 1)).give((b, m));
                    }
                    through.give(&cap, container);
                }
            });
        }
    });
    (through_stream.as_collection(), maxima_stream)
}

/// Reads `(batch, max)` pairs into `maxima`, keyed by batch, or with `by_batch == false` by
/// logical time (all batches of a time folded together).
pub fn read_maxima<P>(
    input: &mut timely::dataflow::operators::generic::InputHandleCore<Time, Vec<(u64, Millis)>, P>,
    maxima: &mut Maxima,
    by_batch: bool,
) where
    P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<(u64, Millis)>>>,
{
    input.for_each_stamp(|cap, data| {
        let t = *cap.least().expect("a stamp of a totally ordered time has a least element");
        for container in data {
            for (b, m) in container.drain(..) {
                maxima.insert(if by_batch { b } else { t }, t, m);
            }
        }
    });
}

/// The least end of the windows of the given slides that hold event time `ts` (the oldest
/// window of each windowing ends at the next multiple of its slide): once the watermark
/// reaches it, a record at `ts` could only land in final windows. With no windows, `ts + 1`:
/// a record is final once the watermark has passed it.
pub fn final_end(slides: &[i64], ts: Millis) -> Millis {
    slides.iter().map(|s| ts.div_euclid(*s) * s + s).min().unwrap_or(ts.saturating_add(1))
}

/// Judges each of `records` once its time's maxima are known: a record of batch `b` at event
/// time `ts` (`stamp` gives both) is late when `final_end(ts) ≤ W(b−1)`, `W` the watermark from
/// the broadcast `maxima` less `lateness_ms`. `emit` hands on `Ok` what goes to the first
/// output, `Err` what goes to the second (one operator, no split after it).
fn judge_split<'s, D, O, E>(
    records: Coll<'s, D>,
    maxima: MaximaStream<'s>,
    stamp: impl Fn(&D) -> (u64, Millis) + 'static,
    lateness_ms: Millis,
    final_end: impl Fn(Millis) -> Millis + 'static,
    mut emit: impl FnMut(D, bool, &mut dyn FnMut(Result<O, E>)) + 'static,
) -> (crate::ops::UpdateStream<'s, O>, crate::ops::UpdateStream<'s, E>)
where
    D: differential_dataflow::Data,
    O: Clone + 'static,
    E: Clone + 'static,
{
    use crate::ops::{new_output, stash_containers_by_time, ContainerStash};
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    let mut builder = OperatorBuilder::new("ClassifyLateness".to_string(), records.inner.scope());
    let mut input = builder.new_input(records.inner, Pipeline);
    let mut max_input = builder.new_input(maxima, Pipeline);
    let (mut ok_out, ok) = new_output::<O>(&mut builder);
    let (mut err_out, err) = new_output::<E>(&mut builder);
    builder.build(move |_capabilities| {
        let mut pending: ContainerStash<D> = BTreeMap::new();
        let mut maxima = Maxima::default();
        move |frontiers| {
            stash_containers_by_time(&mut input, &mut pending, 2);
            read_maxima(&mut max_input, &mut maxima, true);
            let (mut ok_out, mut err_out) = (ok_out.activate(), err_out.activate());
            // A time can be judged once the maxima of all its batches and of every earlier
            // one are known: once the maxima's frontier has passed it.
            let ready = least(&frontiers[1]);
            while let Some(entry) = pending.first_entry() {
                if matches!(ready, Some(r) if *entry.key() >= r) {
                    break;
                }
                let (t, (caps, records)) = entry.remove_entry();
                let (mut ok, mut err) = (ok_out.session(&caps[0]), err_out.session(&caps[1]));
                for (d, _, diff) in records.into_iter().flatten() {
                    let (b, ts) = stamp(&d);
                    let late = maxima.max_before(b).is_some_and(|m| final_end(ts) <= m - lateness_ms);
                    emit(d, late, &mut |o| match o {
                        Ok(o) => ok.give((o, t, diff)),
                        Err(e) => err.give((e, t, diff)),
                    });
                }
            }
            if let Some(r) = ready {
                maxima.compact(r.min(pending.keys().next().copied().unwrap_or(r)));
            }
        }
    });
    (ok, err)
}

/// Records judged by their lateness ([`judge_split`]): those on time and those late.
pub fn classify<'s, D>(
    records: Coll<'s, D>,
    maxima: MaximaStream<'s>,
    stamp: impl Fn(&D) -> (u64, Millis) + 'static,
    lateness_ms: Millis,
    final_end: impl Fn(Millis) -> Millis + 'static,
) -> (Coll<'s, D>, Coll<'s, D>)
where
    D: differential_dataflow::Data,
{
    let (on_time, late) =
        judge_split(records, maxima, stamp, lateness_ms, final_end, |d, late, out| out(if late { Err(d) } else { Ok(d) }));
    (on_time.as_collection(), late.as_collection())
}
