//! Outages: a MongoDB server stopped or frozen, a Kafka broker frozen, a delivery that fails
//! for good. Frozen means SIGSTOP, then SIGCONT: the server keeps its data and stops answering,
//! which is what a stalled broker or a network partition looks like to a client. The run must
//! wait, show itself unhealthy with the reason, resume, commit nothing it has not written, and
//! end with exactly the result a naive recount of the input gives.
//!
//! Each outage takes a server of the test's own (SecantusDB on disk; a Tansu broker), so the
//! other tests' shared servers never stop.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(what: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `signal` (STOP, CONT, INT) to `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// A server process of the test's own.
struct Own {
    child: Child,
    port: u16,
}

impl Own {
    fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }
    fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }
    fn stop(self) -> u16 {
        self.port // dropped: killed
    }
}

/// A test that fails still stops its servers (a frozen one is thawed first, so it exits at once).
impl Drop for Own {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `$var` (a server binary the test script installs) with `args`, waiting for `port`.
fn own(var: &str, what: &str, args: &[&str], port: u16) -> Own {
    let bin = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} names the {what} binary: run the tests with scripts/test.sh, which installs it"));
    let child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_port(what, port);
    Own { child, port }
}

/// A SecantusDB on disk under `path`, so it can be stopped (killed) and started again.
///
/// With every commit synced to its journal: the engine asks for journaled writes (`j: true`),
/// as a crash of a real MongoDB otherwise loses writes it acknowledged, but SecantusDB's
/// `bulkWrite` command (which the driver's bulk writes use) does not pass the write concern on
/// to its writes, so a write it acknowledged just before the test killed it was lost (one user's
/// count short in MongoDB, in a rare run).
fn own_mongodb(path: &Path, port: u16) -> Own {
    let port_arg = port.to_string();
    let args = ["--host", "127.0.0.1", "--port", &port_arg, "--storage-path", path.to_str().unwrap(), "--sync-on-commit"];
    own("DIFFSTREAM_SECANTUS", "SecantusDB", &args, port)
}

/// A Tansu broker in memory on a free port.
fn own_broker() -> Own {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    own(
        "DIFFSTREAM_TANSU",
        "Tansu",
        &["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"],
        port,
    )
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut q = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        q.add_partition(topic, p);
    }
    let found = c.committed_offsets(q, Duration::from_secs(10)).unwrap();
    found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The reference: clicks per user (by the user id's JSON) and per event kind, counted from
/// the generated lines directly.
fn recount(lines: &[&str]) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let (mut users, mut kinds) = (BTreeMap::new(), BTreeMap::new());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *users.entry(v["user_id"].to_string()).or_insert(0) += 1;
        *kinds.entry(v["event"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    (users, kinds)
}

/// Rows `{key_field, count_field}` as a map.
fn counts_of(rows: impl IntoIterator<Item = serde_json::Value>, key: &str, count: &str) -> BTreeMap<String, i64> {
    rows.into_iter()
        .map(|v| {
            let k = match &v[key] {
                serde_json::Value::String(s) if key == "event" => s.clone(),
                other => other.to_string(),
            };
            (k, v[count].as_i64().unwrap())
        })
        .collect()
}

fn produce_lines(bootstrap: &str, topic: &str, lines: &[&str]) {
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).set("queue.buffering.max.messages", "1000000").create().unwrap();
    for (i, l) in lines.iter().enumerate() {
        let key = i.to_string();
        let mut record = rdkafka::producer::BaseRecord::to(topic).key(&key).payload(*l);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
}

fn wait_exit(mut engine: Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = engine.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            engine.kill().unwrap();
            panic!("the engine did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Outage {
    /// the server is killed and started again later
    Stop,
    /// the server is frozen (SIGSTOP) and thawed (SIGCONT)
    Freeze,
}

/// MongoDB goes away while the engine has input to write: nothing is committed until it is
/// back, the status line says the sink is unhealthy and why, and the collections end equal to
/// a recount of the input.
fn mongodb_outage(outage: Outage) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db_path = dir.path().join("db");
    let server = own_mongodb(&db_path, port);
    let prefix = unique("outage");
    let topic = format!("{prefix}.clicks");
    create_topics(std::slice::from_ref(&topic), 3);
    let bootstrap = kafka_bootstrap();
    let clicks = String::from_utf8(diffstream(&["gen", "clicks", "--count", "1200", "--seed", "2"]).stdout).unwrap();
    let lines: Vec<&str> = clicks.lines().collect();
    produce_lines(&bootstrap, &topic, &lines[..600]);
    let group = unique("g");
    let database = unique("outage").replace('-', "_");
    let cfg = dir.path().join("outage.toml");
    std::fs::write(
        &cfg,
        format!(
            "dataflows = [\"user_event_counts\"]\n[runtime]\nstate_dir = \"{}\"\nstatus_interval = \"300ms\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[inputs.clicks]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\nmax_records_per_batch = 100\nstop_when_idle = \"5s\"\n[output.mongodb]\nuri_env = \"OUTAGE_MONGODB_URI\"\ndatabase = \"{database}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=2000");
    let log = dir.path().join("engine.log");
    let engine = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("OUTAGE_MONGODB_URI", &uri)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Let the first half land, then take the server away and give the engine more input.
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&bootstrap, &group, &topic).values().sum::<i64>() < 600 {
        assert!(Instant::now() < deadline, "the first half was never committed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let server = match outage {
        Outage::Stop => {
            server.stop();
            None
        }
        Outage::Freeze => {
            server.freeze();
            Some(server)
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = committed(&bootstrap, &group, &topic);
    produce_lines(&bootstrap, &topic, &lines[600..]);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(committed(&bootstrap, &group, &topic), before, "offsets were committed while MongoDB could not be written");
    }
    let server = match server {
        Some(frozen) => {
            frozen.thaw();
            frozen
        }
        None => own_mongodb(&db_path, port),
    };
    let status = wait_exit(engine, Duration::from_secs(180));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(committed(&bootstrap, &group, &topic).values().sum::<i64>(), 1200);
    // The status line showed the trouble with its reason, and the log its end.
    let why = match outage {
        Outage::Stop => "write failed",
        Outage::Freeze => "writes unacknowledged for",
    };
    assert!(stderr.contains("mongodb UNHEALTHY") && stderr.contains(why), "no unhealthy status ({why}) in:\n{stderr}");
    assert!(stderr.contains("sink healthy again"), "no recovery in the log:\n{stderr}");

    // The collections hold exactly the recount of all 1200 clicks.
    let (users, kinds) = recount(&lines);
    let db = mongodb::sync::Client::with_uri_str(format!("mongodb://127.0.0.1:{port}/?directConnection=true")).unwrap().database(&database);
    assert_eq!(counts_of(mongo_rows(&db, "user_event_counts"), "user_id", "event_count"), users, "per-user counts after the outage");
    assert_eq!(counts_of(mongo_rows(&db, "event_type_counts"), "event", "count"), kinds, "per-kind counts after the outage");
    server.stop();
}

#[test]
fn mongodb_stopped_holds_offsets_and_completes_exactly() {
    mongodb_outage(Outage::Stop);
}

#[test]
fn mongodb_frozen_holds_offsets_and_completes_exactly() {
    mongodb_outage(Outage::Freeze);
}

/// A broker frozen for 30 s while the engine reads and writes through it: the engine waits,
/// shows its Kafka sink unhealthy, resumes when the broker thaws, and its output topics end
/// equal to a recount of the input, with no key going back on the way and the one malformed
/// record in the dead letters once.
#[test]
fn a_frozen_broker_holds_the_run_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = own_broker();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let prefix = unique("frozen");
    let topic = format!("{prefix}.clicks");
    create_topics_at(&bootstrap, std::slice::from_ref(&topic), 3);
    let clicks = String::from_utf8(diffstream(&["gen", "clicks", "--count", "201000", "--users", "20000", "--seed", "6"]).stdout).unwrap();
    let lines: Vec<&str> = clicks.lines().collect();
    produce_lines(&bootstrap, &topic, &lines[..1000]);
    let out = format!("{prefix}.out");
    let cfg = dir.path().join("frozen.toml");
    std::fs::write(
        &cfg,
        format!(
            "dataflows = [\"user_event_counts\"]\n[runtime]\nstate_dir = \"{}\"\nstatus_interval = \"300ms\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[inputs.clicks]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\n[output.kafka]\ntopic_prefix = \"{out}.\"\n",
            dir.path().join("state").display(),
            unique("g")
        ),
    )
    .unwrap();
    let log = dir.path().join("engine.log");
    let engine = Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap(), "-w", "2"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let kinds_topic = format!("{out}.event_type_counts");
    let counted = |quiet| -> i64 {
        let state = read_topic_at(&bootstrap, &kinds_topic, quiet);
        let mut latest = BTreeMap::new();
        for r in state {
            latest.insert(r.key.unwrap(), r.value);
        }
        latest.into_values().flatten().map(|v| serde_json::from_slice::<serde_json::Value>(&v).unwrap()["count"].as_i64().unwrap()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while counted(Duration::from_secs(1)) < 1000 {
        assert!(Instant::now() < deadline, "the first 1000 clicks were never counted");
    }
    // 200 000 more and a malformed one; freeze the broker as soon as the engine writes for them,
    // so it is caught reading and writing.
    let mut rest = lines[1000..].to_vec();
    rest.insert(rest.len() / 2, "{frozen");
    produce_lines(&bootstrap, &topic, &rest);
    // (assigned, not subscribed: a consumer group's join takes seconds on Tansu, long enough for
    // a release build to count all 200 000 before the freeze)
    let watcher = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("w"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let md = c.fetch_metadata(Some(&kinds_topic), Duration::from_secs(10)).unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..md.topics()[0].partitions().len() as i32 {
            tpl.add_partition_offset(&kinds_topic, p, rdkafka::Offset::Offset(0)).unwrap();
        }
        c.assign(&tpl).unwrap();
        c
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    'wait: loop {
        assert!(Instant::now() < deadline, "the engine wrote nothing for the second part in 60 s");
        use rdkafka::consumer::Consumer;
        use rdkafka::Message;
        while let Some(Ok(m)) = watcher.poll(Duration::from_millis(20)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"null")).unwrap();
            if v["count"].as_i64().is_some_and(|n| n > 400) {
                break 'wait;
            }
        }
        let _ = watcher.position();
    }
    drop(watcher);
    broker.freeze();
    let frozen_at = Instant::now();
    let mut engine = engine;
    while frozen_at.elapsed() < Duration::from_secs(30) {
        assert!(engine.try_wait().unwrap().is_none(), "the engine exited while the broker was frozen");
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.thaw();
    let deadline = Instant::now() + Duration::from_secs(180);
    while counted(Duration::from_secs(2)) < 201_000 {
        assert!(Instant::now() < deadline, "the engine did not count every click within 180 s of the thaw");
    }
    signal(engine.id(), "INT");
    let status = wait_exit(engine, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("kafka UNHEALTHY") && stderr.contains("unacknowledged for"), "no unhealthy status in:\n{stderr}");
    assert!(stderr.contains("sink healthy again"), "no recovery in the log:\n{stderr}");

    // Exact, against a recount; no key's count ever went back; the malformed record once.
    let (users, kinds) = recount(&lines);
    for (output, key, count, want) in
        [("user_event_counts", "user_id", "event_count", &users), ("event_type_counts", "event", "count", &kinds)]
    {
        let records = read_topic_at(&bootstrap, &format!("{out}.{output}"), Duration::from_secs(3));
        let mut latest: BTreeMap<(i32, Vec<u8>), i64> = BTreeMap::new();
        for r in &records {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().expect("no deletions in counts")).unwrap();
            let n = v[count].as_i64().unwrap();
            let before = latest.insert((r.partition, r.key.clone().unwrap()), n).unwrap_or(0);
            assert!(n >= before, "{output}: a key went back from {before} to {n} at offset {}", r.offset);
        }
        let rows = topic_rows(&bootstrap, &format!("{out}.{output}"));
        let state = counts_of(rows.iter().map(|r| serde_json::from_str(r).unwrap()), key, count);
        assert_eq!(&state, want, "{output} differs from the recount");
    }
    let dead = read_topic_at(&bootstrap, &format!("{topic}.dlq"), Duration::from_secs(2));
    assert_eq!(dead.len(), 1, "the malformed record, once");
    assert_eq!(dead[0].value.as_deref(), Some(b"{frozen".as_slice()));
    broker.stop();
}

/// The rows a topic holds at `bootstrap`: the latest value per key.
fn topic_rows(bootstrap: &str, topic: &str) -> Vec<String> {
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for r in read_topic_at(bootstrap, topic, Duration::from_secs(2)) {
        latest.insert(r.key.expect("output records are keyed"), r.value);
    }
    latest.into_values().flatten().map(|v| String::from_utf8(v).unwrap()).collect()
}

/// A record the producer refuses every time (larger than `message.max.bytes`) is sent again
/// with a backoff — a handful of attempts in 3 s, not one every few milliseconds — its time is
/// never acknowledged, and the sink's health says why.
#[test]
fn a_delivery_that_keeps_failing_backs_off_and_shows_unhealthy() {
    use dataflows::sql::{Type, Value};
    use diffstream::config::kafka::{KafkaConnection, KafkaOutput};
    use diffstream::sinks::health::Health;
    use diffstream::sinks::Sink;
    let prefix = unique("refused");
    let mut options = BTreeMap::new();
    options.insert("message.max.bytes".to_string(), "1000".to_string());
    let conn = KafkaConnection { bootstrap_servers: Some(kafka_bootstrap()), options, ..Default::default() };
    let config: KafkaOutput = toml::from_str(&format!("topic_prefix = \"{prefix}.\"")).unwrap();
    let health = std::sync::Arc::new(Health::new("kafka"));
    let view =
        dataflows::sql::registry::view("user_event_counts", &[("user_id".into(), Type::Json), ("event_count".into(), Type::Int)], &[0]);
    let outputs = [dataflows::Output::View(view), dataflows::Output::DeadLetters];
    let mut sink = diffstream::sinks::kafka::KafkaSink::open(&conn, &config, &outputs, BTreeMap::new(), 0, 1, health.clone()).unwrap();
    let id = Value::Text(format!("\"{}\"", "x".repeat(5000)).into());
    let huge = dataflows::Row::View(Box::new(dataflows::output::ViewRow::new(view, vec![id, Value::Int(1)])));
    sink.apply(7, &[(huge, 1)]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(sink.unacknowledged(), Some(7), "a record that was never written holds its time");
        std::thread::sleep(Duration::from_millis(2));
    }
    let retries = health.retries.load(std::sync::atomic::Ordering::Relaxed);
    assert!((3..=6).contains(&retries), "{retries} resends in 3 s: the backoff (100 ms doubling) allows 4 or 5");
    let (_, reason) = health.status().expect("the sink is unhealthy");
    assert!(reason.contains("too large") || reason.contains("size"), "the reason names the failure: {reason}");
    assert!(health.line().starts_with("kafka UNHEALTHY"), "{}", health.line());
}
