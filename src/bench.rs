//! `diffstream bench`: throughput of each dataflow at `-w 1` and `-w 2` next to the plain
//! single-threaded `HashMap` implementation ([`crate::reference`]) over the same JSON Lines
//! in memory, measured in the same process, JSON decoding included on both sides; and the
//! sensor dataflow's peak memory at two stream lengths, each in a fresh child process.
//! It prints ratios, never asserts on time.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dataflows::{Dataflow, InputName, Params};

use crate::cli::BenchArgs;
use crate::reference;
use crate::runtime::{self, Plan};
use crate::sources::generator::GeneratorSpec;
use crate::sources::{InputSpec, SourceSpec};

fn generate(kind: InputName, count: u64, seed: u64, users: u64) -> Vec<u8> {
    let spec = GeneratorSpec { kind, count: Some(count), seed, users };
    let mut out = Vec::with_capacity(count as usize * 160);
    for i in 0..count {
        out.extend_from_slice(&spec.line(i));
        out.push(b'\n');
    }
    out
}

fn plan(dataflow: Dataflow, inputs: &BTreeMap<InputName, Arc<[u8]>>, workers: usize, batch_size: usize) -> Plan {
    let inputs = inputs
        .iter()
        .filter(|(i, _)| dataflow.inputs().contains(i))
        .map(|(i, bytes)| (*i, InputSpec { source: SourceSpec::Memory(bytes.clone()), rate: None }))
        .collect();
    Plan::embedded(vec![dataflow], inputs, workers, batch_size)
}

/// Entry point.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.memory_child {
        return memory_child(n);
    }
    if let Some(uri) = &args.mongodb {
        return mongo::main(uri, args.events);
    }
    if let Some(bootstrap) = &args.kafka {
        return kafka::main(bootstrap, args.events, args.latency_rate);
    }
    let n = args.events;
    let users = args.users.max(1);
    let profiles = (n / 10).max(users);
    eprintln!("generating {n} clicks of {users} users, {profiles} profile versions and {n} sensor readings in memory…");
    let texts: BTreeMap<InputName, Vec<u8>> = [
        (InputName::Users, generate(InputName::Users, profiles, 1, users)),
        (InputName::Clicks, generate(InputName::Clicks, n, 2, users)),
        (InputName::Sensors, generate(InputName::Sensors, n, 3, users)),
    ]
    .into_iter()
    .collect();
    let shared: BTreeMap<InputName, Arc<[u8]>> = texts.iter().map(|(i, t)| (*i, Arc::from(t.as_slice()))).collect();

    let batch = args.batch_size.max(1);
    let only: Option<Dataflow> = args.only.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?;
    println!("throughput, {batch} records per logical time, {users} users (events/s; ratio = engine / HashMap loop)");
    println!("{:<18} {:>8} {:>14} {:>14} {:>14} {:>9} {:>9}", "dataflow", "events", "hashmap", "engine -w 1", "engine -w 2", "-w 1", "-w 2");
    for d in Dataflow::ALL.into_iter().filter(|d| only.is_none_or(|o| o == *d)) {
        let events: u64 = d.inputs().iter().map(|i| bytecount_lines(&texts[i])).sum();
        let start = Instant::now();
        let snapshot = reference::run(&texts, &[d], &Params::default().sensors, batch);
        let base = events as f64 / start.elapsed().as_secs_f64();
        std::hint::black_box(snapshot);
        let mut rates = Vec::new();
        for w in [1, 2] {
            let start = Instant::now();
            runtime::run(plan(d, &shared, w, batch))?;
            rates.push(events as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "{:<18} {:>8} {:>14.0} {:>14.0} {:>14.0} {:>8.2}x {:>8.2}x",
            d.as_str(),
            events,
            base,
            rates[0],
            rates[1],
            rates[0] / base,
            rates[1] / base
        );
        std::io::stdout().flush()?;
    }

    if !args.no_memory {
        println!("\npeak memory of sensor_metrics (-w 2, streaming generator, each run in a fresh process)");
        let mut peaks = Vec::new();
        for &readings in &args.memory_readings {
            let exe = std::env::current_exe()?;
            let out = std::process::Command::new(exe)
                .args(["bench", "--memory-child", &readings.to_string()])
                .output()
                .context("running the memory child")?;
            anyhow::ensure!(out.status.success(), "memory child failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let field = |name: &str| -> f64 {
                text.split_whitespace()
                    .skip_while(|w| *w != name)
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let (kb, secs) = (field("peak_rss_kb"), field("seconds"));
            println!("{readings:>12} readings: peak RSS {:>8.1} MiB, {:>10.0} readings/s", kb / 1024.0, readings as f64 / secs);
            peaks.push(kb);
        }
        if let [a, .., b] = peaks[..] {
            println!("ratio of peaks, longest / shortest: {:.2}x", b / a);
        }
    }
    Ok(())
}

fn bytecount_lines(text: &[u8]) -> u64 {
    text.iter().filter(|b| **b == b'\n').count() as u64
}

fn memory_child(readings: u64) -> anyhow::Result<()> {
    let mut p = plan(Dataflow::SensorMetrics, &BTreeMap::new(), 2, 100_000);
    p.inputs.insert(
        InputName::Sensors,
        InputSpec {
            source: SourceSpec::Generator(GeneratorSpec { kind: InputName::Sensors, count: Some(readings), seed: 3, users: 1000 }),
            rate: None,
        },
    );
    let start = Instant::now();
    runtime::run(p)?;
    let secs = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0");
    println!("peak_rss_kb {kb} seconds {secs}");
    Ok(())
}

mod kafka {
    //! The Kafka benchmark: one topic, read by a plain consumer that only counts and by the
    //! engine; then produce-to-output latency at a fixed rate.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use dataflows::{Dataflow, InputName};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use crate::config::kafka::{KafkaConnection, KafkaInput, KafkaOutput};
    use crate::runtime::{self, KafkaOutputPlan, Plan};
    use crate::sources::generator::GeneratorSpec;
    use crate::sources::{InputSpec, SourceSpec};

    const IDLE: Duration = Duration::from_secs(2);

    fn unique(name: &str) -> String {
        format!("bench-{name}-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000)
    }

    fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?)
    }

    fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &[u8], line: &[u8]) {
        let mut r = BaseRecord::to(topic).key(key).payload(line);
        while let Err((_, back)) = p.send(r) {
            r = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn plan(conn: &KafkaConnection, topic: &str, workers: usize, out_prefix: Option<&str>) -> Plan {
        let input = KafkaInput {
            topics: vec![topic.to_string()],
            group_id: unique("group"),
            start: "earliest".into(),
            fallback: "earliest".into(),
            max_records_per_batch: 10_000,
            dead_letter_topic: None,
            stop_when_idle: Some(crate::config::Duration::from_millis(IDLE.as_millis() as i64)),
        };
        let inputs = [(InputName::Clicks, InputSpec { source: SourceSpec::Kafka(Box::new((conn.clone(), input))), rate: None })]
            .into_iter()
            .collect();
        let mut plan = Plan::embedded(vec![Dataflow::UserEventCounts], inputs, workers, 10_000);
        plan.kafka_output = out_prefix.map(|p| KafkaOutputPlan {
            connection: conn.clone(),
            output: KafkaOutput {
                topic_prefix: format!("{p}."),
                topics: BTreeMap::new(),
                envelope: Default::default(),
                progress_topic: None,
                create_topics: true,
                partitions: 1,
            },
            dead_letter_topics: BTreeMap::new(),
        });
        plan
    }

    pub fn main(bootstrap: &str, events: u64, rate: f64) -> anyhow::Result<()> {
        let conn = KafkaConnection { bootstrap_servers: Some(bootstrap.to_string()), ..Default::default() };
        let topic = unique("clicks");
        crate::sinks::kafka::create_topics(&conn, std::slice::from_ref(&topic), 3)?;
        eprintln!("producing {events} clicks to {topic}…");
        let spec = GeneratorSpec { kind: InputName::Clicks, count: Some(events), seed: 4, users: 1000 };
        let p = producer(bootstrap)?;
        for i in 0..events {
            send(&p, &topic, &i.to_le_bytes(), &spec.line(i));
        }
        p.flush(Duration::from_secs(120))?;

        // A plain consumer that only counts.
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", unique("raw")).create()?;
        let mut tpl = TopicPartitionList::new();
        for part in 0..3 {
            tpl.add_partition_offset(&topic, part, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let start = Instant::now();
        let mut n = 0u64;
        while n < events {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                n += 1;
            }
            anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "the raw consumer read only {n} of {events}");
        }
        let raw = events as f64 / start.elapsed().as_secs_f64();
        drop(consumer);
        println!("kafka: {events} clicks in 3 partitions");
        println!("{:<34} {:>12.0} records/s", "plain rdkafka consumer (counting)", raw);
        for w in [1, 2] {
            let start = Instant::now();
            runtime::run(plan(&conn, &topic, w, None))?;
            // The input stops after IDLE without records; that wait is not work.
            let secs = (start.elapsed().saturating_sub(IDLE)).as_secs_f64();
            let rate = events as f64 / secs;
            println!("{:<34} {:>12.0} records/s  {:.2}x", format!("engine -w {w} (user_event_counts)"), rate, rate / raw);
        }

        // Latency: clicks at a fixed rate; each output record of event_type_counts carries a
        // count c of kind e, reached when the c-th click of kind e was produced.
        let topic = unique("latency");
        let out = unique("latency-out");
        crate::sinks::kafka::create_topics(&conn, std::slice::from_ref(&topic), 3)?;
        let mut p2 = plan(&conn, &topic, 2, Some(&out));
        if let SourceSpec::Kafka(k) = &mut p2.inputs.get_mut(&InputName::Clicks).expect("clicks").source {
            k.1.stop_when_idle = Some(crate::config::Duration::from_millis(4000));
        }
        let engine = std::thread::spawn(move || runtime::run(p2));
        std::thread::sleep(Duration::from_secs(2));
        let produced: Arc<Mutex<BTreeMap<String, Vec<Instant>>>> = Default::default();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (produced, done, bootstrap, out_topic) = (produced.clone(), done.clone(), bootstrap.to_string(), format!("{out}.event_type_counts"));
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", unique("lat")).create()?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&out_topic, 0, Offset::Beginning)?;
                c.assign(&tpl)?;
                let mut lat = Vec::new();
                let mut quiet = Instant::now();
                while !done.load(Ordering::Relaxed) || quiet.elapsed() < Duration::from_secs(5) {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                        let arrived = Instant::now();
                        quiet = arrived;
                        let Some(v) = m.payload() else { continue };
                        let row: serde_json::Value = serde_json::from_slice(v)?;
                        let (e, count) = (row["event"].as_str().unwrap_or_default().to_string(), row["count"].as_u64().unwrap_or(0));
                        if let Some(t) = produced.lock().expect("times").get(&e).and_then(|ts| ts.get(count as usize - 1)) {
                            lat.push(arrived.duration_since(*t).as_secs_f64() * 1000.0);
                        }
                    }
                }
                Ok(lat)
            })
        };
        let p = producer(bootstrap)?;
        let seconds = 10.0;
        let total = (rate * seconds) as u64;
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let line = spec.line(i);
            let event = serde_json::from_slice::<serde_json::Value>(&line)?["event"].as_str().unwrap_or_default().to_string();
            produced.lock().expect("times").entry(event).or_default().push(Instant::now());
            send(&p, &topic, &i.to_le_bytes(), &line);
        }
        p.flush(Duration::from_secs(60))?;
        engine.join().expect("engine thread")?;
        done.store(true, Ordering::Relaxed);
        let mut lat = reader.join().expect("reader thread")?;
        lat.sort_by(f64::total_cmp);
        let pct = |q: f64| lat.get(((lat.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(f64::NAN);
        println!(
            "latency produce → output record at {rate:.0} clicks/s for {seconds:.0} s (-w 2): p50 {:.1} ms, p99 {:.1} ms ({} output records)",
            pct(0.5),
            pct(0.99),
            lat.len()
        );
        Ok(())
    }
}

mod mongo {
    //! The MongoDB benchmark: the same documents written by a plain loop of unordered bulk
    //! replace-with-upserts, and by the sink (conditional on the stored logical time, on its
    //! writer thread), in the same run, each into a fresh collection.

    use std::time::{Duration, Instant};

    use mongodb::bson::{doc, Document};
    use mongodb::options::{ReplaceOneModel, WriteModel};
    use mongodb::Namespace;

    use crate::config::MongoOutput;
    use crate::sinks::mongodb::MongoSink;
    use crate::sinks::{Change, Sink};

    pub fn main(uri: &str, docs: u64) -> anyhow::Result<()> {
        let database = format!("bench_{}", std::process::id());
        let rows: Vec<(String, String)> = (0..docs)
            .map(|i| (format!(r#"{{"user_id":{i}}}"#), format!(r#"{{"user_id":{i},"event_count":{}}}"#, i % 97 + 1)))
            .collect();

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
            batch_size: 1000,
            max_flush_interval: crate::config::Duration::from_millis(0),
        };
        let mut sink = MongoSink::open(&config, &[0], None)?;
        let changes: Vec<(Change, isize)> =
            rows.into_iter().map(|(key, row)| (Change { output: 0, key, row }, 1)).collect();
        let start = Instant::now();
        sink.apply(1, changes);
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
}
