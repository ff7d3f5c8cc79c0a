//! `sensor_metrics`: count/avg/min/max per sensor type and location in event-time windows,
//! with allowed lateness, plus anomaly alerts.
//!
//! ```text
//!                 ┌─▶ EventTimeMax ─▶ broadcast ──────────────┬──────────────┐ (max event time per logical time)
//! sensors ────────┴─▶ ClassifyLateness ◀──────────────────────┘              │
//!                       │ accepted               │ late ─▶ dead letters      │
//!                       ├─▶ alerts ─▶ anomaly_alerts                         │
//!                       └─▶ PreAggregate ─▶ exchange(type, location) ─▶ Windows ◀┘ ─▶ sensor_window_metrics
//! ```
//!
//! Time: every input batch `b` (a reading's [`Reading::batch`]; a logical time holds one or
//! several consecutive batches) has a global maximum event time. The watermark after `b` is
//! `W(b) = max event time over all batches ≤ b − allowed_lateness`, the same on every worker
//! and process, since every worker sees the broadcast maxima. A reading of batch `b` is judged
//! against `W(b−1)`: when the earliest window that contains it has `end ≤ W(b−1)` it is `late`,
//! goes to the dead letters and changes nothing (not its windows, not the alerts). Sliding
//! windows accept or reject a reading as a whole, so each reading lands in all its windows or
//! in the dead letters, never in part.
//!
//! Windows are aligned to the UNIX epoch: `[k·slide, k·slide + size)`; tumbling is
//! `slide == size`. A window row is retracted and re-inserted whenever a batch adds readings
//! to it, and is final once `W ≥ end`; its state is then dropped, so memory holds only the
//! open windows however long the stream runs. Sums are kept as [`ExactSum`]s, so `avg` does not
//! depend on the order readings arrive in, the worker count or the batching.
//!
//! Alerts fire for accepted readings whose status is `anomaly` or whose value lies outside
//! the type's inclusive normal range: `high` above, `low` below, `flagged` otherwise.

use std::cell::Cell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use std::rc::Rc;

use differential_dataflow::{AsCollection, Hashable};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::OkErr;

use crate::ops::{stash_by_time, FastMap, Stash};
use crate::records::{AlertType, AnomalyAlert, DeadLetter, Millis, Raw, Reading, WindowMetric, F64};
use crate::watermark::{batch_maxima, event_time_max, judge, least, read_maxima, Maxima};
use crate::{Coll, Time};

/// Parameters of the sensor dataflow.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorParams {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// Distance between window starts; equal to `size_ms` for tumbling windows. Divides `size_ms`.
    pub slide_ms: i64,
    /// How far behind the greatest event time a reading may be and still count.
    pub allowed_lateness_ms: i64,
    /// Inclusive normal range per sensor type; types not listed only alert when flagged.
    pub normal_ranges: Vec<(String, f64, f64)>,
    /// How far ahead of the clock a reading's event time may be (a stream's logical time, or
    /// when a file's run began); a reading further ahead is a dead letter (`future`), decided
    /// by the runtime before the dataflow, and never moves the watermark.
    pub max_future_ms: i64,
}

impl Default for SensorParams {
    fn default() -> Self {
        SensorParams {
            size_ms: 60_000,
            slide_ms: 60_000,
            allowed_lateness_ms: 30_000,
            normal_ranges: default_normal_ranges(),
            max_future_ms: 3_600_000,
        }
    }
}

/// The normal ranges the IoT producers use.
pub fn default_normal_ranges() -> Vec<(String, f64, f64)> {
    [
        ("temperature", 15.0, 25.0),
        ("humidity", 40.0, 60.0),
        ("pressure", 1000.0, 1020.0),
        ("vibration", 0.1, 1.0),
        ("voltage", 220.0, 230.0),
        ("current", 1.0, 5.0),
    ]
    .into_iter()
    .map(|(t, lo, hi)| (t.to_string(), lo, hi))
    .collect()
}

impl SensorParams {
    /// Start of the latest window containing `ts`.
    fn last_start(&self, ts: Millis) -> Millis {
        ts.div_euclid(self.slide_ms) * self.slide_ms
    }
    /// Starts of every window containing `ts`, oldest first.
    pub fn window_starts(&self, ts: Millis) -> impl Iterator<Item = Millis> + '_ {
        let last = self.last_start(ts);
        let first = last - self.size_ms + self.slide_ms;
        (0..self.size_ms / self.slide_ms).map(move |k| first + k * self.slide_ms)
    }
    /// Whether a reading at `ts` is late under watermark `w`: its oldest window is final.
    pub fn is_late(&self, ts: Millis, w: Option<Millis>) -> bool {
        let oldest_end = self.last_start(ts) + self.slide_ms;
        matches!(w, Some(w) if oldest_end <= w)
    }
    /// The alert a reading raises, if any.
    pub fn alert_type(&self, r: &Reading) -> Option<AlertType> {
        let range = self.normal_ranges.iter().find(|(t, _, _)| *t == r.sensor_type);
        match range {
            Some((_, _, hi)) if r.value.0 > *hi => Some(AlertType::High),
            Some((_, lo, _)) if r.value.0 < *lo => Some(AlertType::Low),
            _ if r.anomaly => Some(AlertType::Flagged),
            _ => None,
        }
    }
}

/// The current watermark as this worker knows it, for status output.
#[derive(Clone, Debug, Default)]
pub struct Watermark(Rc<Cell<Option<Millis>>>);

impl Watermark {
    /// `None` until the first reading has been seen.
    pub fn get(&self) -> Option<Millis> {
        self.0.get()
    }
}

/// A restart from a checkpoint: the readings of the windows that were open at the checkpoint
/// time, inserted at that time (with it as their batch), and the watermark then. They skip
/// lateness and alerts (both were decided before the checkpoint), count towards the watermark,
/// and fill only the windows that were still open.
pub struct Restored<'s> {
    /// the readings, at the checkpoint time
    pub readings: Coll<'s, Reading>,
    /// the watermark at the checkpoint time: windows ending at or before it were final
    pub watermark: Millis,
}

/// The readings a checkpoint keeps: those with a window still open, and the greatest event
/// time so far (the watermark plus the allowed lateness).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenReadings {
    /// greatest event time of any reading
    pub max: Option<Millis>,
    /// accepted readings with a window still open
    pub readings: Vec<Reading>,
}

/// A worker's states of [`OpenReadings`] at checkpoint times, shared with the runtime.
pub type OpenReadingsLog = Rc<std::cell::RefCell<crate::checkpoint::Snapshots<OpenReadings>>>;

/// What `sensor_metrics` produces.
pub struct SensorOutputs<'s> {
    /// `sensor_window_metrics`
    pub window_metrics: Coll<'s, WindowMetric>,
    /// `anomaly_alerts`
    pub alerts: Coll<'s, AnomalyAlert>,
    /// late readings, with their raw bytes
    pub late: Coll<'s, DeadLetter>,
    /// the watermark, for observation
    pub watermark: Watermark,
    /// with checkpoints: this worker's open-window readings at each checkpoint time
    pub open_readings: Option<OpenReadingsLog>,
}

/// Builds the dataflow. `readings` carries each reading with its raw bytes, which are kept only
/// until lateness is decided. `restored` is a checkpoint's state; with `checkpoint_every`, the
/// readings that a checkpoint needs are kept at its multiples ([`SensorOutputs::open_readings`]).
pub fn sensor_metrics<'s>(
    readings: Coll<'s, (Reading, Raw)>,
    restored: Option<Restored<'s>>,
    params: &SensorParams,
    checkpoint_every: Option<Time>,
) -> SensorOutputs<'s> {
    let watermark = Watermark::default();
    let (restored, floor) = match restored {
        Some(r) => (Some(r.readings), r.watermark),
        None => (None, Millis::MIN),
    };
    // The greatest event time of each input batch in each container, at its time, sent to
    // every worker as `(batch, max)`. The readings pass through the same operator (one
    // consumer of the input: a second would make timely clone every reading with its bytes).
    let (readings, maxima) = event_time_max(readings, |(r, _): &(Reading, Raw)| (r.batch, r.timestamp));
    let maxima = match &restored {
        Some(r) => {
            let restored_maxima = r
                .inner
                .clone()
                .unary(Pipeline, "RestoredEventTimeMax", |_cap, _info| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let per_batch = batch_maxima(data.flat_map(|c| c.iter()).map(|(r, t, _)| (*t, r.batch, r.timestamp)));
                            for ((t, b), m) in per_batch {
                                output.session(&cap.delayed(&t, output.output_index())).give((b, m));
                            }
                        });
                    }
                })
                .container::<Vec<(u64, Millis)>>();
            timely::dataflow::operators::core::Concat::concat(maxima, restored_maxima)
        }
        None => maxima,
    }
    .broadcast();

    let p = params.clone();
    let stamp = |(r, _): &(Reading, Raw)| (r.batch, r.timestamp);
    let slide = params.slide_ms;
    let oldest_end = move |ts| crate::watermark::final_end(&[slide], ts);
    let classified = judge(readings, maxima.clone(), stamp, params.allowed_lateness_ms, oldest_end, move |(reading, raw), late, out| {
        if late {
            let dead = DeadLetter {
                input: "sensors".to_string(),
                position: reading.position,
                reason: "late".to_string(),
                raw: raw.bytes,
                key: raw.key,
            };
            out(Classified::Late(dead));
            return;
        }
        if let Some(alert_type) = p.alert_type(&reading) {
            let alert = AnomalyAlert {
                sensor_id: reading.sensor_id.clone(),
                sensor_type: reading.sensor_type.clone(),
                location: reading.location.clone(),
                value: reading.value,
                timestamp: reading.timestamp,
                alert_type,
            };
            out(Classified::Alert(alert));
        }
        out(Classified::Accepted(reading));
    });
    let (accepted, rest) = classified.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(c, t, r)| match c {
        Classified::Accepted(reading) => Ok((reading, t, r)),
        other => Err((other, t, r)),
    });
    let (alerts, late) = rest.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(c, t, r)| match c {
        Classified::Alert(a) => Ok((a, t, r)),
        Classified::Late(d) => Err((d, t, r)),
        Classified::Accepted(_) => unreachable!("split off above"),
    });
    let accepted: Coll<'s, Reading> = accepted.as_collection();
    let accepted = match restored {
        Some(r) => accepted.concat(r),
        None => accepted,
    };
    let alerts: Coll<'s, AnomalyAlert> = alerts.as_collection();
    let open_readings = checkpoint_every.map(|every| keep_open_readings(accepted.clone(), params, every));

    // Each worker folds its accepted readings of a container into one partial aggregate per
    // (time, type, location, window) before the exchange: the windows' worker gets a few
    // partials per batch instead of every reading with its strings (and merges them exactly:
    // `ExactSum`s add associatively, min and max are order-free).
    let partials = pre_aggregate(accepted, params, floor);
    let window_params = params.clone();
    let wm = watermark.clone();
    let exchange = Exchange::new(|(w, _t, _d): &(Partial, Time, isize)| (&w.sensor_type, &w.location).hashed());
    let size = crate::state::StateSize::new("sensor_metrics", "Windows");
    let window_metrics = partials
        .binary_frontier(maxima, exchange, Pipeline, "Windows", move |_cap, _info| {
            let p = window_params;
            let mut pending: Stash<Partial> = BTreeMap::new();
            let mut maxima = Maxima::default();
            let mut windows = Windows::default();
            move |(input, frontier), (max_input, max_frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                read_maxima(max_input, &mut maxima, false);
                // Times below `done` are complete on both inputs.
                let done = match (least(frontier), least(max_frontier)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let closed = |t: &Time| done.is_none_or(|d| *t < d);
                while pending.first_key_value().is_some_and(|(t, _)| closed(t)) {
                    let (t, (cap, records)) = pending.pop_first().expect("checked");
                    for (w, diff) in records {
                        debug_assert_eq!(diff, 1, "partials are inserted once");
                        let group = windows.groups.get(&w.sensor_type, &w.location);
                        windows.merge(w.start, group, &w.agg);
                    }
                    // Each window the batch touched: retract its old row, insert the new one.
                    let mut session = output.session(&cap);
                    for (start, group) in windows.touched.drain(..) {
                        let slot = windows.open.get_mut(&start).and_then(|g| g.get_mut(&group)).expect("a touched window is open");
                        let (ty, loc) = &windows.groups.names[group as usize];
                        if let Some(Some(old)) = slot.before.take() {
                            session.give((old.row(ty, loc, start, p.size_ms), t, -1));
                        }
                        session.give((slot.agg.row(ty, loc, start, p.size_ms), t, 1));
                    }
                }
                // Retire final windows: everything below `done` has been applied. Windows are
                // indexed by start, so this costs what closes, not what is open.
                match done {
                    Some(d) => {
                        if let Some(w) = maxima.max_before(d).map(|m| m - p.allowed_lateness_ms) {
                            while windows.open.first_key_value().is_some_and(|(start, _)| start + p.size_ms <= w) {
                                windows.open.pop_first();
                            }
                            wm.0.set(Some(w));
                        }
                        maxima.compact(d);
                    }
                    None => {
                        windows.open.clear();
                        if let Some(m) = maxima.max_before(Time::MAX) {
                            wm.0.set(Some(m - p.allowed_lateness_ms));
                        }
                    }
                }
                size.set(windows.open.values().map(|g| g.len()).sum());
            }
        })
        .container::<Vec<(WindowMetric, Time, isize)>>()
        .as_collection();

    SensorOutputs { window_metrics, alerts, late: late.as_collection(), watermark, open_readings }
}

/// Accepted readings folded into one [`Partial`] per (time, sensor type, location, window
/// start) once the time is complete on this worker; windows that were final at a restored
/// checkpoint (ending at or before `floor`) are left out, a no-op for every reading but
/// restored ones.
fn pre_aggregate<'s>(
    accepted: Coll<'s, Reading>,
    params: &SensorParams,
    floor: Millis,
) -> timely::dataflow::Stream<'s, Time, Vec<(Partial, Time, isize)>> {
    let p = params.clone();
    accepted.inner.unary_frontier(Pipeline, "PreAggregate", move |_cap, _info| {
        let mut groups = Groups::default();
        let mut open: BTreeMap<Time, (timely::dataflow::operators::Capability<Time>, FastMap<(u32, Millis), Agg>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                for container in data {
                    for (r, t, diff) in container.drain(..) {
                        debug_assert!(diff > 0, "sensor readings are append-only");
                        let folded = &mut open.entry(t).or_insert_with(|| (cap.delayed(&t, 0), FastMap::default())).1;
                        let group = groups.get(&r.sensor_type, &r.location);
                        for start in p.window_starts(r.timestamp).filter(|s| s + p.size_ms > floor) {
                            folded.entry((group, start)).or_default().add(r.value.0, r.anomaly, diff as u64);
                        }
                    }
                }
            });
            while open.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                let (t, (cap, folded)) = open.pop_first().expect("checked");
                let mut session = output.session(&cap);
                for ((group, start), agg) in folded {
                    let (sensor_type, location) = &groups.names[group as usize];
                    session.give((Partial { sensor_type: sensor_type.clone(), location: location.clone(), start, agg }, t, 1));
                }
            }
        }
    })
}

/// Keeps the accepted readings that still have an open window (indexed by their newest
/// window's end, so pruning costs what closes) and the greatest event time, and records them
/// at every checkpoint time this worker passes.
fn keep_open_readings<'s>(accepted: Coll<'s, Reading>, params: &SensorParams, every: Time) -> OpenReadingsLog {
    let log: OpenReadingsLog = Rc::new(std::cell::RefCell::new(crate::checkpoint::Snapshots::new(every)));
    let out = log.clone();
    let p = params.clone();
    accepted.inner.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "OpenReadings",
        move |_cap, _info| {
            let mut pending: Stash<Reading> = BTreeMap::new();
            let mut kept: BTreeMap<Millis, Vec<Reading>> = BTreeMap::new();
            let mut max: Option<Millis> = None;
            move |(input, frontier), output| {
                stash_by_time(input, &mut pending, output.output_index());
                let state =
                    |kept: &BTreeMap<Millis, Vec<Reading>>, max| OpenReadings { max, readings: kept.values().flatten().cloned().collect() };
                while pending.first_key_value().is_some_and(|(t, _)| !frontier.less_equal(t)) {
                    let (t, (_cap, records)) = pending.pop_first().expect("checked");
                    log.borrow_mut().passed(t, || state(&kept, max));
                    for (r, _) in records {
                        max = max.max(Some(r.timestamp));
                        let newest_end = p.window_starts(r.timestamp).last().map_or(Millis::MIN, |s| s + p.size_ms);
                        kept.entry(newest_end).or_default().push(r);
                    }
                    if let Some(w) = max.map(|m| m - p.allowed_lateness_ms) {
                        while kept.first_key_value().is_some_and(|(end, _)| *end <= w) {
                            kept.pop_first();
                        }
                    }
                }
                match frontier.frontier().iter().min() {
                    Some(&bound) => log.borrow_mut().passed(bound, || state(&kept, max)),
                    None => log.borrow_mut().passed(Time::MAX, || state(&kept, max)),
                }
            }
        },
    );
    out
}

/// What `ClassifyLateness` decides for each reading.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Classified {
    Accepted(Reading),
    Alert(AnomalyAlert),
    Late(DeadLetter),
}

/// Group numbers of (sensor type, location) pairs seen, so that the hot path hashes borrowed
/// strings and allocates only for a new pair.
#[derive(Default)]
struct Groups {
    numbers: FastMap<String, FastMap<String, u32>>,
    /// (sensor type, location) of each group number
    names: Vec<(String, String)>,
}

impl Groups {
    fn get(&mut self, sensor_type: &str, location: &str) -> u32 {
        if let Some(g) = self.numbers.get(sensor_type).and_then(|l| l.get(location)) {
            return *g;
        }
        let g = self.names.len() as u32;
        self.names.push((sensor_type.to_string(), location.to_string()));
        self.numbers.entry(sensor_type.to_string()).or_default().insert(location.to_string(), g);
        g
    }
}

/// Open windows, indexed by window start, then by (sensor type, location) group.
#[derive(Default)]
struct Windows {
    /// window start → group → aggregate
    open: BTreeMap<Millis, FastMap<u32, Slot>>,
    groups: Groups,
    /// windows the current batch changed, each once
    touched: Vec<(Millis, u32)>,
}

impl Windows {
    fn merge(&mut self, start: Millis, group: u32, part: &Agg) {
        let slot = self.open.entry(start).or_default().entry(group).or_default();
        if slot.before.is_none() {
            slot.before = Some((slot.agg.count > 0).then_some(slot.agg));
            self.touched.push((start, group));
        }
        slot.agg.merge(part);
    }
}

/// Part of one window's aggregate: what one worker's container of accepted readings adds to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Partial {
    sensor_type: String,
    location: String,
    start: Millis,
    agg: Agg,
}

/// One open window: its aggregate, and while a batch changes it, the aggregate before the
/// batch (`Some(None)` for a window the batch opened).
#[derive(Default)]
struct Slot {
    agg: Agg,
    before: Option<Option<Agg>>,
}

/// Running aggregate of one window.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Agg {
    count: u64,
    sum: ExactSum,
    min: f64,
    max: f64,
    anomalies: u64,
}

impl Agg {
    fn add(&mut self, v: f64, anomaly: bool, n: u64) {
        for _ in 0..n {
            if self.count == 0 {
                self.min = v;
                self.max = v;
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.count += 1;
            self.sum.add(v);
            self.anomalies += u64::from(anomaly);
        }
    }
    fn merge(&mut self, other: &Agg) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum.merge(other.sum);
        self.anomalies += other.anomalies;
    }
    fn row(&self, sensor_type: &str, location: &str, start: Millis, size_ms: i64) -> WindowMetric {
        WindowMetric {
            sensor_type: sensor_type.to_string(),
            location: location.to_string(),
            window_start: start,
            window_end: start + size_ms,
            count: self.count,
            avg: F64(self.sum.value() / self.count as f64),
            min: F64(self.min),
            max: F64(self.max),
            anomaly_count: self.anomalies,
        }
    }
}

/// A sum of `f64`s that does not depend on the order of its terms: each term is rounded to a
/// multiple of 2⁻⁶⁴ (a no-op for every value of magnitude 2⁻¹¹ or more, so for any sensor
/// reading) and added as a 128-bit integer, which is associative where float addition is not.
/// Terms beyond ±2⁶² saturate; decoding keeps readings within ±10⁹ (`out_of_range`), so a
/// window's sum stays exact up to 9·10⁹ readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactSum(i128);

impl ExactSum {
    const SCALE: f64 = 18_446_744_073_709_551_616.0; // 2^64

    /// Adds a term.
    pub fn add(&mut self, v: f64) {
        self.0 = self.0.saturating_add((v * Self::SCALE).round() as i128);
    }

    /// Adds `n` times the term `v` (`n` may be negative: a retraction).
    pub fn add_times(&mut self, v: f64, n: i64) {
        self.0 = self.0.saturating_add((v * Self::SCALE).round() as i128 * n as i128);
    }

    /// Adds another sum's terms.
    pub fn merge(&mut self, other: ExactSum) {
        self.0 = self.0.saturating_add(other.0);
    }

    /// The sum, rounded once to the nearest `f64`.
    pub fn value(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::ExactSum;

    #[test]
    fn exact_sum_ignores_order() {
        let values = [0.1, 1e6 + 0.37, -3.3, 22.45, 1e-3, 7.77, 1020.01];
        let sum = |vs: &mut dyn Iterator<Item = &f64>| {
            let mut s = ExactSum::default();
            vs.for_each(|v| s.add(*v));
            s.value()
        };
        let forward = sum(&mut values.iter());
        assert_eq!(forward, sum(&mut values.iter().rev()));
        let naive: f64 = values.iter().sum();
        assert!((forward - naive).abs() < 1e-9);
    }
}
