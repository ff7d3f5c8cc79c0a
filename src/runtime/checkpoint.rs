//! Checkpoints of a streaming run: the dataflows' state at a time every sink acknowledged,
//! with the input offsets of that time, so a restart reads only the input after it.
//!
//! The state is what the views need, not the input history: each SQL input's rows as
//! `dataflows::sql::keep` keeps them (an upsert input's latest version per key, another's
//! distinct rows with their counts, an event-time input's rows until their windows are final
//! where the views allow). Checkpoint times are the multiples of
//! `[runtime] checkpoint_interval` in clock milliseconds, so every worker of every process takes
//! its part at the same time without talking ([`dataflows::checkpoint::Snapshots`]); each writes
//! it once the sinks' probe has passed the time, as
//! `<state_dir>/checkpoints/<time>/worker-<i>-of-<n>.bin` (bincode, written to a temporary file,
//! synced, renamed, on a thread of the worker's own). Each process keeps its parts of the
//! [`KEEP`] latest checkpoints it has whole.
//!
//! A restart uses the latest checkpoint time at which every process's own state directory
//! (shared or not) holds all its workers' parts ([`local_times`], agreed on through the
//! dataflow by the runtime): each worker inserts its part at the checkpoint time, every
//! partition is read from the checkpoint's offset (the bindings after it are replayed as
//! before), and the sinks resume from their own progress as before. A checkpoint written by
//! another worker layout, or for other dataflows or parameters, is refused with a message
//! saying what to do; `[runtime] restart = "replay"` ignores checkpoints and reads every input
//! again from where it began. With a state topic, each part also goes there once its file is
//! written, and pruning removes it there too ([`super::state_topic`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dataflows::checkpoint::Snapshots;
use dataflows::sql::keep::{KeptRows, KeptRowsLog};
use dataflows::Time;
use serde::{Deserialize, Serialize};

use super::reclock::Bound;
use super::state_topic::StateTopic;

/// One worker's part of a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// the checkpoint time
    pub time: Time,
    /// this worker's global index
    pub worker: usize,
    /// how many workers the run had
    pub workers: usize,
    /// the dataflows and their parameters, as text: a restart must run the same
    pub definition: String,
    /// the next offset, at the checkpoint time, of every partition this worker had read
    pub offsets: Vec<Bound>,
    /// the rows of each SQL input the views need, by input name
    pub tables: Vec<(String, KeptRows)>,
}

/// How many checkpoints each process keeps its parts of.
pub const KEEP: usize = 4;

/// Writes a worker's parts of checkpoints.
pub struct Writer<'a> {
    /// checkpoint times are its multiples
    pub every: Time,
    /// the state directory
    pub dir: &'a Path,
    /// this worker's global index
    pub worker: usize,
    /// how many workers the run has
    pub workers: usize,
    /// this process's workers (global indices)
    pub mine: Range<usize>,
    /// the dataflows and their parameters, as text
    pub definition: &'a str,
    /// the state topic every part also goes to, if any
    pub mirror: Option<Arc<StateTopic>>,
}

/// A worker's checkpointing: where its partitions stand at checkpoint times, and the last time
/// it wrote (or restarted from).
pub struct Local<'a> {
    writer: Writer<'a>,
    /// the partitions' offsets at each checkpoint time passed
    inputs: Snapshots<Vec<Bound>>,
    /// the next offset of every partition this worker has read
    offsets: BTreeMap<(String, i32), i64>,
    /// the last checkpoint time written or restarted from
    last: Option<Time>,
    /// the thread that writes the parts, started with the first
    background: Option<Background>,
    /// the latest complete checkpoint time [`Local::newly_complete`] returned
    reported: Time,
}

/// A thread of its own serialises, syncs and renames a worker's parts (and on the first worker
/// prunes old checkpoints), so that a large state does not stall the worker on every
/// interval. One part may wait while another is written; a third waits for the first.
struct Background {
    parts: std::sync::mpsc::SyncSender<Part>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// the latest checkpoint time this process has whole, as the thread last listed (0: none)
    complete: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Background {
    fn start(dir: &Path, worker: usize, workers: usize, mine: Range<usize>, mirror: Option<Arc<StateTopic>>) -> anyhow::Result<Self> {
        let (parts, rx) = std::sync::mpsc::sync_channel::<Part>(1);
        let dir = dir.to_path_buf();
        let pruner = mine.start == worker;
        let complete = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = complete.clone();
        let thread = std::thread::Builder::new().name(format!("checkpoint-{worker}")).spawn(move || {
            for part in rx {
                let began = std::time::Instant::now();
                let bytes = bincode::serialize(&part)?;
                let path = write_encoded(&dir, part.time, part.worker, part.workers, &bytes)
                    .map_err(|e| anyhow::anyhow!("writing a checkpoint under {}: {e}", dir.display()))?;
                if let Some(m) = &mirror {
                    m.put_part(part.time, part.worker, part.workers, &bytes)?;
                }
                drop(bytes);
                if pruner {
                    let removed = prune(&dir, KEEP, workers, &mine)
                        .map_err(|e| anyhow::anyhow!("removing old checkpoints under {}: {e}", dir.display()))?;
                    if let Some(m) = &mirror {
                        for (t, w, n, len) in removed {
                            m.remove_part(t, w, n, len)?;
                        }
                    }
                }
                if let Some(t) = latest_complete(&dir, workers, &mine)? {
                    seen.fetch_max(t, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::debug!(time = part.time, path = %path.display(), took = ?began.elapsed(), "checkpoint written");
            }
            Ok(())
        })?;
        Ok(Background { parts, thread, complete })
    }

    /// Waits for every part handed over, and says why the thread stopped if it failed.
    fn finish(self) -> anyhow::Result<()> {
        drop(self.parts);
        self.thread.join().map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
    }
}

impl<'a> Local<'a> {
    /// Nothing taken yet.
    pub fn new(writer: Writer<'a>) -> Self {
        Local { inputs: Snapshots::new(writer.every), writer, offsets: BTreeMap::new(), last: None, background: None, reported: 0 }
    }

    /// The run restarted from `part`: its offsets are where the partitions stand.
    pub fn restored(&mut self, part: &Part) {
        self.bound(part.offsets.iter().cloned());
        self.last = Some(part.time);
    }

    /// Partitions read on to these offsets (as bound to a time).
    pub fn bound(&mut self, bounds: impl IntoIterator<Item = Bound>) {
        self.offsets.extend(bounds.into_iter().map(|b| ((b.topic, b.partition), b.next)));
    }

    /// Every input time below `bound` is read, and none at or above it.
    pub fn passed(&mut self, bound: Time) {
        let offsets = &self.offsets;
        self.inputs.passed(bound, || {
            offsets.iter().map(|((topic, partition), next)| Bound { topic: topic.clone(), partition: *partition, next: *next }).collect()
        });
    }

    /// Hands this worker's part of the latest checkpoint time after the last one that every
    /// sink has acknowledged (the probe's `frontier` is past it) to the writing thread, once
    /// every part of this worker has its state for that time.
    pub fn maybe(&mut self, frontier: Option<Time>, tables: &[(String, KeptRowsLog)]) -> anyhow::Result<()> {
        let Some(part) = self.writer.take(frontier, self.last, &mut self.inputs, tables) else { return Ok(()) };
        self.last = Some(part.time);
        if self.background.is_none() {
            let w = &self.writer;
            self.background = Some(Background::start(w.dir, w.worker, w.workers, w.mine.clone(), w.mirror.clone())?);
        }
        let background = self.background.as_ref().expect("started");
        if background.parts.send(part).is_err() {
            // The thread stopped: it failed, and says why.
            self.finish()?;
        }
        Ok(())
    }

    /// The latest checkpoint time this process has whole, once, when it is later than the last
    /// one returned (the writing thread lists the directory; the worker only reads a number).
    pub fn newly_complete(&mut self) -> Option<Time> {
        let t = self.background.as_ref()?.complete.load(std::sync::atomic::Ordering::Relaxed);
        (t > self.reported).then(|| {
            self.reported = t;
            t
        })
    }

    /// Waits until every part handed over is written.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        match self.background.take() {
            Some(b) => b.finish(),
            None => Ok(()),
        }
    }
}

impl Writer<'_> {
    /// This worker's part of the latest checkpoint time after `last` that every sink has
    /// acknowledged (the probe's `frontier` is past it), once every part of this worker has its
    /// state for that time. The states through that time are forgotten: the part takes them
    /// (copying only what a later time still shares).
    fn take(
        &self,
        frontier: Option<Time>,
        last: Option<Time>,
        inputs: &mut Snapshots<Vec<Bound>>,
        tables: &[(String, KeptRowsLog)],
    ) -> Option<Part> {
        let passed = frontier?;
        let time = dataflows::checkpoint::checkpoint_in(self.every, last.map_or(0, |l| l + 1), passed)?;
        let state = inputs.at(time)?;
        let mut kept = Vec::with_capacity(tables.len());
        for (name, log) in tables {
            kept.push((name.clone(), log.borrow().at(time)?));
        }
        inputs.forget_through(time);
        for (_, log) in tables {
            log.borrow_mut().forget_through(time);
        }
        let tables =
            kept.into_iter().map(|(name, rows)| (name, std::rc::Rc::try_unwrap(rows).unwrap_or_else(|shared| (*shared).clone()))).collect();
        let offsets = std::rc::Rc::try_unwrap(state).unwrap_or_else(|shared| (*shared).clone());
        Some(Part { time, worker: self.worker, workers: self.workers, definition: self.definition.to_string(), offsets, tables })
    }
}

fn dir_of(state: &Path) -> PathBuf {
    state.join("checkpoints")
}

fn part_path(state: &Path, time: Time, worker: usize, workers: usize) -> PathBuf {
    dir_of(state).join(time.to_string()).join(format!("worker-{worker}-of-{workers}.bin"))
}

/// Writes a worker's part durably (temporary file, sync, rename, sync of the directory).
pub fn write(state: &Path, part: &Part) -> io::Result<PathBuf> {
    let bytes = bincode::serialize(part).map_err(io::Error::other)?;
    write_encoded(state, part.time, part.worker, part.workers, &bytes)
}

/// [`write`] of a part already encoded.
pub fn write_encoded(state: &Path, time: Time, worker: usize, workers: usize, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = part_path(state, time, worker, workers);
    let dir = path.parent().expect("a checkpoint file has a directory");
    std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// One checkpoint time's directory: the layouts its parts were written by, and which workers'
/// parts of each are there (the file names say; nothing is read).
struct Listed {
    dir: PathBuf,
    parts: BTreeMap<usize, BTreeSet<usize>>,
}

impl Listed {
    /// Whether the parts of workers `mine` of layout `workers` are there.
    fn has(&self, workers: usize, mine: &Range<usize>) -> bool {
        self.parts.get(&workers).is_some_and(|present| mine.clone().all(|w| present.contains(&w)))
    }

    /// The layout whose every part is there.
    fn complete(&self) -> Option<usize> {
        self.parts.iter().find(|(n, present)| (0..**n).all(|w| present.contains(&w))).map(|(n, _)| *n)
    }
}

fn listing(state: &Path) -> io::Result<BTreeMap<Time, Listed>> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir_of(state)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(time) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<Time>().ok()) else { continue };
        let mut parts: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        // (the writer thread may be removing it: an old checkpoint, as good as gone)
        let files = match std::fs::read_dir(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for f in files {
            let name = f?.file_name();
            let name = name.to_string_lossy();
            let Some((w, n)) = name.strip_prefix("worker-").and_then(|n| n.strip_suffix(".bin")).and_then(|n| n.split_once("-of-")) else {
                continue;
            };
            if let (Ok(w), Ok(n)) = (w.parse(), n.parse()) {
                parts.entry(n).or_default().insert(w);
            }
        }
        out.insert(time, Listed { dir: path, parts });
    }
    Ok(out)
}

/// The time of the latest checkpoint under `state` whose parts of workers `mine` (of a run of
/// `workers`) are all there, if any.
fn latest_complete(state: &Path, workers: usize, mine: &Range<usize>) -> io::Result<Option<Time>> {
    Ok(listing(state)?.into_iter().rev().find(|(_, l)| l.has(workers, mine)).map(|(t, _)| t))
}

/// The checkpoint times under `state` at which every part of workers `mine` (this process's,
/// of a run of `workers`) is there, oldest first. Each process looks in its own state
/// directory (shared or not); the processes then agree on the latest time all of them have.
/// A later checkpoint written whole by another number of workers is refused with a message.
pub fn local_times(state: &Path, workers: usize, mine: &Range<usize>) -> anyhow::Result<Vec<Time>> {
    let listing = listing(state)?;
    let times: Vec<Time> = listing.iter().filter(|(_, l)| l.has(workers, mine)).map(|(t, _)| *t).collect();
    let other = listing.iter().rev().find_map(|(t, l)| l.complete().filter(|n| *n != workers).map(|n| (*t, n, &l.dir)));
    if let Some((t, n, dir)) = other.filter(|(t, ..)| times.last().is_none_or(|last| t > last)) {
        anyhow::bail!(
            "the checkpoint in {} (time {t}) was written by {n} workers and this run has {workers}: run with the same -w/-n as \
             before, or set `[runtime] restart = \"replay\"` to rebuild the state from the input (it must still be there)",
            dir.display()
        );
    }
    Ok(times)
}

/// Worker `worker`'s part of the checkpoint at `time`, checked against this run's definition.
pub fn load(state: &Path, time: Time, worker: usize, workers: usize, definition: &str) -> anyhow::Result<Part> {
    let path = part_path(state, time, worker, workers);
    let part = read(&path)?;
    if part.definition != definition {
        anyhow::bail!(
            "the checkpoint {} is of other dataflows or parameters ({}); this run is {definition}: run the same \
             dataflows, or set `[runtime] restart = \"replay\"` to rebuild the state from the input, or use another state_dir",
            path.display(),
            part.definition
        );
    }
    Ok(part)
}

fn read(path: &Path) -> anyhow::Result<Part> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading the checkpoint {}: {e}", path.display()))?;
    bincode::deserialize(&bytes).map_err(|e: bincode::Error| {
        anyhow::anyhow!("the checkpoint {} cannot be read ({e}); remove its directory to fall back to the one before", path.display())
    })
}

/// Removes this process's parts (workers `mine` of `workers`) of every checkpoint older than
/// the `keep` latest at which it has all of them, and each checkpoint directory left empty.
/// The first worker of each process calls it; it reads no checkpoint, only their names. (A
/// process may be a checkpoint or two ahead of another when it crashes: each keeps a few.)
/// Returns the parts removed: time, worker, workers and size.
pub fn prune(state: &Path, keep: usize, workers: usize, mine: &Range<usize>) -> io::Result<Vec<(Time, usize, usize, u64)>> {
    let listing = listing(state)?;
    let complete: Vec<Time> = listing.iter().filter(|(_, l)| l.has(workers, mine)).map(|(t, _)| *t).collect();
    let mut removed = Vec::new();
    let Some(&oldest_kept) = complete.iter().rev().nth(keep.saturating_sub(1)) else { return Ok(removed) };
    for (t, l) in listing.range(..oldest_kept) {
        for (n, present) in &l.parts {
            for w in present.iter().filter(|w| *n != workers || mine.contains(w)) {
                let path = part_path(state, *t, *w, *n);
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    Err(_) => {}
                    Ok(()) => removed.push((*t, *w, *n, len)),
                }
            }
        }
        for f in std::fs::read_dir(&l.dir).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        // (another process's parts may still be in it)
        let _ = std::fs::remove_dir(&l.dir);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(time: Time, worker: usize, workers: usize) -> Part {
        Part { time, worker, workers, definition: "d".into(), ..Part::default() }
    }

    #[test]
    fn each_process_finds_its_own_parts_and_another_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let (all, first, second) = (0..2, 0..1, 1..2);
        assert!(local_times(state, 2, &all).unwrap().is_empty());
        for w in 0..2 {
            write(state, &part(10, w, 2)).unwrap();
        }
        write(state, &part(20, 0, 2)).unwrap(); // worker 1 never wrote its part of 20
        assert_eq!(local_times(state, 2, &all).unwrap(), [10]);
        // processes of one worker each, with or without a shared directory: the first has 20 too
        assert_eq!(local_times(state, 2, &first).unwrap(), [10, 20]);
        assert_eq!(local_times(state, 2, &second).unwrap(), [10]);
        assert_eq!(load(state, 10, 1, 2, "d").unwrap().worker, 1);
        let e = local_times(state, 4, &(0..4)).unwrap_err().to_string();
        assert!(e.contains("written by 2 workers and this run has 4") && e.contains("restart = \"replay\""), "{e}");
        let e = load(state, 10, 0, 2, "other").unwrap_err().to_string();
        assert!(e.contains("other dataflows or parameters"), "{e}");
        for t in [30, 40] {
            for w in 0..2 {
                write(state, &part(t, w, 2)).unwrap();
            }
        }
        // Each process removes only its own parts; a directory goes once both have.
        prune(state, 2, 2, &first).unwrap();
        assert_eq!(local_times(state, 2, &first).unwrap(), [30, 40]);
        assert_eq!(local_times(state, 2, &second).unwrap(), [10, 30, 40]);
        prune(state, 2, 2, &second).unwrap();
        assert_eq!(listing(state).unwrap().keys().copied().collect::<Vec<_>>(), [30, 40]);
    }
}
