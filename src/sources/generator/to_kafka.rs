//! `diffstream gen KIND --to kafka`: the generators as Kafka producers, printing what the
//! producers in the field print — sent, failed, messages/s, p95 delivery latency and the
//! distribution by kind — with a progress line while it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::{GeneratorSpec, Kind};
use crate::config::kafka::KafkaConnection;

#[derive(Default)]
struct Stats {
    delivered: u64,
    failed: u64,
    latencies_us: Vec<u64>,
}

#[derive(Clone, Default)]
struct Ctx(Arc<Mutex<Stats>>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        let mut s = self.0.lock().expect("stats");
        match result {
            Ok(_) => {
                s.delivered += 1;
                s.latencies_us.push(sent.elapsed().as_micros() as u64);
            }
            Err((e, _)) => {
                s.failed += 1;
                tracing::warn!(error = %e, "delivery failed");
            }
        }
    }
}

/// What to produce where.
pub struct ToKafka<'a> {
    /// the records
    pub spec: GeneratorSpec,
    /// the first record's index
    pub from: u64,
    /// records per second, or as fast as possible
    pub rate: Option<f64>,
    /// destination topic
    pub topic: &'a str,
    /// connection
    pub connection: &'a KafkaConnection,
    /// extra producer options, `key=value`
    pub producer_options: &'a [String],
    /// stop early (Ctrl-C)
    pub stop: &'a std::sync::atomic::AtomicBool,
}

fn key_and_kind(kind: Kind, line: &[u8]) -> (Vec<u8>, String) {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let (key, kind_field) = kind.key_and_kind_fields();
    let k = match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let kind = kind_field.map_or("profile", |f| v[f].as_str().unwrap_or("unreadable")).to_string();
    (k.into_bytes(), kind)
}

/// Produces the records and prints the summary.
pub fn run(job: ToKafka<'_>) -> anyhow::Result<()> {
    let mut c = job.connection.client_config().map_err(anyhow::Error::msg)?;
    c.set("enable.idempotence", "true") // retries neither duplicate nor reorder
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    for o in job.producer_options {
        let (k, v) = o.split_once('=').with_context(|| format!("--producer-option {o}: write KEY=VALUE"))?;
        c.set(k, v);
    }
    let ctx = Ctx::default();
    let producer: ThreadedProducer<Ctx> = c.create_with_context(ctx.clone()).context("creating the Kafka producer")?;
    let start = Instant::now();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let total = job.spec.count.map(|c| c.saturating_sub(job.from));
    let mut last = start;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while total.is_none_or(|n| sent < n) && !job.stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(rate) = job.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let line = job.spec.line(job.from + sent);
        let (key, kind) = key_and_kind(job.spec.kind, &line);
        *kinds.entry(kind).or_default() += 1;
        let mut record = BaseRecord::with_opaque_to(job.topic, Box::new(Instant::now())).key(&key).payload(&line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("producing to `{}`: {e}", job.topic),
            }
        }
        sent += 1;
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let s = ctx.0.lock().expect("stats");
            let line = format!(
                "sent {sent}, delivered {}, failed {}, {:.0} msg/s",
                s.delivered,
                s.failed,
                sent as f64 / start.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r\x1b[K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
    producer.flush(Duration::from_secs(60)).context("waiting for deliveries")?;
    let secs = start.elapsed().as_secs_f64();
    let mut s = ctx.0.lock().expect("stats");
    s.latencies_us.sort_unstable();
    let pct = |q: f64| s.latencies_us.get(((s.latencies_us.len() as f64 - 1.0) * q) as usize).map_or(0.0, |us| *us as f64 / 1000.0);
    if tty {
        eprintln!();
    }
    eprintln!(
        "topic {}: sent {sent}, delivered {}, failed {}, {:.0} msg/s, delivery latency p50 {:.1} ms p95 {:.1} ms",
        job.topic,
        s.delivered,
        s.failed,
        sent as f64 / secs.max(1e-9),
        pct(0.5),
        pct(0.95)
    );
    let by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n} ({:.1}%)", 100.0 * *n as f64 / sent.max(1) as f64)).collect();
    eprintln!("by kind: {}", by_kind.join(", "));
    anyhow::ensure!(s.failed == 0, "{} records were not delivered", s.failed);
    Ok(())
}
