//! `user_activity`: each user's latest profile joined with their click count.
//!
//! ```text
//! users ──latest_local──exchange(user_id)──LatestProfiles──(user_id, (name, email))──┐
//!                                                             join_total ──▶ user_activity
//! clicks ──clicks_per_user─────────────────────────────────────────────────┘  {user_id, name, email, event_count}
//! ```
//!
//! "Latest" is the profile version with the highest source position (line in a file, offset in
//! the key's partition), so the answer does not depend on how many workers read the input.
//! The join is inner: a user shows once they have both a profile and a click. A profile update
//! retracts the old row and inserts the new one; clicks that arrive before the profile are
//! counted and join when it arrives.
//!
//! The profiles are an upsert input: `LatestProfiles` keeps only each user's latest version
//! (position, name, e-mail), so superseded versions are dropped as soon as they are outranked
//! and state grows with the number of users, not of profile updates.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, Hashable};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::ops::{stash_by_time, FastMap, JoinTotal, LatestLocal, Stash};
use crate::records::{Id, Position, User, UserActivity};
use crate::{Coll, Time};

/// Each user's latest `(name, email)`: a new latest version retracts the previous row.
pub fn latest_profiles<'s>(users: Coll<'s, User>) -> Coll<'s, (Id, (String, String))> {
    let exchange = Exchange::new(|(u, _, _): &(User, Time, isize)| u.user_id.hashed());
    users
        .latest_local(|u: &User| u.user_id.clone(), |u: &User| u.position.clone())
        .inner
        .unary_frontier(exchange, "LatestProfiles", |_cap, _info| {
            let mut pending: Stash<User> = BTreeMap::new();
            let mut latest: FastMap<Id, (Position, String, String)> = FastMap::default();
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                    let (t, (cap, versions)) = pending.pop_first().expect("checked");
                    let mut session = output.session(&cap);
                    for (u, diff) in versions {
                        debug_assert!(diff > 0, "profiles are insert-only");
                        let newer = |(p, ..): &(Position, String, String)| u.position > *p;
                        match latest.get_mut(&u.user_id) {
                            Some(current) if newer(current) => {
                                let (_, name, email) = std::mem::replace(current, (u.position, u.name.clone(), u.email.clone()));
                                session.give(((u.user_id.clone(), (name, email)), t, -1));
                                session.give(((u.user_id, (u.name, u.email)), t, 1));
                            }
                            Some(_) => {}
                            None => {
                                latest.insert(u.user_id.clone(), (u.position, u.name.clone(), u.email.clone()));
                                session.give(((u.user_id, (u.name, u.email)), t, 1));
                            }
                        }
                    }
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection()
}

/// The `user_activity` output.
pub fn user_activity<'s>(users: Coll<'s, User>, per_user: Coll<'s, (Id, isize)>) -> Coll<'s, UserActivity> {
    latest_profiles(users).join_total(per_user).map(|(user_id, ((name, email), n))| UserActivity {
        user_id,
        name,
        email,
        event_count: n as i64,
    })
}
