//! Timely execution: builds the one `timely::Config` from `-w/-n/-p/-h`, starts the workers,
//! and drives each one's epochs.
//!
//! Every worker builds the same dataflow, opens its share of every input, and loops: read one
//! batch from each input that is due, decode it (failures become dead letters with their raw
//! bytes), insert it at the current logical time, advance every input to the next time, and
//! step the dataflow. A worker runs at most `max_inflight` times ahead of what the sinks have
//! applied (backpressure), so memory holds a bounded number of batches. Every worker runs its
//! own sinks for its share of the outputs (see [`crate::sinks`]). When every input is at its
//! end, or on Ctrl-C or `--duration`, the inputs are closed, the frontier runs to the end
//! (every window becomes final), and each output's snapshot file is written by one worker of
//! the first process, from every worker's share of it.

pub mod checkpoint;
pub mod reclock;
pub mod state_topic;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::records::{DeadLetter, Raw};
use dataflows::{Coll, InputName, Output, Row, Time};
use differential_dataflow::input::{Input, InputSession};
use serde::{Deserialize, Serialize};
use timely::dataflow::ProbeHandle;

use crate::codec;
use crate::config::kafka::{KafkaConnection, KafkaOutput};
use crate::config::MongoOutput;
use crate::sinks::health::Health;
use crate::sinks::jsonl::runs::{Merged, SortedStreams};
use crate::sinks::jsonl::{self, JsonlSink, SnapshotRow};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mongodb::MongoSink;
use crate::sinks::{self, Fanout, Route, SharedSink, Sink, Tally, TallySink};
use crate::sources::{InputSpec, Record, Source};

fn now_ms() -> Time {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Time)
}

/// Set by Ctrl-C: sources stop, the run drains and writes its outputs.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Where the timely workers run: timely's `-w`, `-n`, `-p`, `-h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// worker threads per process
    pub workers: usize,
    /// number of processes
    pub processes: usize,
    /// this process's index
    pub process: usize,
    /// `host:port` of every process, in process order (empty: localhost from port 2101)
    pub hosts: Vec<String>,
}

impl Cluster {
    /// Workers in all processes.
    pub fn all_workers(&self) -> usize {
        self.workers * self.processes.max(1)
    }

    /// The global indices of this process's workers.
    pub fn mine(&self) -> std::ops::Range<usize> {
        self.process * self.workers..(self.process + 1) * self.workers
    }

    /// One process with `workers` threads.
    pub fn local(workers: usize) -> Self {
        Cluster { workers, processes: 1, process: 0, hosts: Vec::new() }
    }

    /// The timely configuration; the only place one is built.
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        if self.processes <= 1 {
            return Ok(timely::Config::process(self.workers));
        }
        let addresses = if self.hosts.is_empty() {
            (0..self.processes).map(|i| format!("localhost:{}", 2101 + i)).collect()
        } else {
            self.hosts.clone()
        };
        if addresses.len() < self.processes {
            return Err(format!(
                "the hostfile lists {} hosts but -n asks for {} processes; add a `host:port` line per process",
                addresses.len(),
                self.processes
            ));
        }
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: addresses[..self.processes].to_vec(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// How the first worker shows progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// nothing but errors
    Quiet,
    /// a status line on stderr
    Status,
    /// the demo's live terminal view
    Live,
}

/// Everything a run needs, resolved from config and command line.
#[derive(Clone, Debug)]
pub struct Plan {
    /// SQL views, when the config has any
    pub sql: Option<Arc<SqlPipeline>>,
    /// where each needed input comes from
    pub inputs: BTreeMap<InputName, InputSpec>,
    /// where snapshots (and change files) go
    pub output_dir: Option<PathBuf>,
    /// write change files
    pub changes: bool,
    /// records per input per batch (the sensor watermark advances once per batch)
    pub batch_size: usize,
    /// batches per logical time for inputs that are neither streams nor rate-limited: fewer,
    /// larger logical times mean fewer intermediate changes; results do not depend on it
    pub batches_per_time: u64,
    /// logical times a worker may run ahead of the sinks
    pub max_inflight: u64,
    /// timely's layout
    pub cluster: Cluster,
    /// progress display
    pub display: Display,
    /// how often the display refreshes
    pub display_interval: Duration,
    /// stop after this long
    pub duration: Option<Duration>,
    /// also write every output to Kafka
    pub kafka_output: Option<KafkaOutputPlan>,
    /// also keep every output in MongoDB
    pub mongodb_output: Option<MongoOutput>,
    /// where a streaming run keeps its durable state (the bindings of times to offsets, the
    /// checkpoints)
    pub state_dir: Option<PathBuf>,
    /// a Kafka topic that also keeps that state, and the cluster it is on
    pub state_topic: Option<(KafkaConnection, String)>,
    /// how often a streaming run checkpoints (`None`: never)
    pub checkpoint_interval: Option<Duration>,
    /// a restart ignores checkpoints and reads every input from where it began
    pub replay_on_restart: bool,
    /// every output change also reaches the observer's [`Observer::change_sinks`] on the first
    /// process's workers (the HTTP server's current rows and subscriptions); every process's
    /// plan must say the same
    pub observe_changes: bool,
}

/// The SQL views of a plan: the columns of the inputs they read, every compiled view (in the
/// order they may read each other), and the views written as outputs.
#[derive(Clone, Debug, Default)]
pub struct SqlPipeline {
    /// the SQL inputs
    pub tables: Vec<SqlTable>,
    /// the compiled views
    pub views: Vec<dataflows::sql::View>,
    /// the views written, as outputs
    pub outputs: Vec<Output>,
}

/// A SQL input.
#[derive(Clone, Debug)]
pub struct SqlTable {
    /// its name
    pub name: InputName,
    /// its columns
    pub columns: Vec<dataflows::sql::Column>,
    /// its primary key's columns: an upsert input (none: every record is a row)
    pub key: Vec<usize>,
    /// its event time, if it has one
    pub event_time: Option<EventTime>,
    /// the columns declared `not null`
    pub not_null: Vec<usize>,
    /// fields every record must have that no view reads: checked, not kept
    pub required: Vec<dataflows::sql::Column>,
}

impl SqlPipeline {
    /// Selects `outputs`, and keeps only the views they read, directly or through other views:
    /// a file of several pipelines runs the one selected, not all of them.
    pub fn select(&mut self, outputs: Vec<Output>) {
        let names: Vec<&str> = outputs.iter().map(|o| o.as_str()).collect();
        let needed = dataflows::sql::render::needed_views(&self.views, &names);
        self.views.retain(|v| needed.contains(&v.name));
        self.outputs = outputs;
        self.follow_windows();
    }

    /// Sets each event-time input's lateness rule by the windows of the views over it (those
    /// it has: after [`SqlPipeline::select`], the windows of views not run judge no row).
    pub fn follow_windows(&mut self) {
        let slides = dataflows::sql::render::window_slides(&self.views, &self.shapes());
        for t in &mut self.tables {
            if let Some(e) = &mut t.event_time {
                e.slides = slides.get(t.name.as_str()).cloned().unwrap_or_default();
            }
        }
    }

    /// What the SQL planner knows of each input, by name.
    pub fn shapes(&self) -> BTreeMap<String, dataflows::sql::render::Shape> {
        self.tables.iter().map(|t| (t.name.as_str().to_string(), t.shape())).collect()
    }
}

impl SqlTable {
    /// What the SQL planner knows of its rows.
    pub fn shape(&self) -> dataflows::sql::render::Shape {
        dataflows::sql::render::Shape {
            arity: self.columns.len(),
            event_time: self.event_time.as_ref().map(|e| e.column),
            monotone: self.key.is_empty(),
        }
    }
}

/// A SQL input's event time.
#[derive(Clone, Debug)]
pub struct EventTime {
    /// the timestamp column
    pub column: usize,
    /// how far behind the greatest event time a row may arrive
    pub allowed_lateness_ms: i64,
    /// how far ahead of the clock a row may be dated
    pub max_future_ms: i64,
    /// the slides of the windows over it (its lateness rule: [`dataflows::watermark::final_end`])
    pub slides: Vec<i64>,
}

/// An event-time input's row until its lateness is decided: its rank (source position), input
/// batch and event time, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Timed {
    batch: u64,
    ts: dataflows::records::Millis,
    rank: u64,
    position: dataflows::records::Position,
    raw: Raw,
}

/// The Kafka output of a plan.
#[derive(Clone, Debug)]
pub struct KafkaOutputPlan {
    /// how to reach the cluster
    pub connection: KafkaConnection,
    /// topics and envelope
    pub output: KafkaOutput,
    /// dead-letter topic per source topic
    pub dead_letter_topics: BTreeMap<String, String>,
}

impl Plan {
    /// A plan for running the engine inside another program (benchmarks, tests): no display,
    /// no outputs but counts, default parameters; set the fields that differ.
    pub fn embedded(inputs: BTreeMap<InputName, InputSpec>, workers: usize, batch_size: usize) -> Plan {
        Plan {
            sql: None,
            inputs,
            output_dir: None,
            changes: false,
            batch_size,
            batches_per_time: 1,
            max_inflight: 4,
            cluster: Cluster::local(workers),
            display: Display::Quiet,
            display_interval: Duration::from_secs(3600),
            duration: None,
            kafka_output: None,
            mongodb_output: None,
            state_dir: None,
            state_topic: None,
            checkpoint_interval: None,
            replay_on_restart: false,
            observe_changes: false,
        }
    }

    /// The outputs this plan writes (dead letters last).
    pub fn outputs(&self) -> Vec<Output> {
        let mut out: Vec<Output> = self.sql.iter().flat_map(|s| s.outputs.iter().copied()).collect();
        out.sort();
        out.dedup();
        out.push(Output::DeadLetters);
        out
    }

    /// Whether input `i` is read: an input of the views.
    pub fn needs(&self, i: InputName) -> bool {
        self.sql.as_ref().is_some_and(|s| s.tables.iter().any(|t| t.name == i))
    }

    /// Whether the current rows are kept at all: for a snapshot directory or the live view.
    fn keeps_rows(&self) -> bool {
        self.output_dir.is_some() || self.display == Display::Live
    }

    /// Where sorted runs of snapshot rows may be written: beside the snapshots, or in the
    /// temporary directory when there is no output directory.
    fn spill_dir(&self) -> PathBuf {
        match &self.output_dir {
            Some(dir) => dir.join(".diffstream-spill"),
            None => std::env::temp_dir().join(format!("diffstream-spill-{}", std::process::id())),
        }
    }

    /// Whether every row must reach the first worker as it changes: for change files (sorted
    /// per time across all workers) and the live view.
    fn gathers_changes(&self) -> bool {
        self.changes || self.display == Display::Live
    }
}

/// Process-wide counters, shared by the workers of one process.
#[derive(Debug)]
pub struct Counters {
    /// records read per input (indexed by [`InputName::index`])
    pub records_in: [AtomicU64; InputName::MAX],
    /// records that failed to decode
    pub decode_errors: AtomicU64,
    /// rows and updates per output
    pub tally: Arc<Tally>,
    /// Kafka sinks' retries and trouble, over every worker's sink
    pub kafka: Arc<Health>,
    /// MongoDB sinks' retries, rejections and trouble, over every worker's sink
    pub mongo: Arc<Health>,
    /// Kafka inputs' records per partition, acknowledgement and commit latency
    pub kafka_inputs: Arc<crate::sources::kafka::KafkaStats>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            records_in: std::array::from_fn(|_| AtomicU64::new(0)),
            decode_errors: Default::default(),
            tally: Default::default(),
            kafka: Arc::new(Health::new("kafka")),
            mongo: Arc::new(Health::new("mongodb")),
            kafka_inputs: Default::default(),
        }
    }
}

impl Counters {
    fn input(&self, name: InputName) -> &AtomicU64 {
        &self.records_in[name.index()]
    }
    /// Records read so far by this process, per input.
    pub fn snapshot(&self) -> Vec<u64> {
        self.records_in.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// What a finished run reports (from the first worker of the first process).
#[derive(Debug, Default)]
pub struct Report {
    /// records read by this process, per input (indexed by [`InputName::index`])
    pub records_in: Vec<u64>,
    /// dead letters in total
    pub dead_letters: u64,
    /// rows per output at the end (of every process when a snapshot was kept, else of this one)
    pub rows: Vec<(Output, u64)>,
    /// updates applied by the sinks
    pub updates: u64,
    /// files written
    pub files: Vec<PathBuf>,
    /// wall time
    pub elapsed: Duration,
}

/// The input sessions of one worker.
struct Sessions {
    dead: InputSession<Time, DeadLetter, isize>,
    /// a file's reference: the clock when the run began (`None`: a stream, whose reference is
    /// its logical time, the clock's milliseconds when it was read)
    file_clock_ms: Option<i64>,
    /// the SQL inputs: their columns and sessions
    tables: BTreeMap<InputName, TableSession>,
    /// the logical time the sessions are at
    time: Time,
    /// the source positions of the SQL rows read at each time in flight (not of upsert inputs:
    /// their rows move to their key's worker)
    read: InFlight,
    /// those read since the sessions last flushed, at `time`: moved to `read` at each flush (a
    /// shared map looked up per row cost more than the push)
    read_now: Vec<(u64, dataflows::records::Position)>,
}

/// A SQL input's decoder (its columns) and session, and which of its rows' positions are kept
/// while in flight: those a view's expression that can fail reads as read may fail on
/// (`inputs_of_row_errors`: every row, or only those with a float a SUM cannot take); none of an
/// upsert input (its rows move to their key's worker).
type TableSession = (codec::SqlDecoder, TableInput, Option<dataflows::sql::render::Failing>);

/// A SQL input's session: rows ranked by source position, or with an event time, rows that
/// keep their bytes until their lateness is decided.
enum TableInput {
    Rows(InputSession<Time, (u64, dataflows::sql::SqlRow), isize>),
    Timed { column: usize, max_future_ms: i64, session: InputSession<Time, (Timed, dataflows::sql::SqlRow), isize> },
}

/// A row a view's expression failed on, as a dead letter of the view: the row as the raw
/// bytes, and its source position when `read` has it (the row is an input's row as decoded on
/// this worker), else a hash of the row, so that distinct rows are distinct dead letters.
fn view_error(view: &str, reason: String, row: &dataflows::sql::SqlRow, read: Option<&mut ReadRows>) -> DeadLetter {
    let hash = row_hash(row);
    let text: Vec<String> = row.iter().map(ToString::to_string).collect();
    DeadLetter {
        input: format!("view {view}"),
        position: read.and_then(|r| r.get(hash).cloned()).unwrap_or(dataflows::records::Position::Index(hash)),
        reason,
        raw: format!("({})", text.join(", ")).into_bytes(),
        key: None,
    }
}

/// A hash of a row, taken of every row an input decodes whose position is kept.
fn row_hash(row: &dataflows::sql::SqlRow) -> u64 {
    dataflows::sql::value::hash_values(row.iter())
}

/// The source positions of the rows a worker decoded at one logical time, with the hash of each
/// row: what names a view's row error by its record, while the time is in flight. Reading
/// only appends; the index by hash is built at the first error of the time (most times have
/// none).
#[derive(Default)]
struct ReadRows {
    read: Vec<(u64, dataflows::records::Position)>,
    by_hash: Option<dataflows::ops::FastMap<u64, usize>>,
}

impl ReadRows {
    fn append(&mut self, rows: &mut Vec<(u64, dataflows::records::Position)>) {
        if let Some(index) = &mut self.by_hash {
            for (i, (hash, _)) in rows.iter().enumerate() {
                index.entry(*hash).or_insert(self.read.len() + i);
            }
        }
        self.read.append(rows);
    }

    /// The position of the first row read with this hash.
    fn get(&mut self, hash: u64) -> Option<&dataflows::records::Position> {
        let read = &self.read;
        let index = self.by_hash.get_or_insert_with(|| {
            let mut index = dataflows::ops::FastMap::default();
            for (i, (h, _)) in read.iter().enumerate() {
                index.entry(*h).or_insert(i);
            }
            index
        });
        index.get(&hash).map(|&i| &read[i].1)
    }
}

/// [`ReadRows`] of the times in flight, shared by a worker's sessions (which fill it) and the
/// view errors' dead letters (which read it); a time's entry is dropped once the sinks passed it.
type InFlight = Rc<RefCell<BTreeMap<Time, ReadRows>>>;

impl Sessions {
    /// Decodes one record of input batch `batch` into its input, or into the dead letters with
    /// a copy of its bytes.
    fn insert(&mut self, input: InputName, record: Record<'_>, batch: u64, counters: &Counters) {
        let Record { position, bytes, key } = record;
        // A stream's batch is its logical time, the clock's milliseconds when it was read (the
        // same after a restart): a record dated far ahead of it lies, and must not move the
        // watermark.
        let (clock, when) = match self.file_clock_ms {
            Some(c) => (c, "when the run began"),
            None => (batch as i64, "when it was read"),
        };
        let future = |ts: i64, max_future_ms: i64| {
            if ts > clock.saturating_add(max_future_ms) {
                Err(format!(
                    "future: event time {} is more than {} s ahead of the clock {when} ({})",
                    codec::format_time(ts),
                    max_future_ms / 1000,
                    codec::format_time(clock)
                ))
            } else {
                Ok(())
            }
        };
        let result = match self.tables.get_mut(&input) {
            Some((decoder, session, positions)) => decoder.decode(bytes).and_then(|row| {
                // the source position ranks an upsert input's versions of a key
                let rank = match &position {
                    dataflows::records::Position::Line(n) | dataflows::records::Position::Index(n) => *n,
                    dataflows::records::Position::Kafka { offset, .. } => *offset as u64,
                };
                use dataflows::sql::render::Failing;
                let kept = match positions {
                    None => false,
                    Some(Failing::Any) => true,
                    Some(Failing::LargeFloats(columns)) => columns.iter().any(|&c| dataflows::sql::reduce::beyond_float_sums(&row[c])),
                };
                if kept {
                    self.read_now.push((row_hash(&row), position.clone()));
                }
                match session {
                    TableInput::Rows(s) => s.insert((rank, row)),
                    TableInput::Timed { column, max_future_ms, session } => {
                        let dataflows::sql::Value::Timestamp(ts) = row[*column] else {
                            return Err(format!("missing_field: the event time `{}` is null", decoder.columns()[*column].name));
                        };
                        future(ts, *max_future_ms)?;
                        let raw = Raw { bytes: bytes.to_vec(), key: key.map(<[u8]>::to_vec) };
                        session.insert((Timed { batch, ts, rank, position: position.clone(), raw }, row));
                    }
                }
                Ok(())
            }),
            None => Ok(()),
        };
        if let Err(reason) = result {
            counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            let key = key.map(<[u8]>::to_vec);
            self.dead.insert(DeadLetter { input: input.as_str().to_string(), position, reason, raw: bytes.to_vec(), key });
        }
    }

    /// Inserts a checkpoint's part at its time (the current one).
    fn restore(&mut self, part: &checkpoint::Part) {
        // A SQL input's rows go in as if read at the checkpoint time: an event-time input's
        // through its lateness rule, which accepts them all (no earlier batch), and they carry
        // the watermark on (the newest row is always kept).
        for (name, kept) in &part.tables {
            let Some((_, session, _)) = self.tables.iter_mut().find(|(n, _)| n.as_str() == name).map(|(_, s)| s) else { continue };
            for (rank, row, n) in &kept.rows {
                match session {
                    TableInput::Rows(s) => s.update((*rank, row.clone()), *n),
                    TableInput::Timed { column, session, .. } => {
                        let dataflows::sql::Value::Timestamp(ts) = row[*column] else { continue };
                        let position = dataflows::records::Position::Index(*rank);
                        let timed = Timed { batch: part.time, ts, rank: *rank, position, raw: Raw::default() };
                        session.update((timed, row.clone()), *n);
                    }
                }
            }
        }
    }

    fn advance_to(&mut self, t: Time) {
        self.keep_read();
        self.time = t;
        self.each_session(Some(t));
    }

    /// Sends what the sessions hold on to the dataflow, at the time they are at.
    fn flush(&mut self) {
        self.keep_read();
        self.each_session(None);
    }

    /// Files the positions of the rows read since the last flush under the time they were read
    /// at, before the dataflow can see those rows (and fail on them).
    fn keep_read(&mut self) {
        if !self.read_now.is_empty() {
            self.read.borrow_mut().entry(self.time).or_default().append(&mut self.read_now);
        }
    }

    /// Advances every session to `to` (if given) and flushes it.
    fn each_session(&mut self, to: Option<Time>) {
        macro_rules! adv {
            ($s:expr) => {
                if let Some(t) = to {
                    $s.advance_to(t);
                }
                $s.flush();
            };
        }
        for (_, s, _) in self.tables.values_mut() {
            match s {
                TableInput::Rows(s) => {
                    adv!(s);
                }
                TableInput::Timed { session, .. } => {
                    adv!(session);
                }
            }
        }
        adv!(self.dead);
    }
}

/// How many records a worker decodes before it lets the dataflow read them (see the main loop).
const STEP_EVERY: u64 = 1024;

struct OpenInput {
    name: InputName,
    source: Box<dyn Source>,
    rate: Option<f64>,
    batches: u64,
    done: bool,
}

/// What an [`Observer`] sees each time the first worker looks up from its work.
#[derive(Clone, Copy)]
pub struct Tick<'a> {
    /// the first worker's rows, when it keeps them all (`Display::Live`)
    pub rows: Option<&'a JsonlSink>,
    /// the run's counters
    pub counters: &'a Counters,
    /// each event-time SQL input's watermark as the first worker knows it (the greatest event
    /// time read less its allowed lateness)
    pub input_watermarks: &'a [(InputName, Rc<std::cell::Cell<Option<dataflows::records::Millis>>>)],
    /// the first worker's logical time
    pub time: Time,
    /// the run has ended (the last call)
    pub done: bool,
}

/// Something that watches a run from its first worker (a status line, a live view): the
/// commands attach it; the runtime knows nothing of what it draws. Called often: an observer
/// decides itself when to act.
pub trait Observer: Send {
    /// See [`Tick`].
    fn tick(&mut self, tick: &Tick<'_>);
    /// With [`Plan::observe_changes`], the sinks that see every output's changes of the whole
    /// cluster, sharded by key over the first process's workers: worker `i` of the first
    /// process applies its share to `make(i)`, a complete time at a time, in time order. Asked
    /// once, before the workers start. The sinks hold their times' acknowledgement like any
    /// sink, so they must not wait on anyone.
    fn change_sinks(&self) -> Option<ChangeSinks> {
        None
    }
}

/// Makes the sink of worker `i` of the first process for [`Observer::change_sinks`].
pub type ChangeSinks = Arc<dyn Fn(usize) -> Box<dyn Sink> + Send + Sync>;

/// Runs a plan to its end. Returns the first worker's report in the first process, `None`
/// in other processes.
pub fn run(plan: Plan) -> anyhow::Result<Option<Report>> {
    run_with(plan, Arc::default(), None)
}

/// [`run`], counting into `counters`, which another thread may watch, with `observer` on the
/// first worker.
pub fn run_with(plan: Plan, counters: Arc<Counters>, observer: Option<Box<dyn Observer>>) -> anyhow::Result<Option<Report>> {
    let change_sinks = observer.as_ref().and_then(|o| o.change_sinks()).filter(|_| plan.observe_changes);
    let observer = Arc::new(std::sync::Mutex::new(observer));
    let config = plan.cluster.timely_config().map_err(anyhow::Error::msg)?;
    // A stream's times are bound to its offsets durably, so a restart reads the input again at
    // the same times; the bindings of earlier runs are read once per process.
    let streaming = plan.inputs.values().any(InputSpec::is_stream);
    // With a state topic, the state directory is first rebuilt from it.
    let mirror = match (&plan.state_topic, &plan.state_dir, streaming) {
        (Some((conn, topic)), Some(dir), true) => {
            let t = state_topic::StateTopic::open(conn, topic)?;
            t.restore(dir, plan.cluster.all_workers(), &plan.cluster.mine())?;
            Some(Arc::new(t))
        }
        _ => None,
    };
    let bindings = match (&plan.state_dir, streaming) {
        (Some(d), true) => reclock::load(d)?,
        (None, true) => anyhow::bail!("a streaming run needs a state directory (`[runtime] state_dir`)"),
        (_, false) => reclock::Bindings::default(),
    };
    // After a crash, the checkpoints this process has all its parts of (unless asked to replay
    // from the beginning); the workers agree on the latest one every process has.
    let views: Vec<String> = plan.sql.iter().flat_map(|s| s.views.iter().map(|v| format!("{}: {:?}", v.name, v.plan))).collect();
    let definition = format!("views {views:?}");
    let checkpoint_times = match (&plan.state_dir, streaming && plan.checkpoint_interval.is_some() && !plan.replay_on_restart) {
        (Some(d), true) => Some(checkpoint::local_times(d, plan.cluster.all_workers(), &plan.cluster.mine())?),
        _ => None,
    };
    let (plan, bindings, checkpoint_times, definition) =
        (Arc::new(plan), Arc::new(bindings), Arc::new(checkpoint_times), Arc::new(definition));
    // One clock reading per process, the same for all its workers.
    let began_ms = now_ms() as i64;
    let guards = timely::execute(config, move |worker| {
        // The first worker takes the observer.
        let observer = if worker.index() == 0 { observer.lock().ok().and_then(|mut o| o.take()) } else { None };
        let state = (&*checkpoint_times, definition.as_str(), mirror.clone());
        let observers = (observer, change_sinks.clone());
        run_worker(worker, &plan, &bindings, state, began_ms, &counters, observers).map_err(|e| format!("{e:#}"))
    })
    .map_err(|e| anyhow::anyhow!("starting the timely workers failed: {e}"))?;
    let mut report = None;
    for result in guards.join() {
        match result {
            Ok(Ok(Some(r))) => report = Some(r),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(e) => anyhow::bail!("a worker failed: {e}"),
        }
    }
    Ok(report)
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    plan: &Plan,
    bindings: &reclock::Bindings,
    (checkpoint_times, definition, mirror): (&Option<Vec<Time>>, &str, Option<Arc<state_topic::StateTopic>>),
    run_began_ms: i64,
    counters: &Counters,
    (mut observer, change_sinks): (Option<Box<dyn Observer>>, Option<ChangeSinks>),
) -> anyhow::Result<Option<Report>> {
    let start = Instant::now();
    let index = worker.index();
    let peers = worker.peers();
    // The latest checkpoint every process has its parts of: each worker loads its own, and only
    // the bindings after it are replayed.
    let mut restored: Option<checkpoint::Part> = None;
    let mut bindings = std::borrow::Cow::Borrowed(bindings);
    if let (Some(times), Some(dir)) = (checkpoint_times, plan.state_dir.as_deref()) {
        let everyone = all_gather(worker, times.clone());
        if let Some(&time) = times.iter().rev().find(|t| everyone.iter().all(|o| o.contains(t))) {
            let part = checkpoint::load(dir, time, index, peers, definition)?;
            if index == 0 {
                tracing::info!(time, dir = %dir.display(), "restarting from a checkpoint");
            }
            bindings.to_mut().resume_after(time, &part.offsets);
            restored = Some(part);
        }
    }
    let bindings: &reclock::Bindings = &bindings;
    let first = index == 0;
    let outputs = plan.outputs();
    let streaming = plan.inputs.values().any(InputSpec::is_stream);
    // External sinks go on from their own progress after a restart (`sinks::Resuming`).
    let mut reclock =
        plan.state_dir.as_deref().filter(|_| streaming).map(|d| reclock::Reclock::open(d, index, mirror.clone())).transpose()?;
    let replayed = Rc::new(std::cell::Cell::new(false));
    let resume = |after: Option<Time>| (streaming, after, bindings.last.unwrap_or(0), replayed.clone());
    // Every worker writes its share of every output (routed by key). The current rows are kept
    // only for a snapshot or the live view: by every worker for its share, or — when change
    // files or the live view need every row as it changes — by the first worker for all.
    let gather = plan.gathers_changes();
    // Append-only rows go to sorted runs on disk, except where the live view reads them.
    let spill = plan.spill_dir();
    let append_spill = (plan.display != Display::Live).then(|| spill.join(format!("worker-{index}")));
    // The observer's view of every change, sharded by key over the first process's workers: in
    // one process, beside this worker's other sinks; in a cluster, routed to the first
    // process (every worker builds the same operators; the others' sink is empty).
    let local_workers = plan.cluster.workers.max(1);
    let mut observed: Option<SharedSink> = None;
    let mut beside: Option<SharedSink> = None;
    if plan.observe_changes {
        let mine = change_sinks.as_ref().filter(|_| index < local_workers && plan.cluster.process == 0).map(|make| make(index));
        match (plan.cluster.processes > 1, mine) {
            (false, Some(s)) => beside = Some(Rc::new(RefCell::new(s))),
            (false, None) => {}
            (true, Some(s)) => observed = Some(Rc::new(RefCell::new(s))),
            (true, None) => observed = Some(Rc::new(RefCell::new(Fanout(Vec::new())))),
        }
    }
    // Beside the snapshot share, an observer's sink that keeps the same share's current rows
    // keeps them once: the snapshot takes them from it at the end.
    let rows_beside = beside.as_ref().filter(|_| !gather).is_some_and(|s| s.borrow_mut().current_rows().is_some());
    let jsonl = (plan.keeps_rows() && (first || !gather))
        .then(|| {
            let changes_dir = if gather && plan.changes { plan.output_dir.as_deref() } else { None };
            JsonlSink::new(changes_dir, &outputs, append_spill).map(|s| if rows_beside { s.without_keyed_rows() } else { s })
        })
        .transpose()?
        .map(|s| Rc::new(RefCell::new(s)));
    let mut by_key: Vec<SharedSink> = vec![Rc::new(RefCell::new(TallySink(counters.tally.clone())))];
    if let (Some(s), false) = (&jsonl, gather) {
        by_key.push(s.clone());
    }
    // A checkpoint is written only once every sink has acknowledged its time: after a restart
    // from one, every sink has written at least that far (its own progress may say less, when
    // nothing changed in between), so the restored state is not written again.
    let checkpointed = restored.as_ref().map(|part| part.time);
    if let Some(k) = &plan.kafka_output {
        let mut sink =
            KafkaSink::open(&k.connection, &k.output, &outputs, k.dead_letter_topics.clone(), index, peers, counters.kafka.clone())?;
        // The Kafka sink knows what the crashed run wrote past its progress, key by key: it
        // writes the replayed times one by one (progress records keep naming consistent
        // snapshots), skipping only the times it wrote whole.
        let written = if streaming { sink.resume()?.max(checkpointed) } else { None };
        by_key.push(external(sink, (streaming, written, written.unwrap_or(0), replayed.clone())));
    }
    if let Some(m) = &plan.mongodb_output {
        let sink = MongoSink::open(m, &outputs, index, peers, counters.mongo.clone())?;
        let written = if streaming { sink.written_through()?.max(checkpointed) } else { None };
        by_key.push(external(sink, resume(written)));
    }
    if let Some(s) = &beside {
        by_key.push(s.clone());
    }
    let first_sink: Option<SharedSink> = gather.then(|| match &jsonl {
        Some(s) => s.clone() as SharedSink,
        None => Rc::new(RefCell::new(Fanout(Vec::new()))) as SharedSink,
    });

    // Where every worker's sink keeps its own share of the rows for the snapshot (no change
    // files or live view that need every row as it changes), outputs whose operators keep their
    // current rows are read from those operators when the run is over, and the sink keeps no
    // second copy of them as they change. When no other sink wants their rows either (no
    // Kafka, MongoDB or observer), those rows do not even go to the sinks: they are counted
    // where they are computed.
    let read_current = jsonl.is_some() && !gather && !rows_beside;
    let snapshot_only =
        read_current && plan.kafka_output.is_none() && plan.mongodb_output.is_none() && beside.is_none() && observed.is_none();
    // Checkpoints: a streaming run keeps the views' input rows at the multiples of the interval.
    let checkpoint_every = plan.checkpoint_interval.filter(|_| streaming && plan.state_dir.is_some()).map(|d| d.as_millis() as Time);
    let mine = restored.as_ref();
    let read: InFlight = Rc::default();
    let (mut sessions, probe, kept_rows, input_watermarks, current) = worker.dataflow::<Time, _, _>(|scope| {
        let (dead_in, dead) = scope.new_collection::<DeadLetter, isize>();
        // the outputs whose current rows their operators give at the end, and those whose
        // changes come without rows, to be counted
        let mut current: Vec<(Output, dataflows::output::CurrentRows)> = Vec::new();
        let mut counted_changes: Vec<(Output, Coll<'_, ()>)> = Vec::new();
        // SQL views over their inputs; a row whose expression failed is a dead letter of its view.
        let mut tables = BTreeMap::new();
        let mut view_rows = Vec::new();
        let mut view_errors = Vec::new();
        let mut late_rows = Vec::new();
        let mut input_watermarks: Vec<(InputName, Rc<std::cell::Cell<Option<dataflows::records::Millis>>>)> = Vec::new();
        let mut kept_rows = Vec::new();
        if let Some(sql) = &plan.sql {
            let mut sources = BTreeMap::new();
            let forgettable = dataflows::sql::render::forgettable_inputs(&sql.views, &sql.shapes());
            let named_in_errors = dataflows::sql::render::inputs_of_row_errors(&sql.views);
            for t in &sql.tables {
                let (ranked, watermark, session) = match &t.event_time {
                    None => {
                        let (input, ranked) = scope.new_collection::<(u64, dataflows::sql::SqlRow), isize>();
                        (ranked, None, TableInput::Rows(input))
                    }
                    // Rows on time go on; late ones are dead letters with their bytes.
                    Some(e) => {
                        use timely::dataflow::operators::vec::Broadcast;
                        let (input, timed) = scope.new_collection::<(Timed, dataflows::sql::SqlRow), isize>();
                        let stamp = |(s, _): &(Timed, dataflows::sql::SqlRow)| (s.batch, s.ts);
                        let (timed, maxima) = dataflows::watermark::event_time_max(timed, stamp);
                        let maxima = maxima.broadcast();
                        // What observers show: the greatest event time read less the lateness.
                        let shown = Rc::new(std::cell::Cell::new(None::<dataflows::records::Millis>));
                        let (into, lateness) = (shown.clone(), e.allowed_lateness_ms);
                        use timely::dataflow::operators::Inspect;
                        maxima.clone().inspect(move |(_, m)| into.set(Some(into.get().map_or(m - lateness, |w| w.max(m - lateness)))));
                        input_watermarks.push((t.name, shown));
                        let slides = e.slides.clone();
                        let final_end = move |ts| dataflows::watermark::final_end(&slides, ts);
                        let (on_time, late) =
                            dataflows::watermark::classify(timed, maxima.clone(), stamp, e.allowed_lateness_ms, final_end);
                        let name = t.name.as_str().to_string();
                        late_rows.push(late.map(move |(s, _)| DeadLetter {
                            input: name.clone(),
                            position: s.position,
                            reason: "late".to_string(),
                            raw: s.raw.bytes,
                            key: s.raw.key,
                        }));
                        let session = TableInput::Timed { column: e.column, max_future_ms: e.max_future_ms, session: input };
                        (on_time.map(|(s, row)| (s.rank, row)), Some((maxima, e.allowed_lateness_ms)), session)
                    }
                };
                let positions = named_in_errors.get(t.name.as_str()).filter(|_| t.key.is_empty()).cloned();
                // (a windowed input's rows keep room for the window a GROUP BY sets in place)
                let spare = if t.event_time.as_ref().is_some_and(|e| !e.slides.is_empty()) { 2 } else { 0 };
                tables.insert(
                    t.name,
                    (
                        codec::SqlDecoder::new(t.columns.clone()).with_spare(spare).not_null(&t.not_null).requiring(&t.required),
                        session,
                        positions,
                    ),
                );
                // With checkpoints: the rows the views need, kept at checkpoint times.
                if let Some(every) = checkpoint_every {
                    use dataflows::sql::keep::{keep_rows, Forget};
                    let forget = t.event_time.as_ref().zip(forgettable.get(t.name.as_str())).map(|(e, sizes)| Forget {
                        column: e.column,
                        sizes: sizes.clone(),
                        lateness_ms: e.allowed_lateness_ms,
                    });
                    kept_rows.push((t.name.as_str().to_string(), keep_rows(ranked.clone(), t.name.as_str(), t.key.clone(), forget, every)));
                }
                // An upsert input's row per key is its latest version by source position.
                use dataflows::sql::render::Rows;
                let rows = match t.key.is_empty() {
                    true => Rows::All(ranked.map(|(_, row)| row)),
                    false => Rows::latest(ranked, t.key.clone(), t.name.as_str()),
                };
                let source = dataflows::sql::render::Source { rows, shape: t.shape(), watermark };
                sources.insert(t.name.as_str().to_string(), source);
            }
            // (a snapshot-only run counts the changes of views it can read at the end)
            let counted: std::collections::BTreeSet<String> =
                sql.outputs.iter().filter(|_| snapshot_only).map(|o| o.as_str().to_string()).collect();
            let rendered = dataflows::sql::render::render(scope, &sql.views, &sources, &counted);
            for output in &sql.outputs {
                let Output::View(id) = *output else { continue };
                let r = &rendered[output.as_str()];
                if let Some(read) = r.current.clone() {
                    let read: dataflows::output::CurrentRows = Box::new(move |each| {
                        read(&mut |values, n| each(Row::View(Box::new(dataflows::output::ViewRow::new(id, values))), n))
                    });
                    current.push((*output, read));
                }
                if snapshot_only && r.current.is_some() {
                    match &r.counted {
                        Some(changes) => counted_changes.push((*output, changes.clone())),
                        None => counted_changes.push((*output, r.rows.clone().map(|_| ()))),
                    }
                } else {
                    view_rows.push(r.rows.clone().map(move |values| Row::View(Box::new(dataflows::output::ViewRow::new(id, values)))));
                }
            }
            for r in rendered.values() {
                use differential_dataflow::AsCollection;
                use timely::dataflow::operators::vec::Map;
                let read = read.clone();
                view_errors.push(
                    r.errors
                        .inner
                        .clone()
                        .map(move |((view, reason, row), t, d)| (view_error(&view, reason, &row, read.borrow_mut().get_mut(&t)), t, d))
                        .as_collection(),
                );
            }
        }
        let dead = differential_dataflow::collection::concatenate(scope, std::iter::once(dead).chain(view_errors).chain(late_rows));
        let probe = ProbeHandle::new();
        for (output, changes) in counted_changes {
            sinks::tally_here(changes, output, counters.tally.clone(), &probe);
        }
        let all: Vec<Coll<'_, Row>> = std::iter::once(dead.map(Row::from)).chain(view_rows).collect();
        let all = differential_dataflow::collection::concatenate(scope, all);
        if let Some(s) = first_sink {
            sinks::attach(all.clone(), s, Route::ToFirst, &probe);
        }
        if let Some(s) = observed {
            sinks::attach(all.clone(), s, Route::FirstProcess(local_workers), &probe);
        }
        sinks::attach(all, Rc::new(RefCell::new(Fanout(by_key))), Route::ByKey, &probe);
        // A file has no clock of its own, and a watermark-relative rule would drop every
        // reading after a legitimate gap in historical data: its readings are judged against
        // the clock when the run began (no event can have happened after it).
        let file_clock_ms = (!streaming).then_some(run_began_ms);
        let sessions = Sessions { dead: dead_in, file_clock_ms, tables, time: 0, read: read.clone(), read_now: Vec::new() };
        (sessions, probe, kept_rows, input_watermarks, current)
    });

    // (see `read_current` above)
    let current: Vec<dataflows::output::CurrentRows> = match &jsonl {
        Some(s) if read_current => {
            s.borrow_mut().rows_kept_elsewhere(current.iter().map(|(o, _)| *o));
            current.into_iter().map(|(_, read)| read).collect()
        }
        _ => Vec::new(),
    };

    let mut inputs = Vec::new();
    for (name, spec) in &plan.inputs {
        if plan.needs(*name) {
            inputs.push(OpenInput {
                name: *name,
                source: spec.open(*name, (index, peers, plan.batch_size), bindings, &counters.kafka_inputs)?,
                rate: spec.rate,
                batches: 0,
                done: false,
            });
        }
    }

    let mut tick = |sink: &Option<Rc<RefCell<JsonlSink>>>, epoch: Time, done: bool| {
        if let Some(o) = &mut observer {
            let sink = sink.as_ref().map(|s| s.borrow());
            o.tick(&Tick { rows: sink.as_deref(), counters, input_watermarks: &input_watermarks, time: epoch, done });
        }
    };

    // File inputs: time is the batch number divided by `batches_per_time`, the same on every
    // layout. Streams: one batch per time, at the clock's milliseconds; each time's end offsets
    // are made durable before the time can complete, and a restart first reads the input again
    // at the times the crashed run bound it to.
    let mut epoch: Time = 0;
    let mut batch_no: u64 = 0;
    let batches_per_time = if streaming { 1 } else { plan.batches_per_time.max(1) };
    let mut recent: VecDeque<Time> = VecDeque::new();
    let replay_times: std::collections::BTreeSet<Time> = inputs.iter().flat_map(|i| i.source.replay_times()).collect();
    let mut interrupted = false;
    // This worker's inputs at each checkpoint time, with every partition's offset then.
    let mut checkpoints = checkpoint_every.zip(plan.state_dir.as_deref()).map(|(every, dir)| {
        let mine = plan.cluster.mine();
        checkpoint::Local::new(checkpoint::Writer { every, dir, worker: index, workers: peers, mine, definition, mirror: mirror.clone() })
    });
    if let Some(part) = mine {
        epoch = part.time;
        sessions.advance_to(part.time);
        sessions.restore(part);
        if let Some(c) = &mut checkpoints {
            c.restored(part);
        }
    }
    for &t in &replay_times {
        epoch = t;
        sessions.advance_to(t);
        for input in &mut inputs {
            let name = input.name;
            let mut read = 0u64;
            while !input.source.replay(t, &mut |record| {
                read += 1;
                sessions.insert(name, record, t, counters);
            })? {
                interrupted |= STOP.load(Ordering::Relaxed);
                if interrupted {
                    break;
                }
                sessions.keep_read();
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            sessions.keep_read();
            input.source.batch_done(t);
            tracing::debug!(time = t, input = name.as_str(), read, "read again at a bound time");
            counters.input(name).fetch_add(read, Ordering::Relaxed);
        }
        if interrupted {
            break;
        }
        recent.push_back(t);
        worker.step();
        if recent.len() as u64 > plan.max_inflight.max(1) {
            let oldest = recent.pop_front().expect("non-empty");
            while probe.less_equal(&oldest) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            let frontier = probe.with_frontier(|f| f.first().copied());
            read.borrow_mut().retain(|t, _| frontier.is_some_and(|f| *t >= f));
        }
        tick(&jsonl, epoch, false);
    }
    if streaming {
        replayed.set(!interrupted);
        // Above every bound time and a checkpoint's (which may be later than the last binding).
        epoch = now_ms().max(bindings.last.map_or(0, |l| l + 1)).max(epoch + 1);
        sessions.advance_to(epoch);
        tracing::info!(worker = index, from = epoch, "reading the inputs live");
    }
    loop {
        let stopped = interrupted || STOP.load(Ordering::Relaxed) || plan.duration.is_some_and(|d| start.elapsed() >= d);
        if stopped || inputs.iter().all(|i| i.done) {
            break;
        }
        let now = Instant::now();
        let mut any = false;
        let mut read_any = false;
        let mut wake: Option<Instant> = None;
        for input in inputs.iter_mut().filter(|i| !i.done) {
            if let Some(rate) = input.rate {
                let due = start + Duration::from_secs_f64(input.batches as f64 * plan.batch_size as f64 / rate);
                if due > now {
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                    continue;
                }
            }
            any = true;
            let mut read = 0u64;
            let name = input.name;
            // A stream's batch is its logical time: batch numbers must agree across workers.
            let batch_id = if streaming { epoch } else { batch_no };
            let batch = input.source.next_batch(&mut |record| {
                read += 1;
                sessions.insert(name, record, batch_id, counters);
                // The dataflow reads what was decoded while it is still in the cache: a step
                // every few records, within the batch and its logical time (a batch of 10 000
                // decoded rows had left the cache by the time the dataflow read them).
                if read.is_multiple_of(STEP_EVERY) {
                    sessions.flush();
                    worker.step();
                }
            })?;
            // (the sessions may have passed rows on without a flush: their positions too)
            sessions.keep_read();
            input.source.batch_done(epoch);
            if streaming && read > 0 {
                tracing::debug!(time = epoch, input = name.as_str(), read, "read");
            }
            input.batches += 1;
            input.done = !batch.more;
            read_any |= batch.read_any;
            counters.input(name).fetch_add(read, Ordering::Relaxed);
        }
        if !any {
            let wait = wake.map(|w| w.saturating_duration_since(Instant::now()));
            worker.step_or_park(wait.map(|w| w.min(Duration::from_millis(50))));
            tick(&jsonl, epoch, false);
            continue;
        }
        batch_no += 1;
        if !batch_no.is_multiple_of(batches_per_time) {
            worker.step();
            continue;
        }
        if streaming && !read_any && now_ms() <= epoch {
            // Nothing arrived and the clock has not passed the current time: stay at it, so
            // logical time follows the clock instead of running ahead of it by one per loop.
            worker.step_or_park(Some(Duration::from_millis(1)));
            tick(&jsonl, epoch, false);
            continue;
        }
        recent.push_back(epoch);
        if let Some(r) = &mut reclock {
            let bounds: Vec<reclock::Bound> = inputs.iter_mut().flat_map(|i| i.source.bounds()).collect();
            r.bind(epoch, &bounds)?;
            if let Some(c) = &mut checkpoints {
                c.bound(bounds);
            }
        }
        epoch = if streaming { (epoch + 1).max(now_ms()) } else { epoch + 1 };
        if let Some(c) = &mut checkpoints {
            c.passed(epoch);
        }
        sessions.advance_to(epoch);
        worker.step();
        if streaming && !read_any {
            // Nothing arrived: wait a little, but keep time moving so other workers are not held up.
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        // `max_inflight` counts batches: with several batches per time, fewer times.
        if recent.len() as u64 > (plan.max_inflight / batches_per_time).max(1) {
            let oldest = recent.pop_front().expect("non-empty");
            while probe.less_equal(&oldest) {
                worker.step_or_park(Some(Duration::from_millis(1)));
                tick(&jsonl, epoch, false);
            }
        }
        let frontier = probe.with_frontier(|f| f.first().copied());
        for input in &mut inputs {
            input.source.acknowledged(frontier);
        }
        // (the view errors of a time the sinks passed were all named)
        read.borrow_mut().retain(|t, _| frontier.is_some_and(|f| *t >= f));
        if let Some(c) = &mut checkpoints {
            c.maybe(frontier, &kept_rows)?;
            // The bindings through the latest checkpoint this process has whole are compacted.
            if let (Some(r), Some(done)) = (&mut reclock, c.newly_complete()) {
                r.compact_through(done)?;
            }
        }
        tick(&jsonl, epoch, false);
    }
    // This worker's inputs are final now; other workers may still read, and checkpoints need
    // every worker's part: it goes on writing its own as the probe passes checkpoint times.
    if let Some(c) = &mut checkpoints {
        c.passed(Time::MAX);
    }
    drop(sessions);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(1)));
        if let Some(c) = &mut checkpoints {
            c.maybe(probe.with_frontier(|f| f.first().copied()), &kept_rows)?;
        }
        tick(&jsonl, epoch, false);
    }
    if let Some(c) = &mut checkpoints {
        c.finish()?;
    }
    for input in &mut inputs {
        input.source.acknowledged(None);
    }
    tick(&jsonl, epoch, true);

    // The snapshot: each output's file is written by one worker of the first process (the
    // outputs spread over them by size); every worker's share of an output leaves as one sorted
    // merge to that writer, which writes the file from a merge of what it received.
    let kept = plan.keeps_rows();
    let tally = &counters.tally;
    let (files, rows): (Vec<PathBuf>, Vec<(Output, u64)>) = if kept {
        let writers = if gather { 1 } else { local_workers };
        let writer_of = all_gather(worker, snapshot_writers(&outputs, tally, writers)).swap_remove(0);
        let kept_beside = beside.filter(|_| rows_beside).and_then(|s| s.borrow_mut().current_rows()).unwrap_or_default();
        let share_of = |o: Output| writer_of[o.index()];
        let shares = jsonl.as_ref().map(|s| s.borrow_mut().finish_split(kept_beside, &current, &share_of, writers)).transpose()?;
        let gathered = gather_snapshot(worker, shares, writers, spill.join(format!("gathered-{index}")))?;
        let written = match gathered {
            Some(rows) => {
                let mine: Vec<Output> = outputs.iter().copied().filter(|&o| share_of(o) == index).collect();
                let (files, rows) = jsonl::write_snapshots(plan.output_dir.as_deref(), &mine, rows)?;
                let mut files = files.into_iter();
                rows.into_iter().map(|(o, n)| (o, files.next(), n)).collect()
            }
            None => Vec::new(),
        };
        // the report, in the order of the outputs
        let mut written: Vec<(Output, Option<PathBuf>, u64)> = all_gather(worker, written).into_iter().flatten().collect();
        written.sort_by_key(|(o, ..)| outputs.iter().position(|x| x == o));
        (written.iter().filter_map(|(_, f, _)| f.clone()).collect(), written.iter().map(|(o, _, n)| (*o, *n)).collect())
    } else {
        (Vec::new(), outputs.iter().map(|&o| (o, tally.rows(o).max(0) as u64)).collect())
    };
    if !first {
        return Ok(None);
    }
    let _ = std::fs::remove_dir(&spill); // empty by now, unless another process still cleans up
    Ok(Some(Report {
        records_in: counters.snapshot(),
        dead_letters: rows.iter().find(|(o, _)| *o == Output::DeadLetters).map_or(0, |(_, n)| *n),
        rows,
        updates: tally.updates(),
        files,
        elapsed: start.elapsed(),
    }))
}

/// An external sink, resumed after a crash when `resume` says the run streams:
/// `(streaming, what the sink wrote, the last bound time, set once replay is complete)`.
fn external<S: sinks::Sink + 'static>(sink: S, resume: (bool, Option<Time>, Time, Rc<std::cell::Cell<bool>>)) -> SharedSink {
    match resume {
        (true, after, until, complete) => Rc::new(RefCell::new(sinks::Resuming::new(sink, after, until, complete))),
        (false, ..) => Rc::new(RefCell::new(sink)),
    }
}

/// Every worker's `value`, in worker order, through a small dataflow of its own run to
/// completion (so it works across processes). Every worker must call it at the same point.
fn all_gather<D: timely::ExchangeData + Clone>(worker: &mut timely::worker::Worker, value: D) -> Vec<D> {
    use timely::dataflow::operators::vec::input::Input as _;
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Inspect, Probe};
    let got = Rc::new(RefCell::new(Vec::new()));
    let into = got.clone();
    let index = worker.index();
    let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(usize, D)>();
        let probe = ProbeHandle::new();
        stream.broadcast().inspect(move |x| into.borrow_mut().push(x.clone())).probe_with(&probe);
        (input, probe)
    });
    input.send((index, value));
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    let mut all = got.take();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, d)| d).collect()
}

/// Which worker writes each output's snapshot file (by [`Output::index`]): one of the first
/// `writers` workers (the first process's), the largest outputs first, each to the writer with
/// the fewest rows so far (by this process's tally; every worker must use the first worker's
/// answer, as the processes' tallies differ). The append-only outputs go together, to one
/// writer: their rows were spilled together as they came, and stay in those runs.
fn snapshot_writers(outputs: &[Output], tally: &sinks::Tally, writers: usize) -> Vec<usize> {
    let rows = |o: &Output| tally.rows(*o).max(0) as u64;
    let (append, keyed): (Vec<Output>, Vec<Output>) = outputs.iter().partition(|o| o.append_only());
    let mut groups: Vec<(u64, Vec<Output>)> = keyed.into_iter().map(|o| (rows(&o), vec![o])).collect();
    if !append.is_empty() {
        groups.push((append.iter().map(rows).sum(), append));
    }
    groups.sort_by_key(|(n, g)| (std::cmp::Reverse(*n), g[0].index()));
    let mut load = vec![0u64; writers.max(1)];
    let mut writer_of = vec![0; Output::MAX];
    for (n, group) in groups {
        let w = (0..load.len()).min_by_key(|&w| load[w]).expect("a writer");
        for o in group {
            writer_of[o.index()] = w;
        }
        load[w] += n + 1;
    }
    writer_of
}

/// Sends every worker's `shares` (share `d` in snapshot order, for writer `d`) to their
/// writers, the first `writers` workers, through a dataflow of its own (so it works across
/// processes), in chunks of [`jsonl::RUN_ROWS`], each sent only once the previous one was
/// received, so no worker buffers more than a chunk. A writer writes each sender's rows,
/// already in order, to a run file of that sender's under `spill`, and returns their merge
/// with its own share, which it does not write out again (with one worker, the gather writes
/// nothing); other workers return `None`. Every worker must call it.
fn gather_snapshot(
    worker: &mut timely::worker::Worker,
    shares: Option<Vec<Merged>>,
    writers: usize,
    spill: PathBuf,
) -> anyhow::Result<Option<Merged>> {
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::generic::operator::Operator;
    use timely::dataflow::operators::vec::input::Input as _;
    use timely::dataflow::operators::Probe;
    let index = worker.index();
    let gathered = Rc::new(RefCell::new((SortedStreams::new(spill), None::<std::io::Error>)));
    let into = gathered.clone();
    let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(usize, usize, SnapshotRow)>();
        let probe = ProbeHandle::new();
        stream
            .unary::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Exchange::new(|(writer, _, _): &(usize, usize, SnapshotRow)| *writer as u64),
                "GatherSnapshot",
                move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            let (streams, error) = &mut *into.borrow_mut();
                            for (_, sender, r) in data.drain(..) {
                                if let Err(e) = streams.push(sender, &r) {
                                    error.get_or_insert(e);
                                }
                            }
                        })
                    }
                },
            )
            .probe_with(&probe);
        (input, probe)
    });
    let mut own = None;
    let mut chunk: Time = 0;
    for (writer, mut rows) in shares.into_iter().flatten().enumerate() {
        if writer == index {
            own = Some(rows);
            continue;
        }
        loop {
            let mut sent = 0;
            for r in rows.by_ref().take(jsonl::RUN_ROWS) {
                input.send((writer, index, r?));
                sent += 1;
            }
            if sent == 0 {
                break;
            }
            chunk += 1;
            input.advance_to(chunk);
            while probe.less_than(&chunk) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
    }
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    // The finished dataflow may still hold its end of the cell: take the contents out.
    let (streams, error) = std::mem::replace(&mut *gathered.borrow_mut(), (SortedStreams::new(PathBuf::new()), None));
    if let Some(e) = error {
        return Err(anyhow::anyhow!("gathering the snapshot: {e}"));
    }
    Ok(if index < writers { Some(streams.merged_with(own)?) } else { None })
}
