//! A plain single-threaded implementation of the three shipped dataflows with `HashMap`s: no
//! timely, no differential, no SQL (the same fast hasher the engine's operators use). It is the
//! oracle of the property tests, so it follows the engine's documented semantics to the
//! letter: the same dead letters, latest profile by source position, the watermark advanced
//! once per batch of `batch_size` lines, and window sums kept as order-independent
//! `ExactSum`s. It reads and writes the records with serde derive ([`records`]), apart from
//! the engine's SQL decoder and view encoding; it shares the engine's time spellings
//! (`codec::parse_time_str`) and its error classes. Readings beyond the exact sums' range
//! (±10¹⁸), a dead letter of the windows' view in the engine, are not modelled.

pub mod records;

use std::collections::BTreeMap;

use dataflows::ops::FastMap;
use dataflows::records::{DeadLetter, Millis, Position};
use dataflows::sql::exact::ExactSum;

use crate::codec::OutputRow;
use crate::config::builtin::SensorParams;
use records::{AlertType, AnomalyAlert, EventTypeCount, Id, Reading, SharedText, UserActivity, UserEventCount, WindowMetric, F64};

/// One window's aggregates (the bench baseline keeps the same).
#[derive(Default)]
pub(crate) struct Window {
    pub(crate) count: u64,
    pub(crate) sum: ExactSum,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) anomalies: u64,
}

/// The state of all three computations.
#[derive(Default)]
pub struct Reference {
    profiles: FastMap<Id, (Position, SharedText, SharedText)>,
    per_user: FastMap<Id, i64>,
    per_event: FastMap<String, i64>,
    windows: FastMap<(String, String, Millis), Window>,
    alerts: Vec<AnomalyAlert>,
    dead: Vec<DeadLetter>,
    max_ts: Option<Millis>,
}

impl Reference {
    /// Feeds one batch of raw lines of `input` (`(line number, bytes)`).
    pub fn batch(&mut self, input: &str, lines: &[(u64, &[u8])], params: &SensorParams) {
        let dead = |pos: Position, reason: String, raw: &[u8]| DeadLetter {
            input: input.to_string(),
            position: pos,
            reason,
            raw: raw.to_vec(),
            key: None,
        };
        match input {
            "users" => {
                for &(n, raw) in lines {
                    match records::decode_user(raw, Position::Line(n)) {
                        Ok(u) => {
                            let e = self.profiles.entry(u.user_id).or_insert((u.position.clone(), u.name.clone(), u.email.clone()));
                            if u.position >= e.0 {
                                *e = (u.position, u.name, u.email);
                            }
                        }
                        Err(r) => self.dead.push(dead(Position::Line(n), r, raw)),
                    }
                }
            }
            "clicks" => {
                for &(n, raw) in lines {
                    match records::decode_click(raw) {
                        Ok(c) => {
                            *self.per_user.entry(c.user_id).or_default() += 1;
                            *self.per_event.entry(c.event).or_default() += 1;
                        }
                        Err(r) => self.dead.push(dead(Position::Line(n), r, raw)),
                    }
                }
            }
            "sensors" => {
                let w = self.max_ts.map(|m| m - params.allowed_lateness_ms);
                for &(n, raw) in lines {
                    let r = match records::decode_reading(raw, Position::Line(n)) {
                        Ok(r) => r,
                        Err(reason) => {
                            self.dead.push(dead(Position::Line(n), reason, raw));
                            continue;
                        }
                    };
                    self.max_ts = Some(self.max_ts.map_or(r.timestamp, |m| m.max(r.timestamp)));
                    if is_late(params, r.timestamp, w) {
                        self.dead.push(dead(Position::Line(n), "late".into(), raw));
                        continue;
                    }
                    for start in window_starts(params, r.timestamp) {
                        let win = self.windows.entry((r.sensor_type.clone(), r.location.clone(), start)).or_default();
                        if win.count == 0 {
                            win.min = r.value.0;
                            win.max = r.value.0;
                        }
                        win.count += 1;
                        win.sum.add(r.value.0);
                        win.min = win.min.min(r.value.0);
                        win.max = win.max.max(r.value.0);
                        win.anomalies += u64::from(r.anomaly);
                    }
                    if let Some(alert_type) = alert_type(params, &r) {
                        self.alerts.push(AnomalyAlert {
                            sensor_id: r.sensor_id,
                            sensor_type: r.sensor_type,
                            location: r.location,
                            value: r.value,
                            timestamp: r.timestamp,
                            alert_type,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// The final rows of every output of `dataflows` (and the dead letters), as the engine's
    /// snapshot files would hold them: output name → sorted `(key, row)` JSON text.
    pub fn snapshot(&self, dataflows: &[&str], size_ms: i64) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut put = |name: &str, row: &dyn OutputRow| {
            out.entry(name.to_string()).or_default().insert(row.key(), row.row());
        };
        let has = |d| dataflows.contains(&d);
        if has("user_event_counts") {
            for (u, n) in &self.per_user {
                put("user_event_counts", &UserEventCount { user_id: u.clone(), event_count: *n });
            }
            for (e, n) in &self.per_event {
                put("event_type_counts", &EventTypeCount { event: e.clone(), count: *n });
            }
        }
        if has("user_activity") {
            for (u, (_, name, email)) in &self.profiles {
                if let Some(n) = self.per_user.get(u) {
                    put("user_activity", &UserActivity { user_id: u.clone(), name: name.clone(), email: email.clone(), event_count: *n });
                }
            }
        }
        if has("sensor_metrics") {
            for ((t, l, s), w) in &self.windows {
                put(
                    "sensor_window_metrics",
                    &WindowMetric {
                        sensor_type: t.clone(),
                        location: l.clone(),
                        window_start: *s,
                        window_end: s + size_ms,
                        count: w.count,
                        avg: F64(w.sum.value() / w.count as f64),
                        min: F64(w.min),
                        max: F64(w.max),
                        anomaly_count: w.anomalies,
                    },
                );
            }
            for a in &self.alerts {
                put("anomaly_alerts", a);
            }
        }
        for d in &self.dead {
            put("dead_letters", d);
        }
        for d in dataflows {
            for o in crate::config::builtin::outputs(d) {
                out.entry(o.to_string()).or_default();
            }
        }
        out.entry("dead_letters".to_string()).or_default();
        out
    }
}

/// Runs the reference over whole JSON Lines texts, `batch_size` lines per batch in lockstep
/// across inputs, as the engine batches files.
pub fn run(
    inputs: &BTreeMap<String, Vec<u8>>,
    dataflows: &[&str],
    params: &SensorParams,
    batch_size: usize,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut r = Reference::default();
    let needed = |i: &str| dataflows.iter().any(|d| crate::config::builtin::inputs(d).contains(&i));
    let lines: BTreeMap<&str, Vec<(u64, &[u8])>> =
        inputs.iter().filter(|(i, _)| needed(i)).map(|(i, text)| (i.as_str(), split_lines(text))).collect();
    let mut next: BTreeMap<&str, usize> = lines.keys().map(|i| (*i, 0)).collect();
    let mut hi = 0u64;
    while next.iter().any(|(i, at)| *at < lines[i].len()) {
        hi += batch_size as u64;
        for (input, ls) in &lines {
            let at = next.get_mut(input).expect("every input has a cursor");
            let end = *at + ls[*at..].partition_point(|(n, _)| *n <= hi);
            r.batch(input, &ls[*at..end], params);
            *at = end;
        }
    }
    r.snapshot(dataflows, params.size_ms)
}

/// Start of the latest window containing `ts`.
fn last_start(p: &SensorParams, ts: Millis) -> Millis {
    ts.div_euclid(p.slide_ms) * p.slide_ms
}

/// Starts of every window containing `ts`, oldest first.
pub fn window_starts(p: &SensorParams, ts: Millis) -> impl Iterator<Item = Millis> + '_ {
    let last = last_start(p, ts);
    let first = last - p.size_ms + p.slide_ms;
    (0..p.size_ms / p.slide_ms).map(move |k| first + k * p.slide_ms)
}

/// Whether a reading at `ts` is late under watermark `w`: its oldest window is final.
pub fn is_late(p: &SensorParams, ts: Millis, w: Option<Millis>) -> bool {
    let oldest_end = last_start(p, ts) + p.slide_ms;
    matches!(w, Some(w) if oldest_end <= w)
}

/// The alert a reading raises, if any.
pub fn alert_type(p: &SensorParams, r: &Reading) -> Option<AlertType> {
    let range = p.normal_ranges.iter().find(|(t, _, _)| *t == r.sensor_type);
    match range {
        Some((_, _, hi)) if r.value.0 > *hi => Some(AlertType::High),
        Some((_, lo, _)) if r.value.0 < *lo => Some(AlertType::Low),
        _ if r.anomaly => Some(AlertType::Flagged),
        _ => None,
    }
}

/// `(1-based line number, line)` of every non-blank line.
pub fn split_lines(text: &[u8]) -> Vec<(u64, &[u8])> {
    let mut body = text;
    if body.last() == Some(&b'\n') {
        body = &body[..body.len() - 1];
    }
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}
