//! Where records come from. A source is opened once per worker and hands that worker its share
//! of the input, one logical time's batch at a time, as raw bytes with their positions;
//! decoding happens in the runtime so that every source gets the same dead-letter handling.
//!
//! Shares are fixed by the global worker index, so the same input gives the same batches on
//! any number of workers and processes.

pub mod file;
pub mod generator;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use dataflows::records::Position;
use dataflows::InputName;

use crate::config::InputConfig;

/// A worker's view of one input.
pub trait Source {
    /// Calls `each` with the position and exact bytes (a JSON Lines line without its newline)
    /// of this worker's records in the next batch; `Ok(false)` when the input has no more
    /// records after these. The bytes are lent, not copied: most records are decoded and
    /// dropped, and only dead letters and sensor readings keep theirs.
    fn next_batch(&mut self, each: &mut dyn FnMut(Position, &[u8])) -> io::Result<bool>;
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
    pub fn from_config(name: InputName, config: &InputConfig) -> InputSpec {
        match config {
            InputConfig::File { path, rate } => InputSpec {
                source: if path.as_os_str() == "-" { SourceSpec::Stdin } else { SourceSpec::File(path.clone()) },
                rate: *rate,
            },
            InputConfig::Stdin {} => InputSpec { source: SourceSpec::Stdin, rate: None },
            InputConfig::Generator { count, rate, seed, users } => InputSpec {
                source: SourceSpec::Generator(generator::GeneratorSpec {
                    kind: name,
                    count: *count,
                    seed: *seed,
                    users: *users,
                }),
                rate: *rate,
            },
        }
    }

    /// Opens this worker's share. `batch` is the number of records per batch across all workers.
    pub fn open(&self, index: usize, peers: usize, batch: usize) -> io::Result<Box<dyn Source>> {
        Ok(match &self.source {
            SourceSpec::File(path) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot open input file {}: {e}", path.display())))?;
                Box::new(file::LineSource::new(io::BufReader::with_capacity(1 << 20, f), index, peers, batch))
            }
            // Standard input can be read once: the first worker reads all of it.
            SourceSpec::Stdin if index == 0 => Box::new(file::LineSource::new(io::stdin().lock(), 0, 1, batch)),
            SourceSpec::Stdin => Box::new(file::Empty),
            SourceSpec::Memory(bytes) => {
                Box::new(file::LineSource::new(io::Cursor::new(file::Shared(bytes.clone())), index, peers, batch))
            }
            SourceSpec::Generator(spec) => Box::new(generator::GeneratorSource::new(spec.clone(), index, peers, batch)),
        })
    }
}
