//! The MongoDB benchmark: the same documents written by a plain loop of unordered bulk
//! replace-with-upserts, and by the sink (conditional on the stored logical time, on its
//! writer thread), in the same run, each into a fresh collection.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::options::{ReplaceOneModel, WriteModel};
use mongodb::Namespace;

use crate::config::MongoOutput;
use crate::sinks::mongodb::MongoSink;
use crate::sinks::Sink;
use dataflows::{Output, Row};

pub fn main(uri: &str, docs: u64) -> anyhow::Result<()> {
    let database = format!("bench_{}", std::process::id());
    let rows: Vec<(String, String)> =
        (0..docs).map(|i| (format!(r#"{{"user_id":{i}}}"#), format!(r#"{{"user_id":{i},"event_count":{}}}"#, i % 97 + 1))).collect();

    let client = mongodb::sync::Client::with_uri_str(uri)?;
    let ns = Namespace::new(&database, "plain");
    let start = Instant::now();
    for chunk in rows.chunks(1000) {
        let models: Vec<WriteModel> = chunk
            .iter()
            .map(|(k, r)| {
                let id: Document = serde_json::from_str::<serde_json::Value>(k).map(|v| mongodb::bson::to_document(&v)).expect("json")?;
                let mut d = doc! { "_id": id.clone() };
                d.extend(mongodb::bson::to_document(&serde_json::from_str::<serde_json::Value>(r).expect("json"))?);
                d.insert("_time", 1i64);
                Ok(ReplaceOneModel::builder().namespace(ns.clone()).filter(doc! { "_id": id }).replacement(d).upsert(true).build().into())
            })
            .collect::<Result<_, mongodb::bson::ser::Error>>()?;
        client.bulk_write(models).ordered(false).run()?;
    }
    let plain = docs as f64 / start.elapsed().as_secs_f64();

    std::env::set_var("DIFFSTREAM_BENCH_MONGODB_URI", uri);
    let config = MongoOutput {
        uri_env: "DIFFSTREAM_BENCH_MONGODB_URI".into(),
        database: database.clone(),
        collections: [("user_event_counts".to_string(), "sink".to_string())].into_iter().collect(),
        indexes: None,
        outputs: None,
        batch_size: 1000,
        max_flush_interval: crate::config::Duration::from_millis(0),
    };
    // (the rows of the shipped view `user_event_counts`: user_id, event_count, keyed by user_id)
    use dataflows::sql::{Type, Value};
    let view =
        dataflows::sql::registry::view("user_event_counts", &[("user_id".into(), Type::Json), ("event_count".into(), Type::Int)], &[0]);
    let mut sink =
        MongoSink::open(&config, &[Output::View(view)], 0, 1, std::sync::Arc::new(crate::sinks::health::Health::new("mongodb")))?;
    let changes: Vec<(Row, isize)> = (0..docs)
        .map(|i| {
            let values = vec![Value::Int(i as i64), Value::Int((i % 97 + 1) as i64)];
            (Row::View(Box::new(dataflows::output::ViewRow::new(view, values))), 1)
        })
        .collect();
    let start = Instant::now();
    sink.apply(1, &changes);
    while sink.unacknowledged().is_some() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sink_rate = docs as f64 / start.elapsed().as_secs_f64();
    println!("mongodb: {docs} documents, bulk writes of 1000");
    println!("{:<40} {:>10.0} docs/s", "plain loop of bulk replace-with-upsert", plain);
    println!("{:<40} {:>10.0} docs/s  {:.2}x", "sink (conditional on _time)", sink_rate, sink_rate / plain);
    client.database(&database).drop().run()?;
    Ok(())
}
