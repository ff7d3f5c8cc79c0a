//! Durable bindings of logical times to input offsets ("reclocking", after Materialize's
//! remap collection), so that a restarted streaming run gives every record the logical time it
//! had before the crash.
//!
//! A streaming run's times follow the clock, which a restart cannot reproduce. So before a
//! worker lets time `t` complete (before any sink can write it), it appends to its bindings log
//! the next offset of every partition it read at `t`, and syncs the file. A restart reads every
//! log in the directory, and re-reads each partition's records in the same slices at the same
//! times: the outputs of every time are then the same as the ones the crashed run computed —
//! and maybe wrote — so sinks can write past where they stopped without ever going back.
//!
//! Files: `<dir>/bindings/worker-<i>.log`, one line per partition and time,
//! `<time> <topic> <partition> <next offset>`. A torn last line (a crash mid-append) is
//! ignored: its time was never released. Bindings are keyed by partition, not worker, so a
//! restart with another number of workers in the same process still finds them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dataflows::Time;

use super::state_topic::StateTopic;

/// One partition's next offset after a time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    /// topic
    pub topic: String,
    /// partition
    pub partition: i32,
    /// the next offset to read after the time: every record before it belongs to this time or
    /// an earlier one
    pub next: i64,
}

/// The bindings of earlier runs, by partition: `(time, next offset)` in time order.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    by_partition: HashMap<(String, i32), Vec<(Time, i64)>>,
    /// the greatest bound time of any partition
    pub last: Option<Time>,
    /// after a checkpoint: where each partition it had read goes on
    from: HashMap<(String, i32), i64>,
}

impl Bindings {
    /// A restart from a checkpoint at `time`: only the bindings after it are read again, each
    /// partition from its offset in `offsets` (the checkpoint's).
    pub fn resume_after<'a>(&mut self, time: Time, offsets: impl IntoIterator<Item = &'a Bound>) {
        for v in self.by_partition.values_mut() {
            v.retain(|(t, _)| *t > time);
        }
        for b in offsets {
            self.from.insert((b.topic.clone(), b.partition), b.next);
        }
    }

    /// Where a checkpoint says a partition goes on, if it had been read.
    pub fn resumes_at(&self, topic: &str, partition: i32) -> Option<i64> {
        self.from.get(&(topic.to_string(), partition)).copied()
    }

    /// The bindings of one partition, oldest first.
    pub fn of(&self, topic: &str, partition: i32) -> Vec<(Time, i64)> {
        self.by_partition.get(&(topic.to_string(), partition)).cloned().unwrap_or_default()
    }
}

/// One worker's bindings log.
pub struct Reclock {
    file: File,
    path: PathBuf,
    line: String,
    index: usize,
    /// the state topic every binding also goes to, if any
    mirror: Option<Arc<StateTopic>>,
}

fn dir_of(state: &Path) -> PathBuf {
    state.join("bindings")
}

/// Reads every bindings log under `state`.
pub fn load(state: &Path) -> io::Result<Bindings> {
    let dir = dir_of(state);
    let mut bindings = Bindings::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(bindings),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", dir.display()))),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let mut reader = io::BufReader::new(File::open(&path)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            // A torn line (no newline: a crash mid-append) was never synced whole: skip it.
            let Some(whole) = line.strip_suffix(b"\n") else { break };
            let Some((time, topic, partition, next)) = parse(whole) else { continue };
            bindings.by_partition.entry((topic, partition)).or_default().push((time, next));
            bindings.last = bindings.last.max(Some(time));
        }
    }
    for list in bindings.by_partition.values_mut() {
        list.sort_unstable();
        list.dedup_by_key(|(t, _)| *t);
    }
    Ok(bindings)
}

fn parse(line: &[u8]) -> Option<(Time, String, i32, i64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut f = line.split(' ');
    let time = f.next()?.parse().ok()?;
    let topic = f.next()?.to_string();
    let partition = f.next()?.parse().ok()?;
    let next = f.next()?.parse().ok()?;
    f.next().is_none().then_some((time, topic, partition, next))
}

impl Reclock {
    /// Opens worker `index`'s log under `state` for appending; every binding also goes to
    /// `mirror`.
    pub fn open(state: &Path, index: usize, mirror: Option<Arc<StateTopic>>) -> io::Result<Reclock> {
        let dir = dir_of(state);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating the state directory {}: {e}", dir.display())))?;
        let path = dir.join(format!("worker-{index}.log"));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        // Cut a torn last line, so the next append starts a line of its own (a line is short:
        // the file's last few KiB hold it).
        let len = file.metadata()?.len();
        let from = len.saturating_sub(4096);
        let mut end = Vec::new();
        file.seek(io::SeekFrom::Start(from))?;
        file.read_to_end(&mut end)?;
        // (no newline in that much: not a torn line of ours, leave it)
        let whole = end.iter().rposition(|&b| b == b'\n').map_or(if from == 0 { 0 } else { len }, |i| from + i as u64 + 1);
        if whole < len {
            file.set_len(whole)?;
        }
        Ok(Reclock { file, path, line: String::new(), index, mirror })
    }

    /// Drops the lines a restart no longer needs once a checkpoint at `time` is complete: of
    /// the bindings at or before it, each partition keeps only its latest (so a replay from the
    /// beginning reads everything up to it at that one time, whose outputs the sinks already
    /// have); the later ones stay. The log is rewritten (temporary file, sync, rename), so it
    /// grows with the time since the last checkpoint, not with the run's age.
    pub fn compact_through(&mut self, time: Time) -> io::Result<()> {
        let err = |e: io::Error| io::Error::new(e.kind(), format!("compacting {}: {e}", self.path.display()));
        let mut text = Vec::new();
        File::open(&self.path).and_then(|mut f| f.read_to_end(&mut text)).map_err(err)?;
        let mut latest: HashMap<(String, i32), (Time, &[u8])> = HashMap::new();
        let mut after: Vec<&[u8]> = Vec::new();
        let mut dropped = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n').filter(|l| l.ends_with(b"\n")) {
            let Some((t, topic, partition, _)) = parse(&line[..line.len() - 1]) else { continue };
            if t > time {
                after.push(line);
            } else {
                match latest.get(&(topic.clone(), partition)) {
                    Some((u, _)) if *u > t => dropped.push((t, topic, partition)),
                    Some((u, _)) => {
                        if *u < t {
                            dropped.push((*u, topic.clone(), partition));
                        }
                        latest.insert((topic, partition), (t, line));
                    }
                    None => {
                        latest.insert((topic, partition), (t, line));
                    }
                }
            }
        }
        let mut kept: Vec<(Time, &[u8])> = latest.into_values().collect();
        kept.sort_unstable();
        let tmp = self.path.with_extension("compacting");
        let mut out = File::create(&tmp).map_err(err)?;
        for line in kept.iter().map(|(_, l)| *l).chain(after) {
            out.write_all(line).map_err(err)?;
        }
        out.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        self.file = OpenOptions::new().append(true).read(true).open(&self.path).map_err(err)?;
        if let Some(m) = &self.mirror {
            m.unbind(self.index, &dropped)?;
        }
        Ok(())
    }

    /// Makes `bounds` at `time` durable: when this returns, a restart reads them.
    pub fn bind(&mut self, time: Time, bounds: &[Bound]) -> io::Result<()> {
        if bounds.is_empty() {
            return Ok(());
        }
        self.line.clear();
        for b in bounds {
            use std::fmt::Write as _;
            let _ = writeln!(self.line, "{time} {} {} {}", b.topic, b.partition, b.next);
        }
        self.file
            .write_all(self.line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display())))?;
        if let Some(m) = &self.mirror {
            m.bind(self.index, time, bounds)?;
        }
        // (the logs are compacted at checkpoints; a debug log keeps every binding)
        for b in bounds {
            tracing::debug!(time, topic = b.topic.as_str(), partition = b.partition, next = b.next, "bound");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Bounds of one time, by topic then partition, for tests and tools.
    fn by_time(bindings: &Bindings) -> BTreeMap<Time, Vec<Bound>> {
        let mut out: BTreeMap<Time, Vec<Bound>> = BTreeMap::new();
        for ((topic, partition), list) in &bindings.by_partition {
            for &(t, next) in list {
                out.entry(t).or_default().push(Bound { topic: topic.clone(), partition: *partition, next });
            }
        }
        out
    }

    #[test]
    fn bindings_survive_a_torn_line_and_are_keyed_by_partition() {
        let dir = std::env::temp_dir().join(format!("diffstream-reclock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = Reclock::open(&dir, 0, None).unwrap();
        a.bind(5, &[Bound { topic: "clicks".into(), partition: 0, next: 10 }]).unwrap();
        a.bind(9, &[Bound { topic: "clicks".into(), partition: 0, next: 12 }]).unwrap();
        let mut b = Reclock::open(&dir, 1, None).unwrap();
        b.bind(7, &[Bound { topic: "clicks".into(), partition: 1, next: 3 }]).unwrap();
        // a crash mid-append
        std::fs::OpenOptions::new().append(true).open(dir.join("bindings/worker-1.log")).unwrap().write_all(b"11 clicks 1").unwrap();
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.of("clicks", 1), vec![(7, 3)]);
        // reopening cuts the torn line; the next binding is whole
        Reclock::open(&dir, 1, None).unwrap().bind(12, &[Bound { topic: "clicks".into(), partition: 1, next: 4 }]).unwrap();
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.of("clicks", 0), vec![(5, 10), (9, 12)]);
        assert_eq!(loaded.of("clicks", 1), vec![(7, 3), (12, 4)]);
        assert_eq!(loaded.last, Some(12));
        assert_eq!(by_time(&loaded).len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_keeps_each_partitions_latest_binding_through_a_checkpoint_and_all_after() {
        let dir = std::env::temp_dir().join(format!("diffstream-reclock-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Reclock::open(&dir, 0, None).unwrap();
        let b = |p: i32, next: i64| Bound { topic: "clicks".into(), partition: p, next };
        r.bind(1, &[b(0, 5), b(1, 2)]).unwrap();
        r.bind(2, &[b(0, 9)]).unwrap();
        r.bind(4, &[b(0, 12), b(1, 7)]).unwrap();
        r.bind(6, &[b(1, 8)]).unwrap();
        r.compact_through(3).unwrap();
        // appends go on after the rewrite
        r.bind(8, &[b(0, 20)]).unwrap();
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.of("clicks", 0), vec![(2, 9), (4, 12), (8, 20)]);
        assert_eq!(loaded.of("clicks", 1), vec![(1, 2), (4, 7), (6, 8)]);
        let lines = std::fs::read_to_string(dir.join("bindings/worker-0.log")).unwrap().lines().count();
        assert_eq!(lines, 6, "two lines at or before the checkpoint, four after");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
