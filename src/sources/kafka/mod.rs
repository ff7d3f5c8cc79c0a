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
//! Restart: the dataflows keep state in memory, so a restarted run rebuilds it. A partition
//! with a commit of ours is re-read from where the input began up to the committed offset
//! ("replay"), then read on ("live"). While any of a worker's partitions replays, its batches
//! are marked as replay; the runtime inserts them at replay times, whose output external sinks
//! suppress (it was acknowledged before the crash). Records polled past the committed offset
//! during replay wait for the first live batch, and partitions that finished replaying are
//! paused meanwhile, so replay and live records never share a time.
//!
//! Errors: poll errors (broker down, …) are logged and retried by librdkafka; the source just
//! reads nothing meanwhile. A topic that does not exist is an error at start-up.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use dataflows::records::Position;
use dataflows::Time;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Batch, Record, Source};
use crate::config::kafka::{KafkaConnection, KafkaInput, Start};

const TIMEOUT: Duration = Duration::from_secs(15);
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// One assigned partition.
#[derive(Debug)]
struct Part {
    topic: String,
    partition: i32,
    /// the next offset to read, once known
    next: Option<i64>,
    /// replaying until this offset (exclusive)
    replay_until: Option<i64>,
    /// where the input began, once known
    start: Option<i64>,
    /// `start` is committed to the start group
    start_durable: bool,
}

/// A record polled during replay but past its partition's committed offset.
struct Parked {
    position: Position,
    bytes: Vec<u8>,
    key: Option<Vec<u8>>,
}

/// One worker's share of a Kafka input.
pub struct KafkaSource {
    consumer: BaseConsumer,
    /// commits where the input began, under `<group_id>.start`
    starts: BaseConsumer,
    parts: Vec<Part>,
    max: usize,
    replaying: bool,
    parked: Vec<Parked>,
    offsets_at: BTreeMap<Time, Vec<Option<i64>>>,
    last_record: Instant,
    stop_when_idle: Option<Duration>,
    last_commit: Instant,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl KafkaSource {
    /// Opens worker `index` of `peers`'s share of `input`.
    pub fn open(conn: &KafkaConnection, input: &KafkaInput, index: usize, peers: usize) -> io::Result<Self> {
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
        config.set("group.id", format!("{}.start", input.group_id));
        let starts: BaseConsumer = config.create().map_err(|e| err(format!("creating a Kafka consumer: {e}")))?;

        let mut all = Vec::new();
        for topic in &input.topics {
            let md = consumer
                .fetch_metadata(Some(topic), TIMEOUT)
                .map_err(|e| err(format!("reading metadata of topic `{topic}` from {}: {e}", conn.bootstrap())))?;
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
                let (from, replay_until, start_at, durable) = match (c, s) {
                    // ours: rebuild from where the input began up to the committed offset
                    (Some(c), Some(s)) if s < c => (Offset::Offset(s), Some(c), Some(s), true),
                    (Some(c), Some(s)) => (Offset::Offset(c), None, Some(s), true),
                    // committed by someone else: begin there, nothing to rebuild
                    (Some(c), None) => (Offset::Offset(c), None, Some(c), false),
                    (None, _) => {
                        let s = if start == Start::Committed { Start::parse(&input.fallback).map_err(err)? } else { start.clone() };
                        match s {
                            Start::Earliest => {
                                let (low, _) = consumer.fetch_watermarks(&topic, partition, TIMEOUT).map_err(err)?;
                                (Offset::Offset(low), None, Some(low), false)
                            }
                            Start::Timestamp(ts) => {
                                let mut q = TopicPartitionList::new();
                                q.add_partition_offset(&topic, partition, Offset::Offset(ts)).map_err(err)?;
                                let found = consumer.offsets_for_times(q, TIMEOUT).map_err(err)?;
                                match found.find_partition(&topic, partition).map(|e| e.offset()) {
                                    Some(Offset::Offset(o)) => (Offset::Offset(o), None, Some(o), false),
                                    _ => (Offset::End, None, None, false),
                                }
                            }
                            // resolved now, so the start is fixed when `open` returns
                            _ => {
                                let (_, high) = consumer.fetch_watermarks(&topic, partition, TIMEOUT).map_err(err)?;
                                (Offset::Offset(high), None, Some(high), false)
                            }
                        }
                    }
                };
                assignment.add_partition_offset(&topic, partition, from).map_err(err)?;
                let next = match from {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                parts.push(Part { topic, partition, next, replay_until, start: start_at, start_durable: durable });
            }
        }
        consumer.assign(&assignment).map_err(|e| err(format!("assigning partitions: {e}")))?;
        tracing::info!(worker = index, partitions = assignment.count(), "Kafka partitions assigned");
        let mut source = KafkaSource {
            consumer,
            starts,
            parts,
            max: input.max_records_per_batch,
            replaying: false,
            parked: Vec::new(),
            offsets_at: BTreeMap::new(),
            last_record: Instant::now(),
            stop_when_idle: input.stop_when_idle.map(|d| d.std()),
            last_commit: Instant::now(),
        };
        source.record_starts()?;
        source.replaying = source.parts.iter().any(|p| p.replay_until.is_some());
        if source.replaying {
            let done: Vec<usize> = (0..source.parts.len()).filter(|&i| source.parts[i].replay_until.is_none()).collect();
            source.pause(&done)?;
            tracing::info!(partitions = source.parts.len(), "rebuilding state from committed offsets");
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

    fn pause(&self, which: &[usize]) -> io::Result<()> {
        if which.is_empty() {
            return Ok(());
        }
        self.consumer.pause(&self.list(which)).map_err(err)
    }

    /// Marks partition `i` as replayed; when all are, goes live.
    fn replay_done(&mut self, i: usize) -> io::Result<()> {
        if self.parts[i].replay_until.take().is_some() {
            self.pause(&[i])?;
        }
        if self.parts.iter().all(|p| p.replay_until.is_none()) {
            self.replaying = false;
            let all: Vec<usize> = (0..self.parts.len()).collect();
            self.consumer.resume(&self.list(&all)).map_err(err)?;
            tracing::info!("state rebuilt; reading live");
        }
        Ok(())
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
    fn commit(&self, offsets: &[Option<i64>], mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (part, next) in self.parts.iter().zip(offsets) {
            if let (Some(next), true) = (next, part.start_durable) {
                let _ = tpl.add_partition_offset(&part.topic, part.partition, Offset::Offset(*next));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "committing offsets failed; the next acknowledgement commits them again");
            }
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
    fn replaying(&self) -> bool {
        self.replaying
    }

    fn next_batch(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch> {
        let replaying = self.replaying;
        let mut n = 0;
        if !replaying {
            for p in std::mem::take(&mut self.parked) {
                each(Record { position: p.position, bytes: &p.bytes, key: p.key.as_deref() });
                n += 1;
            }
        }
        while n < self.max {
            let message = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka poll error; retrying");
                    break;
                }
                Some(Ok(m)) => m,
            };
            let Some(i) = self.parts.iter().position(|p| p.partition == message.partition() && p.topic == message.topic()) else {
                continue;
            };
            let offset = message.offset();
            let position = Position::Kafka { topic: message.topic().to_string(), partition: message.partition(), offset };
            // A null value (a tombstone) is not a record; it shows as `null` in the dead letters.
            let bytes = message.payload().unwrap_or(b"null");
            let part = &mut self.parts[i];
            part.next = Some(offset + 1);
            if part.start.is_none() {
                part.start = Some(offset);
            }
            if part.replay_until.is_some_and(|c| offset >= c) {
                // Past the committed offset: live, so it waits for the first live batch.
                self.parked.push(Parked { position, bytes: bytes.to_vec(), key: message.key().map(<[u8]>::to_vec) });
                drop(message);
                self.replay_done(i)?;
                continue;
            }
            each(Record { position, bytes, key: message.key() });
            n += 1;
            let replayed = part.replay_until.is_some_and(|c| offset + 1 >= c);
            drop(message);
            if replayed {
                self.replay_done(i)?;
            }
        }
        if n > 0 {
            self.last_record = Instant::now();
            self.record_starts()?;
        }
        let idle_done = self.stop_when_idle.is_some_and(|d| self.last_record.elapsed() >= d) && !self.replaying;
        Ok(Batch { more: !idle_done, replaying, read_any: n > 0 })
    }

    fn batch_done(&mut self, time: Time, replaying: bool) {
        if !replaying {
            self.offsets_at.insert(time, self.parts.iter().map(|p| p.next).collect());
        }
    }

    fn acknowledged(&mut self, frontier: Option<Time>) {
        // Commit at most every 100 ms (and at the end): a commit per logical time would load
        // the group coordinator for nothing.
        if frontier.is_some() && self.last_commit.elapsed() < COMMIT_INTERVAL {
            return;
        }
        self.last_commit = Instant::now();
        let done: Vec<Time> = self.offsets_at.keys().copied().filter(|t| frontier.is_none_or(|f| *t < f)).collect();
        if let Some(last) = done.last() {
            let offsets = self.offsets_at[last].clone();
            let mode = if frontier.is_none() { CommitMode::Sync } else { CommitMode::Async };
            self.commit(&offsets, mode);
            for t in done {
                self.offsets_at.remove(&t);
            }
        }
    }
}

/// `diffstream offsets`: per partition of every Kafka input in the config, the committed
/// offset, where the input began, the end offset and the lag.
pub fn print_offsets(path: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path)?;
    println!("{:<10} {:<30} {:>9} {:>12} {:>12} {:>12} {:>10}", "input", "topic", "partition", "started", "committed", "end", "lag");
    for (name, input) in &config.inputs {
        let crate::config::InputConfig::Kafka(k) = input else { continue };
        let mut c = config.kafka.client_config().map_err(anyhow::Error::msg)?;
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
                let show = |o: Option<&i64>| o.map_or("-".to_string(), i64::to_string);
                let lag = committed.get(&key).map_or("-".to_string(), |c| (end - c).max(0).to_string());
                println!(
                    "{name:<10} {topic:<30} {p:>9} {:>12} {:>12} {end:>12} {lag:>10}",
                    show(started.get(&key)),
                    show(committed.get(&key))
                );
            }
        }
    }
    Ok(())
}
