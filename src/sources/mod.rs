//! Where records come from. A source is opened once per worker and hands that worker its share
//! of the input, one logical time's batch at a time, as raw bytes with their positions;
//! decoding happens in the runtime so that every source gets the same dead-letter handling.
//!
//! Shares are fixed by the global worker index, so the same input gives the same batches on
//! any number of workers and processes.

pub mod file;
pub mod generator;
pub mod kafka;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use dataflows::records::Position;
use dataflows::{InputName, Time};

use crate::config::kafka::{KafkaConnection, KafkaInput};
use crate::config::InputConfig;
use crate::runtime::reclock::{Bindings, Bound};

/// One record as it arrived. The bytes are lent, not copied: most records are decoded and
/// dropped, and only dead letters and sensor readings keep theirs.
pub struct Record<'a> {
    /// where in its input
    pub position: Position,
    /// the exact bytes (a JSON Lines line without its newline, a Kafka message's value)
    pub bytes: &'a [u8],
    /// a Kafka message's key
    pub key: Option<&'a [u8]>,
}

/// What a source says of the batch it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// false when the input has no more records after these
    pub more: bool,
    /// the batch had records
    pub read_any: bool,
}

/// A worker's view of one input.
pub trait Source {
    /// Calls `each` with this worker's records of the next batch.
    fn next_batch(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch>;
    /// The logical times an earlier run bound some of this worker's records to (see
    /// [`crate::runtime::reclock`]), oldest first: a restart reads them again first, at the
    /// same times, with [`Source::replay`].
    fn replay_times(&self) -> Vec<Time> {
        Vec::new()
    }
    /// Calls `each` with this worker's records that an earlier run bound to `time`; `Ok(true)`
    /// once all of them were read (it may take several calls while a broker delivers).
    fn replay(&mut self, _time: Time, _each: &mut dyn FnMut(Record<'_>)) -> io::Result<bool> {
        Ok(true)
    }
    /// Where every part this worker read from since the last call now stands: the runtime makes
    /// these durable, bound to the current time, before that time can complete.
    fn bounds(&mut self) -> Vec<Bound> {
        Vec::new()
    }
    /// The batch just read went in at logical time `time`.
    fn batch_done(&mut self, _time: Time) {}
    /// Every sink has durably written every time below `frontier` (`None`: all of them).
    fn acknowledged(&mut self, _frontier: Option<Time>) {}
}

/// How to open an input, resolved from the config (plus in-memory data for benchmarks).
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// a JSON Lines file
    File(PathBuf),
    /// JSON Lines on standard input
    Stdin,
    /// the synthetic generator
    Generator(generator::GeneratorSpec),
    /// JSON Lines already in memory
    Memory(Arc<[u8]>),
    /// Kafka topics
    Kafka(Box<(KafkaConnection, KafkaInput)>),
}

/// An input as the runtime drives it: where from, and how fast.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// what to open
    pub source: SourceSpec,
    /// records per second across all workers, or as fast as possible
    pub rate: Option<f64>,
}

impl InputSpec {
    /// From an input's config table.
    pub fn from_config(name: InputName, config: &InputConfig, kafka: &KafkaConnection) -> InputSpec {
        match config {
            InputConfig::File { path, rate, .. } => {
                InputSpec { source: if path.as_os_str() == "-" { SourceSpec::Stdin } else { SourceSpec::File(path.clone()) }, rate: *rate }
            }
            InputConfig::Stdin { .. } => InputSpec { source: SourceSpec::Stdin, rate: None },
            InputConfig::Kafka(input) => InputSpec { source: SourceSpec::Kafka(Box::new((kafka.clone(), input.clone()))), rate: None },
            InputConfig::Generator { count, rate, seed, users, .. } => {
                let kind = match config.generator(name.as_str()) {
                    Some(Ok(kind)) => kind,
                    _ => unreachable!("a config's generator inputs name generators: its validation checked them"),
                };
                InputSpec {
                    source: SourceSpec::Generator(generator::GeneratorSpec { kind, count: *count, seed: *seed, users: *users, sites: 1 }),
                    rate: *rate,
                }
            }
        }
    }

    /// Opens this worker's share of input `name`. `batch` is the number of records per batch
    /// across all workers; `bindings` are an earlier run's, for a stream to read again at the
    /// same times; a Kafka input reports to `kafka_stats`.
    pub fn open(
        &self,
        name: InputName,
        (index, peers, batch): (usize, usize, usize),
        bindings: &Bindings,
        kafka_stats: &Arc<kafka::KafkaStats>,
    ) -> io::Result<Box<dyn Source>> {
        Ok(match &self.source {
            SourceSpec::File(path) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot open input file {}: {e}", path.display())))?;
                Box::new(file::LineSource::new(io::BufReader::with_capacity(1 << 20, f), index, peers, batch))
            }
            // Standard input can be read once: the first worker reads all of it.
            SourceSpec::Stdin if index == 0 => Box::new(file::LineSource::new(io::stdin().lock(), 0, 1, batch)),
            SourceSpec::Stdin => Box::new(file::Empty),
            SourceSpec::Memory(bytes) => Box::new(file::LineSource::new(io::Cursor::new(file::Shared(bytes.clone())), index, peers, batch)),
            SourceSpec::Generator(spec) => Box::new(generator::GeneratorSource::new(spec.clone(), index, peers, batch)),
            SourceSpec::Kafka(k) => Box::new(kafka::KafkaSource::open(&k.0, (name.as_str(), &k.1), index, peers, bindings, kafka_stats)?),
        })
    }

    /// Whether this input streams (its logical times follow the clock, and a restart rebuilds).
    pub fn is_stream(&self) -> bool {
        matches!(self.source, SourceSpec::Kafka(_))
    }
}
