//! JSON Lines files: the current state of every output (the snapshot), written to
//! `DIR/<output>.jsonl` when the run ends, one row per key sorted by key; and optionally every
//! update as it is applied, `{"time", "diff", "row"}` per line, to `DIR/<output>.changes.jsonl`,
//! flushed at the end of each logical time so that `tail -f` shows the outputs changing.
//!
//! The snapshot is also what the demo's live view reads.
//!
//! Errors: a write failure is kept and reported by [`JsonlSink::finish`]; updates keep being
//! applied to the in-memory snapshot meanwhile, so the final snapshot is still complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::Time;

use super::{Change, Sink, DEAD_LETTERS, OUTPUTS};

/// Current rows of every output, plus optional change files.
pub struct JsonlSink {
    dir: Option<PathBuf>,
    outputs: Vec<u8>,
    /// (output, key, row) → multiplicity; a consistent output has each key once with 1.
    state: BTreeMap<(u8, String, String), isize>,
    changes: Vec<Option<BufWriter<File>>>,
    error: Option<io::Error>,
    updates: u64,
    last_time: Option<Time>,
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
            state: BTreeMap::new(),
            changes: files,
            error: None,
            updates: 0,
            last_time: None,
        })
    }

    /// Current rows of `output`, sorted by key.
    pub fn rows(&self, output: u8) -> impl Iterator<Item = (&str, &str, isize)> {
        self.state
            .range((output, String::new(), String::new())..)
            .take_while(move |((o, _, _), _)| *o == output)
            .map(|((_, k, r), n)| (k.as_str(), r.as_str(), *n))
    }

    /// Number of rows `output` has now.
    pub fn len(&self, output: u8) -> usize {
        self.rows(output).count()
    }

    /// Dead letters so far.
    pub fn dead_letters(&self) -> usize {
        self.len(DEAD_LETTERS)
    }

    /// Updates applied so far, and the last complete time.
    pub fn progress(&self) -> (u64, Option<Time>) {
        (self.updates, self.last_time)
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
    fn apply(&mut self, time: Time, updates: &[(Change, isize)]) {
        for (c, diff) in updates {
            let entry = self.state.entry((c.output, c.key.clone(), c.row.clone())).or_insert(0);
            *entry += diff;
            if *entry == 0 {
                self.state.remove(&(c.output, c.key.clone(), c.row.clone()));
            }
        }
        self.updates += updates.len() as u64;
        self.last_time = Some(time);
        if self.error.is_none() {
            if let Err(e) = self.write_changes(time, updates) {
                tracing::error!(error = %e, "writing change files failed; the snapshot will still be written");
                self.error = Some(e);
            }
        }
    }
}
