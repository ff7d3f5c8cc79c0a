//! `user_activity`: each user's latest profile joined with their click count.
//!
//! ```text
//! users ──latest_local──exchange(user_id)──┐
//!                                          LatestProfileJoin ──▶ user_activity
//! clicks ──per-user counts──exchange(user_id)──┘  {user_id, name, email, event_count}
//! ```
//!
//! "Latest" is the profile version with the highest source position (line in a file, offset in
//! the key's partition), so the answer does not depend on how many workers read the input.
//! The join is inner: a user shows once they have both a profile and a click. A profile update
//! retracts the old row and inserts the new one; clicks that arrive before the profile are
//! counted and join when it arrives.
//!
//! The profiles are an upsert input: `LatestProfileJoin` keeps only each user's latest version
//! (position, name, e-mail) beside their count, in one map, so superseded versions are dropped
//! as soon as they are outranked and state grows with the number of users, not of profile
//! updates.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::{AsCollection, Hashable};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::ops::{multiset_apply, stash_by_time, FastMap, LatestLocal, Stash};
use crate::output::CurrentRows;
use crate::records::{Id, Position, SharedText, User, UserActivity};
use crate::{Coll, Time};

/// A user's state in [`user_activity`]: the latest profile version and the current click
/// counts (one value at a consistent time). The profile is boxed: the map's table then holds
/// 56 bytes per user instead of 120, which at a million users is what its growth costs.
#[derive(Default)]
struct Joined {
    profile: Option<Box<(Position, SharedText, SharedText)>>,
    counts: Vec<(isize, isize)>,
}

/// The `user_activity` output: each user's latest profile joined with their click count, in
/// one operator and one map keyed by user (exchanged by user id), so that a profile is kept
/// once — not once to pick the latest version and again in a join's state. Each completed
/// time, in order, retracts the rows of every user it changed and inserts the new ones (none
/// when a newer version changed nothing).
///
/// Also returns the output's current rows, taken from that map once the dataflow is done.
pub fn user_activity<'s>(users: Coll<'s, User>, per_user: Coll<'s, (Id, isize)>) -> (Coll<'s, UserActivity>, CurrentRows) {
    latest_profile_join(users, per_user, activity)
}

/// [`user_activity`] for a run that only counts the output's changes as they happen and takes
/// its rows at the end: the same updates (times and multiplicities), each with no row. A row
/// costs two reference counts of a profile's shared name and e-mail — a cache miss each at a
/// million users, then another to release them — for nothing the count needs.
pub fn user_activity_counted<'s>(users: Coll<'s, User>, per_user: Coll<'s, (Id, isize)>) -> (Coll<'s, ()>, CurrentRows) {
    latest_profile_join(users, per_user, |_, _, _| ())
}

/// The operator of [`user_activity`], its rows made by `row`.
fn latest_profile_join<'s, R: Clone + 'static>(
    users: Coll<'s, User>,
    per_user: Coll<'s, (Id, isize)>,
    row: fn(&Id, &(Position, SharedText, SharedText), isize) -> R,
) -> (Coll<'s, R>, CurrentRows) {
    let left = Exchange::new(|(u, _, _): &(User, Time, isize)| u.user_id.hashed());
    let right = Exchange::new(|((k, _), _, _): &((Id, isize), Time, isize)| k.hashed());
    let size = crate::state::StateSize::new("user_activity", "LatestProfileJoin");
    let shared: Rc<RefCell<FastMap<Id, Joined>>> = Rc::default();
    let (state, read) = (shared.clone(), shared);
    let current: CurrentRows = Box::new(move |each| {
        for (user_id, joined) in read.borrow_mut().drain() {
            if let Some(p) = &joined.profile {
                for (n, r) in &joined.counts {
                    each(activity(&user_id, p, *n).into(), *r);
                }
            }
        }
    });
    let rows = users
        .latest_local(|u: &User| u.user_id.clone(), |u: &User| u.position.clone())
        .inner
        .binary_frontier(per_user.inner, left, right, "LatestProfileJoin", |_cap, _info| {
            let mut profiles: Stash<User> = BTreeMap::new();
            let mut counts: Stash<(Id, isize)> = BTreeMap::new();
            // a time's changes per user, drained each time (its table kept, not regrown)
            let mut by_user: FastMap<Id, (Option<User>, Vec<(isize, isize)>)> = FastMap::default();
            move |(in1, f1), (in2, f2), output| {
                stash_by_time(in1, &mut profiles, output.output_index());
                stash_by_time(in2, &mut counts, output.output_index());
                let mut state = state.borrow_mut();
                loop {
                    let next = match (profiles.keys().next(), counts.keys().next()) {
                        (Some(a), Some(b)) => *a.min(b),
                        (Some(a), None) => *a,
                        (None, Some(b)) => *b,
                        (None, None) => break,
                    };
                    if f1.less_equal(&next) || f2.less_equal(&next) {
                        break;
                    }
                    let (cap1, versions) = profiles.remove(&next).map_or((None, Default::default()), |(c, d)| (Some(c), d));
                    let (cap2, changes) = counts.remove(&next).map_or((None, Default::default()), |(c, d)| (Some(c), d));
                    let cap = cap1.or(cap2).expect("a pending time has a capability");
                    for (u, diff) in versions {
                        debug_assert!(diff > 0, "profiles are insert-only");
                        let newest = &mut by_user.entry(u.user_id.clone()).or_default().0;
                        if newest.as_ref().is_none_or(|n| u.position > n.position) {
                            *newest = Some(u);
                        }
                    }
                    for ((k, n), diff) in changes {
                        by_user.entry(k).or_default().1.push((n, diff));
                    }
                    let mut session = output.session(&cap);
                    for (user_id, (newest, mut count_changes)) in by_user.drain() {
                        let joined = state.entry(user_id.clone()).or_default();
                        let newer = newest.filter(|u| joined.profile.as_ref().is_none_or(|p| u.position > p.0));
                        // Count changes of one time that cancel change nothing.
                        differential_dataflow::consolidation::consolidate(&mut count_changes);
                        let new_profile = newer.map(|u| Box::new((u.position, u.name, u.email)));
                        let profile_changes = new_profile
                            .as_ref()
                            .is_some_and(|new| joined.profile.as_ref().is_none_or(|old| old.1 != new.1 || old.2 != new.2));
                        if profile_changes || !count_changes.is_empty() {
                            let row = |p: &(Position, SharedText, SharedText), n: isize| row(&user_id, p, n);
                            // the rows before this time leave, the rows after it come
                            if let Some(p) = &joined.profile {
                                for (n, r) in &joined.counts {
                                    session.give((row(p, *n), next, -r));
                                }
                            }
                            multiset_apply(&mut joined.counts, count_changes);
                            if new_profile.is_some() {
                                joined.profile = new_profile;
                            }
                            if let Some(p) = &joined.profile {
                                for (n, r) in &joined.counts {
                                    session.give((row(p, *n), next, *r));
                                }
                            }
                        } else if new_profile.is_some() {
                            // a newer version with the same name and e-mail moves the position only
                            joined.profile = new_profile;
                        }
                        if joined.profile.is_none() && joined.counts.is_empty() {
                            state.remove(&user_id);
                        }
                    }
                    size.set(state.len());
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection();
    (rows, current)
}

/// A user's row of `user_activity`: their profile and a count of their clicks.
fn activity(user_id: &Id, (_, name, email): &(Position, SharedText, SharedText), n: isize) -> UserActivity {
    UserActivity { user_id: user_id.clone(), name: name.clone(), email: email.clone(), event_count: n as i64 }
}
