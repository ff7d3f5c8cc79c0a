//! JSON Lines files: the current state of every output (the snapshot), written to
//! `DIR/<output>.jsonl` when the run ends, one row per key sorted by key; and optionally every
//! update as it is applied, `{"time", "diff", "row"}` per line, to `DIR/<output>.changes.jsonl`,
//! sorted within each time (so the files are the same on any number of workers) and flushed at
//! the end of each logical time so that `tail -f` shows the outputs changing.
//!
//! Every worker keeps the current rows of its share of the outputs as typed rows ([`JsonlSink`]
//! routed by key); when the run ends the shares are encoded once and gathered on the first
//! worker, which sorts and writes the files ([`write_snapshots`]). Change files and the demo's
//! live view need every row in one place, so when they are asked for, one sink on the first
//! worker receives everything instead.
//!
//! Errors: a write failure of a change file is kept and reported by [`JsonlSink::finish`];
//! updates keep being applied meanwhile, so the final snapshot is still complete.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::ops::HashedMap;
use dataflows::{Output, Row, Time};
use serde::{Deserialize, Serialize};

use super::Sink;
use crate::codec::OutputRow;

/// One row of a snapshot, encoded: output, key and row as JSON, multiplicity (1 in a
/// consistent output). What the workers send to the first one at the end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// the output
    pub output: Output,
    /// the row's key, a JSON object
    pub key: String,
    /// the row, a JSON object
    pub row: String,
    /// how many times the row is present
    pub count: isize,
}

/// Current rows of a worker's share of the outputs, plus optional change files.
pub struct JsonlSink {
    /// current rows by the hash of their key (nearly always one row per hash)
    state: HashedMap<Vec<(Row, isize)>>,
    changes: Vec<(Output, BufWriter<File>)>,
    error: Option<io::Error>,
}

impl JsonlSink {
    /// A sink that keeps the current rows; with `changes_dir`, it also writes the change files
    /// of `outputs` there (only the sink that receives every row should).
    pub fn new(changes_dir: Option<&Path>, outputs: &[Output]) -> io::Result<Self> {
        let mut changes = Vec::new();
        if let Some(dir) = changes_dir {
            create_dir(dir)?;
            for &o in outputs {
                let path = dir.join(format!("{o}.changes.jsonl"));
                let f = File::create(&path).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
                changes.push((o, BufWriter::new(f)));
            }
        }
        Ok(JsonlSink { state: HashedMap::default(), changes, error: None })
    }

    /// Current `(key, row, multiplicity)` of `output`, encoded, sorted by key.
    pub fn rows(&self, output: Output) -> Vec<(String, String, isize)> {
        let mut rows: Vec<(String, String, isize)> = self.rows_of(output).map(|(r, n)| (r.key(), r.row(), *n)).collect();
        rows.sort_unstable();
        rows
    }

    /// Number of rows `output` has now in this sink.
    pub fn len(&self, output: Output) -> usize {
        self.rows_of(output).count()
    }

    fn rows_of(&self, output: Output) -> impl Iterator<Item = &(Row, isize)> {
        self.state.values().flatten().filter(move |(r, _)| r.output() == output)
    }

    /// Hands over the current rows, encoded, leaving the sink empty; reports any write error
    /// of the change files.
    pub fn finish(&mut self) -> io::Result<Vec<SnapshotRow>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (_, f) in &mut self.changes {
            f.flush()?;
        }
        Ok(std::mem::take(&mut self.state)
            .into_values()
            .flatten()
            .map(|(r, count)| SnapshotRow { output: r.output(), key: r.key(), row: r.row(), count })
            .collect())
    }

    fn write_changes(&mut self, time: Time, updates: &[(Row, isize)]) -> io::Result<()> {
        let mut encoded: Vec<(Output, String, String, isize)> = updates.iter().map(|(r, d)| (r.output(), r.key(), r.row(), *d)).collect();
        encoded.sort_unstable();
        for (o, w) in &mut self.changes {
            for (_, _, row, diff) in encoded.iter().filter(|(out, ..)| out == o) {
                writeln!(w, r#"{{"time":{time},"diff":{diff},"row":{row}}}"#)?;
            }
            w.flush()?;
        }
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn apply(&mut self, time: Time, updates: &[(Row, isize)]) {
        self.apply_owned(time, updates.to_vec());
    }

    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        if self.error.is_none() && !self.changes.is_empty() {
            if let Err(e) = self.write_changes(time, &updates) {
                tracing::error!(error = %e, "writing change files failed; the snapshot will still be written");
                self.error = Some(e);
            }
        }
        // Insertions first: a key's `+new` then finds its entry still there when `-old` empties
        // it of the old row, so a change neither frees nor reallocates the entry.
        let (adds, retractions): (Vec<_>, Vec<_>) = updates.into_iter().partition(|(_, d)| *d > 0);
        for (row, diff) in adds.into_iter().chain(retractions) {
            let hash = row.key_hash();
            let rows = self.state.entry(hash).or_default();
            match rows.iter().position(|(r, _)| *r == row) {
                Some(i) => {
                    rows[i].1 += diff;
                    if rows[i].1 == 0 {
                        rows.swap_remove(i);
                        if rows.is_empty() {
                            self.state.remove(&hash);
                        }
                    }
                }
                None => rows.push((row, diff)),
            }
        }
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot create output directory {}: {e}", dir.display())))
}

/// Writes `DIR/<output>.jsonl` for every output in `outputs` from the gathered rows: one line
/// per row, sorted by key (then row). A key with more than one row, or a row whose
/// multiplicity is not 1, is logged as an error: the dataflow broke its contract.
pub fn write_snapshots(dir: &Path, outputs: &[Output], mut rows: Vec<SnapshotRow>) -> io::Result<Vec<PathBuf>> {
    create_dir(dir)?;
    rows.sort_unstable();
    let mut written = Vec::new();
    for &o in outputs {
        let path = dir.join(format!("{o}.jsonl"));
        let mut w = BufWriter::new(File::create(&path)?);
        let mut previous: Option<&str> = None;
        for r in rows.iter().filter(|r| r.output == o) {
            if r.count != 1 || previous == Some(r.key.as_str()) {
                tracing::error!(output = %o, key = r.key, multiplicity = r.count, "output is not one row per key");
            }
            previous = Some(&r.key);
            w.write_all(r.row.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        written.push(path);
    }
    Ok(written)
}
