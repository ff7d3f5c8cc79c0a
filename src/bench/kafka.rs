//! The Kafka benchmark: one topic, read by a plain consumer that only counts and by the
//! engine; then produce-to-output latency at a fixed rate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataflows::InputName;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::kafka::{KafkaConnection, KafkaInput, KafkaOutput};
use crate::runtime::{self, KafkaOutputPlan, Plan};
use crate::sources::generator::{GeneratorSpec, Kind};
use crate::sources::{InputSpec, SourceSpec};

const IDLE: Duration = Duration::from_secs(2);

fn unique(name: &str) -> String {
    format!(
        "bench-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000
    )
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
    let group = unique("group");
    let input = KafkaInput {
        columns: Vec::new(),
        required: Vec::new(),
        event_time: None,
        primary_key: None,
        format: None,
        topics: vec![topic.to_string()],
        group_id: group.clone(),
        start: "earliest".into(),
        fallback: "earliest".into(),
        max_records_per_batch: 10_000,
        dead_letter_topic: None,
        stop_when_idle: Some(crate::config::Duration::from_millis(IDLE.as_millis() as i64)),
    };
    let inputs = [("clicks".to_string(), InputSpec { source: SourceSpec::Kafka(Box::new((conn.clone(), input))), rate: None })]
        .into_iter()
        .collect();
    let mut plan = crate::commands::embedded(crate::config::Config::default(), &["user_event_counts"], inputs, workers, 10_000)
        .expect("the shipped dataflow compiles");
    plan.state_dir = Some(std::env::temp_dir().join(format!("diffstream-bench-{group}")));
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
    let spec = GeneratorSpec { kind: Kind::Clicks, count: Some(events), seed: 4, users: 1000, sites: 1 };
    let p = producer(bootstrap)?;
    for i in 0..events {
        send(&p, &topic, &i.to_le_bytes(), &spec.line(i));
    }
    p.flush(Duration::from_secs(120))?;

    // A plain consumer that only counts.
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", unique("raw")).create()?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        // offset 0 of the new topic: Tansu may answer "beginning" past it (see `sinks::kafka`)
        tpl.add_partition_offset(&topic, part, Offset::Offset(0))?;
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
    let clicks = InputName(dataflows::sql::registry::table("clicks"));
    if let SourceSpec::Kafka(k) = &mut p2.inputs.get_mut(&clicks).expect("clicks").source {
        k.1.stop_when_idle = Some(crate::config::Duration::from_millis(4000));
    }
    let engine = std::thread::spawn(move || runtime::run(p2));
    std::thread::sleep(Duration::from_secs(2));
    let produced: Arc<Mutex<BTreeMap<String, Vec<Instant>>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (produced, done, bootstrap, out_topic) =
            (produced.clone(), done.clone(), bootstrap.to_string(), format!("{out}.event_type_counts"));
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", unique("lat")).create()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&out_topic, 0, Offset::Offset(0))?;
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
