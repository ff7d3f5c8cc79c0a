//! `user_event_counts`: how many clicks each user made, and how many of each event kind.
//!
//! ```text
//! clicks ──aggregate_local(user, kind)──count_map──┬─▶ user_event_counts {user_id, event_count}
//!                                                  └─▶ event_type_counts {event, count}
//! ```
//!
//! Both counts share one pass over the clicks and one map of counts, keyed by [`ClickKey`].
//! `count_map` ([`crate::ops::CountMap`]: the updates of differential's `count_total`, from a
//! hash map of current counts instead of an arrangement) emits each changed count without
//! keeping history.
//! Both outputs are exact and incremental: a batch of clicks retracts each affected count and
//! inserts the new one, at the batch's logical time.

use serde::{Deserialize, Serialize};

use std::cell::RefCell;
use std::rc::Rc;

use crate::ops::{AggregateLocal, CountMap, FastMap};
use crate::output::CurrentRows;
use crate::records::{Click, EventTypeCount, Id, UserEventCount};
use crate::Coll;

/// What a click is counted under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClickKey {
    /// per user
    User(Id),
    /// per event kind
    Event(String),
}

/// Clicks per user and per event kind, and the map of current counts behind them.
pub fn click_counts<'s>(clicks: Coll<'s, Click>) -> (Coll<'s, (ClickKey, isize)>, Counts) {
    clicks.aggregate_local(|c: Click| [ClickKey::User(c.user_id), ClickKey::Event(c.event)]).count_map("user_event_counts")
}

/// The current counts of [`click_counts`] (this worker's keys).
pub type Counts = Rc<RefCell<FastMap<ClickKey, isize>>>;

/// The current rows of `user_event_counts`, taken from the counts once the dataflow is done.
pub fn current_user_event_counts(counts: Counts) -> CurrentRows {
    current_rows(counts, user_event_count)
}

/// The current rows of `event_type_counts`, taken from the counts once the dataflow is done.
pub fn current_event_type_counts(counts: Counts) -> CurrentRows {
    current_rows(counts, event_type_count)
}

/// Takes the counts that are rows of the output (`row` gives `Some`), leaving the others for
/// the other output's reader.
fn current_rows<R: Into<crate::Row> + 'static>(counts: Counts, row: fn(&ClickKey, isize) -> Option<R>) -> CurrentRows {
    Box::new(move |each| {
        counts.borrow_mut().retain(|k, n| match row(k, *n) {
            Some(r) => {
                each(r.into(), 1);
                false
            }
            None => true,
        })
    })
}

/// A user's count as a row of `user_event_counts`.
fn user_event_count(k: &ClickKey, n: isize) -> Option<UserEventCount> {
    match k {
        ClickKey::User(user_id) => Some(user_row(user_id.clone(), n)),
        ClickKey::Event(_) => None,
    }
}

/// An event kind's count as a row of `event_type_counts`.
fn event_type_count(k: &ClickKey, n: isize) -> Option<EventTypeCount> {
    match k {
        ClickKey::Event(event) => Some(EventTypeCount { event: event.clone(), count: n as i64 }),
        ClickKey::User(_) => None,
    }
}

/// Clicks per user as `(user_id, count)`; shared with `user_activity`.
pub fn per_user<'s>(counts: Coll<'s, (ClickKey, isize)>) -> Coll<'s, (Id, isize)> {
    counts.flat_map(|(k, n)| match k {
        ClickKey::User(u) => Some((u, n)),
        ClickKey::Event(_) => None,
    })
}

/// The `user_event_counts` output from the per-user counts.
pub fn user_event_counts<'s>(per_user: Coll<'s, (Id, isize)>) -> Coll<'s, UserEventCount> {
    per_user.map(|(user_id, n)| user_row(user_id, n))
}

/// A user's row of `user_event_counts`.
fn user_row(user_id: Id, n: isize) -> UserEventCount {
    UserEventCount { user_id, event_count: n as i64 }
}

/// The `event_type_counts` output.
pub fn event_type_counts<'s>(counts: Coll<'s, (ClickKey, isize)>) -> Coll<'s, EventTypeCount> {
    counts.flat_map(|(k, n)| event_type_count(&k, n))
}
