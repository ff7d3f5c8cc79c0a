//! Kafka end to end, against the broker in KAFKA_BOOTSTRAP (Tansu when started by
//! scripts/test.sh): generated users, clicks and sensors produced to 3-partition topics, the
//! engine run from them, the output topics reduced to the latest value per key and compared
//! with the offline run of the same records from files.
//!
//! Allowed lateness is raised to 120 s in these runs: which readings are late depends on how
//! event time is batched, and Kafka batches differ from a file's. With nothing late, every
//! result is a function of the records alone (window sums are order-independent).
//!
//! Tansu creates no topics by itself, so every topic is created first.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const KINDS: [(&str, &str); 3] = [("users", "800"), ("clicks", "15000"), ("sensors", "15000")];

struct Setup {
    dir: tempfile::TempDir,
    prefix: String,
}

/// Writes the generated records to files and to fresh topics `<prefix>.<kind>`.
fn setup(name: &str, extra_producer_options: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique(name);
    let topics: Vec<String> = KINDS.iter().map(|(k, _)| format!("{prefix}.{k}")).collect();
    create_topics(&topics, 3);
    for (kind, count) in KINDS {
        let out = diffstream(&["gen", kind, "--count", count, "--seed", "5"]);
        std::fs::write(dir.path().join(format!("{kind}.jsonl")), out.stdout).unwrap();
        let topic = format!("{prefix}.{kind}");
        let bootstrap = kafka_bootstrap();
        let mut args = vec!["gen", kind, "--count", count, "--seed", "5", "--to", "kafka", "--topic", &topic, "--bootstrap", &bootstrap];
        for o in extra_producer_options {
            args.extend(["--producer-option", o]);
        }
        diffstream(&args);
    }
    Setup { dir, prefix }
}

fn sensor_params() -> &'static str {
    "[sensor_metrics]\nallowed_lateness = \"120s\"\n"
}

/// A config's `[runtime]` table keeping a run's state (its bindings of times to offsets) under
/// `dir`, by `name`: the runs of one test that share it restart from each other.
fn state_dir(dir: &Path, name: &str) -> String {
    format!("[runtime]\nstate_dir = \"{}\"\n", dir.join("state").join(name).display())
}

/// A config reading the setup's topics and writing outputs under `out_prefix`.
fn kafka_config(s: &Setup, group: &str, out_prefix: &str, extra: &str) -> std::path::PathBuf {
    let mut text = format!(
        "dataflows = [\"user_event_counts\", \"user_activity\", \"sensor_metrics\"]\n{}[kafka]\nbootstrap_servers = \"{}\"\n",
        state_dir(s.dir.path(), group),
        kafka_bootstrap()
    );
    for (kind, _) in KINDS {
        text.push_str(&format!(
            "[inputs.{kind}]\nkind = \"kafka\"\ntopics = [\"{}.{kind}\"]\ngroup_id = \"{group}\"\nstop_when_idle = \"4s\"\n{extra}",
            s.prefix
        ));
    }
    text.push_str(&format!("[output.kafka]\ntopic_prefix = \"{out_prefix}.\"\n{}", sensor_params()));
    let path = s.dir.path().join(format!("{group}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The offline run of the same records.
fn offline(s: &Setup) -> BTreeMap<String, Vec<String>> {
    let cfg = s.dir.path().join("offline.toml");
    std::fs::write(&cfg, sensor_params()).unwrap();
    let mut args: Vec<String> = vec!["run".into(), "user_event_counts".into(), "user_activity".into(), "sensor_metrics".into()];
    for (kind, _) in KINDS {
        args.push("--input".into());
        args.push(format!("{kind}={}", s.dir.path().join(format!("{kind}.jsonl")).display()));
    }
    let out = s.dir.path().join("offline");
    args.extend(["--config".into(), cfg.display().to_string(), "--output-dir".into(), out.display().to_string(), "-q".into()]);
    diffstream(&args.iter().map(String::as_str).collect::<Vec<_>>());
    snapshots(&out)
}

fn assert_topics_equal_offline(out_prefix: &str, expected: &BTreeMap<String, Vec<String>>) {
    for output in ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"] {
        let mut want = expected[output].clone();
        want.sort();
        let got = topic_state(&format!("{out_prefix}.{output}"));
        assert_eq!(got.len(), want.len(), "{output}: {} rows in Kafka, {} offline", got.len(), want.len());
        assert_eq!(got, want, "{output} differs from the offline run");
    }
}

#[test]
fn two_workers_equal_offline_run() {
    let s = setup("w2", &[]);
    let out = unique("w2out");
    let cfg = kafka_config(&s, &unique("g"), &out, "");
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q"]);
    assert_topics_equal_offline(&out, &offline(&s));

    // Every record carries its logical time; progress records name, per released time, the
    // end offsets of the output partitions, and the last one covers every output record.
    let records = read_topic(&format!("{out}.user_event_counts"), std::time::Duration::from_secs(2));
    assert!(records.iter().all(|r| r.headers.contains_key("diffstream.time")));
    let progress = read_topic(&format!("{out}.diffstream.progress"), std::time::Duration::from_secs(2));
    assert!(!progress.is_empty(), "no progress records");
    let mut ends: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for p in &progress {
        let v: serde_json::Value = serde_json::from_slice(p.value.as_ref().unwrap()).unwrap();
        assert!(v["time"].as_u64().is_some());
        for (topic, parts) in v["offsets"].as_object().unwrap() {
            for (part, end) in parts.as_object().unwrap() {
                let e = ends.entry((topic.clone(), part.parse().unwrap())).or_default();
                *e = (*e).max(end.as_i64().unwrap());
            }
        }
    }
    let counted: i64 = ends.iter().filter(|((t, _), _)| t.ends_with(".user_event_counts")).map(|(_, e)| e).sum();
    assert_eq!(counted as usize, records.len(), "progress records cover every output record");
}

#[test]
fn two_processes_equal_offline_run() {
    let s = setup("n2", &[]);
    let out = unique("n2out");
    let cfg = kafka_config(&s, &unique("g"), &out, "");
    common::two_processes(s.dir.path(), &["run", "--config", cfg.to_str().unwrap(), "-q"], false);
    assert_topics_equal_offline(&out, &offline(&s));
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic() {
    let prefix = unique("dlq");
    let topic = format!("{prefix}.clicks");
    create_topics(std::slice::from_ref(&topic), 1);
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    let records: [(&[u8], &[u8]); 3] = [
        (b"k1", br#"{"event_timestamp":"2026-01-01 00:00:00","user_id":1,"page":"/","event":"click"}"#),
        (b"k2", b"{broken"),
        (b"k3", b"\xff\xfe\xfd"),
    ];
    for (k, v) in records {
        producer.send(rdkafka::producer::BaseRecord::to(&topic).key(k).payload(v)).unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dlq.toml");
    let text = format!(
        "dataflows = [\"user_event_counts\"]\n{}[kafka]\nbootstrap_servers = \"{}\"\n[inputs.clicks]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\nstop_when_idle = \"3s\"\n[output.kafka]\ntopic_prefix = \"{prefix}.out.\"\n",
        state_dir(dir.path(), "dlq"),
        kafka_bootstrap(),
        unique("g")
    );
    std::fs::write(&cfg, text).unwrap();
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-q"]);
    let dead = read_topic(&format!("{topic}.dlq"), std::time::Duration::from_secs(3));
    assert_eq!(dead.len(), 2, "two malformed records");
    let by_key: BTreeMap<Vec<u8>, &Consumed> = dead.iter().map(|d| (d.key.clone().unwrap(), d)).collect();
    let broken = by_key[b"k2".as_slice()];
    assert_eq!(broken.value.as_deref(), Some(b"{broken".as_slice()), "the exact bytes");
    assert_eq!(broken.headers["diffstream.source.topic"], topic.as_bytes());
    assert_eq!(broken.headers["diffstream.source.offset"], b"1");
    assert!(String::from_utf8_lossy(&broken.headers["diffstream.reason"]).starts_with("invalid_json"));
    let binary = by_key[b"k3".as_slice()];
    assert_eq!(binary.value.as_deref(), Some(b"\xff\xfe\xfd".as_slice()));
    assert!(String::from_utf8_lossy(&binary.headers["diffstream.reason"]).starts_with("not_utf8"));
    assert_eq!(topic_state(&format!("{prefix}.out.event_type_counts")), vec![r#"{"event":"click","count":1}"#.to_string()]);
}

/// Produces generated records `from..from + count` of `kind` (with `seed`, else the default)
/// to `topic`, one record per request (Tansu skips the rest of a batch when a consumer resumes
/// inside it, and reports a partition's end as the first offset of its last batch; real Kafka
/// needs neither).
fn gen_to_topic(kind: &str, topic: &str, from: u64, count: u64, seed: Option<&str>) {
    let (from, count, bootstrap) = (from.to_string(), count.to_string(), kafka_bootstrap());
    let mut args = vec!["gen", kind, "--from", &from, "--count", &count, "--to", "kafka", "--topic", topic, "--bootstrap", &bootstrap];
    args.extend(["--producer-option", "batch.num.messages=1", "--producer-option", "linger.ms=0"]);
    if let Some(seed) = seed {
        args.extend(["--seed", seed]);
    }
    diffstream(&args);
}

/// Produces part `part` (0, 1, …) of the records of every kind to the setup's topics.
impl Setup {
    /// A setup whose input topics (3 partitions each) exist, and whose whole input — `chunks`
    /// chunks of `counts` — is written as files for the offline run.
    fn with_input(name: &str, counts: &[(&str, u64)], chunks: u64) -> Setup {
        let s = Setup { dir: tempfile::tempdir().unwrap(), prefix: unique(name) };
        let topics: Vec<String> = counts.iter().map(|(k, _)| format!("{}.{k}", s.prefix)).collect();
        create_topics(&topics, 3);
        for (kind, count) in counts {
            let out = diffstream(&["gen", kind, "--count", &(chunks * count).to_string(), "--seed", "9"]);
            std::fs::write(s.dir.path().join(format!("{kind}.jsonl")), out.stdout).unwrap();
        }
        s
    }
}

fn produce(prefix: &str, part: u64, counts: &[(&str, u64)]) {
    for (kind, count) in counts {
        gen_to_topic(kind, &format!("{prefix}.{kind}"), part * count, *count, Some("9"));
    }
}

#[test]
fn kill_and_restart_gives_the_offline_result() {
    let counts = [("users", 200u64), ("clicks", 3000), ("sensors", 3000)];
    let s = Setup::with_input("restart", &counts, 2);
    let out = unique("restart-out");
    let group = unique("g");
    let cfg = kafka_config(&s, &group, &out, "max_records_per_batch = 50\n");

    // First half, then the engine (streaming, no idle stop) killed with SIGKILL mid-run.
    produce(&s.prefix, 0, &counts);
    let first_cfg = s.dir.path().join("first.toml");
    std::fs::write(&first_cfg, std::fs::read_to_string(&cfg).unwrap().replace("stop_when_idle = \"4s\"\n", "")).unwrap();
    let mut engine =
        Command::new(bin()).args(["run", "--config", first_cfg.to_str().unwrap(), "-w", "2", "-q"]).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while read_topic(&format!("{out}.user_event_counts"), std::time::Duration::from_millis(500)).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first run wrote nothing in 60 s");
        assert!(engine.try_wait().unwrap().is_none(), "the first run exited by itself");
    }
    engine.kill().unwrap(); // SIGKILL: no flush, no final commit
    engine.wait().unwrap();

    // Second half arrives while it is down; the restart rebuilds and finishes.
    produce(&s.prefix, 1, &counts);
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q"]);
    assert_topics_equal_offline(&out, &offline(&s));
}

/// Checkpoints every second; killed once a checkpoint holds the first half, more input while
/// down: the restart loads the checkpoint, reads only the input after it (a fraction of what it
/// would read from the beginning) and ends equal to the offline run. The test counts what
/// the restart read (the cluster test below also removes the early input).
#[test]
fn a_restart_from_a_checkpoint_reads_only_what_came_after() {
    restart_from_a_checkpoint(false);
}

/// [`a_restart_from_a_checkpoint_reads_only_what_came_after`] with `[runtime] state_topic`, and
/// the state directory removed before every restart, as when the engine comes back on another
/// host: each restart rebuilds it from the topic, loads the checkpoint, replays the bindings
/// after it (no record written twice) and ends equal to the offline run.
#[test]
fn a_state_topic_brings_the_state_to_a_new_host() {
    restart_from_a_checkpoint(true);
}

fn restart_from_a_checkpoint(state_topic: bool) {
    let counts = [("users", 200u64), ("clicks", 3000), ("sensors", 3000)];
    let s = Setup::with_input("checkpoint", &counts, 2);
    let out = unique("checkpoint-out");
    let group = unique("g");
    let cfg = kafka_config(&s, &group, &out, "max_records_per_batch = 50\n");
    let mut runtime = "checkpoint_interval = \"1s\"\nstatus_interval = \"100ms\"\n".to_string();
    if state_topic {
        runtime.push_str(&format!("state_topic = \"{}\"\n", unique("state")));
    }
    std::fs::write(&cfg, with_runtime(&std::fs::read_to_string(&cfg).unwrap(), &runtime)).unwrap();
    let state = s.dir.path().join("state").join(&group);
    // (a new host: nothing of the state directory is left)
    let new_host = || {
        if state_topic {
            std::fs::remove_dir_all(&state).unwrap();
        }
    };
    let first_cfg = s.dir.path().join("first.toml");
    std::fs::write(&first_cfg, std::fs::read_to_string(&cfg).unwrap().replace("stop_when_idle = \"4s\"\n", "")).unwrap();

    produce(&s.prefix, 0, &counts);
    let mut engine =
        Command::new(bin()).args(["run", "--config", first_cfg.to_str().unwrap(), "-w", "2", "-q"]).stderr(Stdio::null()).spawn().unwrap();
    // Wait for the first half in the outputs, then for two more checkpoints (one holds it all).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while clicks_counted(&out) < 3000 {
        assert!(std::time::Instant::now() < deadline, "the first half was not counted in 90 s");
        assert!(engine.try_wait().unwrap().is_none(), "the first run exited by itself");
    }
    let checkpoints = s.dir.path().join("state").join(&group).join("checkpoints");
    let complete = || checkpoint_times(&checkpoints, 0..2);
    let seen = std::time::Instant::now();
    let before = complete().last().copied();
    while complete().last().copied() == before || seen.elapsed() < std::time::Duration::from_millis(2500) {
        assert!(seen.elapsed() < std::time::Duration::from_secs(30), "no new checkpoint in 30 s: {:?}", complete());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // (each process keeps its parts of the KEEP latest checkpoints; one more may be written)
    let keep = diffstream::runtime::checkpoint::KEEP + 1;
    assert!(complete().len() <= keep, "old checkpoints are removed: {:?}", complete());
    engine.kill().unwrap(); // SIGKILL: no flush, no final commit
    engine.wait().unwrap();

    produce(&s.prefix, 1, &counts);
    new_host();
    let restart = Command::new(bin()).args(["run", "--config", cfg.to_str().unwrap(), "-w", "2", "--log-level", "info"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&restart.stderr);
    assert!(restart.status.success(), "{stderr}");
    assert!(stderr.contains("restarting from a checkpoint"), "the restart did not load a checkpoint:\n{stderr}");
    // The last status line counts what this run read, per input.
    // (the inputs in the order of their names)
    let last = stderr.lines().rev().find(|l| l.starts_with("clicks ") && l.contains(", users ")).expect("a status line");
    let read: u64 = last
        .split(" | ")
        .next()
        .unwrap()
        .split(", ")
        .map(|part| part.split(' ').nth(1).unwrap().replace(',', "").parse::<u64>().unwrap())
        .sum();
    let total: u64 = counts.iter().map(|(_, n)| 2 * n).sum();
    assert!(read < total * 3 / 4, "the restart read {read} of {total} records: it did not start from the checkpoint ({last})");
    assert_topics_equal_offline(&out, &offline(&s));

    // Once more with nothing new: a restart from a checkpoint writes nothing the sinks have.
    let outputs = ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"];
    let records = || outputs.map(|o| read_topic(&format!("{out}.{o}"), std::time::Duration::from_secs(2)).len());
    let before = records();
    new_host();
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q"]);
    assert_eq!(records(), before, "records per output topic after a restart with no new input");

    // The bindings logs were compacted at the checkpoints: at or before the latest complete one
    // each partition keeps one binding (the history does not grow them).
    let latest = *complete().last().expect("a complete checkpoint");
    let bindings = s.dir.path().join("state").join(&group).join("bindings");
    for log in std::fs::read_dir(&bindings).unwrap().map(|e| e.unwrap().path()) {
        let text = std::fs::read_to_string(&log).unwrap();
        let mut early: BTreeMap<(String, String), u32> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f[0].parse::<u64>().unwrap() <= latest {
                *early.entry((f[1].to_string(), f[2].to_string())).or_default() += 1;
            }
        }
        assert!(early.values().all(|n| *n == 1), "{}: bindings at or before {latest} not compacted: {early:?}", log.display());
    }
    // A replay from the beginning over the compacted logs rebuilds the same state: everything
    // up to the kept bindings is read at their times, which the sinks already have.
    let replay = s.dir.path().join("replay.toml");
    std::fs::write(&replay, with_runtime(&std::fs::read_to_string(&cfg).unwrap(), "restart = \"replay\"\n")).unwrap();
    new_host();
    diffstream(&["run", "--config", replay.to_str().unwrap(), "-w", "2", "-q"]);
    assert_eq!(records(), before, "records per output topic after a replay with no new input");
    assert_topics_equal_offline(&out, &offline(&s));
}

/// A cluster whose processes do not share a state directory: each keeps its own workers'
/// checkpoint parts and bindings, and after both are killed the restart agrees on the latest
/// checkpoint both have, reads only what came after, and ends equal to the offline run.
/// Before, such a cluster found no complete checkpoint (every part in one directory) and
/// replayed from the beginning.
///
/// While the cluster is down, retention removes every record the first run read (see
/// [`lose_early_records`]), and the groups' committed offsets go with the recreated topics, as
/// when Kafka expires them: the restart goes by the checkpoint alone, and reads none of them.
/// Before, a restart whose groups had no offsets read every partition from its earliest record.
#[test]
fn two_processes_with_their_own_state_dirs_restart_from_a_checkpoint() {
    two_processes_restart(false);
}

/// The same cluster with `[runtime] state_topic`, both processes restarted on new hosts (their
/// state directories gone): each rebuilds its own from the topic and the restart goes on from the
/// checkpoint, exactly.
#[test]
fn a_cluster_on_new_hosts_restarts_from_the_state_topic() {
    two_processes_restart(true);
}

fn two_processes_restart(state_topic: bool) {
    let counts = [("users", 200u64), ("clicks", 3000), ("sensors", 3000)];
    let s = Setup::with_input("n2ck", &counts, 2);
    let out = unique("n2ck-out");
    let group = unique("g");
    let cfg = kafka_config(&s, &group, &out, "max_records_per_batch = 50\n");
    let mut runtime = "checkpoint_interval = \"1s\"\n".to_string();
    if state_topic {
        runtime.push_str(&format!("state_topic = \"{}\"\n", unique("state")));
    }
    let text = with_runtime(&std::fs::read_to_string(&cfg).unwrap(), &runtime);
    let shared = s.dir.path().join("state").join(&group);
    let own = |p: usize| s.dir.path().join(format!("state-p{p}"));
    let config = |p: usize, killed: bool| {
        let mut t = text.replace(&shared.display().to_string(), &own(p).display().to_string());
        if killed {
            t = t.replace("stop_when_idle = \"4s\"\n", "");
        }
        let path = s.dir.path().join(format!("p{p}-{killed}.toml"));
        std::fs::write(&path, t).unwrap();
        path
    };
    let hostfile = hostfile(s.dir.path());
    let spawn = |p: usize, killed: bool| {
        Command::new(bin())
            .args(["run", "--config", config(p, killed).to_str().unwrap(), "-w", "1", "-n", "2", "-p", &p.to_string(), "-h"])
            .arg(&hostfile)
            .args(["-q", "--log-level", "info"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The checkpoint times at which process `p`'s own directory holds its part.
    let parts = |p: usize| checkpoint_times(&own(p).join("checkpoints"), p..p + 1);

    produce(&s.prefix, 0, &counts);
    let mut first: Vec<_> = (0..2).map(|p| spawn(p, true)).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while clicks_counted(&out) < 3000 {
        assert!(std::time::Instant::now() < deadline, "the first half was not counted in 90 s");
    }
    // Two more checkpoints after that, in both directories: the earlier one holds it all.
    let after = parts(0).last().copied();
    while parts(0).iter().filter(|t| Some(**t) > after).count() < 2 || parts(1).iter().filter(|t| Some(**t) > after).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "no checkpoints in both directories within 90 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for c in &mut first {
        c.kill().unwrap(); // SIGKILL: no flush, no final commit
        c.wait().unwrap();
    }
    assert!(
        !own(0).join("checkpoints").read_dir().unwrap().any(|d| d.unwrap().path().join("worker-1-of-2.bin").exists()),
        "the directories are not shared"
    );

    // Retention while it is down: the records both checkpoints hold are gone.
    let gone: Vec<_> = counts.iter().map(|(kind, _)| lose_early_records(&format!("{}.{kind}", s.prefix))).collect();
    produce(&s.prefix, 1, &counts);
    for ((kind, n), early) in counts.iter().zip(&gone) {
        assert_offsets_kept(&format!("{}.{kind}", s.prefix), early, *n);
    }
    if state_topic {
        for p in 0..2 {
            std::fs::remove_dir_all(own(p)).unwrap();
        }
    }
    let restarted: Vec<_> = (0..2).map(|p| spawn(p, false)).collect();
    let logs: Vec<String> = restarted
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "{log}");
            log
        })
        .collect();
    assert!(logs[0].contains("restarting from a checkpoint"), "the restart did not load a checkpoint:\n{}", logs[0]);
    if state_topic {
        assert!(logs.iter().all(|l| l.contains("state restored from the state topic")), "{logs:?}");
    }
    assert!(logs.iter().all(|l| l.contains("the group's offsets are gone")), "the recreated topics kept the groups' offsets:\n{logs:?}");
    assert_topics_equal_offline(&out, &offline(&s));
    for (kind, _) in counts {
        let dlq = read_topic(&format!("{}.{kind}.dlq", s.prefix), std::time::Duration::from_secs(1));
        let read: Vec<String> = dlq
            .iter()
            .filter(|r| r.value.as_deref() == Some(GONE))
            .map(|r| {
                let h = |k: &str| String::from_utf8_lossy(&r.headers[&format!("diffstream.source.{k}")]).into_owned();
                format!("partition {} offset {}", h("partition"), h("offset"))
            })
            .collect();
        assert!(read.is_empty(), "{kind}: the restart read records retention had removed (it held {:?}): {read:?}", gone);
    }
}

/// What stands in for a record retention removed.
const GONE: &[u8] = b"\xff removed by retention";

/// Retention, as far as the test broker allows. Tansu removes no records (its memory engine has
/// no retention, and DeleteRecords panics a broker task), so the topic is deleted and created
/// again with every record it held replaced, offset for offset, by bytes that are no record
/// ([`GONE`]). A run that read any of them would lack their counts and dead-letter them.
/// Returns how many records each partition held.
fn lose_early_records(topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let held = read_topic(topic, std::time::Duration::from_secs(2));
    let mut ends: BTreeMap<i32, i64> = (0..3).map(|p| (p, 0)).collect();
    for r in &held {
        let end = ends.get_mut(&r.partition).unwrap();
        assert_eq!(r.offset, *end, "{topic}: offsets without gaps");
        *end += 1;
    }
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(15)));
    for r in diffstream::sinks::kafka::block_on(admin.delete_topics(&[topic], &opts)).unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
    }
    create_topics(&[topic.to_string()], 3);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for (p, n) in &ends {
        for _ in 0..*n {
            let mut record = BaseRecord::<(), [u8]>::to(topic).partition(*p).payload(GONE);
            while let Err((e, back)) = producer.send(record) {
                assert!(matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
                producer.poll(std::time::Duration::from_millis(10));
                record = back;
            }
            producer.poll(std::time::Duration::ZERO);
        }
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
    ends
}

/// The recreated topic holds, after the stand-ins of the `early` records, the records produced
/// since at the offsets they would have had: `later` of them in all, none of them a stand-in.
fn assert_offsets_kept(topic: &str, early: &BTreeMap<i32, i64>, later: u64) {
    let now = read_topic(topic, std::time::Duration::from_secs(2));
    let mut fresh = 0;
    for r in &now {
        let is_gone = r.value.as_deref() == Some(GONE);
        assert_eq!(is_gone, r.offset < early[&r.partition], "{topic}: partition {} offset {}", r.partition, r.offset);
        fresh += u64::from(!is_gone);
    }
    assert_eq!(fresh, later, "{topic}: the records produced after the retention");
}

/// A config's text with `lines` added to its `[runtime]` table (the first table of
/// [`kafka_config`]'s files).
fn with_runtime(text: &str, lines: &str) -> String {
    let (head, rest) = text.split_once("[kafka]").expect("a [kafka] table");
    format!("{head}{lines}[kafka]{rest}")
}

fn one_input_config(dir: &Path, topic: &str, out_prefix: &str, input_extra: &str) -> std::path::PathBuf {
    let text = format!(
        "dataflows = [\"user_event_counts\"]\n{}[kafka]\nbootstrap_servers = \"{}\"\n[inputs.clicks]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\n{input_extra}[output.kafka]\ntopic_prefix = \"{out_prefix}.\"\n",
        state_dir(dir, out_prefix),
        kafka_bootstrap(),
        unique("g")
    );
    let path = dir.join(format!("{}.toml", unique("cfg")));
    std::fs::write(&path, text).unwrap();
    path
}

fn clicks_counted(out_prefix: &str) -> i64 {
    topic_state(&format!("{out_prefix}.event_type_counts"))
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["count"].as_i64().unwrap())
        .sum()
}

#[test]
fn start_positions() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("start") + ".clicks";
    create_topics(std::slice::from_ref(&topic), 2);
    // One record per produce request: Tansu reports a partition's end as the first offset of
    // its last batch, so with single-record batches "latest" re-reads at most the last record.
    let produce = |from: u64, count: u64| gen_to_topic("clicks", &topic, from, count, None);
    produce(0, 300);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let between = diffstream::codec::format_time(now_ms);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    produce(300, 200);

    // earliest: everything
    let out = unique("earliest");
    let cfg = one_input_config(dir.path(), &topic, &out, "start = \"earliest\"\nstop_when_idle = \"3s\"\n");
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-q"]);
    assert_eq!(clicks_counted(&out), 500);

    // a time: only what was produced after it
    let out = unique("timestamp");
    let cfg = one_input_config(dir.path(), &topic, &out, &format!("start = \"{between}\"\nstop_when_idle = \"3s\"\n"));
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-q"]);
    assert_eq!(clicks_counted(&out), 200);

    // latest: only what is produced after the engine started
    let out = unique("latest");
    let cfg = one_input_config(dir.path(), &topic, &out, "start = \"latest\"\nstop_when_idle = \"8s\"\n");
    let mut engine = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap(), "-q", "--log-level", "info"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Produce only once the engine has fixed where "latest" is.
    let mut stderr = std::io::BufReader::new(engine.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the engine ended before assigning partitions:\n{seen}");
        seen.push_str(&line);
        if line.contains("Kafka partitions assigned") {
            break;
        }
    }
    let drain = std::thread::spawn(move || std::io::Read::read_to_string(&mut stderr, &mut seen).map(|_| seen));
    produce(500, 50);
    let status = engine.wait().unwrap();
    let log = drain.join().unwrap().unwrap();
    assert!(status.success(), "{log}");
    let counted = clicks_counted(&out);
    if std::env::var("DIFFSTREAM_TEST_BROKER").as_deref() == Ok("tansu") {
        // Tansu's end offset is the last record, not one past it: at most one extra per partition.
        assert!((50..=52).contains(&counted), "latest counted {counted}");
    } else {
        assert_eq!(counted, 50);
    }
}

#[test]
fn kill_and_restart_with_mongodb_never_moves_back() {
    use mongodb::bson::{doc, Document};
    let uri = std::env::var("MONGODB_URI").expect("MONGODB_URI: run the tests with scripts/test.sh");
    let counts = [("users", 80u64), ("clicks", 800), ("sensors", 800)];
    let s = Setup::with_input("mrestart", &counts, 2);
    let database = unique("mrestart").replace('-', "_");
    let out = unique("mrestart-out");
    let cfg = kafka_config(&s, &unique("g"), &out, "max_records_per_batch = 50\n");
    let text = std::fs::read_to_string(&cfg).unwrap() + &format!("[output.mongodb]\ndatabase = \"{database}\"\n");
    std::fs::write(&cfg, &text).unwrap();
    let first_cfg = s.dir.path().join("first.toml");
    std::fs::write(&first_cfg, text.replace("stop_when_idle = \"4s\"\n", "")).unwrap();

    // Watch user_event_counts while everything runs: no count may ever go down.
    let db = mongodb::sync::Client::with_uri_str(&uri).unwrap().database(&database);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut polls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in db.collection::<Document>("user_event_counts").find(doc! {}).run().unwrap() {
                    let d = d.unwrap();
                    let (id, n) = (d.get("_id").unwrap().to_string(), d.get_i64("event_count").unwrap());
                    let before = seen.insert(id.clone(), n).unwrap_or(0);
                    assert!(n >= before, "{id} went back from {before} to {n}");
                }
                polls += 1;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            polls
        })
    };

    produce(&s.prefix, 0, &counts);
    let mut engine =
        Command::new(bin()).args(["run", "--config", first_cfg.to_str().unwrap(), "-w", "2", "-q"]).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while db.collection::<Document>("user_event_counts").count_documents(doc! {}).run().unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first run wrote nothing to MongoDB in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    engine.kill().unwrap();
    engine.wait().unwrap();
    produce(&s.prefix, 1, &counts);
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(watcher.join().expect("no document moved back") > 0);

    let expected = offline(&s);
    for output in ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"] {
        let mut want: Vec<serde_json::Value> = expected[output].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        want.sort_by_key(|v| v.to_string());
        assert_eq!(mongo_rows(&db, output), want, "{output}: MongoDB differs from the offline run");
    }
}

/// Output records as a poller sees them: per topic and key, the logical time and the row.
struct Watched {
    /// (topic, key) → (time, count field if any)
    last: BTreeMap<(String, Vec<u8>), (u64, Option<i64>)>,
    /// (topic, key, time) → value: a time recomputed after a restart must give what was written
    at: BTreeMap<(String, Vec<u8>, u64), Option<Vec<u8>>>,
    violations: Vec<String>,
    /// every record of the count topics and the progress topic, in the order read
    log: Vec<(String, Option<Vec<u8>>, Option<Vec<u8>>, u64)>,
}

fn header_time(h: &BTreeMap<String, Vec<u8>>) -> u64 {
    h.get("diffstream.time").map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap())
}

/// Reads `topics` from the beginning until `stop`, noting every key whose time or count goes back.
fn watch_topics(topics: Vec<String>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Watched {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("watch"))
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in &topics {
        let partitions = if t.ends_with("progress") { 1 } else { 3 };
        for p in 0..partitions {
            // offset 0: "beginning" asks the broker, and Tansu may answer past it (tests/common)
            tpl.add_partition_offset(t, p, rdkafka::Offset::Offset(0)).unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut w = Watched { last: BTreeMap::new(), at: BTreeMap::new(), violations: Vec::new(), log: Vec::new() };
    let mut quiet_since = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || quiet_since.elapsed() < std::time::Duration::from_secs(3) {
        let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) else { continue };
        quiet_since = std::time::Instant::now();
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                headers.insert(h.get(i).key.to_string(), h.get(i).value.unwrap_or_default().to_vec());
            }
        }
        let (topic, key, value) = (m.topic().to_string(), m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
        let time = header_time(&headers);
        w.log.push((topic.clone(), key.clone(), value.clone(), time));
        if topic.ends_with("progress") {
            continue;
        }
        let count = value.as_ref().and_then(|v| {
            let v: serde_json::Value = serde_json::from_slice(v).ok()?;
            v.get("event_count").or(v.get("count")).and_then(serde_json::Value::as_i64)
        });
        let key = key.expect("output records are keyed");
        if let Some(before) = w.at.insert((topic.clone(), key.clone(), time), value.clone()) {
            if before != value {
                let text =
                    |v: &Option<Vec<u8>>| v.as_deref().map_or_else(|| "null".to_string(), |b| String::from_utf8_lossy(b).into_owned());
                w.violations.push(format!(
                    "{topic} {}: at time {time} written as {} and again as {}",
                    String::from_utf8_lossy(&key),
                    text(&before),
                    text(&value)
                ));
            }
        }
        if let Some((t0, c0)) = w.last.insert((topic.clone(), key.clone()), (time, count)) {
            let k = String::from_utf8_lossy(&key);
            if time < t0 {
                w.violations.push(format!(
                    "{topic} {k}: time went back from {t0} to {time} (partition {} offset {})",
                    m.partition(),
                    m.offset()
                ));
            }
            if let (Some(c0), Some(c)) = (c0, count) {
                if c < c0 {
                    w.violations.push(format!("{topic} {k}: count went back from {c0} to {c}"));
                }
            }
        }
    }
    w
}

/// The rows of `topic` in the log as of logical time `at`: per key, the record of the greatest
/// time `≤ at` (tombstones remove).
fn state_at(log: &[(String, Option<Vec<u8>>, Option<Vec<u8>>, u64)], topic: &str, at: u64) -> Vec<serde_json::Value> {
    let mut latest: BTreeMap<&[u8], (u64, Option<&[u8]>)> = BTreeMap::new();
    for (t, k, v, time) in log.iter().filter(|(t, _, _, time)| t == topic && *time <= at) {
        let _ = t;
        let e = latest.entry(k.as_deref().unwrap()).or_insert((*time, v.as_deref()));
        if *time >= e.0 {
            *e = (*time, v.as_deref());
        }
    }
    latest.into_values().filter_map(|(_, v)| v).map(|v| serde_json::from_slice(v).unwrap()).collect()
}

/// The clicks topic's bindings `partition → time → next offset`, from the runs' debug logs
/// (every binding is logged once it is durable: the bindings logs themselves are compacted at
/// checkpoints, so they no longer hold the whole history).
fn read_bindings(logs: &[std::path::PathBuf]) -> BTreeMap<i32, BTreeMap<u64, i64>> {
    let mut out: BTreeMap<i32, BTreeMap<u64, i64>> = BTreeMap::new();
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap().lines().filter(|l| l.contains(" bound ")) {
            let field = |name: &str| {
                let v = line.split(' ').find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?;
                Some(v.trim_matches('"').to_string())
            };
            // (a killed run's last line may be torn)
            let (Some(topic), Some(partition), Some(time), Some(next)) = (field("topic"), field("partition"), field("time"), field("next"))
            else {
                continue;
            };
            if let (true, Ok(p), Ok(t), Ok(n)) = (topic.ends_with(".clicks"), partition.parse(), time.parse(), next.parse()) {
                out.entry(p).or_default().insert(t, n);
            }
        }
    }
    out
}

/// Kill -9 at ten random moments while MongoDB and the output topics hold writes past the last
/// commit, with more input (and malformed records) arriving while the engine is down: readers
/// never see a key go back, every progress record names a consistent snapshot, dead letters
/// are written once, and the end equals the offline run.
#[test]
fn ten_kill_points_never_move_outputs_back() {
    use mongodb::bson::{doc, Document};
    const CHUNKS: u64 = 11;
    let uri = std::env::var("MONGODB_URI").expect("MONGODB_URI: run the tests with scripts/test.sh");
    let counts = [("users", 30u64), ("clicks", 400), ("sensors", 300)];
    let s = Setup::with_input("kills", &counts, CHUNKS);
    let database = unique("kills").replace('-', "_");
    let out = unique("kills-out");
    let group = unique("g");
    let cfg = kafka_config(&s, &group, &out, "max_records_per_batch = 40\n");
    // Checkpoints on, every second: a third of the kills come just after a checkpoint, and
    // every later run must restart from a checkpoint.
    std::fs::write(&cfg, with_runtime(&std::fs::read_to_string(&cfg).unwrap(), "checkpoint_interval = \"1s\"\n")).unwrap();
    let text =
        std::fs::read_to_string(&cfg).unwrap() + &format!("[output.mongodb]\ndatabase = \"{database}\"\nmax_flush_interval = \"20ms\"\n");
    std::fs::write(&cfg, &text).unwrap();
    let killed_cfg = s.dir.path().join("killed.toml");
    std::fs::write(&killed_cfg, text.replace("stop_when_idle = \"4s\"\n", "")).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched: Vec<String> = ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"]
        .iter()
        .map(|o| format!("{out}.{o}"))
        .chain([format!("{out}.diffstream.progress")])
        .collect();
    create_topics(&watched[..5], 3);
    create_topics(&watched[5..], 1);
    let topic_watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || watch_topics(watched, stop))
    };
    let db = mongodb::sync::Client::with_uri_str(&uri).unwrap().database(&database);
    let mongo_watcher = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut seen, mut back) = (BTreeMap::<String, i64>::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in db.collection::<Document>("user_event_counts").find(doc! {}).run().unwrap() {
                    let d = d.unwrap();
                    let (id, n) = (d.get("_id").unwrap().to_string(), d.get_i64("event_count").unwrap());
                    let before = seen.insert(id.clone(), n).unwrap_or(0);
                    if n < before {
                        back.push(format!("MongoDB {id}: {before} → {n}"));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            back
        })
    };

    let malformed = |chunk: u64| {
        let producer: rdkafka::producer::BaseProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
        let topic = format!("{}.clicks", s.prefix);
        let key = format!("bad-{chunk}");
        producer.send(rdkafka::producer::BaseRecord::to(&topic).key(&key).payload("{broken")).unwrap();
        rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10)).unwrap();
    };
    // A seed printed so a failing order of kill points can be run again. Three kinds of kill
    // point, in turn: during start-up (the sinks resuming, the state being rebuilt); just after
    // the run began reading live (its sinks writing the new chunk, past the last commit); and
    // just after a new checkpoint is complete, so that the next runs restart from checkpoints.
    let mut seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("kill points: KILL_SEED={seed}");
    let checkpoints = s.dir.path().join("state").join(&group).join("checkpoints");
    let latest_complete = || checkpoint_times(&checkpoints, 0..2).last().copied();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < std::time::Duration::from_secs(60), "no {what} within 60 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let mut first_checkpoint_kill = None;
    for chunk in 0..CHUNKS - 1 {
        produce(&s.prefix, chunk, &counts);
        malformed(chunk);
        let log_path = s.dir.path().join(format!("run-{chunk}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let before = latest_complete();
        let mut engine = Command::new(bin())
            .args(["run", "--config", killed_cfg.to_str().unwrap(), "-w", "2", "-q", "--log-level", "debug"])
            .stderr(log)
            .spawn()
            .unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let jitter = std::time::Duration::from_millis((seed >> 33) % 300);
        match chunk % 3 {
            0 => std::thread::sleep(std::time::Duration::from_millis(300) + jitter * 3),
            1 => wait_for("live reading", &|| std::fs::read_to_string(&log_path).unwrap().contains("reading the inputs live")),
            _ => {
                wait_for("new complete checkpoint", &|| latest_complete() > before);
                first_checkpoint_kill.get_or_insert(chunk);
            }
        }
        if chunk % 3 != 0 {
            std::thread::sleep(jitter);
        }
        assert!(engine.try_wait().unwrap().is_none(), "the engine exited by itself");
        engine.kill().unwrap(); // SIGKILL: no flush, no final commit
        engine.wait().unwrap();
        // A binding is synced before it is logged: a kill between the two leaves one that only
        // the bindings logs hold (the next run replays it). Keep them as the kill left them.
        let kept = s.dir.path().join(format!("bindings-after-{chunk}"));
        std::fs::create_dir_all(&kept).unwrap();
        for f in std::fs::read_dir(s.dir.path().join("state").join(&group).join("bindings")).into_iter().flatten().flatten() {
            std::fs::copy(f.path(), kept.join(f.file_name())).unwrap();
        }
    }
    produce(&s.prefix, CHUNKS - 1, &counts);
    malformed(CHUNKS - 1);
    let restarted_from_checkpoint =
        |c: u64| std::fs::read_to_string(s.dir.path().join(format!("run-{c}.log"))).unwrap().contains("restarting from a checkpoint");
    let from_checkpoints = (0..CHUNKS - 1).filter(|&c| restarted_from_checkpoint(c)).count();
    let first = first_checkpoint_kill.expect("a kill after a checkpoint");
    assert!(
        (first + 1..CHUNKS - 1).all(restarted_from_checkpoint),
        "every run after a kill that followed a complete checkpoint restarts from one"
    );
    eprintln!("{from_checkpoints} of {} killed runs restarted from a checkpoint", CHUNKS - 1);
    let last_log = s.dir.path().join("run-last.log");
    let last = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q", "--log-level", "debug"])
        .stderr(std::fs::File::create(&last_log).unwrap())
        .status()
        .unwrap();
    assert!(last.success(), "{}", std::fs::read_to_string(&last_log).unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = topic_watcher.join().unwrap();
    let mongo_back = mongo_watcher.join().unwrap();
    assert!(w.violations.is_empty(), "keys went back in the output topics:\n{}", w.violations.join("\n"));
    assert!(mongo_back.is_empty(), "MongoDB documents went back:\n{}", mongo_back.join("\n"));

    // Every progress record's snapshot is the state of the input up to the offsets bound to its
    // time: per-user and per-kind counts recomputed naively from the clicks topic and the
    // bindings logs, key by key.
    let clicks = read_topic(&format!("{}.clicks", s.prefix), std::time::Duration::from_secs(3));
    let logs: Vec<_> = (0..CHUNKS - 1).map(|c| s.dir.path().join(format!("run-{c}.log"))).chain([last_log]).collect();
    let mut bindings = read_bindings(&logs);
    for chunk in 0..CHUNKS - 1 {
        for f in std::fs::read_dir(s.dir.path().join(format!("bindings-after-{chunk}"))).unwrap().flatten() {
            // `<time> <topic> <partition> <next>` per line; a torn last line is skipped
            for line in std::fs::read_to_string(f.path()).unwrap().split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
                let f: Vec<&str> = line.split(' ').collect();
                if let [t, topic, p, n] = f[..] {
                    if let (true, Ok(t), Ok(p), Ok(n)) = (topic.ends_with(".clicks"), t.parse::<u64>(), p.parse::<i32>(), n.parse::<i64>())
                    {
                        bindings.entry(p).or_default().insert(t, n);
                    }
                }
            }
        }
    }
    let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
    let mut checked = std::collections::BTreeSet::new();
    for (topic, _, value, _) in &w.log {
        if !topic.ends_with("progress") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
        latest.insert(v["worker"].as_u64().unwrap(), v["time"].as_u64().unwrap());
        if latest.len() == 2 {
            checked.insert(*latest.values().min().unwrap());
        }
    }
    assert!(!checked.is_empty(), "no progress records");
    let rows = |topic: &str, t: u64, key: &str, field: &str| -> BTreeMap<String, i64> {
        state_at(&w.log, &format!("{out}.{topic}"), t).iter().map(|r| (r[key].to_string(), r[field].as_i64().unwrap())).collect()
    };
    for &t in checked.iter().step_by((checked.len() / 40).max(1)) {
        let (mut users, mut kinds) = (BTreeMap::<String, i64>::new(), BTreeMap::<String, i64>::new());
        for c in &clicks {
            let bound = bindings.get(&c.partition).and_then(|b| b.range(..=t).next_back()).map_or(0, |(_, next)| *next);
            let Some(v) = c.value.as_deref().and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok()) else { continue };
            if c.offset < bound {
                *users.entry(v["user_id"].to_string()).or_default() += 1;
                *kinds.entry(v["event"].to_string()).or_default() += 1;
            }
        }
        assert_eq!(rows("event_type_counts", t, "event", "count"), kinds, "per-kind counts at progress time {t}");
        assert_eq!(rows("user_event_counts", t, "user_id", "event_count"), users, "per-user counts at progress time {t}");
    }

    // Dead letters once each, and the end equals the offline run, in Kafka and in MongoDB.
    let dead = read_topic(&format!("{}.clicks.dlq", s.prefix), std::time::Duration::from_secs(3));
    let mut offsets: Vec<Vec<u8>> = dead.iter().map(|d| d.headers["diffstream.source.offset"].clone()).collect();
    offsets.sort();
    let n = offsets.len();
    offsets.dedup();
    assert_eq!((n, offsets.len()), (CHUNKS as usize, CHUNKS as usize), "every malformed record once in the dead-letter topic");
    let expected = offline(&s);
    assert_topics_equal_offline(&out, &expected);
    for output in ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"] {
        let mut want: Vec<serde_json::Value> = expected[output].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        want.sort_by_key(|v| v.to_string());
        assert_eq!(mongo_rows(&db, output), want, "{output}: MongoDB differs from the offline run");
    }
}

/// A reading dated far ahead of the clock (year 9999) is a dead letter with reason `future` and
/// does not move the watermark: the readings after it are not late (before the guard, every
/// later reading was).
#[test]
fn a_reading_from_the_future_is_a_dead_letter_and_leaves_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("future") + ".sensors";
    create_topics(std::slice::from_ref(&topic), 1);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let reading = |ts: &str, value: f64| {
        format!(r#"{{"sensor_id":"s-1","sensor_type":"temperature","value":{value},"location":"lab","timestamp":"{ts}","status":"ok"}}"#)
    };
    let mut lines = vec![reading("9999-12-31T00:00:00Z", 20.0)];
    lines.extend((0..5).map(|i| reading(&diffstream::codec::format_time(now_ms - 60_000 + i * 1000), 20.0 + i as f64)));
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().unwrap();
    for line in &lines {
        producer.send(rdkafka::producer::BaseRecord::to(&topic).key("s-1").payload(line)).unwrap();
        rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10)).unwrap();
    }
    let out = unique("future-out");
    let text = format!(
        "dataflows = [\"sensor_metrics\"]\n{}[kafka]\nbootstrap_servers = \"{}\"\n[inputs.sensors]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\nstart = \"earliest\"\nstop_when_idle = \"3s\"\nmax_records_per_batch = 1\n[output.kafka]\ntopic_prefix = \"{out}.\"\n",
        state_dir(dir.path(), &out),
        kafka_bootstrap(),
        unique("g")
    );
    let cfg = dir.path().join("future.toml");
    std::fs::write(&cfg, text).unwrap();
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-q"]);

    // (a Kafka input's dead letters go to `<topic>.dlq`, the reason in a header)
    let dead = read_topic(&format!("{topic}.dlq"), std::time::Duration::from_secs(2));
    let reasons: Vec<String> = dead.iter().map(|d| String::from_utf8_lossy(&d.headers["diffstream.reason"]).into_owned()).collect();
    assert_eq!(reasons.len(), 1, "one dead letter: {reasons:?}");
    assert!(reasons[0].starts_with("future"), "{reasons:?}");
    let counted: u64 = topic_state(&format!("{out}.sensor_window_metrics"))
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 5, "every reading after the one from the future counts");
}

/// SQL views of a config's own files over Kafka inputs into Kafka and MongoDB: the shipped view
/// files with the columns declared by the config (an upsert input for the profiles) read the
/// generated topics with two workers; every output topic and collection ends equal to the
/// shipped dataflows' offline run, and the view rows carry the logical time like every output's.
#[test]
fn sql_views_from_kafka_into_kafka_and_mongodb_equal_the_offline_run() {
    let uri = std::env::var("MONGODB_URI").expect("MONGODB_URI: run the tests with scripts/test.sh");
    let s = setup("sqlk", &[]);
    let out = unique("sqlk-out");
    let database = unique("sqlk").replace('-', "_");
    // the shipped per-user and sensor pipelines, over the topics (the sensors with the offline
    // run's lateness)
    for name in ["clicks", "sensors"] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("dataflows/{name}.sql"));
        std::fs::copy(shipped, s.dir.path().join(format!("{name}.sql"))).unwrap();
    }
    let group = unique("g");
    let input = |kind: &str, columns: &str| {
        format!(
            "[inputs.{kind}]\nkind = \"kafka\"\ntopics = [\"{}.{kind}\"]\ngroup_id = \"{group}\"\nstop_when_idle = \"4s\"\ncolumns = {columns}\n",
            s.prefix
        )
    };
    let cfg = s.dir.path().join("sql.toml");
    std::fs::write(
        &cfg,
        format!(
            "views = [\"clicks.sql\", \"sensors.sql\"]\n\
             dataflows = [\"user_event_counts\", \"event_type_counts\", \"user_activity\", \"sensor_window_metrics\", \"anomaly_alerts\"]\n{}\
             [kafka]\nbootstrap_servers = \"{}\"\n{}{}{}event_time = {{ column = \"timestamp\", allowed_lateness = \"120s\" }}\n\
             [output.kafka]\ntopic_prefix = \"{out}.\"\n[output.mongodb]\ndatabase = \"{database}\"\n",
            state_dir(s.dir.path(), &group),
            kafka_bootstrap(),
            input("clicks", r#"["user_id int", "event text"]"#),
            input("users", r#"["user_id int primary key", "name text", "email text"]"#),
            input(
                "sensors",
                r#"["sensor_id text", "sensor_type text", "value float", "location text", "timestamp timestamp", "status text"]"#
            ),
        ),
    )
    .unwrap();
    diffstream(&["run", "--config", cfg.to_str().unwrap(), "-w", "2", "-q"]);
    let offline = offline(&s);
    let db = mongodb::sync::Client::with_uri_str(&uri).unwrap().database(&database);
    for view in ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"] {
        let mut want = offline[view].clone();
        want.sort();
        assert!(!want.is_empty());
        assert_eq!(topic_state(&format!("{out}.{view}")), want, "{view} in Kafka");
        let records = read_topic(&format!("{out}.{view}"), std::time::Duration::from_secs(1));
        assert!(records.iter().all(|r| r.headers.contains_key("diffstream.time")), "{view}: every record has its time");
        let want: Vec<serde_json::Value> = want.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut want = want;
        want.sort_by_key(|v| v.to_string());
        assert_eq!(mongo_rows(&db, view), want, "{view} in MongoDB");
    }
}
