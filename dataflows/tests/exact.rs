//! Exact `(data, time, diff)` expectations for each dataflow, at one and two workers.

use std::sync::{Arc, Mutex};

use dataflows::records::*;
use dataflows::{build, Coll, Dataflow, Inputs, Params, SensorParams, Time};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::input::Input;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

type Updates<D> = Arc<Mutex<Vec<(D, Time, isize)>>>;

fn capture<'s, D: Clone + Ord + std::fmt::Debug + 'static>(c: Coll<'s, D>, into: &Updates<D>, probe: &ProbeHandle<Time>) {
    let into = into.clone();
    c.inspect(move |(d, t, r)| into.lock().unwrap().push((d.clone(), *t, *r))).inner.probe_with(probe);
}

fn sorted<D: Ord>(u: &Updates<D>) -> Vec<(D, Time, isize)> {
    let mut v = std::mem::take(&mut *u.lock().unwrap());
    consolidate_updates(&mut v);
    v.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    v
}

/// Script: per time, users, clicks and readings inserted by worker 0.
struct Script {
    users: Vec<(Time, User)>,
    clicks: Vec<(Time, Click)>,
    readings: Vec<(Time, Reading)>,
    last: Time,
}

struct Captured {
    counts: Updates<UserEventCount>,
    kinds: Updates<EventTypeCount>,
    activity: Updates<UserActivity>,
    windows: Updates<WindowMetric>,
    alerts: Updates<AnomalyAlert>,
    late: Updates<DeadLetter>,
    /// the rows the operators gave when the run was over (`Outputs::current`), every worker's
    current: Arc<Mutex<Vec<(dataflows::Output, dataflows::Row, isize)>>>,
    /// with `Params::counted_only`: `user_activity`'s changes without rows (`Outputs::counted`)
    activity_counted: Updates<()>,
}

fn run(workers: usize, script: Script, params: Params) -> Captured {
    let cap = Captured {
        counts: Default::default(),
        kinds: Default::default(),
        activity: Default::default(),
        windows: Default::default(),
        alerts: Default::default(),
        late: Default::default(),
        current: Default::default(),
        activity_counted: Default::default(),
    };
    let (c7, c8) = (cap.current.clone(), cap.activity_counted.clone());
    let (c1, c2, c3, c4, c5, c6) =
        (cap.counts.clone(), cap.kinds.clone(), cap.activity.clone(), cap.windows.clone(), cap.alerts.clone(), cap.late.clone());
    let script = Arc::new(script);
    timely::execute(timely::Config::process(workers), move |worker| {
        let probe = ProbeHandle::new();
        let params = params.clone();
        let (mut users, mut clicks, mut sensors, current) = worker.dataflow::<Time, _, _>(|scope| {
            let (ui, u) = scope.new_collection();
            let (ci, c) = scope.new_collection();
            let (si, s) = scope.new_collection();
            let out = build(&Dataflow::ALL, Inputs { users: Some(u), clicks: Some(c), sensors: Some(s), restored_sensors: None }, &params);
            capture(out.user_event_counts.unwrap(), &c1, &probe);
            capture(out.event_type_counts.unwrap(), &c2, &probe);
            match out.user_activity {
                Some(rows) => capture(rows, &c3, &probe),
                None => {
                    let (_, changes) = out.counted.into_iter().find(|(o, _)| *o == dataflows::Output::UserActivity).unwrap();
                    capture(changes, &c8, &probe);
                }
            }
            capture(out.sensor_window_metrics.unwrap(), &c4, &probe);
            capture(out.anomaly_alerts.unwrap(), &c5, &probe);
            capture(out.dead_letters.unwrap(), &c6, &probe);
            (ui, ci, si, out.current)
        });
        for t in 0..=script.last {
            if worker.index() == 0 {
                for (_, u) in script.users.iter().filter(|(ut, _)| *ut == t) {
                    users.insert(u.clone());
                }
                for (_, c) in script.clicks.iter().filter(|(ct, _)| *ct == t) {
                    clicks.insert(c.clone());
                }
                for (_, r) in script.readings.iter().filter(|(rt, _)| *rt == t) {
                    sensors.insert((r.clone(), Raw { bytes: format!("raw {}", r.timestamp).into_bytes(), key: None }));
                }
            }
            users.advance_to(t + 1);
            clicks.advance_to(t + 1);
            sensors.advance_to(t + 1);
            users.flush();
            clicks.flush();
            sensors.flush();
            worker.step_while(|| probe.less_than(&(t + 1)));
        }
        drop((users, clicks, sensors));
        worker.step_while(|| !probe.done());
        for (output, read) in &current {
            read(&mut |row, n| c7.lock().unwrap().push((*output, row, n)));
        }
    })
    .unwrap();
    cap
}

fn click(user: u64, event: &str) -> Click {
    Click { user_id: Id::Num(user), event: event.into(), event_time: 0 }
}

fn user(id: u64, name: &str, line: u64) -> User {
    User { user_id: Id::Num(id), name: name.into(), email: format!("{name}@x").into(), event_time: 0, position: Position::Line(line) }
}

fn reading(id: &str, ts_s: i64, value: f64, anomaly: bool, line: u64) -> Reading {
    Reading {
        sensor_id: id.into(),
        sensor_type: "temperature".into(),
        location: "lab".into(),
        value: F64(value),
        timestamp: ts_s * 1000,
        anomaly,
        position: Position::Line(line),
        batch: 0,
    }
}

fn metric(start_s: i64, values: &[f64], anomalies: u64) -> WindowMetric {
    WindowMetric {
        sensor_type: "temperature".into(),
        location: "lab".into(),
        window_start: start_s * 1000,
        window_end: start_s * 1000 + 10_000,
        count: values.len() as u64,
        avg: F64({
            let mut sum = dataflows::sensor_metrics::ExactSum::default();
            values.iter().for_each(|v| sum.add(*v));
            sum.value() / values.len() as f64
        }),
        min: F64(values.iter().copied().fold(f64::INFINITY, f64::min)),
        max: F64(values.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        anomaly_count: anomalies,
    }
}

fn script() -> Script {
    Script {
        users: vec![(0, user(1, "ann", 1)), (1, user(1, "bea", 5)), (2, user(2, "cal", 6)), (3, user(1, "old", 3))],
        clicks: vec![(0, click(1, "view")), (0, click(1, "click")), (0, click(2, "view")), (1, click(1, "view"))],
        readings: vec![
            (0, reading("s1", 1, 20.0, false, 1)),
            (0, reading("s2", 12, 30.0, false, 2)),
            (1, reading("s1", 3, 18.0, true, 3)),
            (1, reading("s2", 14, 22.0, false, 4)),
            (2, reading("s1", 8, 10.0, false, 5)),
            (2, reading("s2", 20, 21.0, false, 6)),
            (3, reading("s1", 9, 19.0, false, 7)),
        ]
        .into_iter()
        // one input batch per logical time
        .map(|(t, r)| (t, Reading { batch: t, ..r }))
        .collect(),
        last: 3,
    }
}

fn params() -> Params {
    Params {
        sensors: SensorParams { size_ms: 10_000, slide_ms: 10_000, allowed_lateness_ms: 5_000, ..SensorParams::default() },
        ..Params::default()
    }
}

fn check(workers: usize) {
    let cap = run(workers, script(), params());
    let uec = |u: u64, n: i64| UserEventCount { user_id: Id::Num(u), event_count: n };
    assert_eq!(sorted(&cap.counts), vec![(uec(1, 2), 0, 1), (uec(2, 1), 0, 1), (uec(1, 2), 1, -1), (uec(1, 3), 1, 1)]);
    let etc = |e: &str, n: i64| EventTypeCount { event: e.into(), count: n };
    assert_eq!(sorted(&cap.kinds), vec![(etc("click", 1), 0, 1), (etc("view", 2), 0, 1), (etc("view", 2), 1, -1), (etc("view", 3), 1, 1)]);
    let ua = |u: u64, name: &str, n: i64| UserActivity {
        user_id: Id::Num(u),
        name: name.into(),
        email: format!("{name}@x").into(),
        event_count: n,
    };
    // t1: the profile update and the new click change user 1 at once; t3: an older version
    // arriving late changes nothing, because the latest is the highest position.
    assert_eq!(
        sorted(&cap.activity),
        vec![(ua(1, "ann", 2), 0, 1), (ua(1, "ann", 2), 1, -1), (ua(1, "bea", 3), 1, 1), (ua(2, "cal", 1), 2, 1)]
    );
    // Watermarks: W(0) = 12-5 = 7 s, W(1) = 9 s, W(2) = 15 s. The reading at 9 s in time 3
    // belongs to [0,10), final since W(2) ≥ 10: it is late.
    assert_eq!(
        sorted(&cap.windows),
        vec![
            (metric(0, &[20.0], 0), 0, 1),
            (metric(10, &[30.0], 0), 0, 1),
            (metric(0, &[20.0], 0), 1, -1),
            (metric(0, &[20.0, 18.0], 1), 1, 1),
            (metric(10, &[30.0], 0), 1, -1),
            (metric(10, &[30.0, 22.0], 0), 1, 1),
            (metric(0, &[20.0, 18.0], 1), 2, -1),
            (metric(0, &[20.0, 18.0, 10.0], 1), 2, 1),
            (metric(20, &[21.0], 0), 2, 1),
        ]
    );
    let alert = |id: &str, ts: i64, v: f64, a: AlertType| AnomalyAlert {
        sensor_id: id.into(),
        sensor_type: "temperature".into(),
        location: "lab".into(),
        value: F64(v),
        timestamp: ts * 1000,
        alert_type: a,
    };
    assert_eq!(
        sorted(&cap.alerts),
        vec![
            (alert("s2", 12, 30.0, AlertType::High), 0, 1),
            (alert("s1", 3, 18.0, AlertType::Flagged), 1, 1),
            (alert("s1", 8, 10.0, AlertType::Low), 2, 1)
        ]
    );
    let late =
        DeadLetter { input: "sensors".into(), position: Position::Line(7), reason: "late".into(), raw: b"raw 9000".to_vec(), key: None };
    assert_eq!(sorted(&cap.late), vec![(late, 3, 1)]);
}

/// The rows an operator gives at the end (`Outputs::current`) are what its output holds once
/// every update is applied: the snapshot reads them there instead of keeping a copy.
fn check_current_rows(workers: usize) {
    use dataflows::{Output, Row};
    let cap = run(workers, script(), params());
    let current = std::mem::take(&mut *cap.current.lock().unwrap());
    let outputs: std::collections::BTreeSet<Output> = current.iter().map(|(o, ..)| *o).collect();
    assert_eq!(outputs, [Output::UserEventCounts, Output::EventTypeCounts, Output::UserActivity].into());
    let (mut counts, mut kinds, mut activity) = (Vec::new(), Vec::new(), Vec::new());
    for (_, row, n) in current {
        assert_eq!(n, 1, "one copy of each row: {row:?}");
        match row {
            Row::UserEventCount(r) => counts.push(r),
            Row::EventTypeCount(r) => kinds.push(r),
            Row::UserActivity(r) => activity.push(*r),
            other => panic!("a row of another output: {other:?}"),
        }
    }
    counts.sort();
    kinds.sort();
    activity.sort();
    assert_eq!(counts, final_state(&cap.counts));
    assert_eq!(kinds, final_state(&cap.kinds));
    assert_eq!(activity, final_state(&cap.activity));
}

#[test]
fn operators_give_the_rows_their_outputs_hold_one_worker() {
    check_current_rows(1);
}

#[test]
fn operators_give_the_rows_their_outputs_hold_two_workers() {
    check_current_rows(2);
}

/// What a collection holds once every update is applied (taking the captured updates).
fn final_state<D: Ord + Clone>(updates: &Updates<D>) -> Vec<D> {
    let mut sums: std::collections::BTreeMap<D, isize> = Default::default();
    for (d, _, r) in sorted(updates) {
        *sums.entry(d).or_default() += r;
    }
    sums.into_iter()
        .filter(|(_, r)| *r != 0)
        .map(|(d, r)| {
            assert_eq!(r, 1, "one copy of each row");
            d
        })
        .collect()
}

/// Lateness is judged per input batch, not per logical time: the same four batches in one
/// logical time end in the same windows, alerts and late readings as in four.
#[test]
fn batches_in_one_logical_time_are_judged_in_order() {
    for workers in [1, 2] {
        let apart = run(workers, script(), params());
        let mut together = script();
        together.readings = together.readings.into_iter().map(|(_, r)| (0, r)).collect();
        let together = run(workers, together, params());
        let times: Vec<Time> = together.windows.lock().unwrap().iter().map(|(_, t, _)| *t).collect();
        assert!(times.iter().all(|t| *t == 0), "everything happens at time 0: {times:?}");
        assert_eq!(final_state(&together.windows), final_state(&apart.windows));
        assert_eq!(final_state(&together.alerts), final_state(&apart.alerts));
        let late = final_state(&together.late);
        assert_eq!(late, final_state(&apart.late));
        assert_eq!(late.len(), 1, "the reading at 9 s in batch 3 is late");
    }
}

#[test]
fn exact_updates_one_worker() {
    check(1);
}

#[test]
fn exact_updates_two_workers() {
    check(2);
}

#[test]
fn sliding_windows_take_a_reading_whole_or_not_at_all() {
    let p = SensorParams { size_ms: 60_000, slide_ms: 30_000, allowed_lateness_ms: 0, ..SensorParams::default() };
    assert_eq!(p.window_starts(45_000).collect::<Vec<_>>(), vec![0, 30_000]);
    assert_eq!(p.window_starts(-1).collect::<Vec<_>>(), vec![-60_000, -30_000]);
    // Its oldest window [0, 60 s) is final at W = 60 s, so the reading is late as a whole.
    assert!(p.is_late(45_000, Some(60_000)));
    assert!(!p.is_late(45_000, Some(59_999)));
    assert!(!p.is_late(45_000, None));
}

/// Counted only, `user_activity` gives the same updates — times and multiplicities, as many
/// — without rows, and the same rows at the end.
fn check_counted_only(workers: usize) {
    let rows = run(workers, script(), params());
    let counted = run(workers, script(), Params { counted_only: true, ..params() });
    let raw = |u: Vec<(Time, isize)>| {
        let mut u = u;
        u.sort();
        u
    };
    let with_rows = raw(rows.activity.lock().unwrap().iter().map(|(_, t, r)| (*t, *r)).collect());
    let without = raw(counted.activity_counted.lock().unwrap().iter().map(|(_, t, r)| (*t, *r)).collect());
    assert!(!with_rows.is_empty());
    assert_eq!(with_rows, without);
    let activity = |c: &Captured| {
        let mut rows: Vec<String> = c
            .current
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, ..)| *o == dataflows::Output::UserActivity)
            .map(|(_, r, n)| format!("{r:?} {n}"))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(activity(&rows), activity(&counted));
}

#[test]
fn counted_only_gives_the_same_updates_one_worker() {
    check_counted_only(1);
}

#[test]
fn counted_only_gives_the_same_updates_two_workers() {
    check_counted_only(2);
}
