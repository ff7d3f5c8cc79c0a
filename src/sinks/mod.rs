//! Where results go. Every output's updates are turned into [`Change`]s (key and row as JSON)
//! on the worker that computed them, then routed to the first worker, whose sinks see each
//! logical time whole: all updates of a time, consolidated, once the time is complete, in
//! time order. A sink holds the time's capability until it has applied it, so the probe that
//! the runtime waits on means "written", not just "computed".

pub mod jsonl;
pub mod kafka;
pub mod mongodb;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use dataflows::ops::{stash_by_time, FastMap, Stash};
use dataflows::{Coll, Time};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::ProbeHandle;

use crate::codec::OutputRow;

/// Every output a run can have, in a fixed order; [`Change::output`] indexes this.
pub const OUTPUTS: [&str; 6] = [
    "user_event_counts",
    "event_type_counts",
    "user_activity",
    "sensor_window_metrics",
    "anomaly_alerts",
    "dead_letters",
];

/// Index of the dead-letter output in [`OUTPUTS`].
pub const DEAD_LETTERS: u8 = 5;

/// The index of an output name.
pub fn output_index(name: &str) -> u8 {
    OUTPUTS.iter().position(|o| *o == name).expect("a known output") as u8
}

/// One row of one output, as JSON text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Change {
    /// index into [`OUTPUTS`]
    pub output: u8,
    /// the row's key, a JSON object
    pub key: String,
    /// the row, a JSON object
    pub row: String,
}

/// Turns an output collection into changes.
pub fn changes<'s, R: OutputRow + Clone + 'static>(rows: Coll<'s, R>, output: &str) -> Coll<'s, Change> {
    let output = output_index(output);
    rows.map(move |r| Change { output, key: r.key(), row: r.row() })
}

/// Something that receives complete logical times.
pub trait Sink {
    /// All updates of `time`, consolidated (each change once, no zero diffs) but in no
    /// particular order; called once per time, in time order.
    fn apply(&mut self, time: Time, updates: Vec<(Change, isize)>);
    /// The least applied time that is not yet durably written, if any; the sink operator
    /// holds that time (and so input offset commits) until it is.
    fn unacknowledged(&mut self) -> Option<Time> {
        None
    }
}

/// Several sinks as one: each gets every time; a time is acknowledged when all have it.
pub struct Fanout(pub Vec<SharedSink>);

impl Sink for Fanout {
    fn apply(&mut self, time: Time, updates: Vec<(Change, isize)>) {
        if let Some((last, rest)) = self.0.split_last() {
            for s in rest {
                s.borrow_mut().apply(time, updates.clone());
            }
            last.borrow_mut().apply(time, updates);
        }
    }
    fn unacknowledged(&mut self) -> Option<Time> {
        self.0.iter().filter_map(|s| s.borrow_mut().unacknowledged()).min()
    }
}

/// A sink shared between the dataflow and the worker loop.
pub type SharedSink = Rc<RefCell<dyn Sink>>;

/// Routes `changes` to the first worker and applies each complete time to `sink` there.
/// Returns a probe that passes a time once it has been applied.
pub fn attach<'s>(changes: Coll<'s, Change>, sink: SharedSink) -> ProbeHandle<Time> {
    let probe = ProbeHandle::new();
    let scope = changes.inner.scope();
    changes
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<((), Time, isize)>>, _, _, _>(Exchange::new(|_: &(Change, Time, isize)| 0), "Sink", move |_cap, info| {
            let mut pending: Stash<Change> = BTreeMap::new();
            // Applied times whose writes are not yet acknowledged.
            let mut held: BTreeMap<Time, Capability<Time>> = BTreeMap::new();
            let activator = scope.activator_for(info.address);
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (t, (cap, updates)) = entry.remove_entry();
                    sink.borrow_mut().apply(t, consolidate(updates));
                    held.insert(t, cap);
                }
                let unacked = sink.borrow_mut().unacknowledged();
                held.retain(|t, _| unacked.is_some_and(|u| *t >= u));
                if !held.is_empty() {
                    activator.activate_after(std::time::Duration::from_millis(5));
                }
            }
        })
        .probe_with(&probe);
    probe
}

/// Adds up the diffs of equal changes and drops those that cancel. Hashing beats sorting
/// here: changes are long strings that share prefixes.
fn consolidate(updates: Vec<(Change, isize)>) -> Vec<(Change, isize)> {
    let mut sums: FastMap<Change, isize> = FastMap::default();
    for (c, r) in updates {
        *sums.entry(c).or_insert(0) += r;
    }
    sums.into_iter().filter(|(_, r)| *r != 0).collect()
}

/// A sink that only counts, for benchmarks and for workers other than the first.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// updates applied per output
    pub updates: [u64; OUTPUTS.len()],
}

impl Sink for CountingSink {
    fn apply(&mut self, _time: Time, updates: Vec<(Change, isize)>) {
        for (c, _) in &updates {
            self.updates[c.output as usize] += 1;
        }
    }
}
