//! Kafka topics as an input.
//!
//! Partitions: every partition of every topic, listed in (topic, partition) order, goes to the
//! worker whose global index is its place in the list modulo the number of workers, so each is
//! read by exactly one worker of all processes. Each worker has its own consumer with a manual
//! assignment and polls it with a zero timeout: reading never blocks a worker.
//!
//! Offsets and time: after each batch the runtime tells the source the logical time it was
//! inserted at ([`Source::batch_done`]); the source remembers the next offset of each of its
//! partitions at that time and commits them to the consumer group once every sink has
//! acknowledged the time ([`Source::acknowledged`]). Where the input began is committed too,
//! under the group `<group_id>.start`, before any offset of the main group (commit metadata
//! would be the natural place, but not every broker keeps it: Tansu drops it).
//!
//! Restart: the dataflows keep state in memory, so a restarted run rebuilds it by reading every
//! partition again from where the input began. Every live batch's end offsets were bound to its
//! logical time before the time could complete ([`crate::runtime::reclock`]); the restart reads
//! each partition in the same slices, at the same times ([`Source::replay`]), so it computes
//! exactly the outputs the crashed run computed, and the sinks go on from what they wrote.
//! Records polled for a later time, or past the last binding, wait in their partition's queue
//! (a partition with many waiting is paused). A partition committed by an older run without
//! bindings is read up to its committed offset at time 1, below anything a sink still writes.
//! After a checkpoint, each partition is read from the checkpoint's offset, not from where the
//! input began; that holds when the groups' offsets are gone too (expired while the engine was
//! down): the checkpoint alone says where a partition goes on.
//!
//! Errors: poll errors (broker down, …) are logged and retried by librdkafka; the source just
//! reads nothing meanwhile. A topic that does not exist is an error at start-up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use dataflows::records::Position;
use dataflows::Time;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Batch, Record, Source};
use crate::config::kafka::{KafkaConnection, KafkaInput, Start};
use crate::runtime::reclock::{Bindings, Bound};

const TIMEOUT: Duration = Duration::from_secs(15);
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Records a partition may hold back while replaying before it is paused.
const PARK_MAX: usize = 50_000;

/// One assigned partition.
#[derive(Debug)]
struct Part {
    topic: String,
    partition: i32,
    /// the next offset to hand on, once known
    next: Option<i64>,
    /// the next offset polled (records below it were delivered by the consumer)
    polled: i64,
    /// an earlier run's bindings still to replay: (time, next offset after it)
    bounds: VecDeque<(Time, i64)>,
    /// records polled but not yet handed on (for a later time)
    parked: VecDeque<Parked>,
    paused: bool,
    /// `next` as last reported by [`Source::bounds`]
    bound: Option<i64>,
    /// where the input began, once known
    start: Option<i64>,
    /// `start` is committed to the start group
    start_durable: bool,
}

/// A record polled before its time.
#[derive(Debug)]
struct Parked {
    offset: i64,
    bytes: Vec<u8>,
    key: Option<Vec<u8>>,
}

/// One worker's share of a Kafka input.
/// What this process's Kafka inputs tell the metrics: records read per partition, how long a
/// batch waits from being read to every sink having written its time, and how long the group's
/// commits take.
#[derive(Debug)]
pub struct KafkaStats {
    /// records read per (input, topic, partition)
    read: Mutex<BTreeMap<(String, String, i32), u64>>,
    /// seconds from reading a batch to the acknowledgement of its logical time by every sink
    pub ack_latency: Histogram,
    /// seconds a commit of the group's offsets takes, to the broker's answer
    pub commit_latency: Histogram,
}

impl Default for KafkaStats {
    fn default() -> Self {
        // 1 ms to about 30 s
        KafkaStats {
            read: Mutex::default(),
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            commit_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl KafkaStats {
    /// Records read so far per (input, topic, partition).
    pub fn read(&self) -> Vec<((String, String, i32), u64)> {
        self.read.lock().map(|r| r.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }
}

/// Commits a source's offsets to its group on a thread of its own, synchronously and in order,
/// so that the worker never waits for the broker and each commit is timed to the broker's
/// answer (rust-rdkafka 0.39 does not call back for asynchronous commits: its issue 856). A
/// commit that queued behind a slow one is skipped for the later one, which covers it. Dropping
/// it waits for the last commit.
struct Committer {
    tx: Option<std::sync::mpsc::Sender<TopicPartitionList>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(consumer: BaseConsumer, stats: Arc<KafkaStats>) -> io::Result<Committer> {
        let (tx, rx) = std::sync::mpsc::channel::<TopicPartitionList>();
        let thread = std::thread::Builder::new().name("kafka-commit".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let tpl = rx.try_iter().last().unwrap_or(first);
                let began = Instant::now();
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => stats.commit_latency.observe(began.elapsed().as_secs_f64()),
                    Err(e) => tracing::warn!(error = %e, "committing offsets failed; the next acknowledgement commits them again"),
                }
            }
        })?;
        Ok(Committer { tx: Some(tx), thread: Some(thread) })
    }

    fn commit(&self, tpl: TopicPartitionList) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(tpl);
        }
    }
}

impl Committer {
    /// Waits until every commit sent is done; later ones are not made.
    fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.finish();
    }
}

pub struct KafkaSource {
    consumer: BaseConsumer,
    /// commits the group's offsets
    committer: Committer,
    stats: Arc<KafkaStats>,
    /// the input's name, for the metrics
    input: String,
    /// records handed on per part since the last batch ended
    read: Vec<u64>,
    /// when each logical time's batch was read, until every sink has written it
    read_at: BTreeMap<Time, Instant>,
    /// commits where the input began, under `<group_id>.start`
    starts: BaseConsumer,
    parts: Vec<Part>,
    max: usize,
    offsets_at: BTreeMap<Time, Vec<Option<i64>>>,
    last_record: Instant,
    stop_when_idle: Option<Duration>,
    last_commit: Instant,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl KafkaSource {
    /// Opens worker `index` of `peers`'s share of `input` (named `name`), reporting to `stats`.
    pub fn open(
        conn: &KafkaConnection,
        (name, input): (&str, &KafkaInput),
        index: usize,
        peers: usize,
        bindings: &Bindings,
        stats: &Arc<KafkaStats>,
    ) -> io::Result<Self> {
        let mut config = conn.client_config().map_err(err)?;
        config
            .set("group.id", &input.group_id)
            // offsets are committed by the engine, after the sinks acknowledged them
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // a committed offset that fell out of retention restarts at the oldest record
            .set("auto.offset.reset", "earliest")
            // the worker polls without waiting, so a broker that holds fetches (Tansu holds
            // them for the whole wait) would only add latency
            .set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer = config.create().map_err(|e| err(format!("creating a Kafka consumer: {e}")))?;
        let committer = Committer::start(config.create().map_err(|e| err(format!("creating a Kafka consumer: {e}")))?, stats.clone())?;
        config.set("group.id", format!("{}.start", input.group_id));
        let starts: BaseConsumer = config.create().map_err(|e| err(format!("creating a Kafka consumer: {e}")))?;

        let mut all = Vec::new();
        for topic in &input.topics {
            let md = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| {
                let e = e.to_string();
                err(format!("reading metadata of topic `{topic}` from {}: {e}{}", conn.bootstrap(), conn.unreachable_hint(&e)))
            })?;
            let t = md.topics().iter().find(|t| t.name() == topic);
            let partitions = t.map_or(0, |t| if t.error().is_some() { 0 } else { t.partitions().len() });
            if partitions == 0 {
                return Err(err(format!("topic `{topic}` does not exist on {} (or has no partitions); create it first", conn.bootstrap())));
            }
            all.extend((0..partitions as i32).map(|p| (topic.clone(), p)));
        }
        let mine: Vec<(String, i32)> = all.into_iter().enumerate().filter(|(k, _)| k % peers == index).map(|(_, tp)| tp).collect();

        let mut parts = Vec::new();
        let mut assignment = TopicPartitionList::new();
        if !mine.is_empty() {
            let mut query = TopicPartitionList::new();
            for (t, p) in &mine {
                query.add_partition(t, *p);
            }
            let committed = committed_offsets(&consumer, &query, &input.group_id)?;
            let started = committed_offsets(&starts, &query, &format!("{}.start", input.group_id))?;
            let start = Start::parse(&input.start).map_err(err)?;
            for (topic, partition) in mine {
                let c = committed.get(&(topic.clone(), partition)).copied();
                let s = started.get(&(topic.clone(), partition)).copied();
                tracing::debug!(topic, partition, committed = ?c, started = ?s, "committed offsets");
                let mut bounds = VecDeque::new();
                let checkpointed = bindings.resumes_at(&topic, partition);
                let (from, start_at, durable) = match (c, s, checkpointed) {
                    // ours: read again from where the input began, in the bound slices
                    // (after a checkpoint: from its offset, in the slices bound after it)
                    (_, Some(s), _) => {
                        let from = checkpointed.map_or(s, |o| o.max(s));
                        bounds.extend(bindings.of(&topic, partition).into_iter().filter(|&(_, next)| next > from));
                        match c {
                            // an older run's commit without bindings: one slice, below every live time
                            Some(c) if c > from && bounds.is_empty() && checkpointed.is_none() => bounds.push_back((1, c)),
                            _ => {}
                        }
                        tracing::debug!(topic, partition, from, checkpointed = checkpointed.is_some(), "reading again from");
                        (Offset::Offset(from), Some(s), true)
                    }
                    // The groups' offsets are gone (Kafka expires a group's offsets after
                    // `offsets.retention.minutes`, 7 days by default, when it has no member)
                    // but a checkpoint says where this partition goes on: there, in the slices
                    // bound after it; the input's start is forgotten (a replay begins there).
                    (_, None, Some(from)) => {
                        tracing::warn!(
                            topic,
                            partition,
                            from,
                            group = input.group_id,
                            "the group's offsets are gone (expired?); going on from the checkpoint's offset"
                        );
                        bounds.extend(bindings.of(&topic, partition).into_iter().filter(|&(_, next)| next > from));
                        (Offset::Offset(from), Some(from), false)
                    }
                    // committed by someone else: begin there, nothing to rebuild
                    (Some(c), None, None) => (Offset::Offset(c), Some(c), false),
                    (None, None, None) => {
                        let s = if start == Start::Committed { Start::parse(&input.fallback).map_err(err)? } else { start.clone() };
                        match s {
                            // offset 0, not the reported low watermark (wrong on Tansu when
                            // produce requests were in flight together: see `sinks::kafka`);
                            // below a Kafka's log start, `auto.offset.reset` moves it there
                            Start::Earliest => (Offset::Offset(0), Some(0), false),
                            Start::Timestamp(ts) => {
                                let mut q = TopicPartitionList::new();
                                q.add_partition_offset(&topic, partition, Offset::Offset(ts)).map_err(err)?;
                                let found = consumer.offsets_for_times(q, TIMEOUT).map_err(err)?;
                                match found.find_partition(&topic, partition).map(|e| e.offset()) {
                                    Some(Offset::Offset(o)) => (Offset::Offset(o), Some(o), false),
                                    _ => (Offset::End, None, false),
                                }
                            }
                            // resolved now, so the start is fixed when `open` returns
                            _ => {
                                let (_, high) = consumer.fetch_watermarks(&topic, partition, TIMEOUT).map_err(err)?;
                                (Offset::Offset(high), Some(high), false)
                            }
                        }
                    }
                };
                assignment.add_partition_offset(&topic, partition, from).map_err(err)?;
                let next = match from {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                parts.push(Part {
                    topic,
                    partition,
                    next,
                    polled: next.unwrap_or(0),
                    bounds,
                    parked: VecDeque::new(),
                    paused: false,
                    bound: next,
                    start: start_at,
                    start_durable: durable,
                });
            }
        }
        consumer.assign(&assignment).map_err(|e| err(format!("assigning partitions: {e}")))?;
        tracing::info!(worker = index, partitions = assignment.count(), "Kafka partitions assigned");
        let mut source = KafkaSource {
            consumer,
            committer,
            stats: stats.clone(),
            input: name.to_string(),
            read: vec![0; parts.len()],
            read_at: BTreeMap::new(),
            starts,
            parts,
            max: input.max_records_per_batch,
            offsets_at: BTreeMap::new(),
            last_record: Instant::now(),
            stop_when_idle: input.stop_when_idle.map(|d| d.std()),
            last_commit: Instant::now(),
        };
        source.record_starts()?;
        let slices: usize = source.parts.iter().map(|p| p.bounds.len()).sum();
        if slices > 0 {
            tracing::info!(partitions = source.parts.len(), slices, "rebuilding state: reading the input again at its bound times");
        }
        Ok(source)
    }

    fn list(&self, which: &[usize]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &i in which {
            tpl.add_partition(&self.parts[i].topic, self.parts[i].partition);
        }
        tpl
    }

    fn set_paused(&mut self, i: usize, paused: bool) -> io::Result<()> {
        if self.parts[i].paused != paused {
            let list = self.list(&[i]);
            if paused { self.consumer.pause(&list) } else { self.consumer.resume(&list) }.map_err(err)?;
            self.parts[i].paused = paused;
        }
        Ok(())
    }

    /// Polls one record into its partition's queue: `None` when none was ready, else the
    /// partition it went to (`Some(None)`: none of ours, or delivered before).
    fn poll_one(&mut self) -> io::Result<Option<Option<usize>>> {
        let message = match self.consumer.poll(Duration::ZERO) {
            None => return Ok(None),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka poll error; retrying");
                return Ok(None);
            }
            Some(Ok(m)) => m,
        };
        let Some(i) = self.parts.iter().position(|p| p.partition == message.partition() && p.topic == message.topic()) else {
            return Ok(Some(None));
        };
        let part = &mut self.parts[i];
        let offset = message.offset();
        if offset < part.polled {
            return Ok(Some(None)); // delivered before
        }
        part.polled = offset + 1;
        if part.start.is_none() {
            part.start = Some(offset);
        }
        // A null value (a tombstone) is not a record; it shows as `null` in the dead letters.
        let bytes = message.payload().unwrap_or(b"null").to_vec();
        part.parked.push_back(Parked { offset, bytes, key: message.key().map(<[u8]>::to_vec) });
        let full = part.parked.len() >= PARK_MAX && !part.bounds.is_empty();
        drop(message);
        if full {
            self.set_paused(i, true)?;
        }
        Ok(Some(Some(i)))
    }

    /// Hands on partition `i`'s queued records below `until` (all of them: `None`), at most `max`.
    fn drain(&mut self, i: usize, until: Option<i64>, max: usize, each: &mut dyn FnMut(Record<'_>)) -> usize {
        let part = &mut self.parts[i];
        let mut n = 0;
        while n < max {
            let Some(p) = part.parked.front() else { break };
            if until.is_some_and(|u| p.offset >= u) {
                break;
            }
            let p = part.parked.pop_front().expect("non-empty");
            let position = Position::Kafka { topic: part.topic.clone(), partition: part.partition, offset: p.offset };
            each(Record { position, bytes: &p.bytes, key: p.key.as_deref() });
            part.next = Some(p.offset + 1);
            n += 1;
        }
        self.read[i] += n as u64;
        n
    }

    /// Commits the starts that are known but not yet durable, synchronously: a main-group
    /// commit must never exist without its start, or a restart could not rebuild.
    fn record_starts(&mut self) -> io::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for part in self.parts.iter().filter(|p| !p.start_durable) {
            if let Some(s) = part.start {
                tpl.add_partition_offset(&part.topic, part.partition, Offset::Offset(s)).map_err(err)?;
            }
        }
        if tpl.count() > 0 {
            self.starts.commit(&tpl, CommitMode::Sync).map_err(|e| err(format!("recording where the input starts: {e}")))?;
            for part in self.parts.iter_mut().filter(|p| p.start.is_some()) {
                part.start_durable = true;
            }
        }
        Ok(())
    }

    /// Commits `offsets` (next offset per part) to the group, for parts whose start is durable.
    fn commit(&self, offsets: &[Option<i64>]) {
        let mut tpl = TopicPartitionList::new();
        for (part, next) in self.parts.iter().zip(offsets) {
            if let (Some(next), true) = (next, part.start_durable) {
                let _ = tpl.add_partition_offset(&part.topic, part.partition, Offset::Offset(*next));
            }
        }
        if tpl.count() > 0 {
            self.committer.commit(tpl);
        }
    }
}

/// A group's committed offsets for `query`, by (topic, partition).
fn committed_offsets(
    consumer: &BaseConsumer,
    query: &TopicPartitionList,
    group: &str,
) -> io::Result<std::collections::HashMap<(String, i32), i64>> {
    let committed = consumer
        .committed_offsets(query.clone(), TIMEOUT)
        .map_err(|e| err(format!("reading committed offsets of group `{group}`: {e}")))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

impl Source for KafkaSource {
    fn replay_times(&self) -> Vec<Time> {
        let times: BTreeSet<Time> = self.parts.iter().flat_map(|p| p.bounds.iter().map(|(t, _)| *t)).collect();
        times.into_iter().collect()
    }

    fn replay(&mut self, time: Time, each: &mut dyn FnMut(Record<'_>)) -> io::Result<bool> {
        let due: Vec<usize> = (0..self.parts.len()).filter(|&i| self.parts[i].bounds.front().is_some_and(|(t, _)| *t == time)).collect();
        let mut polls = 0;
        loop {
            let mut all = true;
            for &i in &due {
                // (a partition whose bound of `time` was reached now fronts a later time's bound)
                let Some(&(_, until)) = self.parts[i].bounds.front().filter(|(t, _)| *t == time) else { continue };
                self.drain(i, Some(until), usize::MAX, each);
                let part = &self.parts[i];
                // Reached: every record below the bound was handed on, or the next one is past it
                // (offsets may skip: compaction, transaction markers, retention).
                let reached = part.next.is_some_and(|n| n >= until) || part.parked.front().is_some_and(|p| p.offset >= until);
                if reached {
                    self.parts[i].bounds.pop_front();
                } else {
                    all = false;
                    if part.parked.is_empty() {
                        self.set_paused(i, false)?;
                    }
                }
            }
            if all {
                break;
            }
            if polls >= self.max || self.poll_one()?.is_none() {
                return Ok(false);
            }
            polls += 1;
        }
        if self.parts.iter().all(|p| p.bounds.is_empty()) {
            for i in 0..self.parts.len() {
                self.set_paused(i, false)?;
            }
            tracing::info!("state rebuilt; reading live");
        }
        self.record_starts()?;
        Ok(true)
    }

    fn next_batch(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch> {
        let mut n = 0;
        for i in 0..self.parts.len() {
            n += self.drain(i, None, self.max - n, each);
        }
        while n < self.max {
            match self.poll_one()? {
                None => break,
                Some(Some(i)) => n += self.drain(i, None, self.max - n, each),
                Some(None) => {}
            }
        }
        if n > 0 {
            self.last_record = Instant::now();
            self.record_starts()?;
        }
        let idle_done = self.stop_when_idle.is_some_and(|d| self.last_record.elapsed() >= d);
        Ok(Batch { more: !idle_done, read_any: n > 0 })
    }

    fn bounds(&mut self) -> Vec<Bound> {
        let mut out = Vec::new();
        for part in &mut self.parts {
            if let (Some(next), true) = (part.next, part.next != part.bound) {
                out.push(Bound { topic: part.topic.clone(), partition: part.partition, next });
                part.bound = Some(next);
            }
        }
        out
    }

    fn batch_done(&mut self, time: Time) {
        self.offsets_at.insert(time, self.parts.iter().map(|p| p.next).collect());
        if self.read.iter().any(|n| *n > 0) {
            self.read_at.entry(time).or_insert_with(Instant::now);
            let mut read = self.stats.read.lock().unwrap_or_else(|e| e.into_inner());
            for (part, n) in self.parts.iter().zip(&mut self.read) {
                *read.entry((self.input.clone(), part.topic.clone(), part.partition)).or_default() += std::mem::take(n);
            }
        }
    }

    fn acknowledged(&mut self, frontier: Option<Time>) {
        while let Some(entry) = self.read_at.first_entry().filter(|e| frontier.is_none_or(|f| *e.key() < f)) {
            let read = entry.remove();
            self.stats.ack_latency.observe(read.elapsed().as_secs_f64());
        }
        // Commit at most every 100 ms (and at the end): a commit per logical time would load
        // the group coordinator for nothing.
        if frontier.is_some() && self.last_commit.elapsed() < COMMIT_INTERVAL {
            return;
        }
        self.last_commit = Instant::now();
        let done: Vec<Time> = self.offsets_at.keys().copied().filter(|t| frontier.is_none_or(|f| *t < f)).collect();
        if let Some(last) = done.last() {
            let offsets = self.offsets_at[last].clone();
            self.commit(&offsets);
            for t in done {
                self.offsets_at.remove(&t);
            }
        }
        if frontier.is_none() {
            // the end: the last commit is made before the run goes on to write its outputs
            self.committer.finish();
        }
    }
}

/// Where one partition of a Kafka input stands.
#[derive(Clone, Debug)]
pub struct PartitionOffsets {
    /// the input's name
    pub input: String,
    /// the topic
    pub topic: String,
    /// the partition
    pub partition: i32,
    /// where the input began (committed under `<group_id>.start`)
    pub started: Option<i64>,
    /// the group's committed offset: what every sink has written
    pub committed: Option<i64>,
    /// the partition's end offset
    pub end: i64,
}

impl PartitionOffsets {
    /// Records past the committed offset (all of them with no commit yet).
    pub fn lag(&self) -> i64 {
        (self.end - self.committed.unwrap_or(0)).max(0)
    }
}

/// Every partition of the Kafka `inputs` (name, connection, input), asked of the brokers.
pub fn partition_offsets<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a KafkaConnection, &'a KafkaInput)>,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let mut out = Vec::new();
    for (name, conn, k) in inputs {
        let mut c = conn.client_config().map_err(anyhow::Error::msg)?;
        c.set("group.id", &k.group_id);
        let consumer: BaseConsumer = c.create()?;
        c.set("group.id", format!("{}.start", k.group_id));
        let starts: BaseConsumer = c.create()?;
        for topic in &k.topics {
            let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            let mut q = TopicPartitionList::new();
            for p in 0..partitions {
                q.add_partition(topic, p);
            }
            let committed = committed_offsets(&consumer, &q, &k.group_id)?;
            let started = committed_offsets(&starts, &q, &k.group_id)?;
            for p in 0..partitions {
                let (_, end) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
                let key = (topic.clone(), p);
                out.push(PartitionOffsets {
                    input: name.to_string(),
                    topic: topic.clone(),
                    partition: p,
                    started: started.get(&key).copied(),
                    committed: committed.get(&key).copied(),
                    end,
                });
            }
        }
    }
    Ok(out)
}

/// `diffstream offsets`: per partition of every Kafka input in the config, the committed
/// offset, where the input began, the end offset and the lag.
pub fn print_offsets(path: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path)?;
    println!("{:<10} {:<30} {:>9} {:>12} {:>12} {:>12} {:>10}", "input", "topic", "partition", "started", "committed", "end", "lag");
    let inputs = config.inputs.iter().filter_map(|(name, input)| match input {
        crate::config::InputConfig::Kafka(k) => Some((name.as_str(), &config.kafka, k)),
        _ => None,
    });
    for o in partition_offsets(inputs)? {
        let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
        let lag = o.committed.map_or("-".to_string(), |_| o.lag().to_string());
        println!(
            "{:<10} {:<30} {:>9} {:>12} {:>12} {:>12} {lag:>10}",
            o.input,
            o.topic,
            o.partition,
            show(o.started),
            show(o.committed),
            o.end
        );
    }
    Ok(())
}
