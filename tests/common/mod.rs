//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `diffstream` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diffstream"))
}

/// Runs the binary, panicking with its stderr when it fails.
pub fn diffstream(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().expect("the diffstream binary runs");
    assert!(out.status.success(), "diffstream {} failed ({}):\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// A shipped pipeline in `dir`: copies `dataflows/NAME.sql` there and returns the text of
/// `configs/NAME.toml` reading that copy.
pub fn shipped(dir: &Path, name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join(format!("dataflows/{name}.sql")), dir.join(format!("{name}.sql"))).unwrap();
    let config = std::fs::read_to_string(root.join(format!("configs/{name}.toml"))).unwrap();
    config.replace(&format!("../dataflows/{name}.sql"), &format!("{name}.sql"))
}

/// Every `*.jsonl` file in `dir` (not the change files), by output name, as lines.
pub fn snapshots(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(output) = name.strip_suffix(".jsonl").filter(|n| !n.ends_with(".changes")) {
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(output.to_string(), text.lines().map(String::from).collect());
        }
    }
    out
}

/// The broker the Kafka tests use; fails (never skips) when none is configured.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: run the tests with scripts/test.sh, which installs and starts a broker, or export KAFKA_BOOTSTRAP=host:port")
    })
}

/// A hostfile in `dir` for a two-process cluster on loopback (two free ports).
pub fn hostfile(dir: &Path) -> PathBuf {
    // (both held until both are chosen, so that they differ)
    let held: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(held);
    let path = dir.join("hosts.txt");
    std::fs::write(&path, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    path
}

/// Runs `diffstream ARGS` as a two-process cluster on loopback (`-w 1 -n 2`, a fresh hostfile
/// in `dir`), process `p` also given `--output-dir cluster<p>` when `outputs`; waits for both,
/// which must succeed. Returns the first process's sorted snapshots (empty without outputs).
pub fn two_processes(dir: &Path, args: &[&str], outputs: bool) -> BTreeMap<String, Vec<String>> {
    let hosts = hostfile(dir);
    let children: Vec<_> = (0..2)
        .map(|p: usize| {
            let mut c = Command::new(bin());
            c.current_dir(dir).args(args).args(["-w", "1", "-n", "2", "-p", &p.to_string(), "-h"]).arg(&hosts);
            if outputs {
                c.args(["--output-dir", &format!("cluster{p}")]);
            }
            c.stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    if !outputs {
        return BTreeMap::new();
    }
    let mut got = snapshots(&dir.join("cluster0"));
    for rows in got.values_mut() {
        rows.sort();
    }
    got
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Creates topics on the test broker.
pub fn create_topics(topics: &[String], partitions: i32) {
    create_topics_at(&kafka_bootstrap(), topics, partitions)
}

/// Creates topics on the broker at `bootstrap`.
pub fn create_topics_at(bootstrap: &str, topics: &[String], partitions: i32) {
    let conn = diffstream::config::kafka::KafkaConnection { bootstrap_servers: Some(bootstrap.to_string()), ..Default::default() };
    diffstream::sinks::kafka::create_topics(&conn, topics, partitions).expect("creating test topics");
}

/// One record of a topic.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
}

/// Every record of `topic`: at least up to each partition's end offset (high watermark) as the
/// broker reports it when the read starts, so that a slow fetch is never mistaken for a record
/// the engine did not write, then on until no record arrives for `quiet` (Tansu reports an end
/// inside the last batch, as `sinks::kafka` notes). Fails if no record arrives for 30 s before
/// the ends are reached.
pub fn read_topic(topic: &str, quiet: std::time::Duration) -> Vec<Consumed> {
    read_topic_at(&kafka_bootstrap(), topic, quiet)
}

/// [`read_topic`] from the broker at `bootstrap`.
pub fn read_topic_at(bootstrap: &str, topic: &str, quiet: std::time::Duration) -> Vec<Consumed> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let (timeout, stall) = (std::time::Duration::from_secs(10), std::time::Duration::from_secs(30));
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    // per partition: the next offset to read, and the end to read to
    let mut next_and_end = Vec::new();
    for p in 0..partitions {
        // From offset 0, not the reported start: Tansu's memory engine reports the batch stored
        // first, which is not offset 0 when produce requests (one producer per worker) were in
        // flight together; the test topics are new and nothing is ever deleted from them.
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout).unwrap_or_else(|e| panic!("end offsets of {topic}/{p}: {e}"));
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(0)).unwrap();
        next_and_end.push((0, high));
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while next_and_end.iter().any(|(next, end)| next < end) || last.elapsed() < quiet {
        let reached = next_and_end.iter().all(|(next, end)| next >= end);
        assert!(
            reached || last.elapsed() < stall,
            "reading {topic}: no record for {stall:?} at (next, end) offsets per partition {next_and_end:?}"
        );
        match consumer.poll(std::time::Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let header = h.get(i);
                        headers.insert(header.key.to_string(), header.value.unwrap_or_default().to_vec());
                    }
                }
                next_and_end[m.partition() as usize].0 = m.offset() + 1;
                out.push(Consumed {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
                last = std::time::Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The rows a topic holds: the latest value per key, tombstones removing, sorted.
pub fn topic_state(topic: &str) -> Vec<String> {
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for r in read_topic(topic, std::time::Duration::from_secs(3)) {
        latest.insert(r.key.expect("output records are keyed"), r.value);
    }
    let mut rows: Vec<String> = latest.into_values().flatten().map(|v| String::from_utf8(v).unwrap()).collect();
    rows.sort();
    rows
}

/// Every document of a MongoDB collection without `_id` and `_time`, as JSON, sorted; BSON
/// dates become the RFC 3339 strings (milliseconds, `Z`) that the JSON outputs hold.
pub fn mongo_rows(db: &mongodb::sync::Database, collection: &str) -> Vec<serde_json::Value> {
    use mongodb::bson::{doc, Bson, Document};
    let mut out: Vec<serde_json::Value> = db
        .collection::<Document>(collection)
        .find(doc! {})
        .run()
        .unwrap()
        .map(|d| {
            let mut d = d.unwrap();
            d.remove("_id");
            d.remove("_time");
            for (_, v) in d.iter_mut() {
                if let Bson::DateTime(t) = v {
                    let t = chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).expect("a date in range");
                    *v = Bson::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
                }
            }
            serde_json::to_value(&d).unwrap()
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

/// The checkpoint times under `checkpoints` (of a run of two workers) at which the parts of
/// `workers` are all there, oldest first.
pub fn checkpoint_times(checkpoints: &Path, workers: std::ops::Range<usize>) -> Vec<u64> {
    let mut times: Vec<u64> =
        std::fs::read_dir(checkpoints).map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
    times.retain(|t| workers.clone().all(|w| checkpoints.join(t.to_string()).join(format!("worker-{w}-of-2.bin")).exists()));
    times.sort();
    times
}
