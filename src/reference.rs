//! A plain single-threaded implementation of the three dataflows with `HashMap`s: no timely,
//! no differential (the same fast hasher the engine's operators use). It is the oracle of the property tests, so it follows the engine's documented semantics to the letter: the same decoding
//! and dead letters, latest profile by source position, and the watermark advanced once per
//! batch of `batch_size` lines, and window sums kept as order-independent `ExactSum`s.

use std::collections::BTreeMap;

use dataflows::ops::FastMap;

use dataflows::records::{
    AnomalyAlert, DeadLetter, EventTypeCount, Id, Millis, Position, SharedText, UserActivity, UserEventCount, WindowMetric, F64,
};
use dataflows::sensor_metrics::ExactSum;
use dataflows::{Dataflow, InputName, SensorParams};

use crate::codec::{self, OutputRow};

#[derive(Default)]
struct Window {
    count: u64,
    sum: ExactSum,
    min: f64,
    max: f64,
    anomalies: u64,
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
    pub fn batch(&mut self, input: InputName, lines: &[(u64, &[u8])], params: &SensorParams) {
        let dead = |pos: Position, reason: String, raw: &[u8]| DeadLetter {
            input: input.as_str().to_string(),
            position: pos,
            reason,
            raw: raw.to_vec(),
            key: None,
        };
        match input {
            // (the reference recomputes the built-in dataflows; SQL views have their own)
            InputName::Table(_) => {}
            InputName::Users => {
                for &(n, raw) in lines {
                    match codec::decode_user(raw, Position::Line(n)) {
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
            InputName::Clicks => {
                for &(n, raw) in lines {
                    match codec::decode_click(raw) {
                        Ok(c) => {
                            *self.per_user.entry(c.user_id).or_default() += 1;
                            *self.per_event.entry(c.event).or_default() += 1;
                        }
                        Err(r) => self.dead.push(dead(Position::Line(n), r, raw)),
                    }
                }
            }
            InputName::Sensors => {
                let w = self.max_ts.map(|m| m - params.allowed_lateness_ms);
                for &(n, raw) in lines {
                    let r = match codec::decode_reading(raw, Position::Line(n)) {
                        Ok(r) => r,
                        Err(reason) => {
                            self.dead.push(dead(Position::Line(n), reason, raw));
                            continue;
                        }
                    };
                    self.max_ts = Some(self.max_ts.map_or(r.timestamp, |m| m.max(r.timestamp)));
                    if params.is_late(r.timestamp, w) {
                        self.dead.push(dead(Position::Line(n), "late".into(), raw));
                        continue;
                    }
                    for start in params.window_starts(r.timestamp) {
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
                    if let Some(alert_type) = params.alert_type(&r) {
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
        }
    }

    /// The final rows of every output of `dataflows` (and the dead letters), as the engine's
    /// snapshot files would hold them: output name → sorted `(key, row)` JSON text.
    pub fn snapshot(&self, dataflows: &[Dataflow], size_ms: i64) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut put = |name: &str, row: &dyn OutputRow| {
            out.entry(name.to_string()).or_default().insert(row.key(), row.row());
        };
        let has = |d| dataflows.contains(&d);
        if has(Dataflow::UserEventCounts) {
            for (u, n) in &self.per_user {
                put("user_event_counts", &UserEventCount { user_id: u.clone(), event_count: *n });
            }
            for (e, n) in &self.per_event {
                put("event_type_counts", &EventTypeCount { event: e.clone(), count: *n });
            }
        }
        if has(Dataflow::UserActivity) {
            for (u, (_, name, email)) in &self.profiles {
                if let Some(n) = self.per_user.get(u) {
                    put("user_activity", &UserActivity { user_id: u.clone(), name: name.clone(), email: email.clone(), event_count: *n });
                }
            }
        }
        if has(Dataflow::SensorMetrics) {
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
            for o in d.outputs() {
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
    inputs: &BTreeMap<InputName, Vec<u8>>,
    dataflows: &[Dataflow],
    params: &SensorParams,
    batch_size: usize,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut r = Reference::default();
    let needed: Vec<InputName> = InputName::ALL.into_iter().filter(|i| dataflows.iter().any(|d| d.inputs().contains(i))).collect();
    let lines: BTreeMap<InputName, Vec<(u64, &[u8])>> =
        needed.iter().filter_map(|i| inputs.get(i).map(|text| (*i, split_lines(text)))).collect();
    let mut next: BTreeMap<InputName, usize> = lines.keys().map(|i| (*i, 0)).collect();
    let mut hi = 0u64;
    while next.iter().any(|(i, at)| *at < lines[i].len()) {
        hi += batch_size as u64;
        for (input, ls) in &lines {
            let at = next.get_mut(input).expect("every input has a cursor");
            let end = *at + ls[*at..].partition_point(|(n, _)| *n <= hi);
            r.batch(*input, &ls[*at..end], params);
            *at = end;
        }
    }
    r.snapshot(dataflows, params.size_ms)
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
