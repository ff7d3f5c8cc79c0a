//! End-to-end runs of the `diffstream` binary on generated files: worker and process counts
//! do not change the results, the results equal the reference, change files replay to the
//! snapshots, and bad input or bad flags get messages that say what to do.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, diffstream, snapshots};
use diffstream::config::builtin::SensorParams;
use diffstream::reference;

const ALL: [&str; 3] = ["user_event_counts", "user_activity", "sensor_metrics"];

/// Generates users, clicks and sensors files (with malformed lines appended) into `dir`.
fn generate(dir: &Path) {
    for (kind, count) in [("users", "1500"), ("clicks", "30000"), ("sensors", "60000")] {
        let out = diffstream(&["gen", kind, "--count", count, "--seed", "11"]);
        let mut text = out.stdout;
        text.extend_from_slice(b"{\"broken\": \n\xff\xfe\n[1,2]\n");
        std::fs::write(dir.join(format!("{kind}.jsonl")), text).unwrap();
    }
}

fn run_args<'a>(dir: &'a Path, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(ALL.iter().map(|s| s.to_string()));
    for kind in ["users", "clicks", "sensors"] {
        args.push("--input".into());
        args.push(format!("{kind}={}", dir.join(format!("{kind}.jsonl")).display()));
    }
    args.extend(["--output-dir".into(), dir.join(out).display().to_string(), "--batch-size".into(), "5000".into(), "-q".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(dir: &Path, out: &str, extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let args = run_args(dir, out, extra);
    diffstream(&args.iter().map(String::as_str).collect::<Vec<_>>());
    snapshots(&dir.join(out))
}

#[test]
fn worker_counts_agree_and_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let one = run(dir.path(), "w1", &["-w", "1"]);
    let two = run(dir.path(), "w2", &["-w", "2", "--changes"]);
    assert_eq!(one, two, "-w 1 and -w 2 differ");

    let inputs: BTreeMap<String, Vec<u8>> =
        ["users", "clicks", "sensors"].map(|i| (i.to_string(), std::fs::read(dir.path().join(format!("{i}.jsonl"))).unwrap())).into();
    let expected: BTreeMap<String, Vec<String>> = reference::run(&inputs, &ALL, &SensorParams::default(), 5000)
        .into_iter()
        .map(|(o, rows)| (o, rows.into_values().collect()))
        .collect();
    assert_eq!(one, expected, "the engine differs from the reference");

    // Every malformed line is a dead letter with its raw bytes; the run went on.
    let dead = &one["dead_letters"];
    for kind in ["users", "clicks", "sensors"] {
        let mine: Vec<&String> = dead.iter().filter(|l| l.contains(&format!("\"input\":\"{kind}\""))).collect();
        assert!(mine.iter().any(|l| l.contains("invalid_json")), "{kind}: {mine:?}");
        assert!(mine.iter().any(|l| l.contains("\"raw_encoding\":\"base64\"") && l.contains("not_utf8")), "{kind}: {mine:?}");
        assert!(mine.iter().any(|l| l.contains("not_object")), "{kind}: {mine:?}");
    }
    assert!(dead.iter().any(|l| l.contains("\"reason\":\"late\"")), "the generator's very late readings are dead letters");

    // Replaying the change files gives the snapshots.
    for (output, rows) in &two {
        let text = std::fs::read_to_string(dir.path().join("w2").join(format!("{output}.changes.jsonl"))).unwrap();
        let mut state: BTreeMap<String, i64> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            *state.entry(v["row"].to_string()).or_default() += v["diff"].as_i64().unwrap();
        }
        state.retain(|_, n| *n != 0);
        assert!(state.values().all(|n| *n == 1), "{output}: a row's multiplicity is not 1");
        let mut replayed: Vec<&String> = state.keys().collect();
        let mut snapshot: Vec<String> = rows.iter().map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap().to_string()).collect();
        replayed.sort();
        snapshot.sort();
        assert_eq!(replayed, snapshot.iter().collect::<Vec<_>>(), "{output}: changes do not replay to the snapshot");
    }
}

#[test]
fn two_processes_equal_one() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let one = run(dir.path(), "single", &["-w", "2"]);
    // One worker per process, and two: the first process's workers write the outputs (each
    // output by one of them), from every worker's share.
    for workers in ["1", "2"] {
        let hostfile = common::hostfile(dir.path());
        let children: Vec<_> = (0..2)
            .map(|p| {
                let out = format!("cluster{workers}-{p}");
                let process = p.to_string();
                let mut args = run_args(dir.path(), &out, &["-w", workers, "-n", "2", "-p", &process]);
                args.extend(["-h".into(), hostfile.display().to_string()]);
                Command::new(bin()).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a cluster process failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(snapshots(&dir.path().join(format!("cluster{workers}-0"))), one, "-w {workers} -n 2");
        let second = dir.path().join(format!("cluster{workers}-1"));
        assert!(!second.exists() || snapshots(&second).is_empty(), "-w {workers} -n 2: the second process writes no snapshot");
    }
}

#[test]
fn stdin_input() {
    let dir = tempfile::tempdir().unwrap();
    let clicks = diffstream(&["gen", "clicks", "--count", "2000"]).stdout;
    let out = dir.path().join("out");
    let mut child = Command::new(bin())
        .args(["run", "user_event_counts", "--input", "clicks=-", "-q", "-w", "2", "--output-dir"])
        .arg(&out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&clicks).unwrap();
    assert!(child.wait().unwrap().success());
    let snap = snapshots(&out);
    let total: i64 =
        snap["event_type_counts"].iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 2000);
}

fn fails(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "diffstream {} should fail", args.join(" "));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn help_and_errors_say_what_to_do() {
    let help = String::from_utf8(diffstream(&["run", "--help"]).stdout).unwrap();
    assert!(help.contains("--hostfile") && help.contains("-h"), "{help}");
    assert!(String::from_utf8(diffstream(&["--help"]).stdout).unwrap().contains("demo"));

    let e = fails(&["run", "user_activity", "--input", "clicks=x.jsonl"]);
    assert!(e.contains("--input users="), "{e}");
    let e = fails(&["run", "nonsense"]);
    assert!(e.contains("user_event_counts, user_activity, sensor_metrics"), "{e}");
    let e = fails(&["run", "user_event_counts", "--input", "clicks=/does/not/exist.jsonl", "-q"]);
    assert!(e.contains("/does/not/exist.jsonl"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[runtime]\nwokers = 2\n").unwrap();
    let e = fails(&["run", "user_event_counts", "--config", cfg.to_str().unwrap()]);
    assert!(e.contains("bad.toml") && e.contains("runtime.wokers") && e.contains("workers"), "{e}");
    std::fs::write(&cfg, "[sensor_metrics]\nwindow = \"sliding\"\nsize = \"60s\"\nslide = \"45s\"\n").unwrap();
    let e = fails(&["run", "sensor_metrics", "--config", cfg.to_str().unwrap()]);
    assert!(e.contains("bad.toml") && e.contains("sensor_metrics.slide") && e.contains("30s"), "{e}");
}

#[test]
fn demo_runs_offline_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-out");
    diffstream(&["demo", "--duration", "2", "--plain", "--rate", "5000", "--output-dir", out.to_str().unwrap()]);
    let snap = snapshots(&out);
    for o in ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts", "dead_letters"] {
        assert!(snap.contains_key(o), "no {o}.jsonl");
        assert!(out.join(format!("{o}.changes.jsonl")).exists(), "no {o}.changes.jsonl");
    }
    assert!(!snap["user_event_counts"].is_empty());
}

/// `demo NAME` runs a shipped SQL pipeline on its input's generator, with no file around it
/// (the config and views are in the binary); an unknown name is refused with the known ones.
#[test]
fn demo_runs_each_shipped_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    for (pipeline, outputs) in [
        ("transactions", &["processed_transactions", "transaction_alerts", "user_statistics", "category_totals", "location_totals"][..]),
        ("sales", &["sales_by_region", "sales_by_region_windowed", "category_trends", "top_products"][..]),
        ("applications", &["applications", "applications_per_product"][..]),
    ] {
        let out = dir.path().join(pipeline);
        let o = Command::new(bin())
            .current_dir(dir.path())
            .args(["demo", pipeline, "--duration", "2", "--plain", "--no-http", "--rate", "3000", "--output-dir", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{pipeline}: {}", String::from_utf8_lossy(&o.stderr));
        let snap = snapshots(&out);
        for o in outputs {
            assert!(snap.get(*o).is_some_and(|rows| !rows.is_empty()), "{pipeline}: no rows of {o}");
        }
        assert!(snap["dead_letters"]
            .iter()
            .any(|d| d.contains(&format!("\"input\":\"{}\"", if pipeline == "applications" { "inputs" } else { pipeline }))));
    }
    let o = Command::new(bin()).args(["demo", "payroll", "--duration", "1", "--plain", "--no-http"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no shipped pipeline `payroll`; the demo runs transactions, sales, applications"), "{err}");
}

/// In a file, a reading dated after the run began (year 9999, or two hours from now) is a dead
/// letter with reason `future` and leaves the watermark alone: the readings after it are not
/// late, at 1 and 2 workers. Before the guard the 9999 reading made every later one late.
#[test]
fn a_file_reading_from_the_future_is_a_dead_letter_and_leaves_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let reading = |ts: &str, value: f64| {
        format!(r#"{{"sensor_id":"s-1","sensor_type":"temperature","value":{value},"location":"lab","timestamp":"{ts}","status":"ok"}}"#)
    };
    let mut lines = vec![reading("9999-12-31T00:00:00Z", 20.0), reading(&diffstream::codec::format_time(now_ms + 2 * 3_600_000), 20.0)];
    // Historical readings a day ago with a two-hour gap: nothing here is in the future.
    let day_ago = now_ms - 86_400_000;
    lines.extend((0..5).map(|i| reading(&diffstream::codec::format_time(day_ago + i * 1000), 20.0 + i as f64)));
    lines.extend((0..5).map(|i| reading(&diffstream::codec::format_time(day_ago + 7_200_000 + i * 1000), 20.0)));
    let file = dir.path().join("sensors.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    for workers in ["1", "2"] {
        let out = dir.path().join(format!("out-{workers}"));
        diffstream(&[
            "run",
            "sensor_metrics",
            "--input",
            &format!("sensors={}", file.display()),
            "--batch-size",
            "1",
            "-w",
            workers,
            "-q",
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        let snap = snapshots(&out);
        let dead: Vec<serde_json::Value> = snap["dead_letters"].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons.len(), 2, "-w {workers}: two dead letters: {reasons:?}");
        assert!(reasons.iter().all(|r| r.starts_with("future")), "-w {workers}: {reasons:?}");
        let counted: u64 = snap["sensor_window_metrics"]
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 10, "-w {workers}: every reading but the two from the future counts");
    }
}

/// With no broker at the address, a Kafka run fails (it does not hang) and says where the
/// address came from and how to give another.
#[test]
fn no_broker_at_the_address_is_an_error_that_says_how_to_point_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "dataflows = [\"user_event_counts\"]\n[kafka]\nbootstrap_servers = \"127.0.0.1:{port}\"\n\
         [inputs.clicks]\nkind = \"kafka\"\ntopics = [\"clicks\"]\ngroup_id = \"g\"\n"
    );
    std::fs::write(dir.path().join("k.toml"), config).unwrap();
    let o = Command::new(bin()).current_dir(dir.path()).args(["run", "--config", "k.toml", "-q"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("no broker answered at 127.0.0.1:{port} (the config's `[kafka] bootstrap_servers`)"))
            && err.contains("KAFKA_BOOTSTRAP"),
        "{err}"
    );
}

/// What a reader of the per-user outputs sees while a run goes on: the change files, applied
/// time by time, equal at every logical time the reference run over the lines read by then
/// (batch `t` of every input is time `t` with one batch per time).
#[test]
fn per_user_outputs_equal_the_reference_at_every_time() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let batch = 1000;
    let mut args: Vec<String> = ["run", "user_event_counts", "user_activity"].map(String::from).to_vec();
    for kind in ["users", "clicks"] {
        args.push("--input".into());
        args.push(format!("{kind}={}", dir.path().join(format!("{kind}.jsonl")).display()));
    }
    let out = dir.path().join("out");
    args.extend([
        "--output-dir".into(),
        out.display().to_string(),
        "--batch-size".into(),
        batch.to_string(),
        "--batches-per-time".into(),
        "1".into(),
        "--changes".into(),
        "-w".into(),
        "2".into(),
        "-q".into(),
    ]);
    diffstream(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let inputs: BTreeMap<String, Vec<u8>> =
        ["users", "clicks"].map(|i| (i.to_string(), std::fs::read(dir.path().join(format!("{i}.jsonl"))).unwrap())).into();
    let lines = |text: &[u8], n: usize| -> Vec<u8> { text.split_inclusive(|b| *b == b'\n').take(n).flatten().copied().collect() };
    let last_time = inputs.values().map(|t| t.split_inclusive(|b| *b == b'\n').count().div_ceil(batch)).max().unwrap() as i64 - 1;
    let normal = |row: &str| serde_json::from_str::<serde_json::Value>(row).unwrap().to_string();
    for output in ["user_event_counts", "user_activity"] {
        let text = std::fs::read_to_string(out.join(format!("{output}.changes.jsonl"))).unwrap();
        let mut changes: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            changes.entry(v["time"].as_i64().unwrap()).or_default().push((v["row"].to_string(), v["diff"].as_i64().unwrap()));
        }
        let mut state: BTreeMap<String, i64> = BTreeMap::new();
        for t in 0..=last_time {
            for (row, diff) in changes.remove(&t).unwrap_or_default() {
                *state.entry(row).or_default() += diff;
            }
            state.retain(|_, n| *n != 0);
            assert!(state.values().all(|n| *n == 1), "{output} at time {t}: a row's multiplicity is not 1");
            let read: BTreeMap<String, Vec<u8>> =
                inputs.iter().map(|(i, text)| (i.clone(), lines(text, (t as usize + 1) * batch))).collect();
            let expected = reference::run(&read, &["user_event_counts", "user_activity"], &SensorParams::default(), batch);
            let expected: Vec<String> = expected.get(output).into_iter().flat_map(|rows| rows.values().map(|r| normal(r))).collect();
            let mut seen: Vec<String> = state.keys().cloned().collect();
            let mut expected = expected;
            seen.sort();
            expected.sort();
            assert_eq!(seen, expected, "{output} at time {t} differs from the reference over the lines read by then");
        }
        assert!(changes.is_empty(), "{output}: changes after the last batch's time: {:?}", changes.keys());
    }
}
