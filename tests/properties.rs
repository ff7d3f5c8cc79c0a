//! Property tests: each shipped dataflow (its SQL views, resolved as `run` resolves them), run
//! by the engine on random input (disorder inside and
//! beyond the lateness, profile updates, late readings, malformed records) at 1 and 4
//! workers, ends with exactly the snapshots of the plain reference implementation.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use diffstream::commands;
use diffstream::config::builtin::SensorParams;
use diffstream::config::{Config, Duration, WindowKind};
use diffstream::reference;
use diffstream::runtime;
use diffstream::sources::{InputSpec, SourceSpec};
use proptest::prelude::*;

const BASE_MS: i64 = 1_767_225_600_000;

fn malformed() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"{not json".to_vec()),
        Just(b"[1,2,3]".to_vec()),
        Just(vec![0xff, 0xfe, b'{', b'}']),
        Just(br#"{"user_id": 1}"#.to_vec()),
        Just(br#"{"sensor_id": 7, "sensor_type": "temperature", "value": 1, "location": "a", "timestamp": 1, "status": "ok"}"#.to_vec()),
        Just(br#"{"event_timestamp": "not a time", "user_id": 1, "page": "/", "event": "view", "email": "e", "name": "n"}"#.to_vec()),
        Just(br#"{"sensor_id": "s", "sensor_type": "humidity", "value": "high", "location": "a", "timestamp": "2026-01-01 00:00:00", "status": "ok"}"#.to_vec()),
    ]
}

fn user_line() -> impl Strategy<Value = Vec<u8>> {
    (1u64..8, 0usize..4, 0i64..100_000).prop_map(|(id, name, t)| {
        let names = ["ann", "bea", "cal", "dee"];
        format!(r#"{{"event_timestamp":{},"user_id":{id},"email":"{}@x.org","name":"{}"}}"#, BASE_MS / 1000 + t, names[name], names[name])
            .into_bytes()
    })
}

fn click_line() -> impl Strategy<Value = Vec<u8>> {
    (1u64..11, 0usize..3).prop_map(|(id, ev)| {
        let events = ["page_view", "click", "purchase"];
        format!(r#"{{"event_timestamp":"2026-01-01 00:00:0{}","user_id":{id},"page":"/","event":"{}"}}"#, ev, events[ev]).into_bytes()
    })
}

/// Readings `i` carry distinct (sensor, timestamp) keys: 317 ms steps, delays in whole seconds.
fn sensor_lines(n: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec((0usize..4, 0u32..40_00, 0u8..10, prop_oneof![8 => Just(0i64), 3 => 0i64..6, 1 => 10i64..40], 0u8..20), n)
        .prop_map(|rs| {
            rs.into_iter()
                .enumerate()
                .map(|(i, (s, v, st, delay, bad))| {
                    if bad == 0 {
                        return b"{\"sensor_id\": ".to_vec();
                    }
                    let types = ["temperature", "humidity"];
                    let ts = BASE_MS + i as i64 * 317 - delay * 1000;
                    let status = if st == 0 { "anomaly" } else { "normal" };
                    let time = chrono::DateTime::from_timestamp_millis(ts).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    format!(
                        r#"{{"sensor_id":"s{s}","sensor_type":"{}","value":{},"location":"{}","timestamp":"{time}","status":"{status}"}}"#,
                        types[s % 2],
                        v as f64 / 100.0,
                        if s < 2 { "north" } else { "south" }
                    )
                    .into_bytes()
                })
                .collect()
        })
}

fn mixed(lines: impl Strategy<Value = Vec<u8>>, n: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop_oneof![12 => lines, 1 => malformed()], 0..n)
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    inputs: BTreeMap<String, Vec<u8>>,
    batch_size: usize,
    params: SensorParams,
}

fn case() -> impl Strategy<Value = Case> {
    (mixed(user_line(), 30), mixed(click_line(), 80), sensor_lines(100), 1usize..8, any::<bool>(), 0i64..8).prop_map(
        |(users, clicks, sensors, batch_size, sliding, lateness_s)| Case {
            inputs: [("users".to_string(), join(&users)), ("clicks".to_string(), join(&clicks)), ("sensors".to_string(), join(&sensors))]
                .into_iter()
                .collect(),
            batch_size,
            params: SensorParams {
                size_ms: 10_000,
                slide_ms: if sliding { 5_000 } else { 10_000 },
                allowed_lateness_ms: lateness_s * 1000,
                ..SensorParams::default()
            },
        },
    )
}

fn engine(case: &Case, workers: usize) -> BTreeMap<String, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let inputs = case
        .inputs
        .iter()
        .map(|(n, text)| (n.to_string(), InputSpec { source: SourceSpec::Memory(Arc::from(text.as_slice())), rate: None }))
        .collect();
    let mut config = Config::default();
    let p = &case.params;
    config.sensor_metrics.window = if p.slide_ms == p.size_ms { WindowKind::Tumbling } else { WindowKind::Sliding };
    config.sensor_metrics.size = Duration::from_millis(p.size_ms);
    config.sensor_metrics.slide = (p.slide_ms != p.size_ms).then(|| Duration::from_millis(p.slide_ms));
    config.sensor_metrics.allowed_lateness = Duration::from_millis(p.allowed_lateness_ms);
    let names = ["user_event_counts", "user_activity", "sensor_metrics"];
    let mut plan = commands::embedded(config, &names, inputs, workers, case.batch_size).expect("the shipped dataflows compile");
    plan.output_dir = Some(dir.path().to_path_buf());
    plan.max_inflight = 2;
    runtime::run(plan).expect("the run succeeds");
    common::snapshots(dir.path())
}

fn expected(case: &Case) -> BTreeMap<String, Vec<String>> {
    reference::run(&case.inputs, &diffstream::config::builtin::DATAFLOWS, &case.params, case.batch_size)
        .into_iter()
        .map(|(o, rows)| (o, rows.into_values().collect()))
        .collect()
}

/// The rows of each output that only one side has ("" when the two are equal): a failure
/// names what differs, not two whole runs.
fn differences(got: &BTreeMap<String, Vec<String>>, want: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    for name in got.keys().chain(want.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (g, w) = (got.get(name).cloned().unwrap_or_default(), want.get(name).cloned().unwrap_or_default());
        let only = |a: &[String], b: &[String]| -> Vec<String> { a.iter().filter(|r| !b.contains(r)).cloned().collect() };
        let (extra, missing) = (only(&g, &w), only(&w, &g));
        if !extra.is_empty() || !missing.is_empty() {
            out += &format!("{name}: the engine's alone {extra:?}\n  the reference's alone {missing:?}\n");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_equals_reference(case in case()) {
        prop_assert_eq!(differences(&engine(&case, 1), &expected(&case)), "");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn four_workers_equal_reference(case in case()) {
        prop_assert_eq!(differences(&engine(&case, 4), &expected(&case)), "");
    }
}
