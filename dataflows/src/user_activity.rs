//! `user_activity`: each user's latest profile joined with their click count.
//!
//! ```text
//! users ──latest_local──(user_id, (position, name, email))──reduce(max position)──┐
//!                                                                   join ──▶ user_activity
//! clicks ──clicks_per_user──────────────────────────────────────────┘      {user_id, name, email, event_count}
//! ```
//!
//! "Latest" is the profile version with the highest source position (line in a file, offset in
//! the key's partition), so the answer does not depend on how many workers read the input.
//! The join is inner: a user shows once they have both a profile and a click. A profile update
//! retracts the old row and inserts the new one; clicks that arrive before the profile are
//! counted and join when it arrives.

use crate::ops::LatestLocal;
use crate::records::{Id, Position, User, UserActivity};
use crate::Coll;

/// Each user's latest `(name, email)`.
pub fn latest_profiles<'s>(users: Coll<'s, User>) -> Coll<'s, (Id, (String, String))> {
    users
        .latest_local(|u: &User| u.user_id.clone(), |u: &User| u.position.clone())
        .map(|u| (u.user_id, (u.position, u.name, u.email)))
        .reduce(|_user, versions: &[(&(Position, String, String), isize)], out| {
            // Versions come sorted by position; the last one present is the latest.
            if let Some(((_, name, email), _)) = versions.iter().rev().find(|(_, n)| *n > 0) {
                out.push(((name.clone(), email.clone()), 1));
            }
        })
}

/// The `user_activity` output.
pub fn user_activity<'s>(
    users: Coll<'s, User>,
    per_user: Coll<'s, (Id, isize)>,
) -> Coll<'s, UserActivity> {
    latest_profiles(users)
        .join(per_user)
        .map(|(user_id, ((name, email), n))| UserActivity {
            user_id,
            name,
            email,
            event_count: n as i64,
        })
}
