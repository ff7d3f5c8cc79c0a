//! What the HTTP server shows: the current rows of every output — the whole cluster's, which
//! reach the first worker through the dataflow — as of the last closed logical time, and the
//! subscriptions that follow their changes.
//!
//! The first worker applies each complete time to [`StoreSink`], which encodes the rows to JSON
//! outside the lock and then updates the [`Store`] and every subscriber's queue under it, so a
//! reader always sees the rows of one closed time, never half a time. A subscriber's queue is
//! bounded: a client that does not keep up is dropped (its queue is replaced by a `dropped`
//! event), and the dataflow never waits for it. Append-only outputs (alerts, dead letters) are
//! not state: the store keeps their latest [`APPEND_TAIL`] rows and how many there were.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataflows::{Output, Row, Time};

use crate::codec::OutputRow;
use crate::sinks::Sink;

/// Rows of an append-only output the store keeps (the latest ones).
pub const APPEND_TAIL: usize = 1000;

/// Events a subscriber may have waiting before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 100_000;

/// How often a progress event is sent when times close without changes.
const QUIET_PROGRESS: Duration = Duration::from_millis(250);

/// The current rows of the outputs, shared by the first worker and the server's threads.
#[derive(Default)]
pub struct Store {
    state: Mutex<State>,
}

/// The store's contents (under its lock).
#[derive(Default)]
pub struct State {
    /// the outputs, in the plan's order
    pub outputs: Vec<OutputState>,
    /// every time up to this one is complete (`None`: none yet)
    pub closed: Option<Time>,
    /// the dataflow has ended: nothing will change any more
    pub done: bool,
    /// the run has ended and written its outputs
    pub finished: bool,
    /// the last time a progress event announced
    announced: Option<Time>,
    /// dead letters by the kind of their reason (`wrong_type`, `late`, …), the whole cluster's
    pub dead_letters: BTreeMap<String, u64>,
    subscribers: Vec<Arc<Subscriber>>,
    changed_since_progress: bool,
    last_progress: Option<Instant>,
}

/// One output in the store.
pub struct OutputState {
    /// the output
    pub output: Output,
    /// rows are only ever inserted
    pub append_only: bool,
    /// key (JSON) → its rows (JSON) with their multiplicities; keyed outputs only
    rows: BTreeMap<String, Vec<(String, isize)>>,
    /// the latest rows of an append-only output: (key, row)
    tail: VecDeque<(String, String)>,
    /// current rows (for an append-only output: every row so far)
    pub count: i64,
    /// updates applied so far
    pub changes: u64,
    /// the last time that changed it
    pub last_time: Option<Time>,
    /// (when, changes then) over the last seconds, for a rate
    history: VecDeque<(Instant, u64)>,
}

impl OutputState {
    fn new(output: Output) -> Self {
        OutputState {
            output,
            append_only: output.append_only(),
            rows: BTreeMap::new(),
            tail: VecDeque::new(),
            count: 0,
            changes: 0,
            last_time: None,
            history: VecDeque::new(),
        }
    }

    /// Updates per second over about the last ten seconds.
    pub fn changes_per_sec(&self) -> f64 {
        let now = Instant::now();
        match self.history.front() {
            Some((t, n)) if now.duration_since(*t) > Duration::from_millis(100) => {
                (self.changes - n) as f64 / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The current rows as JSON objects (of an append-only output: the latest ones), sorted by
    /// key; with `key`, only the rows of those keys (the spellings one key may have).
    pub fn rows(&self, key: Option<&[String]>) -> Vec<&str> {
        if self.append_only {
            return self.tail.iter().filter(|(k, _)| key.is_none_or(|want| want.contains(k))).map(|(_, r)| r.as_str()).collect();
        }
        fn rows(rs: &[(String, isize)]) -> impl Iterator<Item = &str> {
            rs.iter().flat_map(|(r, n)| std::iter::repeat_n(r.as_str(), (*n).max(0) as usize))
        }
        match key {
            Some(ks) => ks.iter().filter_map(|k| self.rows.get(k)).flat_map(|rs| rows(rs)).collect(),
            None => self.rows.values().flat_map(|rs| rows(rs)).collect(),
        }
    }

    fn apply(&mut self, time: Time, changes: &[(String, String, isize)]) {
        for (key, row, diff) in changes {
            self.count += *diff as i64;
            if self.append_only {
                if *diff > 0 {
                    self.tail.push_back((key.clone(), row.clone()));
                    if self.tail.len() > APPEND_TAIL {
                        self.tail.pop_front();
                    }
                }
                continue;
            }
            let rows = self.rows.entry(key.clone()).or_default();
            match rows.iter_mut().find(|(r, _)| r == row) {
                Some(e) => e.1 += diff,
                None => rows.push((row.clone(), *diff)),
            }
            rows.retain(|(_, n)| *n != 0);
            if rows.is_empty() {
                self.rows.remove(key);
            }
        }
        self.changes += changes.len() as u64;
        self.last_time = Some(time);
        let now = Instant::now();
        self.history.push_back((now, self.changes));
        while self.history.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10)) {
            self.history.pop_front();
        }
    }
}

/// One client following one output.
pub struct Subscriber {
    output: Output,
    /// only this key's changes (its JSON spellings)
    key: Option<Vec<String>>,
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A subscriber's waiting events, each one `event: …\ndata: …\n\n` text.
#[derive(Default)]
struct Queue {
    events: VecDeque<String>,
    len: usize,
    /// dropped for falling behind: the queue holds the last event only
    dropped: bool,
    /// the client went away
    gone: bool,
}

impl Subscriber {
    fn push(&self, event: String) {
        let mut q = lock(&self.queue);
        if q.dropped || q.gone {
            return;
        }
        q.len += 1;
        if q.len > SUBSCRIBER_BUFFER {
            q.events.clear();
            q.dropped = true;
            q.events.push_back(sse(
                "dropped",
                &format!("{{\"reason\":\"the client fell more than {SUBSCRIBER_BUFFER} events behind; subscribe again\"}}"),
            ));
        } else {
            q.events.push_back(event);
        }
        self.ready.notify_one();
    }

    /// Waits up to `wait` for events and takes them; `None` when there will be no more (the
    /// subscriber was dropped or the run ended, and everything was taken).
    pub fn take(&self, wait: Duration) -> Option<Vec<String>> {
        let mut q = lock(&self.queue);
        if q.events.is_empty() && !q.dropped {
            q = self.ready.wait_timeout(q, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let events: Vec<String> = q.events.drain(..).collect();
        q.len = 0;
        if events.is_empty() && (q.dropped || q.gone) {
            return None;
        }
        if q.dropped {
            q.gone = true;
        }
        Some(events)
    }

    /// The client went away: stop queueing for it.
    pub fn close(&self) {
        lock(&self.queue).gone = true;
    }
}

/// One server-sent event.
pub fn sse(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// A store for `outputs`.
    pub fn new(outputs: &[Output]) -> Self {
        Store { state: Mutex::new(State { outputs: outputs.iter().map(|o| OutputState::new(*o)).collect(), ..State::default() }) }
    }

    /// The store, locked: hold it only to copy what a response needs.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Follows `output` (only `key`'s rows, with one: the key's JSON): its first event is the
    /// snapshot at the last closed time, then every change after it in time order, and a
    /// progress event as times close.
    pub fn subscribe(&self, state: &mut MutexGuard<'_, State>, output: Output, key: Option<Vec<String>>) -> Option<Arc<Subscriber>> {
        let o = state.outputs.iter().find(|o| o.output == output)?;
        let snapshot = snapshot_json(o, state.closed, key.as_deref());
        let sub = Arc::new(Subscriber { output, key, queue: Mutex::default(), ready: Condvar::new() });
        sub.push(sse("snapshot", &snapshot));
        if state.done {
            sub.push(sse("end", &format!("{{\"time\":{}}}", json_time(state.closed))));
        }
        state.subscribers.retain(|s| !lock(&s.queue).gone);
        state.subscribers.push(sub.clone());
        Some(sub)
    }
}

/// `{"output", "time", "rows"}` of `o` (only `key`'s rows, with one).
pub fn snapshot_json(o: &OutputState, closed: Option<Time>, key: Option<&[String]>) -> String {
    let rows = o.rows(key);
    let mut s = String::with_capacity(64 + rows.iter().map(|r| r.len() + 1).sum::<usize>());
    s.push_str(&format!("{{\"output\":\"{}\",\"time\":{},\"count\":{},\"rows\":[", o.output, json_time(closed), o.count));
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r);
    }
    s.push_str("]}");
    s
}

/// A time as JSON (`null` before the first).
pub fn json_time(t: Option<Time>) -> String {
    t.map_or("null".to_string(), |t| t.to_string())
}

/// The first worker's sink that keeps the [`Store`].
pub struct StoreSink(pub Arc<Store>);

impl Sink for StoreSink {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        // Encoded outside the lock.
        let mut by_output: BTreeMap<Output, Vec<(String, String, isize)>> = BTreeMap::new();
        let mut dead: BTreeMap<String, u64> = BTreeMap::new();
        for (row, diff) in updates {
            if let (Row::DeadLetter(d), true) = (row, *diff > 0) {
                let kind = d.reason.split([':', ' ']).next().unwrap_or("").to_string();
                *dead.entry(kind).or_default() += *diff as u64;
            }
            by_output.entry(row.output()).or_default().push((row.key(), row.row(), *diff));
        }
        // A key's retraction before its insertion: a client applying changes one by one never
        // holds two rows of a key.
        for changes in by_output.values_mut() {
            changes.sort_unstable_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
        }
        // (key, event) of every change
        let events: Vec<(Output, Vec<(&str, String)>)> = by_output
            .iter()
            .map(|(o, changes)| {
                let events = changes
                    .iter()
                    .map(|(key, row, diff)| (key.as_str(), sse("change", &format!("{{\"time\":{time},\"diff\":{diff},\"row\":{row}}}"))))
                    .collect();
                (*o, events)
            })
            .collect();
        let mut state = self.0.lock();
        // A time is applied once it is complete: the rows are now those at `time`.
        state.closed = state.closed.max(Some(time));
        for (kind, n) in dead {
            *state.dead_letters.entry(kind).or_default() += n;
        }
        for (output, changes) in &by_output {
            if let Some(o) = state.outputs.iter_mut().find(|o| o.output == *output) {
                o.apply(time, changes);
            }
        }
        for sub in &state.subscribers {
            if let Some((_, evs)) = events.iter().find(|(o, _)| *o == sub.output) {
                for (key, e) in evs {
                    if sub.key.as_ref().is_none_or(|k| k.iter().any(|k| k == key)) {
                        sub.push(e.clone());
                    }
                }
            }
        }
        state.changed_since_progress = true;
    }

    fn advance(&mut self, frontier: Option<Time>) {
        let mut state = self.0.lock();
        let closed = match frontier {
            Some(f) => f.checked_sub(1),
            None => state.closed.max(state.outputs.iter().filter_map(|o| o.last_time).max()),
        };
        state.closed = state.closed.max(closed);
        let closed = state.closed;
        if closed <= state.announced && frontier.is_some() {
            return;
        }
        let due = state.changed_since_progress || state.last_progress.is_none_or(|t| t.elapsed() >= QUIET_PROGRESS);
        if frontier.is_none() && !state.done {
            state.done = true;
            let end = sse("end", &format!("{{\"time\":{}}}", json_time(closed)));
            for sub in &state.subscribers {
                sub.push(sse("progress", &format!("{{\"time\":{}}}", json_time(closed))));
                sub.push(end.clone());
            }
            return;
        }
        if due {
            let event = sse("progress", &format!("{{\"time\":{}}}", json_time(closed)));
            for sub in &state.subscribers {
                sub.push(event.clone());
            }
            state.changed_since_progress = false;
            state.last_progress = Some(Instant::now());
            state.announced = closed;
        }
    }
}
