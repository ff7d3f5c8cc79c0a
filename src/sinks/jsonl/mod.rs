//! JSON Lines files: the current state of every output (the snapshot), written to
//! `DIR/<output>.jsonl` when the run ends, one row per key sorted by key; and optionally every
//! update as it is applied, `{"time", "diff", "row"}` per line, to `DIR/<output>.changes.jsonl`,
//! sorted within each time (so the files are the same on any number of workers) and flushed at
//! the end of each logical time so that `tail -f` shows the outputs changing.
//!
//! Every worker keeps the current rows of its share of the outputs as typed rows ([`JsonlSink`]
//! routed by key), except rows kept elsewhere: by a sink beside it, or by the operator that
//! computes them ([`dataflows::output::CurrentRows`]), which hand them over at the end.
//! Append-only outputs (alerts, dead letters) are not kept: their rows are
//! encoded as their times close and written to sorted run files ([`runs`]), so memory holds
//! current rows of keyed outputs only. When the run ends each worker's share leaves as one
//! sorted merge per writer ([`JsonlSink::finish_split`]: each output's file has one writer), is
//! gathered there (the writer spills to runs of its own), and is written by
//! [`write_snapshots`] from a merge: the whole snapshot is never in memory at once. Change files and the demo's
//! live view need every row in one place, so when they are asked for, one sink on the first
//! worker receives everything instead.
//!
//! Errors: a write failure of a change file is kept and reported by [`JsonlSink::finish`];
//! updates keep being applied meanwhile, so the final snapshot is still complete.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::ops::HashedMap;
use dataflows::output::CurrentRows;
use dataflows::{Output, Row, Time};
use serde::{Deserialize, Serialize};

use super::Sink;
use crate::codec::OutputRow;

pub mod runs;

use runs::{Merged, Runs};

/// Rows per sorted run: what one worker holds of the append-only outputs, or of the snapshot
/// while it is gathered, before writing a run file (about 5 MB of encoded rows).
pub const RUN_ROWS: usize = 25_000;

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

impl SnapshotRow {
    /// `count` copies of `r`, encoded.
    fn encode(r: &Row, count: isize) -> Self {
        SnapshotRow { output: r.output(), key: r.key(), row: r.row(), count }
    }
}

/// The current rows under one key hash: nearly always one, kept inline in the map's table
/// (a vector per key would be one more allocation, and one more cache miss per update, at
/// millions of keys).
enum Slot {
    One((Row, isize)),
    Many(Vec<(Row, isize)>),
}

impl Slot {
    fn rows(&self) -> &[(Row, isize)] {
        match self {
            Slot::One(row) => std::slice::from_ref(row),
            Slot::Many(rows) => rows,
        }
    }

    fn into_rows(self) -> impl Iterator<Item = (Row, isize)> {
        let (one, many) = match self {
            Slot::One(row) => (Some(row), Vec::new()),
            Slot::Many(rows) => (None, rows),
        };
        one.into_iter().chain(many)
    }

    /// Adds `diff` copies of `row`. A row whose count falls to zero keeps its place for the
    /// next new row (a key's `-old` then `+new` replace the row in place); returns whether
    /// a zero count is left for [`Slot::settle`].
    fn add(&mut self, row: Row, diff: isize) -> bool {
        match self {
            Slot::One((r, n)) if *r == row => *n += diff,
            Slot::One((r, n)) if *n == 0 => (*r, *n) = (row, diff),
            Slot::One(_) => {
                let Slot::One(first) = std::mem::replace(self, Slot::Many(Vec::new())) else { unreachable!() };
                *self = Slot::Many(vec![first, (row, diff)]);
            }
            Slot::Many(rows) => dataflows::ops::multiset_add(rows, row, diff),
        }
        self.rows().iter().any(|(_, n)| *n == 0)
    }

    /// Drops zero counts; whether no row is left.
    fn settle(&mut self) -> bool {
        if let Slot::Many(rows) = self {
            rows.retain(|(_, n)| *n != 0);
            if rows.len() == 1 {
                *self = Slot::One(rows.pop().expect("one row"));
            }
        }
        self.rows().iter().all(|(_, n)| *n == 0)
    }
}

/// A [`JsonlSink`]'s state without rows: an empty map for every output.
fn no_rows() -> Vec<HashedMap<Slot>> {
    (0..Output::MAX).map(|_| HashedMap::default()).collect()
}

/// Current rows of a worker's share of the outputs, plus optional change files.
pub struct JsonlSink {
    /// per output (by [`Output::index`]), current rows by the hash of their key: one map per
    /// output, so that each is sized by its own keys
    state: Vec<HashedMap<Slot>>,
    /// rows of append-only outputs, when they are spilled rather than kept
    append: Option<Runs>,
    /// where rows are spilled (the append-only rows' runs; the hand-over's beside it)
    spill: Option<PathBuf>,
    /// the append-only outputs among the sink's outputs
    append_outputs: Vec<Output>,
    changes: Vec<(Output, BufWriter<File>)>,
    error: Option<io::Error>,
    /// per output (by [`Output::index`]): its rows are kept elsewhere, not here — by another
    /// sink or by the operator that computes them — and handed to [`JsonlSink::finish_split`]
    elsewhere: Vec<bool>,
}

impl JsonlSink {
    /// A sink that keeps the current rows; with `changes_dir`, it also writes the change files
    /// of `outputs` there (only the sink that receives every row should); with `spill_dir`,
    /// rows of append-only outputs go to sorted runs there instead of memory.
    pub fn new(changes_dir: Option<&Path>, outputs: &[Output], spill_dir: Option<PathBuf>) -> io::Result<Self> {
        let mut changes = Vec::new();
        if let Some(dir) = changes_dir {
            create_dir(dir)?;
            for &o in outputs {
                let path = dir.join(format!("{o}.changes.jsonl"));
                let f = File::create(&path).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
                changes.push((o, BufWriter::new(f)));
            }
        }
        let append = spill_dir.clone().map(|d| Runs::new(d, RUN_ROWS));
        let append_outputs = outputs.iter().copied().filter(|o| o.append_only()).collect();
        Ok(JsonlSink {
            state: no_rows(),
            append,
            spill: spill_dir,
            append_outputs,
            changes,
            error: None,
            elsewhere: vec![false; Output::MAX],
        })
    }

    /// The same sink, keeping no rows of keyed outputs: another sink beside it keeps them and
    /// hands them to [`JsonlSink::finish_split`].
    pub fn without_keyed_rows(mut self) -> Self {
        self.elsewhere = (0..Output::MAX).map(|i| Output::from_index(i).is_some_and(|o| !o.append_only())).collect();
        self
    }

    /// Keeps no rows of `outputs` (keyed ones) from now on: their operators keep them, and
    /// they are handed to [`JsonlSink::finish_split`] when the run is over.
    pub fn rows_kept_elsewhere(&mut self, outputs: impl IntoIterator<Item = Output>) {
        for o in outputs.into_iter().filter(|o| !o.append_only()) {
            self.elsewhere[o.index()] = true;
        }
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
        self.state[output.index()].values().flat_map(Slot::rows)
    }

    /// Hands over every row, encoded, as one sorted merge, leaving the sink empty; reports
    /// any write error of the change or run files.
    pub fn finish(&mut self) -> io::Result<Merged> {
        Ok(self.finish_split(Vec::new(), &[], &|_| 0, 1)?.pop().expect("one share"))
    }

    /// [`JsonlSink::finish`], with `kept`: the keyed rows another sink kept instead, and
    /// `current`: the rows their operators kept instead, in `shares` merges: share `d` holds
    /// the rows of the outputs `share_of` gives `d`, so that each can go to the worker that
    /// writes those outputs.
    pub fn finish_split(
        &mut self,
        kept: Vec<(Row, isize)>,
        current: &[CurrentRows],
        share_of: &dyn Fn(Output) -> usize,
        shares: usize,
    ) -> io::Result<Vec<Merged>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (_, f) in &mut self.changes {
            f.flush()?;
        }
        // Each share's runs beside the append-only rows' (whose merge removes their directory).
        let runs_of = |d: usize| match &self.spill {
            Some(dir) => Runs::new(PathBuf::from(format!("{}-to-{d}", dir.display())), RUN_ROWS),
            None => Runs::in_memory(),
        };
        let mut runs: Vec<Runs> = (0..shares).map(runs_of).collect();
        if let Some(append) = self.append.take() {
            let mut to: Vec<usize> = self.append_outputs.iter().map(|&o| share_of(o)).collect();
            to.sort_unstable();
            to.dedup();
            match to[..] {
                // all in one share (the usual case): the append-only rows' runs are its runs
                [] => runs[0] = append,
                [d] => runs[d] = append,
                _ => {
                    for r in append.merged()? {
                        let r = r?;
                        runs[share_of(r.output)].push(r)?;
                    }
                }
            }
        }
        let state = std::mem::replace(&mut self.state, no_rows());
        for (r, count) in state.into_iter().flat_map(|m| m.into_values().flat_map(Slot::into_rows)).chain(kept) {
            runs[share_of(r.output())].push(SnapshotRow::encode(&r, count))?;
        }
        let mut failed = None;
        for read in current {
            read(&mut |r, count| {
                if failed.is_none() {
                    failed = runs[share_of(r.output())].push(SnapshotRow::encode(&r, count)).err();
                }
            });
        }
        if let Some(e) = failed {
            return Err(e);
        }
        runs.into_iter().map(Runs::merged).collect()
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
        let kept: Vec<(Row, isize)> = updates.iter().filter(|(r, _)| !self.elsewhere[r.output().index()]).cloned().collect();
        self.apply_owned(time, kept);
    }

    fn apply_owned(&mut self, time: Time, updates: Vec<(Row, isize)>) {
        if self.error.is_none() && !self.changes.is_empty() {
            if let Err(e) = self.write_changes(time, &updates) {
                tracing::error!(error = %e, "writing change files failed; the snapshot will still be written");
                self.error = Some(e);
            }
        }
        // Retractions first: a key's `-old` leaves its slot at count zero and `+new` takes it,
        // so a change neither frees nor reallocates the entry (nor grows it to two rows).
        let mut updates = updates;
        updates.sort_unstable_by_key(|(_, d)| *d > 0);
        let mut emptied = Vec::new();
        for (row, diff) in updates {
            let output = row.output();
            if let Some(runs) = self.append.as_mut().filter(|_| output.append_only()) {
                if let Err(e) = runs.push(SnapshotRow::encode(&row, diff)) {
                    tracing::error!(error = %e, "spilling append-only rows failed");
                    self.error.get_or_insert(e);
                }
                continue;
            }
            if self.elsewhere[output.index()] {
                continue;
            }
            let hash = row.key_hash();
            let zero = match self.state[output.index()].entry(hash) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Slot::One((row, diff)));
                    false
                }
                std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().add(row, diff),
            };
            if zero {
                emptied.push((output.index(), hash));
            }
        }
        for (output, hash) in emptied {
            let map = &mut self.state[output];
            if map.get_mut(&hash).is_some_and(Slot::settle) {
                map.remove(&hash);
            }
        }
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot create output directory {}: {e}", dir.display())))
}

/// Writes `DIR/<output>.jsonl` for every output in `outputs` (when there is a directory) from
/// the gathered rows in snapshot order, adding up equal rows: one line per row, sorted by key
/// (then row). A key with more than one row, or a row whose multiplicity is not 1 (of an output
/// that is not append-only), is logged as
/// an error: the dataflow broke its contract. Returns the files and the rows per output.
pub fn write_snapshots(
    dir: Option<&Path>,
    outputs: &[Output],
    rows: impl Iterator<Item = io::Result<SnapshotRow>>,
) -> io::Result<(Vec<PathBuf>, Vec<(Output, u64)>)> {
    let mut files = Vec::new();
    let mut writers = Vec::new();
    if let Some(dir) = dir {
        create_dir(dir)?;
        for &o in outputs {
            let path = dir.join(format!("{o}.jsonl"));
            writers.push((o, BufWriter::new(File::create(&path)?)));
            files.push(path);
        }
    }
    let mut counts: Vec<(Output, u64)> = outputs.iter().map(|&o| (o, 0)).collect();
    let mut previous_key: Option<(Output, String)> = None;
    let mut emit = |r: SnapshotRow| -> io::Result<()> {
        if r.count == 0 {
            return Ok(());
        }
        let repeated = previous_key.as_ref().is_some_and(|(o, k)| *o == r.output && *k == r.key);
        // (an append-only row twice is one fact delivered twice: one line, no error)
        if (r.count != 1 && !r.output.append_only()) || repeated {
            tracing::error!(output = %r.output, key = r.key, multiplicity = r.count, "output is not one row per key");
        }
        if let Some((_, n)) = counts.iter_mut().find(|(o, _)| *o == r.output) {
            *n += 1;
        }
        if let Some((_, w)) = writers.iter_mut().find(|(o, _)| *o == r.output) {
            w.write_all(r.row.as_bytes())?;
            w.write_all(b"\n")?;
        }
        previous_key = Some((r.output, r.key));
        Ok(())
    };
    // Equal rows are adjacent in snapshot order: add up their counts before writing.
    let mut pending: Option<SnapshotRow> = None;
    for r in rows {
        let r = r?;
        match &mut pending {
            Some(p) if p.output == r.output && p.key == r.key && p.row == r.row => p.count += r.count,
            _ => {
                if let Some(p) = pending.replace(r) {
                    emit(p)?;
                }
            }
        }
    }
    if let Some(p) = pending {
        emit(p)?;
    }
    for (_, w) in &mut writers {
        w.flush()?;
    }
    Ok((files, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::records::{DeadLetter, Position};
    use dataflows::sql::{registry, Type, Value};

    /// A keyed view (kinds: event, count) and an append-only one (alerts: sensor, value).
    fn views() -> (Output, Output) {
        let kinds = registry::view("sink_test_kinds", &[("event".into(), Type::Text), ("count".into(), Type::Int)], &[0]);
        let alerts = registry::view("sink_test_alerts", &[("sensor_id".into(), Type::Text), ("value".into(), Type::Float)], &[0, 1]);
        registry::set_append_only(alerts, true);
        (Output::View(kinds), Output::View(alerts))
    }

    fn view_row(o: Output, values: Vec<Value>) -> Row {
        let Output::View(id) = o else { unreachable!("a view") };
        Row::View(Box::new(dataflows::output::ViewRow::new(id, values)))
    }

    fn rows() -> Vec<(Row, isize)> {
        let (kinds, alerts) = views();
        let mut rows = Vec::new();
        for i in 0..40u64 {
            rows.push((view_row(kinds, vec![Value::Text(format!("kind{i:02}").into()), Value::Int(i as i64)]), 1));
            let (position, raw) = (Position::Line(i), format!("line {i}").into_bytes());
            rows.push((Row::DeadLetter(Box::new(DeadLetter { input: "x".into(), position, reason: "r".into(), raw, key: None })), 1));
            rows.push((view_row(alerts, vec![Value::Text(format!("s{}", i % 7).into()), Value::Float(i as f64)]), 1));
        }
        rows
    }

    /// Every row of `merged`, by output.
    fn by_output(merged: Merged) -> std::collections::BTreeMap<Output, Vec<SnapshotRow>> {
        let mut out = std::collections::BTreeMap::<Output, Vec<SnapshotRow>>::new();
        for r in merged {
            let r = r.unwrap();
            out.entry(r.output).or_default().push(r);
        }
        out
    }

    /// A sink fed `rows` over several times, its append-only rows in runs (which stay in
    /// memory at this size).
    fn sink(dir: &Path) -> JsonlSink {
        let (kinds, alerts) = views();
        let outputs = [kinds, alerts, Output::DeadLetters];
        let mut s = JsonlSink::new(None, &outputs, Some(dir.join("append"))).unwrap();
        for (t, chunk) in rows().chunks(17).enumerate() {
            s.apply(t as Time, chunk);
        }
        s
    }

    #[test]
    fn split_shares_hold_the_rows_of_their_outputs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let whole = by_output(sink(dir.path()).finish().unwrap());
        assert_eq!(whole.values().map(Vec::len).sum::<usize>(), 120);
        // keyed and append-only outputs apart; then the append-only outputs apart too (their
        // spilled rows are divided between the shares)
        let splits: [&dyn Fn(Output) -> usize; 2] =
            [&|o: Output| usize::from(o.append_only()), &|o: Output| usize::from(o == Output::DeadLetters) * 2];
        for share_of in splits {
            let shares = sink(dir.path()).finish_split(Vec::new(), &[], share_of, 3).unwrap();
            let mut got = std::collections::BTreeMap::new();
            for (d, merged) in shares.into_iter().enumerate() {
                for (o, rows) in by_output(merged) {
                    assert_eq!(share_of(o), d, "{o} is in share {d}");
                    assert!(rows.windows(2).all(|w| w[0] <= w[1]), "{o}: in snapshot order");
                    got.insert(o, rows);
                }
            }
            assert_eq!(got, whole);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "every spill directory is removed");
    }
}
