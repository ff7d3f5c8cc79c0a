//! A restart from a checkpoint of the sensor dataflow — the readings of the windows still open
//! and the watermark then — behaves exactly like the run that never stopped: at the checkpoint
//! time it holds the same open windows, and every change after it is the same, update for
//! update, with sliding windows (where a reading's oldest windows may be final while its newest
//! are open) and late readings, at one and two workers.

use std::sync::{Arc, Mutex};

use dataflows::checkpoint::Snapshots;
use dataflows::records::*;
use dataflows::sensor_metrics::{OpenReadings, Restored};
use dataflows::{build, Dataflow, Inputs, Params, SensorParams, Time};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::input::Input;
use timely::dataflow::ProbeHandle;

const LAST: Time = 80;
const EVERY: Time = 20;
const CHECKPOINT: Time = 40;

fn params() -> Params {
    Params {
        sensors: SensorParams { size_ms: 10_000, slide_ms: 2_000, allowed_lateness_ms: 3_000, ..SensorParams::default() },
        checkpoint_every: Some(EVERY),
        ..Params::default()
    }
}

/// Readings of logical time `t` (its batch): two groups, values all over, some out of order
/// and some far behind (late).
fn readings(t: Time) -> Vec<Reading> {
    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    (0..6)
        .map(|i| {
            let behind = match next(10) {
                0 => 4_000 + next(6_000) as i64, // beyond the allowed lateness, often
                1..=3 => next(2_500) as i64,
                _ => 0,
            };
            Reading {
                sensor_id: format!("s{}", i % 3),
                sensor_type: ["temperature", "humidity"][(i % 2) as usize].into(),
                location: "lab".into(),
                value: F64(next(4_000) as f64 / 100.0),
                timestamp: t as i64 * 500 - behind,
                anomaly: next(7) == 0,
                position: Position::Line(t * 10 + i),
                batch: t,
            }
        })
        .collect()
}

type Updates<D> = Arc<Mutex<Vec<(D, Time, isize)>>>;

struct Run {
    windows: Vec<(WindowMetric, Time, isize)>,
    alerts: Vec<(AnomalyAlert, Time, isize)>,
    late: Vec<(DeadLetter, Time, isize)>,
    /// every worker's open readings at the checkpoint time
    open: Vec<OpenReadings>,
}

fn sorted<D: Ord + Clone>(u: &Updates<D>) -> Vec<(D, Time, isize)> {
    let mut v = u.lock().unwrap().clone();
    consolidate_updates(&mut v);
    v.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    v
}

/// Runs times `from..=LAST`, after inserting `restored` (readings and watermark) at `from`.
fn run(workers: usize, from: Time, restored: Option<(Vec<Reading>, i64)>) -> Run {
    let (windows, alerts, late): (Updates<_>, Updates<_>, Updates<_>) = Default::default();
    let open: Arc<Mutex<Vec<OpenReadings>>> = Default::default();
    let (w, a, l, o) = (windows.clone(), alerts.clone(), late.clone(), open.clone());
    let restored = Arc::new(restored);
    timely::execute(timely::Config::process(workers), move |worker| {
        let probe = ProbeHandle::new();
        let (mut sensors, mut restore, log) = worker.dataflow::<Time, _, _>(|scope| {
            let (si, s) = scope.new_collection();
            let (ri, r) = scope.new_collection();
            let restored_sensors = restored.as_ref().as_ref().map(|(_, watermark)| Restored { readings: r, watermark: *watermark });
            let out = build(&[Dataflow::SensorMetrics], Inputs { sensors: Some(s), restored_sensors, ..Inputs::default() }, &params());
            let (w, a, l) = (w.clone(), a.clone(), l.clone());
            out.sensor_window_metrics.unwrap().inspect(move |(d, t, r)| w.lock().unwrap().push((d.clone(), *t, *r))).probe_with(&probe);
            out.anomaly_alerts.unwrap().inspect(move |(d, t, r)| a.lock().unwrap().push((d.clone(), *t, *r))).probe_with(&probe);
            out.dead_letters.unwrap().inspect(move |(d, t, r)| l.lock().unwrap().push((d.clone(), *t, *r))).probe_with(&probe);
            (si, ri, out.open_readings.unwrap())
        });
        sensors.advance_to(from);
        restore.advance_to(from);
        if let (Some((readings, _)), 0) = (restored.as_ref(), worker.index()) {
            for r in readings {
                restore.insert(Reading { batch: from, ..r.clone() });
            }
        }
        for t in from..=LAST {
            if worker.index() == 0 && (restored.is_none() || t > from) {
                for r in readings(t) {
                    sensors.insert((r.clone(), Raw { bytes: format!("raw {:?}", r.position).into_bytes(), key: None }));
                }
            }
            sensors.advance_to(t + 1);
            restore.advance_to(t + 1);
            sensors.flush();
            restore.flush();
            worker.step_while(|| probe.less_than(&(t + 1)));
        }
        drop((sensors, restore));
        while !probe.done() {
            worker.step();
        }
        let at: Option<std::rc::Rc<OpenReadings>> = log.borrow().at(CHECKPOINT);
        if let Some(state) = at {
            o.lock().unwrap().push((*state).clone());
        }
    })
    .unwrap();
    let open = std::mem::take(&mut *open.lock().unwrap());
    Run { windows: sorted(&windows), alerts: sorted(&alerts), late: sorted(&late), open }
}

fn after<D: Clone>(u: &[(D, Time, isize)], t: Time) -> Vec<(D, Time, isize)> {
    u.iter().filter(|(_, ut, _)| *ut > t).cloned().collect()
}

/// The rows at time `t` once every update up to it is applied.
fn state_at<D: Ord + Clone>(u: &[(D, Time, isize)], t: Time) -> Vec<D> {
    let mut v: Vec<(D, isize)> = u.iter().filter(|(_, ut, _)| *ut <= t).map(|(d, _, r)| (d.clone(), *r)).collect();
    differential_dataflow::consolidation::consolidate(&mut v);
    v.into_iter().filter(|(_, r)| *r > 0).map(|(d, _)| d).collect()
}

fn check(workers: usize) {
    let whole = run(workers, 1, None);
    assert_eq!(whole.open.len(), workers, "every worker kept its open readings at the checkpoint time");
    let max = whole.open.iter().filter_map(|o| o.max).max().expect("readings before the checkpoint");
    let watermark = max - params().sensors.allowed_lateness_ms;
    let open: Vec<Reading> = whole.open.iter().flat_map(|o| o.readings.clone()).collect();
    let total: usize = (1..=CHECKPOINT).map(|t| readings(t).len()).sum();
    assert!(open.len() < total, "only readings of open windows are kept ({} of {total})", open.len());

    let restarted = run(workers, CHECKPOINT, Some((open, watermark)));
    // At the checkpoint time: the windows still open then, as the whole run had them.
    let open_then: Vec<WindowMetric> = state_at(&whole.windows, CHECKPOINT).into_iter().filter(|w| w.window_end > watermark).collect();
    assert!(!open_then.is_empty());
    assert_eq!(state_at(&restarted.windows, CHECKPOINT), open_then, "the restored windows at the checkpoint time");
    // After it: the same changes, update for update.
    assert_eq!(after(&restarted.windows, CHECKPOINT), after(&whole.windows, CHECKPOINT), "window changes after the checkpoint");
    assert_eq!(after(&restarted.alerts, CHECKPOINT), after(&whole.alerts, CHECKPOINT), "alerts after the checkpoint");
    assert_eq!(after(&restarted.late, CHECKPOINT), after(&whole.late, CHECKPOINT), "late readings after the checkpoint");
    assert!(!after(&whole.late, CHECKPOINT).is_empty() && !after(&whole.alerts, CHECKPOINT).is_empty(), "the data exercises both");
    assert!(restarted.alerts.iter().all(|(_, t, _)| *t > CHECKPOINT), "restored readings raise no alert again");
    // And the restart's own state at the checkpoint time is the one it was restored from.
    let mut again: Vec<Reading> = restarted.open.iter().flat_map(|o| o.readings.clone()).collect();
    let mut before: Vec<Reading> = whole.open.iter().flat_map(|o| o.readings.clone()).map(|r| Reading { batch: CHECKPOINT, ..r }).collect();
    again.sort();
    before.sort();
    assert_eq!(again, before, "a checkpoint of the restarted run at the same time");
}

#[test]
fn restored_open_windows_continue_exactly_one_worker() {
    check(1);
}

#[test]
fn restored_open_windows_continue_exactly_two_workers() {
    check(2);
}

#[test]
fn snapshots_are_not_taken_before_the_log_starts() {
    let mut s: Snapshots<u32> = Snapshots::new(EVERY);
    s.passed(CHECKPOINT, || 1);
    assert!(s.at(CHECKPOINT - EVERY).is_none());
}
