//! The durable state in a Kafka topic too, for clusters whose hosts come and go
//! (`[runtime] state_topic`).
//!
//! The state directory stays the working copy: bindings logs and checkpoint parts are written
//! there as before. Every write is also produced to the state topic (one partition, compacted)
//! and waited for: a binding before its time can complete, a checkpoint part before it counts
//! as written. At start-up each process reads the topic to its end and rebuilds its state
//! directory from it, so a process on a new host, or whose disk is gone, restarts as if its
//! directory had been there. (Each process needs a state directory of its own: the rebuild
//! replaces the directory's bindings and checkpoints.)
//!
//! Records, keyed so that the latest record of a key is the state and a tombstone removes it:
//! - `b/<worker>/<topic>/<partition>/<time>` → the next offset: one line of a bindings log;
//!   compacting a log sends tombstones for the lines it drops;
//! - `c/<time>/<worker>-of-<workers>/<k>` → the k-th chunk (≤ 512 KiB) of a checkpoint part,
//!   then `c/<time>/<worker>-of-<workers>` → `<chunks> <bytes>`, written last: a part whose
//!   manifest is missing, or whose chunks do not add up, is not restored. Pruning a part sends
//!   tombstones, the manifest's first.
//!
//! The end of the topic is found with a marker: the process produces a record of its own and
//! reads until it (high watermarks are not trusted: Tansu reports them wrong).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dataflows::Time;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::reclock::Bound;
use crate::config::kafka::KafkaConnection;

const CHUNK: usize = 512 * 1024;

/// A process's writer of the state topic, shared by its workers and their checkpoint threads.
pub struct StateTopic {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    connection: KafkaConnection,
}

/// Deliveries of one call, counted down as the broker acknowledges them (on the producer's
/// polling thread), which the call waits for.
#[derive(Default)]
struct Pending {
    state: Mutex<Delivered>,
    done: Condvar,
}

#[derive(Default)]
struct Delivered {
    left: usize,
    error: Option<String>,
    last_offset: i64,
}

impl Pending {
    fn update(&self, f: impl FnOnce(&mut Delivered)) {
        let mut d = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d);
        if d.left == 0 {
            self.done.notify_all();
        }
    }
}

struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Pending>;
    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        pending.update(|d| {
            match result {
                Ok(m) => d.last_offset = d.last_offset.max(m.offset()),
                Err((e, _)) => d.error = Some(e.to_string()),
            }
            d.left -= 1;
        });
    }
}

fn err(topic: &str, what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("the state topic `{topic}`: {what}"))
}

impl StateTopic {
    /// Connects, creating the topic (one partition, compacted) when it does not exist.
    pub fn open(connection: &KafkaConnection, topic: &str) -> anyhow::Result<StateTopic> {
        let config = connection.client_config().map_err(anyhow::Error::msg)?;
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(|e| anyhow::anyhow!("Kafka admin client for the state topic: {e}"))?;
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        let results = crate::sinks::kafka::block_on(admin.create_topics(&[new], &opts))
            .map_err(|e| anyhow::anyhow!("creating the state topic `{topic}` on {}: {e}", connection.bootstrap()))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => anyhow::bail!("creating the state topic `{t}` on {}: {e}", connection.bootstrap()),
            }
        }
        let mut config = connection.client_config().map_err(anyhow::Error::msg)?;
        // every record is waited for; none may be lost or reordered
        config.set("enable.idempotence", "true").set("linger.ms", "1").set("message.max.bytes", (2 * CHUNK).to_string());
        let producer = config.create_with_context(Deliveries).map_err(|e| anyhow::anyhow!("creating the state topic's producer: {e}"))?;
        Ok(StateTopic { producer, topic: topic.to_string(), connection: connection.clone() })
    }

    /// Produces `records` (a `None` value is a tombstone) and waits until the broker has them
    /// all. Returns the offset of the last one. A broker that does not answer holds the call
    /// (librdkafka retries until `message.timeout.ms`, then this fails).
    fn put(&self, records: &[(String, Option<&[u8]>)]) -> io::Result<i64> {
        let pending = Arc::new(Pending::default());
        pending.update(|d| d.left = records.len());
        for (i, (key, value)) in records.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(&self.topic, pending.clone()).key(key.as_bytes());
            if let Some(v) = value {
                record = record.payload(*v);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        std::thread::sleep(Duration::from_millis(5));
                        record = back;
                    }
                    Err((e, _)) => {
                        // (what was sent is still counted down by its delivery)
                        pending.update(|d| d.left -= records.len() - i);
                        return Err(err(&self.topic, format!("producing {key}: {e}")));
                    }
                }
            }
        }
        let mut d = pending.state.lock().unwrap_or_else(|p| p.into_inner());
        while d.left > 0 {
            d = pending.done.wait(d).unwrap_or_else(|p| p.into_inner());
        }
        match d.error.take() {
            Some(e) => Err(err(&self.topic, format!("a write failed: {e}"))),
            None => Ok(d.last_offset),
        }
    }

    /// Worker `worker`'s bindings at `time`.
    pub fn bind(&self, worker: usize, time: Time, bounds: &[Bound]) -> io::Result<()> {
        let values: Vec<String> = bounds.iter().map(|b| b.next.to_string()).collect();
        let records: Vec<(String, Option<&[u8]>)> =
            bounds.iter().zip(&values).map(|(b, v)| (binding_key(worker, &b.topic, b.partition, time), Some(v.as_bytes()))).collect();
        self.put(&records).map(drop)
    }

    /// Worker `worker`'s bindings that a compaction of its log dropped.
    pub fn unbind(&self, worker: usize, dropped: &[(Time, String, i32)]) -> io::Result<()> {
        let records: Vec<(String, Option<&[u8]>)> =
            dropped.iter().map(|(t, topic, p)| (binding_key(worker, topic, *p, *t), None)).collect();
        self.put(&records).map(drop)
    }

    /// A checkpoint part, as its file holds it.
    pub fn put_part(&self, time: Time, worker: usize, workers: usize, bytes: &[u8]) -> io::Result<()> {
        let base = part_key(time, worker, workers);
        let chunks: Vec<(String, Option<&[u8]>)> = bytes.chunks(CHUNK).enumerate().map(|(k, c)| (format!("{base}/{k}"), Some(c))).collect();
        self.put(&chunks)?;
        let manifest = format!("{} {}", chunks.len(), bytes.len());
        self.put(&[(base, Some(manifest.as_bytes()))]).map(drop)
    }

    /// Removes a checkpoint part of `len` bytes.
    pub fn remove_part(&self, time: Time, worker: usize, workers: usize, len: u64) -> io::Result<()> {
        let base = part_key(time, worker, workers);
        self.put(&[(base.clone(), None)])?;
        let chunks: Vec<(String, Option<&[u8]>)> = (0..(len as usize).div_ceil(CHUNK)).map(|k| (format!("{base}/{k}"), None)).collect();
        self.put(&chunks).map(drop)
    }

    /// Reads the topic to its end and, when it holds any state, rebuilds `state`'s bindings
    /// logs (every worker's) and checkpoint parts (those of workers `mine` of a run of
    /// `workers`, and every part of other layouts, so that they are refused as before) from it.
    /// The directory's own bindings and checkpoints are replaced. With an empty topic the
    /// directory is left as it is (its state is then in the topic only once written again).
    pub fn restore(&self, state: &Path, workers: usize, mine: &Range<usize>) -> anyhow::Result<()> {
        let latest = self.read_all()?;
        if latest.is_empty() {
            tracing::info!(topic = self.topic, "the state topic is empty: the state directory is the state");
            return Ok(());
        }
        let mut logs: BTreeMap<usize, Vec<(Time, String)>> = BTreeMap::new();
        let mut chunks: BTreeMap<&str, BTreeMap<usize, &[u8]>> = BTreeMap::new();
        let mut manifests: Vec<(Time, usize, usize, usize, usize, &str)> = Vec::new();
        for (key, value) in &latest {
            let f: Vec<&str> = key.split('/').collect();
            let text = std::str::from_utf8(value).unwrap_or("");
            match f[..] {
                ["b", w, topic, p, t] => {
                    if let (Ok(w), Ok(p), Ok(t), Ok(next)) = (w.parse(), p.parse::<i32>(), t.parse::<Time>(), text.parse::<i64>()) {
                        logs.entry(w).or_default().push((t, format!("{t} {topic} {p} {next}\n")));
                    }
                }
                ["c", _, _, k] => {
                    if let (Some((base, _)), Ok(k)) = (key.rsplit_once('/'), k.parse()) {
                        chunks.entry(base).or_default().insert(k, value);
                    }
                }
                ["c", t, layout] => {
                    let parsed = layout.split_once("-of-").and_then(|(w, n)| Some((w.parse().ok()?, n.parse().ok()?)));
                    let sizes = text.split_once(' ').and_then(|(c, b)| Some((c.parse().ok()?, b.parse().ok()?)));
                    if let (Ok(t), Some((w, n)), Some((c, b))) = (t.parse(), parsed, sizes) {
                        manifests.push((t, w, n, c, b, key.as_str()));
                    }
                }
                _ => {}
            }
        }
        let bindings_dir = state.join("bindings");
        let checkpoints_dir = state.join("checkpoints");
        for d in [&bindings_dir, &checkpoints_dir] {
            match std::fs::remove_dir_all(d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => anyhow::bail!("replacing {}: {e}", d.display()),
                _ => {}
            }
        }
        std::fs::create_dir_all(&bindings_dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", bindings_dir.display()))?;
        let lines: usize = logs.values().map(Vec::len).sum();
        for (w, mut log) in logs {
            log.sort();
            let text: String = log.into_iter().map(|(_, l)| l).collect();
            let path = bindings_dir.join(format!("worker-{w}.log"));
            std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        let mut parts = 0;
        for (t, w, n, count, bytes, key) in manifests {
            if n == workers && !mine.contains(&w) {
                continue;
            }
            let Some(have) = chunks.get(key).filter(|c| c.len() == count && (0..count).all(|k| c.contains_key(&k))) else { continue };
            let data: Vec<u8> = have.values().flat_map(|c| c.iter().copied()).collect();
            if data.len() != bytes {
                continue;
            }
            super::checkpoint::write_encoded(state, t, w, n, &data)?;
            parts += 1;
        }
        tracing::info!(topic = self.topic, bindings = lines, checkpoint_parts = parts, dir = %state.display(), "state restored from the state topic");
        Ok(())
    }

    /// The latest value of every key the topic holds now (tombstones removing).
    fn read_all(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let marker = format!("m/{}/{}", std::process::id(), super::now_ms());
        let end = self.put(&[(marker.clone(), Some(b"".as_slice()))])?;
        let mut config = self.connection.client_config().map_err(anyhow::Error::msg)?;
        config.set("group.id", format!("{}.reader", self.topic)).set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer =
            config.create().map_err(|e| anyhow::anyhow!("creating a consumer of the state topic `{}`: {e}", self.topic))?;
        let mut tpl = TopicPartitionList::new();
        // offset 0, moved to the log start if below it: Tansu may answer "beginning" past
        // offset 0 (see `sinks::kafka`)
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(0)).map_err(|e| anyhow::anyhow!("{e}"))?;
        consumer.assign(&tpl).map_err(|e| anyhow::anyhow!("reading the state topic `{}`: {e}", self.topic))?;
        let mut latest = BTreeMap::new();
        let began = std::time::Instant::now();
        let mut at = -1;
        while at < end {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    at = m.offset();
                    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
                    match m.payload() {
                        Some(v) if !key.starts_with("m/") => {
                            latest.insert(key.to_string(), v.to_vec());
                        }
                        _ => {
                            latest.remove(key);
                        }
                    }
                }
                Some(Err(e)) => anyhow::bail!("reading the state topic `{}`: {e}", self.topic),
                None if began.elapsed() > Duration::from_secs(120) => {
                    anyhow::bail!("reading the state topic `{}`: offset {at} of {end} after 120 s", self.topic)
                }
                None => {}
            }
        }
        self.put(&[(marker, None)])?;
        Ok(latest)
    }
}

fn binding_key(worker: usize, topic: &str, partition: i32, time: Time) -> String {
    format!("b/{worker}/{topic}/{partition}/{time}")
}

fn part_key(time: Time, worker: usize, workers: usize) -> String {
    format!("c/{time}/{worker}-of-{workers}")
}
