//! What the HTTP server shows: the current rows of every output — the whole cluster's — as of
//! the last logical time every shard has closed, and the subscriptions that follow their
//! changes.
//!
//! The rows are sharded by key over the first process's workers: in a single process each
//! worker's sinks already get their share of every output by key, and a [`StoreSink`] beside
//! them keeps it; in a cluster the rows are routed by key to the first process's workers. So no
//! worker does the others' bookkeeping, and no row is encoded until someone asks: a change is
//! encoded to JSON only for an output somebody follows, a lookup clones the rows it needs and
//! encodes them outside the locks.
//!
//! Shards close times at different moments, so what a reader sees is cut at the time `V` that
//! every shard has closed: a shard keeps the times it applied after `V` pending, and folds them
//! into its rows once every shard has closed them (its own worker does, or a reader that holds
//! every shard's lock). A reader therefore always sees the rows of one closed time, never half a
//! time. A subscriber's changes are queued per time and handed out only up to `V`, in time
//! order; its queue is bounded — a client that does not keep up is dropped (the queue is
//! replaced by a `dropped` event), and the dataflow never waits for it. Append-only outputs
//! (alerts, dead letters) are not state: each shard keeps its latest [`APPEND_TAIL`] rows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataflows::ops::HashedMap;
use dataflows::{Output, Row, Time};

use crate::codec::OutputRow;
use crate::sinks::Sink;

/// Rows of an append-only output the server shows (the latest ones).
pub const APPEND_TAIL: usize = 1000;

/// Events a subscriber may have waiting before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 100_000;

/// How often a progress event is sent when times close without changes.
const QUIET_PROGRESS: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One server-sent event.
pub fn sse(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// A time as JSON (`null` before the first).
pub fn json_time(t: Option<Time>) -> String {
    t.map_or("null".to_string(), |t| t.to_string())
}

/// One output in one shard.
#[derive(Default)]
struct Part {
    /// the hash of a key → that key's rows with their multiplicities (keyed outputs)
    rows: HashedMap<Vec<(Row, isize)>>,
    /// key JSON → key hash, built at the first lookup by key and kept from then on
    by_key: Option<HashMap<String, u64>>,
    /// the latest rows of an append-only output, with their times
    tail: VecDeque<(Time, Row)>,
    /// current rows (append-only: every row so far)
    count: i64,
    /// updates folded so far
    changes: u64,
    /// the last time that changed it
    last_time: Option<Time>,
}

/// One worker's share of every output.
struct Shard {
    parts: Vec<Part>,
    /// applied times not yet closed by every shard
    pending: BTreeMap<Time, Vec<(Row, isize)>>,
}

impl Shard {
    /// Folds the pending times before `below` into the rows.
    fn fold(&mut self, outputs: &[Output], below: Time) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= below {
                break;
            }
            let (time, updates) = entry.remove_entry();
            // Retractions first: a key's `-old` leaves its slot at count zero and `+new` takes it.
            let (retractions, adds): (Vec<_>, Vec<_>) = updates.into_iter().partition(|(_, d)| *d < 0);
            for (row, diff) in retractions.into_iter().chain(adds) {
                let Some(i) = outputs.iter().position(|o| *o == row.output()) else { continue };
                let part = &mut self.parts[i];
                part.count += diff as i64;
                part.changes += 1;
                part.last_time = Some(time);
                if outputs[i].append_only() {
                    if diff > 0 {
                        part.tail.push_back((time, row));
                        if part.tail.len() > APPEND_TAIL {
                            part.tail.pop_front();
                        }
                    }
                    continue;
                }
                let hash = row.key_hash();
                let key = part.by_key.as_ref().map(|_| row.key());
                let rows = part.rows.entry(hash).or_default();
                if rows.is_empty() {
                    if let (Some(index), Some(k)) = (&mut part.by_key, &key) {
                        index.insert(k.clone(), hash);
                    }
                }
                dataflows::ops::multiset_add(rows, row, diff);
                if rows.iter().all(|(_, n)| *n == 0) {
                    part.rows.remove(&hash);
                    if let (Some(index), Some(k)) = (&mut part.by_key, &key) {
                        index.remove(k);
                    }
                } else if diff > 0 {
                    rows.retain(|(_, n)| *n != 0);
                }
            }
        }
    }

    /// Output `i`'s rows (only `key`'s, with one: the key's JSON spellings), cloned.
    fn rows(&mut self, i: usize, append_only: bool, key: Option<&[String]>, out: &mut Vec<(Time, Row)>) {
        let part = &mut self.parts[i];
        if append_only {
            out.extend(part.tail.iter().filter(|(_, r)| key.is_none_or(|ks| ks.contains(&r.key()))).cloned());
            return;
        }
        let expand = |rs: &Vec<(Row, isize)>, out: &mut Vec<(Time, Row)>| {
            for (r, n) in rs {
                out.extend(std::iter::repeat_n(r, (*n).max(0) as usize).map(|r| (0, r.clone())));
            }
        };
        let Some(ks) = key else {
            part.rows.values().for_each(|rs| expand(rs, out));
            return;
        };
        let rows = &part.rows;
        let index = part.by_key.get_or_insert_with(|| rows.iter().filter_map(|(h, rs)| Some((rs.first()?.0.key(), *h))).collect());
        for h in ks.iter().filter_map(|k| index.get(k)) {
            if let Some(rs) = rows.get(h) {
                expand(rs, out);
            }
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

#[derive(Default)]
struct Queue {
    /// the snapshot, until it is taken
    snapshot: Option<String>,
    /// change events with their times, each shard's in time order
    events: Vec<(Time, String)>,
    /// dropped for falling behind
    dropped: bool,
    /// the client went away
    gone: bool,
    /// the last time a progress event announced, and when
    announced: Option<Time>,
    announced_at: Option<Instant>,
    ended: bool,
}

impl Subscriber {
    fn live(&self) -> bool {
        let q = lock(&self.queue);
        !q.dropped && !q.gone
    }

    fn push(&self, time: Time, event: String) {
        let mut q = lock(&self.queue);
        if q.dropped || q.gone {
            return;
        }
        if q.events.len() >= SUBSCRIBER_BUFFER {
            q.events = Vec::new();
            q.dropped = true;
        } else {
            q.events.push((time, event));
        }
        // (no wake-up: the writer looks every 50 ms, and a change is handed out only once every
        // shard has closed its time anyway)
    }
}

/// The figures of one output, the whole cluster's, at the store's time.
pub struct OutputSummary {
    /// the output
    pub output: Output,
    /// rows are only ever inserted
    pub append_only: bool,
    /// current rows (append-only: every row so far)
    pub rows: i64,
    /// updates so far
    pub changes: u64,
    /// the last time that changed it
    pub last_time: Option<Time>,
    /// updates per second over about the last ten seconds
    pub changes_per_sec: f64,
}

/// The current rows of the outputs, shared by the first process's workers and the server.
pub struct Store {
    outputs: Vec<Output>,
    shards: Vec<Mutex<Shard>>,
    /// per shard: every time below this is closed (`u64::MAX`: the shard has ended)
    below: Vec<AtomicU64>,
    /// per shard: the greatest time it applied, plus one (0: none)
    applied: Vec<AtomicU64>,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    /// dead letters by the kind of their reason (`wrong_type`, `late`, …), the whole cluster's
    dead_letters: Mutex<BTreeMap<String, u64>>,
    /// (when, changes then) per output, sampled at each summary, for rates
    history: Mutex<VecDeque<(Instant, Vec<u64>)>>,
    /// the run has ended and written its outputs
    pub finished: AtomicBool,
}

impl Store {
    /// A store for `outputs` in `shards` shards.
    pub fn new(outputs: &[Output], shards: usize) -> Self {
        let shards = shards.max(1);
        Store {
            outputs: outputs.to_vec(),
            shards: (0..shards)
                .map(|_| Mutex::new(Shard { parts: outputs.iter().map(|_| Part::default()).collect(), pending: BTreeMap::new() }))
                .collect(),
            below: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            applied: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            subscribers: Mutex::default(),
            dead_letters: Mutex::default(),
            history: Mutex::default(),
            finished: AtomicBool::new(false),
        }
    }

    /// The sink of shard `i`.
    pub fn sink(self: &Arc<Self>, i: usize) -> StoreSink {
        StoreSink { store: self.clone(), shard: i }
    }

    /// The outputs, in the plan's order.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Every time below this is closed in every shard, and whether every shard has ended.
    fn frontier(&self) -> (Time, bool) {
        let below = self.below.iter().map(|b| b.load(Ordering::Acquire)).min().unwrap_or(0);
        (below, below == u64::MAX)
    }

    /// The last time every shard has closed (`None`: none yet); after the end, the last time
    /// any shard applied.
    pub fn time(&self) -> Option<Time> {
        match self.frontier() {
            (_, true) => self.applied.iter().map(|a| a.load(Ordering::Acquire)).max().and_then(|a| a.checked_sub(1)),
            (below, false) => below.checked_sub(1),
        }
    }

    /// Every shard locked, folded through the time they all closed, and that time.
    fn cut(&self) -> (Vec<MutexGuard<'_, Shard>>, Option<Time>) {
        let mut guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(lock).collect();
        let (below, _) = self.frontier();
        for g in &mut guards {
            g.fold(&self.outputs, below);
        }
        (guards, self.time())
    }

    /// Dead letters by the kind of their reason.
    pub fn dead_letters(&self) -> BTreeMap<String, u64> {
        lock(&self.dead_letters).clone()
    }

    /// Every output's figures at one closed time, and that time.
    pub fn summary(&self) -> (Option<Time>, Vec<OutputSummary>) {
        let (guards, time) = self.cut();
        let totals: Vec<(i64, u64, Option<Time>)> = (0..self.outputs.len())
            .map(|i| {
                guards.iter().fold((0, 0, None), |(n, c, t), g| {
                    let p = &g.parts[i];
                    (n + p.count, c + p.changes, t.max(p.last_time))
                })
            })
            .collect();
        drop(guards);
        let now = Instant::now();
        let changes: Vec<u64> = totals.iter().map(|t| t.1).collect();
        let mut history = lock(&self.history);
        history.push_back((now, changes.clone()));
        while history.len() > 2 && history.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10)) {
            history.pop_front();
        }
        let (then, before) = history.front().cloned().expect("just pushed");
        let secs = now.duration_since(then).as_secs_f64();
        let outputs = self
            .outputs
            .iter()
            .zip(totals)
            .enumerate()
            .map(|(i, (o, (rows, changes, last_time)))| OutputSummary {
                output: *o,
                append_only: o.append_only(),
                rows,
                changes,
                last_time,
                changes_per_sec: if secs > 0.1 { (changes - before[i]) as f64 / secs } else { 0.0 },
            })
            .collect();
        (time, outputs)
    }

    /// Output `i`'s rows at one closed time (only `key`'s, with one: the key's JSON spellings),
    /// with that time and the output's row count; an append-only output's latest rows.
    pub fn rows(&self, i: usize, key: Option<&[String]>) -> (Option<Time>, i64, Vec<Row>) {
        let (mut guards, time) = self.cut();
        let (count, rows) = self.gather(&mut guards, i, key);
        drop(guards);
        (time, count, self.latest(i, rows))
    }

    /// Output `i`'s row count and rows (only `key`'s, with one) over the locked shards, with
    /// the times of an append-only output's rows.
    fn gather(&self, guards: &mut [MutexGuard<'_, Shard>], i: usize, key: Option<&[String]>) -> (i64, Vec<(Time, Row)>) {
        let append_only = self.outputs[i].append_only();
        let mut rows = Vec::new();
        for g in guards.iter_mut() {
            g.rows(i, append_only, key, &mut rows);
        }
        (guards.iter().map(|g| g.parts[i].count).sum(), rows)
    }

    /// The rows, of an append-only output only the latest [`APPEND_TAIL`] over all shards.
    fn latest(&self, i: usize, mut rows: Vec<(Time, Row)>) -> Vec<Row> {
        if self.outputs[i].append_only() && rows.len() > APPEND_TAIL {
            rows.sort_by_key(|(t, _)| *t);
            rows.drain(..rows.len() - APPEND_TAIL);
        }
        rows.into_iter().map(|(_, r)| r).collect()
    }

    /// Follows output `i` (only `key`'s rows, with one): the subscriber's first event is the
    /// snapshot at a closed time, then every change after it in time order, with a progress
    /// event as times close ([`Store::next_events`]).
    pub fn subscribe(&self, i: usize, key: Option<Vec<String>>) -> Arc<Subscriber> {
        let output = self.outputs[i];
        let sub = Arc::new(Subscriber { output, key, queue: Mutex::default(), ready: Condvar::new() });
        let (time, count, rows) = {
            let (mut guards, time) = self.cut();
            let (count, rows) = self.gather(&mut guards, i, sub.key.as_deref());
            // Times applied after the cut are still pending: their changes come next.
            for g in &guards {
                for (t, updates) in &g.pending {
                    for (row, diff) in updates.iter().filter(|(r, _)| r.output() == output) {
                        if let Some(event) = change_event(&sub, *t, row, *diff) {
                            lock(&sub.queue).events.push((*t, event));
                        }
                    }
                }
            }
            let mut subs = lock(&self.subscribers);
            subs.retain(|s| s.live());
            subs.push(sub.clone());
            (time, count, rows)
        };
        let snapshot = snapshot_json(output, time, count, self.latest(i, rows));
        let mut q = lock(&sub.queue);
        q.snapshot = Some(sse("snapshot", &snapshot));
        q.announced = time;
        drop(q);
        sub
    }

    /// Waits up to `wait` for a subscriber's next events: the snapshot first, then the changes
    /// of every time all shards have closed, in time order, a progress event when such a time
    /// closes (at once after changes, else every 250 ms), and at the run's end `end`. `None`
    /// once there will be no more.
    pub fn next_events(&self, sub: &Subscriber, wait: Duration) -> Option<Vec<String>> {
        let mut q = lock(&sub.queue);
        if q.ended {
            return None;
        }
        if let Some(s) = q.snapshot.take() {
            return Some(vec![s]);
        }
        if q.dropped {
            q.ended = true;
            let why = format!("{{\"reason\":\"the client fell more than {SUBSCRIBER_BUFFER} events behind; subscribe again\"}}");
            return Some(vec![sse("dropped", &why)]);
        }
        let (below, done) = self.frontier();
        if !done && q.announced == below.checked_sub(1) {
            q = sub.ready.wait_timeout(q, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let (below, done) = self.frontier();
        let mut ready: Vec<(Time, String)> = Vec::new();
        let events = std::mem::take(&mut q.events);
        for (t, e) in events {
            if t < below {
                ready.push((t, e));
            } else {
                q.events.push((t, e));
            }
        }
        // Each shard's events are in time order; a stable sort merges them.
        ready.sort_by_key(|(t, _)| *t);
        let changed = !ready.is_empty();
        let mut out: Vec<String> = ready.into_iter().map(|(_, e)| e).collect();
        let closed = if done { self.time() } else { below.checked_sub(1) };
        let quiet = q.announced_at.is_none_or(|t| t.elapsed() >= QUIET_PROGRESS);
        if closed > q.announced && (changed || quiet || done) {
            out.push(sse("progress", &format!("{{\"time\":{}}}", json_time(closed))));
            q.announced = closed;
            q.announced_at = Some(Instant::now());
        }
        if done && q.events.is_empty() {
            out.push(sse("end", &format!("{{\"time\":{}}}", json_time(closed))));
            q.ended = true;
        }
        Some(out)
    }

    /// A subscriber went away.
    pub fn unsubscribe(&self, sub: &Subscriber) {
        lock(&sub.queue).gone = true;
        lock(&self.subscribers).retain(|s| s.live());
    }

    /// Subscribers following an output now.
    pub fn subscribers(&self) -> usize {
        lock(&self.subscribers).iter().filter(|s| s.live()).count()
    }
}

/// A change as a subscriber's event, if it follows the row's key.
fn change_event(sub: &Subscriber, time: Time, row: &Row, diff: isize) -> Option<String> {
    if let Some(ks) = &sub.key {
        if !ks.contains(&row.key()) {
            return None;
        }
    }
    Some(sse("change", &format!("{{\"time\":{time},\"diff\":{diff},\"row\":{}}}", row.row())))
}

/// `{"output", "time", "count", "rows"}`: `rows` encoded, sorted by key.
pub fn snapshot_json(output: Output, time: Option<Time>, count: i64, rows: Vec<Row>) -> String {
    let mut encoded: Vec<(String, String)> = rows.iter().map(|r| (r.key(), r.row())).collect();
    encoded.sort_unstable();
    let mut s = String::with_capacity(64 + encoded.iter().map(|(_, r)| r.len() + 1).sum::<usize>());
    s.push_str(&format!("{{\"output\":\"{output}\",\"time\":{},\"count\":{count},\"rows\":[", json_time(time)));
    for (i, (_, r)) in encoded.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r);
    }
    s.push_str("]}");
    s
}

/// A worker's sink that keeps its shard of the [`Store`].
pub struct StoreSink {
    store: Arc<Store>,
    shard: usize,
}

impl Sink for StoreSink {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        self.apply_owned(time, updates.to_vec());
    }

    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        let store = &*self.store;
        let mut dead: BTreeMap<String, u64> = BTreeMap::new();
        for (row, diff) in &updates {
            if let (Row::DeadLetter(d), true) = (row, *diff > 0) {
                *dead.entry(d.reason.split([':', ' ']).next().unwrap_or("").to_string()).or_default() += *diff as u64;
            }
        }
        if !dead.is_empty() {
            let mut all = lock(&store.dead_letters);
            for (kind, n) in dead {
                *all.entry(kind).or_default() += n;
            }
        }
        let mut shard = lock(&store.shards[self.shard]);
        // Under the shard's lock, so a new subscriber sees this time either pending or here.
        let followers: Vec<Arc<Subscriber>> = lock(&store.subscribers).iter().filter(|s| s.live()).cloned().collect();
        for sub in &followers {
            // A key's retraction before its insertion: a client applying changes one by one
            // never holds two rows of a key.
            let mut mine: Vec<(&Row, isize)> = updates.iter().filter(|(r, _)| r.output() == sub.output).map(|(r, d)| (r, *d)).collect();
            mine.sort_by_key(|(_, d)| *d);
            for (row, diff) in mine {
                if let Some(e) = change_event(sub, time, row, diff) {
                    sub.push(time, e);
                }
            }
        }
        shard.pending.entry(time).or_default().extend(updates);
        store.applied[self.shard].fetch_max(time + 1, Ordering::AcqRel);
    }

    /// (Asked when the run has ended, for the snapshot: every time this shard applied is
    /// complete, so all of it is folded.)
    fn current_rows(&mut self) -> Option<Vec<(Row, isize)>> {
        let store = &*self.store;
        let mut shard = lock(&store.shards[self.shard]);
        shard.fold(&store.outputs, u64::MAX);
        let keyed = store.outputs.iter().enumerate().filter(|(_, o)| !o.append_only());
        Some(keyed.flat_map(|(i, _)| shard.parts[i].rows.values().flatten().cloned().collect::<Vec<_>>()).collect())
    }

    fn advance(&mut self, frontier: Option<Time>) {
        let store = &*self.store;
        store.below[self.shard].fetch_max(frontier.unwrap_or(u64::MAX), Ordering::AcqRel);
        let (below, _) = store.frontier();
        lock(&store.shards[self.shard]).fold(&store.outputs, below);
        if frontier.is_none() {
            for sub in lock(&store.subscribers).iter() {
                sub.ready.notify_one();
            }
        }
    }
}
