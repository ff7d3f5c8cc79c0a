//! JSON Lines files: the current state of every output (the snapshot), written to
//! `DIR/<output>.jsonl` when the run ends, one row per key sorted by key; and optionally every
//! update as it is applied, `{"time", "diff", "row"}` per line, to `DIR/<output>.changes.jsonl`,
//! sorted within each time (so the files are the same on any number of workers) and flushed at
//! the end of each logical time so that `tail -f` shows the outputs changing.
//!
//! The snapshot is also what the demo's live view reads.
//!
//! Errors: a write failure is kept and reported by [`JsonlSink::finish`]; updates keep being
//! applied to the in-memory snapshot meanwhile, so the final snapshot is still complete.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::ops::FastMap;
use dataflows::Time;

use super::{Change, Sink, DEAD_LETTERS, OUTPUTS};

/// Rows of one key with their multiplicities; a consistent output has one row with 1.
type Rows = Vec<(String, isize)>;

/// Current rows of every output, plus optional change files.
pub struct JsonlSink {
    dir: Option<PathBuf>,
    outputs: Vec<u8>,
    state: FastMap<(u8, String), Rows>,
    changes: Vec<Option<BufWriter<File>>>,
    error: Option<io::Error>,
    updates: u64,
}

impl JsonlSink {
    /// A sink for `outputs` (indexes into [`OUTPUTS`]); with `dir`, files go there, and with
    /// `changes` the change files are opened now.
    pub fn new(dir: Option<&Path>, outputs: &[u8], changes: bool) -> io::Result<Self> {
        let mut files: Vec<Option<BufWriter<File>>> = (0..OUTPUTS.len()).map(|_| None).collect();
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create output directory {}: {e}", dir.display())))?;
            if changes {
                for &o in outputs {
                    let path = dir.join(format!("{}.changes.jsonl", OUTPUTS[o as usize]));
                    let f = File::create(&path)
                        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
                    files[o as usize] = Some(BufWriter::new(f));
                }
            }
        }
        Ok(JsonlSink {
            dir: dir.map(Path::to_path_buf),
            outputs: outputs.to_vec(),
            state: FastMap::default(),
            changes: files,
            error: None,
            updates: 0,
        })
    }

    /// Current `(key, row, multiplicity)` of `output`, sorted by key.
    pub fn rows(&self, output: u8) -> Vec<(&str, &str, isize)> {
        let mut rows: Vec<(&str, &str, isize)> = self
            .state
            .iter()
            .filter(|((o, _), _)| *o == output)
            .flat_map(|((_, k), rows)| rows.iter().map(move |(r, n)| (k.as_str(), r.as_str(), *n)))
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Number of keys `output` has now.
    pub fn len(&self, output: u8) -> usize {
        self.state.keys().filter(|(o, _)| *o == output).count()
    }

    /// Dead letters so far.
    pub fn dead_letters(&self) -> usize {
        self.len(DEAD_LETTERS)
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Writes the snapshots (when there is a directory) and reports any write error.
    pub fn finish(&mut self) -> io::Result<Vec<PathBuf>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for f in self.changes.iter_mut().flatten() {
            f.flush()?;
        }
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let mut written = Vec::new();
        for &o in &self.outputs {
            let path = dir.join(format!("{}.jsonl", OUTPUTS[o as usize]));
            let mut w = BufWriter::new(File::create(&path)?);
            let mut previous: Option<&str> = None;
            for (key, row, n) in self.rows(o) {
                if n != 1 || previous == Some(key) {
                    tracing::error!(output = OUTPUTS[o as usize], key, multiplicity = n, "output is not one row per key");
                }
                previous = Some(key);
                w.write_all(row.as_bytes())?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            written.push(path);
        }
        Ok(written)
    }

    fn write_changes(&mut self, time: Time, updates: &[(Change, isize)]) -> io::Result<()> {
        for (c, diff) in updates {
            if let Some(w) = &mut self.changes[c.output as usize] {
                writeln!(w, r#"{{"time":{time},"diff":{diff},"row":{}}}"#, c.row)?;
            }
        }
        for w in self.changes.iter_mut().flatten() {
            w.flush()?;
        }
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn apply(&mut self, time: Time, mut updates: Vec<(Change, isize)>) {
        if self.error.is_none() && self.changes.iter().any(Option::is_some) {
            updates.sort_unstable();
            if let Err(e) = self.write_changes(time, &updates) {
                tracing::error!(error = %e, "writing change files failed; the snapshot will still be written");
                self.error = Some(e);
            }
        }
        self.updates += updates.len() as u64;
        for (c, diff) in updates {
            let key = (c.output, c.key);
            let Some(rows) = self.state.get_mut(&key) else {
                self.state.insert(key, vec![(c.row, diff)]);
                continue;
            };
            match rows.iter_mut().find(|(r, _)| *r == c.row) {
                Some(entry) => entry.1 += diff,
                None => rows.push((c.row, diff)),
            }
            rows.retain(|(_, n)| *n != 0);
            if rows.is_empty() {
                self.state.remove(&key);
            }
        }
    }
}
