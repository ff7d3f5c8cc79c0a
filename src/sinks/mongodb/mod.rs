//! MongoDB collections as outputs: each output's current rows, one document per key.
//!
//! A document's `_id` is the row's key (an embedded document such as `{"user_id": 42}`), so
//! the same row always lands on the same document; it holds the row's fields and `_time`, the
//! logical time of its last change. Times (`window_start`, `window_end`, an alert's
//! `timestamp`, in `_id` too) are BSON dates, so range queries, TTL indexes and charts work.
//! For every key a logical time changed, the sink writes one
//! operation: a replace-with-upsert of the new row, or a delete when the key was retracted —
//! a burst of changes to one key within a time is one write. Both are conditional on the
//! stored `_time` being older, so replaying after a crash can never move a document backwards:
//! an upsert that finds a newer document fails with a duplicate key, which the sink takes as
//! "already newer". Dead letters and alerts have deterministic ids, so a replay never
//! duplicates them.
//!
//! Changes are gathered for at most `max_flush_interval` (or until `batch_size` keys changed),
//! so a key changed by several logical times in that span is written once, with its latest row.
//! Writes are unordered bulk writes of at most `batch_size` operations, run by a background
//! thread with the driver's blocking client, never on a worker. A time is acknowledged (and
//! the frontier, hence Kafka offset commits, may pass it) only once all its writes succeeded.
//!
//! Progress: after each bulk the writer records the latest time it wrote whole in the
//! `diffstream_progress` collection (`_id: "worker-<i>"`, `time`, `workers`); a restart reads it
//! back ([`MongoSink::written_through`]) and rewrites only the replayed times after it.
//!
//! Durability: writes are journaled (`j: true`) unless the URI asks otherwise (`journal=false`),
//! since an acknowledged time is never written again; see [`journaled`].
//!
//! Retries and errors: a transient failure (server down, network, not primary, …) is retried
//! with backoff from 100 ms to 10 s, forever, and counted; the time stays unacknowledged
//! meanwhile, and the sink shows as unhealthy with the error (as it does when a write has
//! waited more than [`super::health::STALLED`] for a server that stopped answering). A
//! permanent failure of one document (too large, failed validation) is logged and
//! recorded in the `dead_letters` collection with the row, and does not hold the time.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use dataflows::ops::FastMap;
use dataflows::Time;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{DeleteOneModel, ReplaceOneModel, WriteModel};
use mongodb::{IndexModel, Namespace};

use dataflows::{Output, Row};

use super::health::{Backoff, Health, STALLED};
use super::Sink;
use crate::codec::OutputRow;
use crate::config::MongoOutput;

struct Job {
    times: Vec<Time>,
    models: Vec<WriteModel>,
}

/// Keeps every output in MongoDB.
pub struct MongoSink {
    config: MongoOutput,
    /// the outputs it writes (`[output.mongodb] outputs`, else all)
    outputs: Vec<Output>,
    jobs: Sender<Job>,
    /// times sent and not yet written, with when they were first sent
    pending: Arc<Mutex<BTreeMap<Time, std::time::Instant>>>,
    /// this worker's global index
    worker: usize,
    progress: mongodb::sync::Collection<Document>,
    /// changed keys not yet sent: (output, key) → (time of the change, the row after it and
    /// `true`, or the retracted row and `false`)
    buffer: FastMap<(Output, String), (Time, (Row, bool))>,
    /// times in `buffer`
    buffered: Vec<Time>,
    /// when the oldest buffered change arrived
    since: Option<std::time::Instant>,
    /// health, shared by the process's MongoDB sinks
    pub health: Arc<Health>,
}

/// Where every worker records the latest time it wrote whole.
const PROGRESS: &str = "diffstream_progress";

/// A row's key or whole row (`json`) as a BSON document, its times as BSON dates (what range
/// queries, TTL indexes and charts expect; JSON outputs spell them as RFC 3339 strings).
fn document(json: &str, row: &Row) -> Document {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut doc = mongodb::bson::to_document(&value).unwrap_or_default();
    crate::codec::time_fields(row, |field, ms| {
        if let Some(v) = doc.get_mut(field) {
            *v = Bson::DateTime(mongodb::bson::DateTime::from_millis(ms));
        }
    });
    doc
}

fn is_duplicate_key(code: i32) -> bool {
    code == 11000
}

/// Whether a bulk write's failure is retried (the server, not the documents, is the problem).
fn is_transient(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::BulkWrite(b) => !b.write_concern_errors.is_empty(),
        ErrorKind::Write(WriteFailure::WriteError(we)) => !is_duplicate_key(we.code),
        _ => true,
    }
}

impl MongoSink {
    /// Connects (with the URI from the configured environment variable), creates the indexes
    /// and starts the writer thread; retries and rejections are counted in `health`.
    pub fn open(config: &MongoOutput, outputs: &[Output], worker: usize, workers: usize, health: Arc<Health>) -> anyhow::Result<Self> {
        let uri = std::env::var(&config.uri_env).map_err(|_| {
            anyhow::anyhow!("the MongoDB URI comes from ${}, which is not set; export it (e.g. mongodb://localhost:27017)", config.uri_env)
        })?;
        let client = journaled(&uri)
            .and_then(mongodb::sync::Client::with_options)
            .map_err(|e| anyhow::anyhow!("connecting to MongoDB (URI from ${}): {}", config.uri_env, e.kind))?;
        let db = client.database(&config.database);
        let outputs: Vec<Output> = outputs.iter().copied().filter(|o| config.writes(o.as_str())).collect();
        for &o in &outputs {
            let name = o.as_str();
            let coll = db.collection::<Document>(&config.collection(name));
            for fields in config.indexes_of(name) {
                let mut keys = Document::new();
                for f in &fields {
                    keys.insert(f.clone(), 1);
                }
                // The stored logical time guards every write; it wants an index too.
                coll.create_index(IndexModel::builder().keys(keys).build())
                    .run()
                    .map_err(|e| anyhow::anyhow!("creating index {fields:?} on {}.{}: {e}", config.database, config.collection(name)))?;
            }
        }
        let progress = db.collection::<Document>(PROGRESS);
        let record = progress.clone();
        let (jobs, receive) = channel::<Job>();
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (p, h, dead) =
            (pending.clone(), health.clone(), Namespace::new(&config.database, config.collection(Output::DeadLetters.as_str())));
        let batch = config.batch_size.max(1);
        std::thread::Builder::new().name("mongodb-sink".into()).spawn(move || {
            for job in receive {
                for chunk in job.models.chunks(batch) {
                    write(&client, chunk, &h, worker, &dead);
                }
                if let Some(&last) = job.times.iter().max() {
                    let id = format!("worker-{worker}");
                    let update = doc! { "$set": { "time": last as i64, "workers": workers as i64 } };
                    // Only informs the next restart (an older record means more rewriting): not retried.
                    if let Err(e) = record.update_one(doc! { "_id": id }, update).upsert(true).run() {
                        tracing::warn!(error = %e.kind, "recording MongoDB progress failed");
                    }
                }
                let mut pending = p.lock().expect("pending");
                for t in job.times {
                    pending.remove(&t);
                }
                if pending.is_empty() {
                    h.ok(worker);
                }
            }
        })?;
        Ok(MongoSink {
            config: config.clone(),
            outputs,
            jobs,
            pending,
            worker,
            progress,
            buffer: FastMap::default(),
            buffered: Vec::new(),
            since: None,
            health,
        })
    }

    /// The greatest time every worker of the last run wrote whole, from `diffstream_progress`
    /// (the layout of the latest record decides which workers must be there). `None`: none.
    pub fn written_through(&self) -> anyhow::Result<Option<Time>> {
        let mut latest = std::collections::BTreeMap::new();
        let cursor = self.progress.find(doc! {}).run().map_err(|e| anyhow::anyhow!("reading {PROGRESS}: {}", e.kind))?;
        for d in cursor {
            let d = d.map_err(|e| anyhow::anyhow!("reading {PROGRESS}: {}", e.kind))?;
            let worker = d.get_str("_id").ok().and_then(|id| id.strip_prefix("worker-")?.parse::<usize>().ok());
            if let (Some(w), Ok(t), Ok(n)) = (worker, d.get_i64("time"), d.get_i64("workers")) {
                latest.insert(w, (t as Time, n as usize));
            }
        }
        Ok(super::complete_layout(&latest).and_then(|n| (0..n).map(|w| latest[&w].0).min()))
    }

    /// Sends the buffered changes to the writer: one operation per key.
    fn flush(&mut self) {
        if self.buffered.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut self.buffer);
        let models = self.models(changed);
        let times = std::mem::take(&mut self.buffered);
        self.since = None;
        if self.jobs.send(Job { times, models }).is_err() {
            tracing::error!("the MongoDB writer thread is gone");
        }
    }

    fn due(&self) -> bool {
        self.buffer.len() >= self.config.batch_size.max(1)
            || self.since.is_some_and(|s| s.elapsed() >= self.config.max_flush_interval.std())
    }

    fn models(&self, changed: FastMap<(Output, String), (Time, (Row, bool))>) -> Vec<WriteModel> {
        changed
            .into_iter()
            .map(|((output, key), (time, change))| {
                let t = time as i64;
                let ns = Namespace::new(&self.config.database, self.config.collection(output.as_str()));
                let id = Bson::Document(document(&key, &change.0));
                // Matches the document only while its stored time is older than this one (every
                // document the sink writes has `_time`). A plain conjunction keeps the `_id`
                // index usable on servers that do not plan `$or` well.
                let filter = doc! { "_id": id.clone(), "_time": { "$lt": t } };
                match change {
                    (row, true) => {
                        let mut replacement = doc! { "_id": id };
                        replacement.extend(document(&row.row(), &row));
                        replacement.insert("_time", t);
                        ReplaceOneModel::builder().namespace(ns).filter(filter).replacement(replacement).upsert(true).build().into()
                    }
                    (_, false) => DeleteOneModel::builder().namespace(ns).filter(filter).build().into(),
                }
            })
            .collect()
    }
}

/// The client options of `uri`, with writes journaled unless the URI says otherwise
/// (`journal=false`): the sink acknowledges a time, and the engine commits input offsets past
/// it, once MongoDB acknowledged its writes, so an acknowledgement must survive a crash of the
/// server. MongoDB's own default (`j: false` on a single server) acknowledges writes that a
/// crash within its journal interval loses, and the engine would never write them again.
fn journaled(uri: &str) -> mongodb::error::Result<mongodb::options::ClientOptions> {
    let mut options = mongodb::options::ClientOptions::parse(uri).run()?;
    let concern = options.write_concern.get_or_insert_with(Default::default);
    concern.journal.get_or_insert(true);
    Ok(options)
}

/// Writes one bulk, retrying transient failures until it succeeds.
fn write(client: &mongodb::sync::Client, models: &[WriteModel], health: &Health, worker: usize, dead: &Namespace) {
    let mut backoff = Backoff::default();
    loop {
        let e = match client.bulk_write(models.to_vec()).ordered(false).run() {
            Ok(_) => {
                health.ok(worker);
                return;
            }
            Err(e) if is_transient(&e) => e,
            Err(e) => {
                // The documents, not the server: per-document failures, where a duplicate key
                // means a newer document is there.
                health.ok(worker);
                if let ErrorKind::BulkWrite(b) = &*e.kind {
                    for (i, we) in b.write_errors.iter().filter(|(_, we)| !is_duplicate_key(we.code)) {
                        health.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(code = we.code, message = we.message, "MongoDB rejected a document; it goes to the dead letters");
                        let row = match &models[*i] {
                            WriteModel::ReplaceOne(m) => m.replacement.clone(),
                            _ => Document::new(),
                        };
                        let letter =
                            doc! { "input": "sink:mongodb", "reason": format!("rejected: {}", we.message), "row": row.to_string() };
                        let model: WriteModel =
                            mongodb::options::InsertOneModel::builder().namespace(dead.clone()).document(letter).build().into();
                        let _ = client.bulk_write([model]).run();
                    }
                }
                return;
            }
        };
        health.retries.fetch_add(1, Ordering::Relaxed);
        health.trouble(worker, format!("write failed: {}", e.kind));
        let wait = backoff.failed();
        tracing::debug!(error = %e.kind, retry_in = ?wait, "MongoDB write failed; retrying");
        std::thread::sleep(wait);
    }
}

impl Sink for MongoSink {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        if updates.is_empty() {
            return;
        }
        // Times arrive in order, so a later change of a key replaces an earlier one.
        let mut after: FastMap<(Output, String), (Row, bool)> = FastMap::default();
        for (row, diff) in updates.iter().filter(|(r, _)| self.outputs.contains(&r.output())) {
            match after.entry((row.output(), row.key())) {
                Entry::Occupied(mut e) if *diff > 0 => *e.get_mut() = (row.clone(), true),
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert((row.clone(), *diff > 0));
                }
            }
        }
        for (key, row) in after {
            self.buffer.insert(key, (time, row));
        }
        self.pending.lock().expect("pending").entry(time).or_insert_with(std::time::Instant::now);
        self.buffered.push(time);
        self.since.get_or_insert_with(std::time::Instant::now);
        if self.due() {
            self.flush();
        }
    }

    fn unacknowledged(&mut self) -> Option<Time> {
        if self.due() {
            self.flush();
        }
        let oldest = self.pending.lock().expect("pending").first_key_value().map(|(t, since)| (*t, since.elapsed()));
        if let Some((_, waited)) = oldest.filter(|(_, w)| *w >= STALLED) {
            self.health.trouble(self.worker, format!("writes unacknowledged for {}s (server not answering?)", waited.as_secs()));
        }
        oldest.map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use mongodb::options::Acknowledgment;

    use super::journaled;

    #[test]
    fn writes_are_journaled_unless_the_uri_says_otherwise() {
        let concern = |uri| journaled(uri).unwrap().write_concern.unwrap();
        assert_eq!(concern("mongodb://localhost:27017").journal, Some(true));
        let majority = concern("mongodb://localhost:27017/?w=majority");
        assert_eq!((majority.w, majority.journal), (Some(Acknowledgment::Majority), Some(true)));
        assert_eq!(concern("mongodb://localhost:27017/?journal=false").journal, Some(false));
    }
}
