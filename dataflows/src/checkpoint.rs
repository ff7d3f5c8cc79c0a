//! What a checkpoint is made of: the state each part of a run keeps "as of" a checkpoint time.
//!
//! Checkpoint times are the multiples of an interval (clock milliseconds for streams), so every
//! worker and every part agrees on them without talking. A part — the runtime's compacted inputs,
//! the sensor dataflow's open-window readings — calls [`Snapshots::passed`] whenever every time
//! below a bound has been applied and none at or above it; if that span holds a checkpoint time,
//! the part's state is kept for it. The runtime writes a checkpoint once every part of every
//! worker holds a state for its time and every sink has acknowledged that time.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::Time;

/// The greatest checkpoint time (a multiple of `every`) below `bound`, if any is at least `from`.
pub fn checkpoint_in(every: Time, from: Time, bound: Time) -> Option<Time> {
    let m = bound.checked_sub(1)? / every * every;
    (m >= from).then_some(m)
}

/// A part's states at the checkpoint times it passed and no checkpoint was written for yet.
pub struct Snapshots<S> {
    every: Time,
    /// every time below this was applied
    applied_below: Option<Time>,
    /// `(from, to)` → the state as of every time in `[from, to)`
    taken: BTreeMap<(Time, Time), Rc<S>>,
}

impl<S> Snapshots<S> {
    /// Checkpoint times are the multiples of `every` (at least 1).
    pub fn new(every: Time) -> Self {
        Snapshots { every: every.max(1), applied_below: None, taken: BTreeMap::new() }
    }

    /// Every time below `bound` has been applied, and none at or above it: when the span since
    /// the last call holds a checkpoint time, `state()` is kept for it (and for every earlier
    /// checkpoint time of the span: the state did not change in between).
    pub fn passed(&mut self, bound: Time, state: impl FnOnce() -> S) {
        let from = self.applied_below.unwrap_or(bound);
        if bound <= from {
            self.applied_below = Some(from.max(bound));
            return;
        }
        if checkpoint_in(self.every, from, bound).is_some() {
            self.taken.insert((from, bound), Rc::new(state()));
        }
        self.applied_below = Some(bound);
    }

    /// The state as of checkpoint time `t`, if this part passed it.
    pub fn at(&self, t: Time) -> Option<Rc<S>> {
        self.taken.range(..=(t, Time::MAX)).next_back().filter(|((from, to), _)| *from <= t && t < *to).map(|(_, s)| s.clone())
    }

    /// Drops the states of times at or before `t`.
    pub fn forget_through(&mut self, t: Time) {
        self.taken.retain(|(_, to), _| *to > t + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::Snapshots;

    #[test]
    fn a_state_is_kept_for_each_checkpoint_time_passed() {
        let mut s = Snapshots::new(10);
        s.passed(3, || "never: the first call only starts the log");
        s.passed(7, || "no multiple of 10 in [3, 7)");
        s.passed(12, || "as of 10");
        s.passed(45, || "as of 20, 30 and 40");
        assert_eq!(s.at(0), None);
        assert_eq!(s.at(10).as_deref(), Some(&"as of 10"));
        assert_eq!(s.at(30).as_deref(), Some(&"as of 20, 30 and 40"));
        assert_eq!(s.at(50), None);
        s.forget_through(30);
        assert_eq!(s.at(10), None);
        assert_eq!(s.at(40).as_deref(), Some(&"as of 20, 30 and 40"));
        assert_eq!(super::checkpoint_in(10, 3, 45), Some(40));
        assert_eq!(super::checkpoint_in(10, 41, 45), None);
    }
}
