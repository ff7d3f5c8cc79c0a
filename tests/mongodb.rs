//! MongoDB end to end, against the server in MONGODB_URI (SecantusDB when started by
//! scripts/test.sh): collections equal the offline snapshots exactly, and a write can never
//! move a document back to an older logical time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use dataflows::sql::{Type, Value};
use dataflows::{Output, Row};
use diffstream::config::MongoOutput;
use diffstream::sinks::mongodb::MongoSink;
use diffstream::sinks::Sink;
use mongodb::bson::{doc, Document};

fn uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| {
        panic!("MONGODB_URI is not set: run the tests with scripts/test.sh, which installs and starts a server, or export MONGODB_URI")
    })
}

fn rows(db: &mongodb::sync::Database, collection: &str) -> Vec<serde_json::Value> {
    mongo_rows(db, collection)
}

/// A sink configuration for `database` that flushes every time at once.
fn config(database: &str) -> MongoOutput {
    std::env::set_var("DIFFSTREAM_TEST_MONGODB_URI", uri());
    MongoOutput {
        uri_env: "DIFFSTREAM_TEST_MONGODB_URI".into(),
        database: database.to_string(),
        collections: BTreeMap::new(),
        indexes: None,
        outputs: None,
        batch_size: 100,
        max_flush_interval: diffstream::config::Duration::from_millis(0),
    }
}

#[test]
fn collections_equal_the_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let database = unique("files").replace('-', "_");
    let mut args: Vec<String> = vec!["run".into(), "user_event_counts".into(), "user_activity".into(), "sensor_metrics".into()];
    for (kind, count) in [("users", "150"), ("clicks", "1500"), ("sensors", "2000")] {
        let path = dir.path().join(format!("{kind}.jsonl"));
        let mut text = diffstream(&["gen", kind, "--count", count, "--seed", "3"]).stdout;
        text.extend_from_slice(b"{not json\n");
        std::fs::write(&path, text).unwrap();
        args.extend(["--input".into(), format!("{kind}={}", path.display())]);
    }
    let cfg = dir.path().join("mongo.toml");
    std::fs::write(&cfg, format!("[output.mongodb]\ndatabase = \"{database}\"\nbatch_size = 500\n")).unwrap();
    let out = dir.path().join("out");
    args.extend([
        "--config".into(),
        cfg.display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
        "-w".into(),
        "2".into(),
        "-q".into(),
    ]);
    diffstream(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let snap = snapshots(&out);
    let client = mongodb::sync::Client::with_uri_str(uri()).unwrap();
    let db = client.database(&database);
    for (output, lines) in &snap {
        let mut want: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        want.sort_by_key(|v| v.to_string());
        let got = rows(&db, output);
        assert_eq!(got.len(), want.len(), "{output}: {} documents, {} rows offline", got.len(), want.len());
        assert_eq!(got, want, "{output}: documents differ from the snapshot");
    }
    assert!(!snap["dead_letters"].is_empty());
    // Times are BSON dates, in `_id` too, so a range query on them works.
    let windows = db.collection::<Document>("sensor_window_metrics");
    let first = windows.find_one(doc! {}).run().unwrap().expect("window documents");
    let start = first.get_datetime("window_start").expect("window_start is a BSON date");
    assert!(first.get_datetime("window_end").is_ok() && first.get_document("_id").unwrap().get_datetime("window_start").is_ok());
    let from_start = windows.count_documents(doc! { "window_start": { "$gte": *start } }).run().unwrap();
    let want = snap["sensor_window_metrics"]
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap()).unwrap().timestamp_millis();
            t >= start.timestamp_millis()
        })
        .count();
    assert_eq!(from_start as usize, want, "a range query on window_start");
    let alert = db.collection::<Document>("anomaly_alerts").find_one(doc! {}).run().unwrap().expect("alert documents");
    assert!(alert.get_datetime("timestamp").is_ok(), "an alert's timestamp is a BSON date: {alert}");
    let indexes = db.collection::<Document>("anomaly_alerts").list_index_names().run().unwrap();
    assert!(indexes.len() >= 4, "the alert indexes exist: {indexes:?}");
}

#[test]
fn only_the_chosen_outputs_go_to_their_collections() {
    // What configs/docker.toml does: the sensor outputs, under the IoT pipeline's names.
    let dir = tempfile::tempdir().unwrap();
    let database = unique("chosen").replace('-', "_");
    let mut args: Vec<String> = vec!["run".into(), "user_event_counts".into(), "sensor_metrics".into()];
    for (kind, count) in [("clicks", "500"), ("sensors", "2000")] {
        let path = dir.path().join(format!("{kind}.jsonl"));
        std::fs::write(&path, diffstream(&["gen", kind, "--count", count, "--seed", "4"]).stdout).unwrap();
        args.extend(["--input".into(), format!("{kind}={}", path.display())]);
    }
    let cfg = dir.path().join("mongo.toml");
    std::fs::write(
        &cfg,
        format!(
            "[output.mongodb]\ndatabase = \"{database}\"\noutputs = [\"sensor_window_metrics\", \"anomaly_alerts\"]\n\
             collections = {{ sensor_window_metrics = \"windowed_metrics\" }}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    args.extend(["--config".into(), cfg.display().to_string(), "--output-dir".into(), out.display().to_string(), "-q".into()]);
    diffstream(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let snap = snapshots(&out);
    let db = mongodb::sync::Client::with_uri_str(uri()).unwrap().database(&database);
    let mut want: Vec<serde_json::Value> = snap["sensor_window_metrics"].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(rows(&db, "windowed_metrics"), want);
    assert_eq!(rows(&db, "anomaly_alerts").len(), snap["anomaly_alerts"].len());
    let names = db.list_collection_names().run().unwrap();
    assert!(!names.iter().any(|n| n == "user_event_counts" || n == "sensor_window_metrics"), "{names:?}");

    // A name the run does not write is refused with the file and the key.
    std::fs::write(&cfg, "[output.mongodb]\noutputs = [\"windowed_metrics\"]\n").unwrap();
    args.truncate(args.len() - 5);
    args.extend(["--config".into(), cfg.display().to_string(), "-q".into()]);
    let refused = std::process::Command::new(bin()).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("mongo.toml") && err.contains("output.mongodb.outputs"), "{err}");
}

/// A `user_event_counts` row.
/// The shipped view `user_event_counts` (user_id, event_count; keyed by user_id), registered.
fn user_event_counts() -> Output {
    Output::View(dataflows::sql::registry::view(
        "user_event_counts",
        &[("user_id".into(), Type::Json), ("event_count".into(), Type::Int)],
        &[0],
    ))
}

fn count(user: u64, n: i64) -> Row {
    let Output::View(view) = user_event_counts() else { unreachable!("a view") };
    Row::View(Box::new(dataflows::output::ViewRow::new(view, vec![Value::Int(user as i64), Value::Int(n)])))
}

fn settle(sink: &mut MongoSink) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.unacknowledged().is_some() {
        assert!(Instant::now() < deadline, "writes were not acknowledged in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn documents_never_move_backwards() {
    let database = unique("order").replace('-', "_");
    let config = config(&database);
    let mut sink =
        MongoSink::open(&config, &[user_event_counts()], 0, 1, std::sync::Arc::new(diffstream::sinks::health::Health::new("mongodb")))
            .unwrap();
    let row = |n: i64| count(7, n);
    sink.apply(10, &[(row(3), 1)]);
    settle(&mut sink);
    // A replay of an older time (as after a crash) must not win …
    sink.apply(5, &[(row(1), 1)]);
    settle(&mut sink);
    let db = mongodb::sync::Client::with_uri_str(uri()).unwrap().database(&database);
    let docs = rows(&db, "user_event_counts");
    assert_eq!(docs, vec![serde_json::json!({"user_id": 7, "event_count": 3})]);
    // … nor may an older deletion; a newer one does.
    sink.apply(6, &[(row(3), -1)]);
    settle(&mut sink);
    assert_eq!(rows(&db, "user_event_counts").len(), 1);
    sink.apply(11, &[(row(3), -1), (row(4), 1)]);
    settle(&mut sink);
    assert_eq!(rows(&db, "user_event_counts"), vec![serde_json::json!({"user_id": 7, "event_count": 4})]);
    sink.apply(12, &[(row(4), -1)]);
    settle(&mut sink);
    assert!(rows(&db, "user_event_counts").is_empty());
}

#[test]
fn rejected_documents_go_to_the_dead_letters() {
    let database = unique("rejects").replace('-', "_");
    let client = mongodb::sync::Client::with_uri_str(uri()).unwrap();
    let db = client.database(&database);
    // A validation rule the rows can break: at most 5 clicks.
    db.create_collection("user_event_counts")
        .validator(doc! { "$jsonSchema": { "bsonType": "object", "properties": { "event_count": { "maximum": 5 } } } })
        .run()
        .unwrap();
    let config = config(&database);
    let health = std::sync::Arc::new(diffstream::sinks::health::Health::new("mongodb"));
    let mut sink = MongoSink::open(&config, &[user_event_counts(), Output::DeadLetters], 0, 1, health.clone()).unwrap();
    sink.apply(1, &[(count(1, 3), 1), (count(2, 10), 1)]);
    settle(&mut sink); // the rejection does not hold the time
    assert_eq!(rows(&db, "user_event_counts"), vec![serde_json::json!({"user_id": 1, "event_count": 3})]);
    let dead = rows(&db, "dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().starts_with("rejected"), "{dead:?}");
    assert!(dead[0]["row"].as_str().unwrap().contains("\"event_count\": 10"), "{dead:?}");
    assert_eq!(health.rejected.load(std::sync::atomic::Ordering::Relaxed), 1);
}
