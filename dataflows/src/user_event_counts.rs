//! `user_event_counts`: how many clicks each user made, and how many of each event kind.
//!
//! ```text
//! clicks ──aggregate_local(user_id)──count──▶ user_event_counts {user_id, event_count}
//!        └─aggregate_local(event)────count──▶ event_type_counts {event, count}
//! ```
//!
//! Both outputs are exact and incremental: a batch of clicks retracts each affected count and
//! inserts the new one, at the batch's logical time.

use crate::ops::AggregateLocal;
use crate::records::{Click, EventTypeCount, Id, UserEventCount};
use crate::Coll;

/// Clicks per user as `(user_id, count)`; shared with `user_activity` when both run.
pub fn clicks_per_user<'s>(clicks: Coll<'s, Click>) -> Coll<'s, (Id, isize)> {
    clicks.aggregate_local(|c| c.user_id.clone()).count()
}

/// The `user_event_counts` output from the per-user counts.
pub fn user_event_counts<'s>(per_user: Coll<'s, (Id, isize)>) -> Coll<'s, UserEventCount> {
    per_user.map(|(user_id, n)| UserEventCount {
        user_id,
        event_count: n as i64,
    })
}

/// The `event_type_counts` output.
pub fn event_type_counts<'s>(clicks: Coll<'s, Click>) -> Coll<'s, EventTypeCount> {
    clicks
        .aggregate_local(|c| c.event.clone())
        .count()
        .map(|(event, n)| EventTypeCount {
            event,
            count: n as i64,
        })
}
