//! The health of an external sink (Kafka, MongoDB), shared by every worker's sink of one kind
//! in a process: counters, and whether some worker's writes are in trouble and why.
//!
//! A sink is *unhealthy* while a write keeps failing (the reason is the last error) or while
//! its oldest unacknowledged write has waited longer than [`STALLED`] (a broker or server
//! that stopped answering: librdkafka and the MongoDB driver keep waiting for it without an
//! error). The first trouble of a worker is logged at `warn` with the reason, and so is the
//! recovery, with how long it lasted (who saw the one must see the other); the status line shows the oldest trouble. Retries back off,
//! capped at [`MAX_BACKOFF`], so a write that fails for good costs a few attempts a minute,
//! not a busy loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write may wait for its acknowledgement before the sink counts as unhealthy.
pub const STALLED: Duration = Duration::from_secs(10);
/// The first retry's wait; each failure in a row doubles it.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Counters and trouble of one kind of sink.
#[derive(Debug)]
pub struct Health {
    /// `kafka` or `mongodb`, for logs and the status line
    pub sink: &'static str,
    /// failed attempts that were (or will be) retried
    pub retries: AtomicU64,
    /// rows that could not be written and went to the dead letters
    pub rejected: AtomicU64,
    /// per worker: since when it is in trouble, and why
    trouble: Mutex<BTreeMap<usize, (Instant, String)>>,
}

impl Health {
    /// A healthy sink of kind `sink`.
    pub fn new(sink: &'static str) -> Self {
        Health { sink, retries: AtomicU64::new(0), rejected: AtomicU64::new(0), trouble: Mutex::default() }
    }

    /// `worker`'s writes are in trouble for `reason` (logged the first time).
    pub fn trouble(&self, worker: usize, reason: impl Into<String>) {
        let reason = reason.into();
        let mut trouble = self.trouble.lock().expect("health");
        match trouble.get_mut(&worker) {
            Some((_, r)) => *r = reason,
            None => {
                tracing::warn!(sink = self.sink, worker, reason = reason.as_str(), "sink unhealthy");
                trouble.insert(worker, (Instant::now(), reason));
            }
        }
    }

    /// `worker`'s writes go through again.
    pub fn ok(&self, worker: usize) {
        if let Some((since, _)) = self.trouble.lock().expect("health").remove(&worker) {
            tracing::warn!(sink = self.sink, worker, after = ?since.elapsed(), "sink healthy again");
        }
    }

    /// The oldest trouble of any worker: how long it has lasted and why. `None`: healthy.
    pub fn status(&self) -> Option<(Duration, String)> {
        let trouble = self.trouble.lock().expect("health");
        trouble.values().min_by_key(|(since, _)| *since).map(|(since, reason)| (since.elapsed(), reason.clone()))
    }

    /// For the status line: `kafka ok`, or `kafka UNHEALTHY 12s: reason`, with the counters.
    pub fn line(&self) -> String {
        let counts = format!("retries {} rejected {}", self.retries.load(Ordering::Relaxed), self.rejected.load(Ordering::Relaxed));
        match self.status() {
            None => format!("{} ok, {counts}", self.sink),
            Some((d, reason)) => format!("{} UNHEALTHY {}s: {reason}, {counts}", self.sink, d.as_secs()),
        }
    }
}

/// Retries with a doubling wait, from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    /// no attempt before this
    until: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF, until: None }
    }
}

impl Backoff {
    /// A failure: the next attempt waits the returned time, twice as long as the last.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        self.until = Some(Instant::now() + wait);
        wait
    }
    /// A success: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }
    /// Whether nothing failed since the last success.
    pub fn is_fresh(&self) -> bool {
        self.until.is_none()
    }
    /// Whether the wait since the last failure is over.
    pub fn due(&self) -> bool {
        self.until.is_none_or(|u| Instant::now() >= u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert!(!b.due());
        b.succeeded();
        assert!(b.due());
        assert_eq!(b.failed().as_millis(), 100);
    }

    #[test]
    fn the_oldest_trouble_is_shown_until_every_worker_recovers() {
        let h = Health::new("kafka");
        assert_eq!(h.line(), "kafka ok, retries 0 rejected 0");
        h.trouble(1, "broker down");
        std::thread::sleep(Duration::from_millis(5));
        h.trouble(0, "timed out");
        h.trouble(1, "still down");
        assert_eq!(h.status().unwrap().1, "still down");
        h.ok(1);
        assert_eq!(h.status().unwrap().1, "timed out");
        h.ok(0);
        assert!(h.status().is_none());
    }
}
