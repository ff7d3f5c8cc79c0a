//! Kafka topics as outputs.
//!
//! Each output goes to its topic. Upsert envelope (default): key = the row's key as JSON,
//! value = the row after the change, or a tombstone (null value) when the key was retracted,
//! so a compacted topic holds the current state. Change envelope: value =
//! `{"before", "after", "time"}`. Every record carries the logical time in the header
//! `diffstream.time`. Dead letters of Kafka inputs go to the source topic's dead-letter topic
//! (`<topic>.dlq` unless configured) with the original key and bytes and headers
//! `diffstream.source.{topic,partition,offset}` and `diffstream.reason`; other dead letters go
//! to the `dead_letters` output topic as JSON.
//!
//! Every worker has its own producer and writes its share of every output (rows are routed by
//! key, so one key is always written by one worker and its records stay in order). A worker
//! writes a logical time as a whole: it produces every record of its share of the time, and
//! only when all of them are acknowledged does it write a progress record to the progress topic
//! (one partition; key `worker-<global index>`, value `{"time", "worker", "workers", "offsets"}`
//! with the end offset of every partition the worker has written) and release the time. The engine commits input
//! offsets only for times every worker released. A consumer that wants a consistent snapshot at
//! time `t` reads every output partition up to the greatest offsets named by the workers'
//! progress records of times `≤ t`, and applies the records whose `diffstream.time` is `≤ t`.
//!
//! Retries and errors: the producer is idempotent, so librdkafka's own retries never duplicate
//! or reorder. A record that still fails (after `message.timeout.ms`, or at once when the
//! producer refuses it) is sent again by the sink with a backoff capped at 10 s, and counted;
//! nothing is dropped, and its time stays unreleased until it is written. Meanwhile — and while
//! records wait longer than [`super::health::STALLED`] for their acknowledgement, as they do
//! when the broker stops answering — the sink shows as unhealthy, with the reason.
//!
//! Restart: [`KafkaSink::written_through`] reads the progress records back; the runtime skips
//! the times every worker wrote and rewrites the rest of the replayed ones as one
//! ([`crate::sinks::Resuming`]), so no key goes back to an older row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::ops::FastMap;
use dataflows::Time;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use dataflows::records::{DeadLetter, Position};
use dataflows::{Output, Row};

use super::health::{Backoff, Health, STALLED};
use super::Sink;
use crate::codec::OutputRow;
use crate::config::kafka::{Envelope, KafkaConnection, KafkaOutput};

/// A record to (re)send.
#[derive(Clone, Debug)]
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    time: Time,
}

#[derive(Default)]
struct AckState {
    /// records produced and not yet acknowledged, per time
    outstanding: BTreeMap<Time, usize>,
    /// greatest acknowledged offset per (topic, partition), per time
    offsets: BTreeMap<Time, FastMap<(String, i32), i64>>,
    /// records that failed for good, to send again
    failed: Vec<Outgoing>,
    /// why the last one failed
    last_error: Option<String>,
}

/// The producer's context: counts acknowledgements per logical time (on the producer's
/// polling thread).
#[derive(Clone, Default)]
pub struct Acks(Arc<Mutex<AckState>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, time: usize) {
        let time = time as Time;
        let mut state = self.0.lock().expect("ack state");
        match result {
            Ok(m) => {
                if let Some(n) = state.outstanding.get_mut(&time) {
                    *n = n.saturating_sub(1);
                }
                let e = state.offsets.entry(time).or_default().entry((m.topic().to_string(), m.partition())).or_insert(0);
                *e = (*e).max(m.offset() + 1);
            }
            Err((e, m)) => {
                tracing::debug!(error = %e, topic = m.topic(), "delivery failed; sending the record again");
                state.last_error = Some(format!("delivery to `{}` failed: {e}", m.topic()));
                // Keep the record's headers (a dead letter's source and reason) for the resend;
                // `send` adds the time header again.
                let headers = m
                    .headers()
                    .map(|h| {
                        (0..h.count())
                            .map(|i| h.get(i))
                            .filter(|h| h.key != "diffstream.time")
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                state.failed.push(Outgoing {
                    topic: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    time,
                });
            }
        }
    }
}

/// Writes every output to Kafka.
pub struct KafkaSink {
    producer: ThreadedProducer<Acks>,
    acks: Acks,
    config: KafkaOutput,
    /// times produced, awaiting acknowledgement, with when they were produced
    sealed: BTreeMap<Time, std::time::Instant>,
    /// when failed records may be sent again
    backoff: Backoff,
    /// shared by the process's Kafka sinks
    health: Arc<Health>,
    dlq: BTreeMap<String, String>,
    /// this worker's global index: the key of its progress records
    worker: usize,
    /// how many workers write progress records
    workers: usize,
    connection: KafkaConnection,
    /// the output topics
    outputs: Vec<String>,
    /// the end offset of every partition this worker wrote, as acknowledged
    written: BTreeMap<String, BTreeMap<i32, i64>>,
    /// what a crashed run wrote after its last progress record: (topic, identity) → greatest time
    tail: FastMap<(String, Vec<u8>), Time>,
    /// the greatest time in `tail`
    tail_until: Time,
}

/// What identifies a record across runs: a dead letter's source position, else its key.
fn identity(key: Option<&[u8]>, headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let header = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    match (header("diffstream.source.topic"), header("diffstream.source.partition"), header("diffstream.source.offset")) {
        (Some(t), Some(p), Some(o)) => [b"source:".as_slice(), &t, b"/", &p, b"/", &o].concat(),
        _ => key.unwrap_or_default().to_vec(),
    }
}

/// A worker's latest progress record: time, layout, offsets written.
type Progress = (Time, usize, BTreeMap<String, BTreeMap<i32, i64>>);

const TIMEOUT: Duration = Duration::from_secs(15);
/// Records per producer batch at most.
const BATCH_RECORDS: i64 = 10_000;
/// Progress records read from the end of the topic before reading all of it.
const PROGRESS_TAIL: i64 = 10_000;
/// How long the partitions read back must stay quiet past their reported ends.
const READ_QUIET: Duration = Duration::from_millis(300);

/// `(partition, from, high)` of every partition of `topic` that holds records: read from
/// offset 0 up to the reported end `high`.
///
/// Not from the reported start (low watermark): Kafka's is right, but Tansu's memory engine
/// answers with the batch *stored* first, which is not offset 0 when produce requests to a
/// partition were in flight together (one producer per worker), and its end can then be below
/// that start. The consumer reads with `auto.offset.reset=earliest`, so on a Kafka whose
/// retention deleted the start, offset 0 moves to the oldest record it keeps.
fn ranges(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| anyhow::anyhow!("reading metadata of `{topic}`: {e}"))?;
    let partitions = md.topics().first().filter(|t| t.error().is_none()).map_or(0, |t| t.partitions().len() as i32);
    let mut out = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT).map_err(|e| anyhow::anyhow!("reading `{topic}`: {e}"))?;
        // empty: equal ends (Kafka never reports a start above its end; Tansu may)
        if high != low {
            out.push((p, 0, high.max(1)));
        }
    }
    Ok(out)
}

/// One record read back from a topic.
struct ReadBack<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<(String, Vec<u8>)>,
    /// its `diffstream.time` header (0 if none)
    time: Time,
}

/// Calls `each` with every record in the ranges `(topic, partition, from, high)`, read together,
/// and with the records that follow `high` until the partitions fall quiet: a broker may report
/// a partition's end inside its last batch (Tansu reports the first offset of the last batch
/// plus one), and what a crashed run wrote last must not be missed.
fn read_ranges(consumer: &BaseConsumer, ranges: &[(String, i32, i64, i64)], each: &mut dyn FnMut(ReadBack<'_>)) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    let mut ends: FastMap<(String, i32), (i64, i64)> = FastMap::default();
    for (t, p, from, high) in ranges.iter().filter(|r| r.2 < r.3) {
        assignment.add_partition_offset(t, *p, Offset::Offset(*from))?;
        ends.insert((t.clone(), *p), (*from, *high));
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let started = std::time::Instant::now();
    let mut unreached = ends.len();
    let mut last_message = started;
    loop {
        if unreached == 0 && last_message.elapsed() >= READ_QUIET {
            break;
        }
        if unreached > 0 && started.elapsed() > TIMEOUT {
            anyhow::bail!("reading the outputs back timed out; is the broker up?");
        }
        if started.elapsed() > TIMEOUT * 2 {
            break; // written to all along: whatever comes now was written after the crash
        }
        let Some(m) = consumer.poll(Duration::from_millis(50)) else { continue };
        let m = m.map_err(|e| anyhow::anyhow!("reading the outputs back: {e}"))?;
        let part = (m.topic().to_string(), m.partition());
        // (an earlier assignment of this consumer may still deliver)
        let Some(&mut (from, ref mut high)) = ends.get_mut(&part) else { continue };
        if m.offset() < from {
            continue;
        }
        last_message = std::time::Instant::now();
        if *high != i64::MIN && m.offset() + 1 >= *high {
            *high = i64::MIN;
            unreached -= 1;
        }
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| (0..h.count()).map(|i| (h.get(i).key.to_string(), h.get(i).value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let time = headers.iter().find(|(k, _)| k == "diffstream.time").and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
        each(ReadBack { topic: m.topic(), key: m.key(), value: m.payload(), headers, time: time.unwrap_or(0) });
    }
    consumer.unassign()?;
    Ok(())
}

/// The latest progress record of every worker in `ranges` (partition, from, high) of `topic`,
/// reading only the last `tail` records of each partition when given.
fn read_progress(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    tail: Option<i64>,
) -> anyhow::Result<BTreeMap<usize, Progress>> {
    let wanted: Vec<(String, i32, i64, i64)> =
        ranges.iter().map(|&(p, from, high)| (topic.to_string(), p, tail.map_or(from, |n| (high - n).max(from)), high)).collect();
    let mut latest: BTreeMap<usize, Progress> = BTreeMap::new();
    read_ranges(consumer, &wanted, &mut |r| {
        let Some(v) = r.value.and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok()) else { return };
        let field = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        if let (Some(t), Some(w)) = (field("time"), field("worker")) {
            if latest.get(&(w as usize)).is_none_or(|e| t >= e.0) {
                let offsets = serde_json::from_value(v["offsets"].clone()).unwrap_or_default();
                latest.insert(w as usize, (t, field("workers").unwrap_or(1) as usize, offsets));
            }
        }
    })?;
    Ok(latest)
}

/// Runs a future (an rdkafka admin call) to its end on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// Creates the topics that do not exist yet (brokers such as Tansu do not auto-create).
pub fn create_topics(conn: &KafkaConnection, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        conn.client_config().map_err(anyhow::Error::msg)?.create().map_err(|e| anyhow::anyhow!("Kafka admin client: {e}"))?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15))).request_timeout(Some(Duration::from_secs(15)));
    let results = block_on(admin.create_topics(&new, &opts)).map_err(|e| {
        let e = e.to_string();
        anyhow::anyhow!("creating topics on {}: {e}{}", conn.bootstrap(), conn.unreachable_hint(&e))
    })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic `{t}` on {}: {e}", conn.bootstrap()),
        }
    }
    Ok(())
}

impl KafkaSink {
    /// A sink for `outputs`; `dlq` maps source topics to their dead-letter topics.
    pub fn open(
        conn: &KafkaConnection,
        config: &KafkaOutput,
        outputs: &[Output],
        dlq: BTreeMap<String, String>,
        worker: usize,
        workers: usize,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        if config.create_topics {
            let mut topics: Vec<String> = outputs.iter().map(|o| config.topic(o.as_str())).collect();
            topics.extend(dlq.values().cloned());
            topics.sort();
            topics.dedup();
            create_topics(conn, &topics, config.partitions)?;
            // one partition: a reader finds every worker's latest progress in one place
            create_topics(conn, &[config.progress()], 1)?;
        }
        let acks = Acks::default();
        let mut c = conn.client_config().map_err(anyhow::Error::msg)?;
        c.set("enable.idempotence", "true") // librdkafka's retries neither duplicate nor reorder
            .set("linger.ms", "5") // small batches: latency stays low, throughput high
            .set("batch.num.messages", BATCH_RECORDS.to_string()) // `resume` reads back one batch more
            .set("message.timeout.ms", "60000") // surface a stuck record after a minute; the sink resends it
            .set("queue.buffering.max.messages", "1000000"); // a large logical time fits in the queue
        let producer: ThreadedProducer<Acks> =
            c.create_with_context(acks.clone()).map_err(|e| anyhow::anyhow!("creating a Kafka producer: {e}"))?;
        Ok(KafkaSink {
            producer,
            acks,
            connection: conn.clone(),
            config: config.clone(),
            sealed: BTreeMap::new(),
            backoff: Backoff::default(),
            health,
            dlq,
            worker,
            workers,
            outputs: outputs.iter().map(|o| config.topic(o.as_str())).collect(),
            written: BTreeMap::new(),
            tail: FastMap::default(),
            tail_until: 0,
        })
    }

    /// Where a crashed run left this worker's share, read back from the progress topic: the
    /// time up to which it wrote everything (returned: the sink skips those times), and every
    /// record it wrote after that (kept: a replayed record whose key, or dead letter whose
    /// source position, was already written at a later or equal time is not written again, so
    /// no key goes back and no dead letter is written twice). With the same layout that is the
    /// worker's own progress and the topics' ends after its own offsets; after a layout change,
    /// the least time of all workers and the whole topics. `None`: no progress yet.
    pub fn resume(&mut self) -> anyhow::Result<Option<Time>> {
        let mut c = self.connection.client_config().map_err(anyhow::Error::msg)?;
        // Tansu holds a fetch for the whole wait: keep it short, the reads are short.
        c.set("group.id", "diffstream-progress-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            // reads begin at offset 0 (`ranges`): below a Kafka's log start, go to it
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = c.create().map_err(|e| anyhow::anyhow!("creating a Kafka consumer: {e}"))?;
        let topic = self.config.progress();
        let progress = ranges(&consumer, &topic)?;
        let mut found = None;
        for tail in [Some(PROGRESS_TAIL), None] {
            let latest = read_progress(&consumer, &topic, &progress, tail)?;
            let times = latest.iter().map(|(w, p)| (*w, (p.0, p.1))).collect();
            if let Some(workers) = super::complete_layout(&times) {
                found = Some((workers, latest));
                break;
            }
        }
        // No progress (a run killed before its first): all it wrote is the tail.
        let (after, from): (Option<Time>, Option<&BTreeMap<String, BTreeMap<i32, i64>>>) = match &found {
            Some((workers, latest)) if *workers == self.workers => {
                let own = &latest[&self.worker];
                self.written = own.2.clone();
                (Some(own.0), Some(&own.2))
            }
            Some((workers, latest)) => ((0..*workers).map(|w| latest[&w].0).min(), None),
            None => (None, None),
        };
        let mut topics = self.outputs.clone();
        topics.extend(self.dlq.values().cloned());
        topics.sort();
        topics.dedup();
        let mut wanted = Vec::new();
        for t in topics {
            for (p, first, high) in ranges(&consumer, &t)? {
                // From one producer batch earlier: some brokers (Tansu) answer a fetch that
                // starts inside a batch from the next batch on. Earlier records do no harm.
                let start = from.and_then(|f| f.get(&t)).and_then(|ps| ps.get(&p)).map_or(first, |o| (o - BATCH_RECORDS).max(first));
                wanted.push((t.clone(), p, start, high));
            }
        }
        let (tail, until) = (&mut self.tail, &mut self.tail_until);
        read_ranges(&consumer, &wanted, &mut |r| {
            let e = tail.entry((r.topic.to_string(), identity(r.key, &r.headers))).or_insert(r.time);
            *e = (*e).max(r.time);
            *until = (*until).max(r.time);
        })?;
        tracing::info!(worker = self.worker, ?after, written_since = self.tail.len(), "Kafka sink resuming");
        Ok(after)
    }

    fn send(&self, out: Outgoing) {
        let mut headers = OwnedHeaders::new().insert(Header { key: "diffstream.time", value: Some(out.time.to_string().as_bytes()) });
        for (k, v) in &out.headers {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&out.topic, out.time as usize).headers(headers);
        if let Some(k) = &out.key {
            record = record.key(k);
        }
        if let Some(v) = &out.value {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: let the producer thread drain it.
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    tracing::debug!(error = %e, topic = out.topic, "producing failed; will retry");
                    let mut state = self.acks.0.lock().expect("ack state");
                    state.last_error = Some(format!("producing to `{}` failed: {e}", out.topic));
                    state.failed.push(out.clone());
                    return;
                }
            }
        }
    }

    fn records(&self, time: Time, updates: &[(Row, isize)]) -> Vec<Outgoing> {
        // A key's retraction and insertion of one time become one record.
        let mut keyed: FastMap<(Output, String), (Option<&Row>, Option<&Row>)> = FastMap::default();
        let mut out = Vec::new();
        for (row, diff) in updates {
            if let Row::DeadLetter(d) = row {
                if *diff > 0 {
                    out.push(self.dead_letter(time, d));
                }
                continue;
            }
            let e = keyed.entry((row.output(), row.key())).or_default();
            if *diff < 0 {
                e.0 = Some(row);
            } else {
                e.1 = Some(row);
            }
        }
        for ((output, key), (before, after)) in keyed {
            let value = match self.config.envelope {
                Envelope::Upsert => after.map(|r| r.row().into_bytes()),
                Envelope::Change => {
                    let json = |r: Option<&Row>| r.map_or_else(|| "null".to_string(), |r| r.row());
                    Some(format!(r#"{{"before":{},"after":{},"time":{time}}}"#, json(before), json(after)).into_bytes())
                }
            };
            out.push(Outgoing { topic: self.config.topic(output.as_str()), key: Some(key.into_bytes()), value, headers: Vec::new(), time });
        }
        out
    }

    fn dead_letter(&self, time: Time, d: &DeadLetter) -> Outgoing {
        // A record the engine could not use goes back to its topic's dead-letter topic as it
        // came; a view's row error (which names its record too) to the dead letters output.
        let source = match &d.position {
            Position::Kafka { topic, partition, offset } if !d.input.starts_with("view ") => {
                self.dlq.get(topic).map(|dlq| (dlq, topic, partition, offset))
            }
            _ => None,
        };
        match source {
            Some((dlq, topic, partition, offset)) => Outgoing {
                topic: dlq.clone(),
                key: d.key.clone(),
                value: Some(d.raw.clone()),
                headers: vec![
                    ("diffstream.source.topic".into(), topic.as_bytes().to_vec()),
                    ("diffstream.source.partition".into(), partition.to_string().into_bytes()),
                    ("diffstream.source.offset".into(), offset.to_string().into_bytes()),
                    ("diffstream.reason".into(), d.reason.as_bytes().to_vec()),
                ],
                time,
            },
            None => Outgoing {
                topic: self.config.topic(Output::DeadLetters.as_str()),
                key: Some(d.key().into_bytes()),
                value: Some(d.row().into_bytes()),
                headers: Vec::new(),
                time,
            },
        }
    }

    /// Resends failed records (once their backoff is over); releases completed times in order,
    /// writing their progress records; keeps the health up to date.
    fn settle(&mut self) -> Option<Time> {
        let (failed, reason) = {
            let mut state = self.acks.0.lock().expect("ack state");
            match state.failed.is_empty() || !self.backoff.due() {
                true => (Vec::new(), None),
                false => (std::mem::take(&mut state.failed), state.last_error.take()),
            }
        };
        if !failed.is_empty() {
            self.health.retries.fetch_add(failed.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let wait = self.backoff.failed();
            let reason = reason.unwrap_or_else(|| "delivery failed".into());
            tracing::debug!(records = failed.len(), retry_in = ?wait, reason, "resending records");
            self.health.trouble(self.worker, format!("{reason} ({} records resent)", failed.len()));
            for f in failed {
                self.send(f);
            }
        }
        let waiting = self.settle_times();
        let failing = !self.acks.0.lock().expect("ack state").failed.is_empty();
        match waiting {
            Some((_, since)) if since.elapsed() >= STALLED => {
                let n = self.acks.0.lock().expect("ack state").outstanding.values().sum::<usize>();
                self.health
                    .trouble(self.worker, format!("{n} records unacknowledged for {}s (broker not answering?)", since.elapsed().as_secs()));
            }
            // Healthy again once everything resent is acknowledged; healthy all along while
            // nothing failed.
            _ if failing => {}
            None => {
                self.backoff.succeeded();
                self.health.ok(self.worker);
            }
            Some(_) if self.backoff.is_fresh() => self.health.ok(self.worker),
            Some(_) => {}
        }
        waiting.map(|(t, _)| t)
    }

    /// Releases the completed times in order, writing their progress records; returns the
    /// first time still waiting and since when it waits.
    fn settle_times(&mut self) -> Option<(Time, std::time::Instant)> {
        while let Some((&t, &since)) = self.sealed.first_key_value() {
            let mut state = self.acks.0.lock().expect("ack state");
            if state.outstanding.get(&t).is_some_and(|n| *n > 0) {
                return Some((t, since));
            }
            state.outstanding.remove(&t);
            let offsets = state.offsets.remove(&t).unwrap_or_default();
            drop(state);
            self.sealed.remove(&t);
            // Every partition this worker ever wrote, so a restart knows where its unreleased writes begin.
            for ((topic, p), o) in offsets {
                let e = self.written.entry(topic).or_default().entry(p).or_insert(0);
                *e = (*e).max(o);
            }
            let by_topic = &self.written;
            let value = serde_json::json!({ "time": t, "worker": self.worker, "workers": self.workers, "offsets": by_topic }).to_string();
            // The progress record is not waited for: it describes data that is already durable.
            self.send_untracked(&self.config.progress(), format!("worker-{}", self.worker).as_bytes(), value.as_bytes());
        }
        None
    }

    fn send_untracked(&self, topic: &str, key: &[u8], value: &[u8]) {
        let record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, usize::MAX).key(key).payload(value);
        if let Err((e, _)) = self.producer.send(record) {
            tracing::warn!(error = %e, "writing a progress record failed");
        }
    }
}

impl Sink for KafkaSink {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        let mut records = self.records(time, updates);
        if time > self.tail_until {
            self.tail = FastMap::default();
        } else {
            // Replayed: what the crashed run already wrote at this time or later stays.
            records.retain(|r| {
                let id = identity(r.key.as_deref(), &r.headers);
                self.tail.get(&(r.topic.clone(), id)).is_none_or(|&written| written < time)
            });
        }
        self.acks.0.lock().expect("ack state").outstanding.insert(time, records.len());
        for r in records {
            self.send(r);
        }
        self.sealed.insert(time, std::time::Instant::now());
        self.settle();
    }

    fn unacknowledged(&mut self) -> Option<Time> {
        self.settle()
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(30));
    }
}
