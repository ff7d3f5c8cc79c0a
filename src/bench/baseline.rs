//! The baseline `bench` measures the engine against: what a data engineer would write by hand
//! for the same jobs, as fast as plain code can be — one thread, each file streamed line by
//! line into a reused buffer, serde_json into borrowed fields, a fast hash map, and at the end
//! the same snapshot files the engine writes (sorted by key), so that the two can be compared
//! byte for byte. It applies the engine's documented semantics (latest profile by line, the
//! watermark advanced once per batch of `batch_size` lines, late readings and malformed lines
//! as dead letters); it is a benchmark baseline, not a test oracle.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use dataflows::ops::FastMap;
use dataflows::records::{DeadLetter, Millis, Position};

use crate::codec::OutputRow;
use crate::config::builtin::SensorParams;
use crate::reference::records::{
    self as codec, AnomalyAlert, EventTypeCount, Id, SharedText, UserActivity, UserEventCount, WindowMetric, F64,
};
use crate::reference::Window;

/// Calls `each(line number, line)` for every non-blank line of `path`.
fn for_each_line(path: &Path, mut each: impl FnMut(u64, &[u8])) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        n += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            each(n, line);
        }
    }
}

fn dead(input: &str, line: u64, reason: String, raw: &[u8]) -> DeadLetter {
    DeadLetter { input: input.to_string(), position: Position::Line(line), reason, raw: raw.to_vec(), key: None }
}

/// Writes `dir/<name>.jsonl`: the rows sorted by key.
fn write(dir: &Path, name: &str, rows: impl Iterator<Item = (String, String)>) -> io::Result<()> {
    let mut rows: Vec<(String, String)> = rows.collect();
    rows.sort_unstable();
    let mut w = BufWriter::new(File::create(dir.join(format!("{name}.jsonl")))?);
    for (_, row) in rows {
        w.write_all(row.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

fn encoded<R: OutputRow>(r: &R) -> (String, String) {
    (r.key(), r.row())
}

/// `user_event_counts`, `event_type_counts` and `user_activity` (with the dead letters).
pub fn clicks(users: &Path, clicks: &Path, out: &Path) -> io::Result<()> {
    let mut profiles: FastMap<Id, (u64, SharedText, SharedText)> = FastMap::default();
    let mut per_user: FastMap<Id, i64> = FastMap::default();
    let mut per_event: FastMap<String, i64> = FastMap::default();
    let mut dead_letters = Vec::new();
    for_each_line(users, |n, line| match codec::decode_user(line, Position::Line(n)) {
        // Lines come in order, so a later line is a later version.
        Ok(u) => {
            profiles.insert(u.user_id, (n, u.name, u.email));
        }
        Err(reason) => dead_letters.push(dead("users", n, reason, line)),
    })?;
    for_each_line(clicks, |n, line| match codec::decode_click(line) {
        Ok(c) => {
            *per_user.entry(c.user_id).or_default() += 1;
            match per_event.get_mut(c.event.as_str()) {
                Some(k) => *k += 1,
                None => {
                    per_event.insert(c.event, 1);
                }
            }
        }
        Err(reason) => dead_letters.push(dead("clicks", n, reason, line)),
    })?;
    std::fs::create_dir_all(out)?;
    write(out, "user_event_counts", per_user.iter().map(|(u, n)| encoded(&UserEventCount { user_id: u.clone(), event_count: *n })))?;
    write(out, "event_type_counts", per_event.iter().map(|(e, n)| encoded(&EventTypeCount { event: e.clone(), count: *n })))?;
    write(
        out,
        "user_activity",
        profiles.iter().filter_map(|(u, (_, name, email))| {
            let n = per_user.get(u)?;
            Some(encoded(&UserActivity { user_id: u.clone(), name: name.clone(), email: email.clone(), event_count: *n }))
        }),
    )?;
    write(out, "dead_letters", dead_letters.iter().map(encoded))
}

/// `sensor_window_metrics` and `anomaly_alerts` (with the dead letters), the watermark moving
/// once per `batch` lines as the engine's does for a file.
pub fn sensors(sensors: &Path, batch: u64, p: &SensorParams, out: &Path) -> io::Result<()> {
    let mut windows: FastMap<(String, String, Millis), Window> = FastMap::default();
    let mut alerts = Vec::new();
    let mut dead_letters = Vec::new();
    let (mut max_ts, mut batch_max): (Option<Millis>, Option<Millis>) = (None, None);
    let mut batch_no = 0;
    for_each_line(sensors, |n, line| {
        if (n - 1) / batch != batch_no {
            batch_no = (n - 1) / batch;
            max_ts = max_ts.max(batch_max);
        }
        let r = match codec::decode_reading(line, Position::Line(n)) {
            Ok(r) => r,
            Err(reason) => return dead_letters.push(dead("sensors", n, reason, line)),
        };
        batch_max = batch_max.max(Some(r.timestamp));
        if crate::reference::is_late(p, r.timestamp, max_ts.map(|m| m - p.allowed_lateness_ms)) {
            return dead_letters.push(dead("sensors", n, "late".into(), line));
        }
        if let Some(alert_type) = crate::reference::alert_type(p, &r) {
            alerts.push(AnomalyAlert {
                sensor_id: r.sensor_id,
                sensor_type: r.sensor_type.clone(),
                location: r.location.clone(),
                value: r.value,
                timestamp: r.timestamp,
                alert_type,
            });
        }
        for start in crate::reference::window_starts(p, r.timestamp) {
            let w = windows.entry((r.sensor_type.clone(), r.location.clone(), start)).or_default();
            if w.count == 0 {
                (w.min, w.max) = (r.value.0, r.value.0);
            }
            w.count += 1;
            w.sum.add(r.value.0);
            w.min = w.min.min(r.value.0);
            w.max = w.max.max(r.value.0);
            w.anomalies += u64::from(r.anomaly);
        }
    })?;
    std::fs::create_dir_all(out)?;
    write(
        out,
        "sensor_window_metrics",
        windows.iter().map(|((t, l, s), w)| {
            encoded(&WindowMetric {
                sensor_type: t.clone(),
                location: l.clone(),
                window_start: *s,
                window_end: s + p.size_ms,
                count: w.count,
                avg: F64(w.sum.value() / w.count as f64),
                min: F64(w.min),
                max: F64(w.max),
                anomaly_count: w.anomalies,
            })
        }),
    )?;
    write(out, "anomaly_alerts", alerts.iter().map(encoded))?;
    write(out, "dead_letters", dead_letters.iter().map(encoded))
}
