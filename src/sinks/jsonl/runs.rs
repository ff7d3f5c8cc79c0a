//! Sorted runs on disk, so that snapshot rows never all have to be in memory at once: a
//! bounded buffer of encoded rows that writes itself out as a sorted run file when full, and a
//! k-way merge of the runs (and what is still buffered) in snapshot order.
//!
//! A run file holds one row per line, `output \t count \t key \t row` (the output by its
//! [`dataflows::Output::index`]); keys and rows are compact JSON, which never contains a raw
//! tab or newline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use super::SnapshotRow;

/// Rows gathered into sorted runs under one directory (created when the first run is written,
/// removed when the merge is done).
pub struct Runs {
    dir: Option<PathBuf>,
    limit: usize,
    buffer: Vec<SnapshotRow>,
    files: Vec<PathBuf>,
}

impl Runs {
    /// Runs of at most `limit` rows in `dir`, which nothing else uses.
    pub fn new(dir: PathBuf, limit: usize) -> Self {
        Runs { dir: Some(dir), limit: limit.max(1), buffer: Vec::new(), files: Vec::new() }
    }

    /// Everything in memory: for what must stay readable (the live view).
    pub fn in_memory() -> Self {
        Runs { dir: None, limit: usize::MAX, buffer: Vec::new(), files: Vec::new() }
    }

    /// Adds a row; writes a run when the buffer is full.
    pub fn push(&mut self, row: SnapshotRow) -> io::Result<()> {
        self.buffer.push(row);
        if self.buffer.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create spill directory {}: {e}", dir.display())))?;
        self.buffer.sort_unstable();
        let path = dir.join(format!("run-{}.tsv", self.files.len()));
        let mut w = BufWriter::new(File::create(&path)?);
        for r in self.buffer.drain(..) {
            write_line(&mut w, &r)?;
        }
        w.flush()?;
        self.files.push(path);
        Ok(())
    }

    /// Every row pushed, in snapshot order (output, key, row), equal rows adjacent.
    pub fn merged(mut self) -> io::Result<Merged> {
        self.buffer.sort_unstable();
        let mut sources: Vec<Source> = vec![Source::Memory(std::mem::take(&mut self.buffer).into_iter())];
        for path in &self.files {
            sources.push(Source::file(path)?);
        }
        Merged::new(sources, self.dir)
    }
}

/// One line of a run file (written piece by piece: through `fmt`, and a view's name looked
/// up per row, it was a tenth of the time spent on the snapshot).
fn write_line(w: &mut impl Write, r: &SnapshotRow) -> io::Result<()> {
    let mut n = itoa::Buffer::new();
    w.write_all(n.format(r.output.index()).as_bytes())?;
    w.write_all(b"\t")?;
    w.write_all(n.format(r.count).as_bytes())?;
    w.write_all(b"\t")?;
    w.write_all(r.key.as_bytes())?;
    w.write_all(b"\t")?;
    w.write_all(r.row.as_bytes())?;
    w.write_all(b"\n")
}

/// Rows that come already in snapshot order from several senders (each sender's rows in
/// order, the senders' interleaved): each sender's rows go straight to a run file of its own
/// as they come — no buffer to sort, one file per sender — and their merge with the
/// receiver's own rows (never written out) is the whole in snapshot order.
pub struct SortedStreams {
    dir: PathBuf,
    files: std::collections::BTreeMap<usize, (PathBuf, BufWriter<File>)>,
}

impl SortedStreams {
    /// Run files under `dir`, which nothing else uses (created at the first row).
    pub fn new(dir: PathBuf) -> Self {
        SortedStreams { dir, files: Default::default() }
    }

    /// The next row of `sender`, which must not precede its last one.
    pub fn push(&mut self, sender: usize, row: &SnapshotRow) -> io::Result<()> {
        let (_, w) = match self.files.entry(sender) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let dir = &self.dir;
                std::fs::create_dir_all(dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot create spill directory {}: {e}", dir.display())))?;
                let path = dir.join(format!("sender-{sender}.tsv"));
                let w = BufWriter::new(File::create(&path)?);
                v.insert((path, w))
            }
        };
        write_line(w, row)
    }

    /// The merge of every sender's rows with `own`, in snapshot order.
    pub fn merged_with(self, own: Option<Merged>) -> io::Result<Merged> {
        let mut sources: Vec<Source> = own.map(|m| Source::Merged(Box::new(m))).into_iter().collect();
        for (_, (path, mut w)) in self.files {
            w.flush()?;
            drop(w);
            sources.push(Source::file(&path)?);
        }
        Merged::new(sources, Some(self.dir))
    }
}

enum Source {
    Memory(std::vec::IntoIter<SnapshotRow>),
    /// a run file, and the line last read from it (one buffer for all its lines)
    File(BufReader<File>, String),
    Merged(Box<Merged>),
}

impl Source {
    fn file(path: &std::path::Path) -> io::Result<Source> {
        Ok(Source::File(BufReader::new(File::open(path)?), String::new()))
    }

    fn next(&mut self) -> io::Result<Option<SnapshotRow>> {
        match self {
            Source::Memory(rows) => Ok(rows.next()),
            Source::File(reader, line) => {
                line.clear();
                if reader.read_line(line)? == 0 {
                    return Ok(None);
                }
                parse(line.strip_suffix('\n').unwrap_or(line)).map(Some)
            }
            Source::Merged(m) => m.next().transpose(),
        }
    }
}

fn parse(line: &str) -> io::Result<SnapshotRow> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("a spilled snapshot row is damaged: {line:.80}"));
    let mut parts = line.splitn(4, '\t');
    let mut part = || parts.next().ok_or_else(bad);
    let output = part()?.parse().ok().and_then(dataflows::Output::from_index).ok_or_else(bad)?;
    let count = part()?.parse().map_err(|_| bad())?;
    let (key, row) = (part()?.to_string(), part()?.to_string());
    Ok(SnapshotRow { output, key, row, count })
}

/// The merge of [`Runs`]: an iterator of rows in snapshot order.
pub struct Merged {
    heap: BinaryHeap<Reverse<(SnapshotRow, usize)>>,
    sources: Vec<Source>,
    /// the spill directory, removed when the merge is dropped
    dir: Option<PathBuf>,
}

impl Merged {
    /// The merge of `sources`, each in snapshot order; `dir` is removed when it is dropped.
    fn new(sources: Vec<Source>, dir: Option<PathBuf>) -> io::Result<Merged> {
        let mut merged = Merged { heap: BinaryHeap::new(), sources, dir };
        for i in 0..merged.sources.len() {
            merged.refill(i)?;
        }
        Ok(merged)
    }

    fn refill(&mut self, i: usize) -> io::Result<()> {
        if let Some(r) = self.sources[i].next()? {
            self.heap.push(Reverse((r, i)));
        }
        Ok(())
    }
}

impl Iterator for Merged {
    type Item = io::Result<SnapshotRow>;
    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((row, i)) = self.heap.pop()?;
        Some(self.refill(i).map(|()| row))
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Absent when every row fitted in memory.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::Output;

    #[test]
    fn merges_runs_in_order() {
        let dir = std::env::temp_dir().join(format!("diffstream-runs-test-{}", std::process::id()));
        let mut runs = Runs::new(dir.clone(), 3);
        let row =
            |o, k: u32| SnapshotRow { output: o, key: format!("{{\"k\":{k}}}"), row: format!("{{\"k\":{k},\"t\":\"a\\tb\"}}"), count: 1 };
        let mut expected = Vec::new();
        for k in [5, 1, 9, 3, 7, 2, 8, 4, 6, 0] {
            for o in [Output::View(0), Output::DeadLetters] {
                runs.push(row(o, k)).unwrap();
                expected.push(row(o, k));
            }
        }
        expected.sort();
        let merged: Vec<SnapshotRow> = runs.merged().unwrap().collect::<io::Result<_>>().unwrap();
        assert_eq!(merged, expected);
        assert!(!dir.exists(), "the spill directory is removed after the merge");
    }

    #[test]
    fn merges_sorted_streams_with_own_rows() {
        let base = std::env::temp_dir().join(format!("diffstream-streams-test-{}", std::process::id()));
        let row = |k: u32| SnapshotRow { output: Output::DeadLetters, key: format!("{{\"k\":{k:02}}}"), row: "{}".into(), count: 1 };
        let mut own = Runs::new(base.join("own"), 2);
        for k in [4, 0, 8] {
            own.push(row(k)).unwrap();
        }
        let mut streams = SortedStreams::new(base.join("gathered"));
        // two senders, each in order, interleaved
        for (sender, k) in [(1, 1), (2, 2), (1, 5), (2, 3), (2, 9), (1, 7)] {
            streams.push(sender, &row(k)).unwrap();
        }
        let merged: Vec<SnapshotRow> = streams.merged_with(Some(own.merged().unwrap())).unwrap().collect::<io::Result<_>>().unwrap();
        assert_eq!(merged, [0, 1, 2, 3, 4, 5, 7, 8, 9].map(row));
        assert!(!base.join("gathered").exists() && !base.join("own").exists(), "both spill directories are removed");
        let _ = std::fs::remove_dir(&base);
    }
}
