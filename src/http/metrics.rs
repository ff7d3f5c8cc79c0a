//! `GET /metrics`: the run's figures as Prometheus (OpenMetrics) text, through the
//! `prometheus-client` crate. The registry is built anew from the current figures at each
//! scrape (they live in the run's counters and the store, not in metric objects).
//!
//! Whose figures: rows, changes and dead letters are the whole cluster's (they reach the store
//! through the dataflow); records in (per input, and per Kafka partition), decode errors, the
//! sinks' health, the Kafka latencies and the operators' state sizes are this process's.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::store::Store;
use super::Live;

type Labels = Vec<(String, String)>;

fn label(name: &str, value: impl ToString) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counters(registry: &mut Registry, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    registry.register(name, help, family);
}

fn gauges(registry: &mut Registry, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, i64)>) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    registry.register(name, help, family);
}

/// The process's resident memory in bytes (Linux), 0 where unknown.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// The current figures, encoded.
pub fn encode_text(store: &Store, live: &Live) -> String {
    let mut r = Registry::default();
    let c = &live.counters;
    let counts = c.snapshot();
    counters(
        &mut r,
        "diffstream_records_in",
        "Records read, per input (this process)",
        live.inputs.iter().map(|i| (label("input", i), counts[i.index()])),
    );
    counter(&mut r, "diffstream_decode_errors", "Records that failed to decode (this process)", c.decode_errors.load(Ordering::Relaxed));
    counters(
        &mut r,
        "diffstream_dead_letters",
        "Dead letters by the kind of their reason (the whole cluster)",
        store.dead_letters().iter().map(|(k, n)| (label("reason", k), *n)),
    );
    let (closed, summary) = store.summary();
    gauges(
        &mut r,
        "diffstream_output_rows",
        "Current rows per output (append-only outputs: rows so far; the whole cluster)",
        summary.iter().map(|o| (label("output", o.output), o.rows)),
    );
    counters(
        &mut r,
        "diffstream_output_changes",
        "Updates applied per output (the whole cluster)",
        summary.iter().map(|o| (label("output", o.output), o.changes)),
    );
    let time = live.time.load(Ordering::Relaxed) as i64;
    let closed = closed.map_or(-1, |t| t as i64);
    gauge(&mut r, "diffstream_logical_time", "The first worker's logical time", time);
    gauge(&mut r, "diffstream_closed_time", "Every logical time up to this one is complete in every output (-1: none yet)", closed);
    gauge(&mut r, "diffstream_times_in_flight", "Logical times begun but not yet complete", (time - closed - 1).max(0));
    let watermarks = live.watermarks();
    if !watermarks.is_empty() {
        gauges(
            &mut r,
            "diffstream_watermark_milliseconds",
            "The watermark per input (greatest event time read less the allowed lateness), ms since the epoch",
            watermarks.into_iter().map(|(i, w)| (label("input", i), w)),
        );
    }
    let offsets = live.kafka_offsets();
    if !offsets.is_empty() {
        let labels = |o: &crate::sources::kafka::PartitionOffsets| {
            vec![
                ("input".to_string(), o.input.clone()),
                ("topic".to_string(), o.topic.clone()),
                ("partition".to_string(), o.partition.to_string()),
            ]
        };
        gauges(
            &mut r,
            "diffstream_kafka_consumer_lag",
            "Records in an input partition past the group's committed offset, i.e. not yet written by every sink (asked of the brokers at most every 5 s)",
            offsets.iter().map(|o| (labels(o), o.lag())),
        );
        gauges(
            &mut r,
            "diffstream_kafka_committed_offset",
            "The group's committed offset per input partition (-1: none yet)",
            offsets.iter().map(|o| (labels(o), o.committed.unwrap_or(-1))),
        );
    }
    if !live.kafka.is_empty() {
        let k = &c.kafka_inputs;
        counters(
            &mut r,
            "diffstream_kafka_records_read",
            "Records read per input partition (this process)",
            k.read().into_iter().map(|((input, topic, partition), n)| {
                (vec![("input".into(), input), ("topic".into(), topic), ("partition".into(), partition.to_string())], n)
            }),
        );
        r.register(
            "diffstream_sink_ack_latency_seconds",
            "From reading a Kafka batch to every sink having written its logical time (this process)",
            k.ack_latency.clone(),
        );
        r.register(
            "diffstream_kafka_commit_latency_seconds",
            "From committing the group's offsets to the broker confirming it (this process)",
            k.commit_latency.clone(),
        );
    }
    let health: Vec<_> = [&c.kafka, &c.mongo].into_iter().filter(|h| live.sinks.contains(&h.sink)).collect();
    counters(
        &mut r,
        "diffstream_sink_retries",
        "Writes retried by the external sinks (this process)",
        health.iter().map(|h| (label("sink", h.sink), h.retries.load(Ordering::Relaxed))),
    );
    counters(
        &mut r,
        "diffstream_sink_rejected",
        "Documents an external sink rejected for good (this process)",
        health.iter().map(|h| (label("sink", h.sink), h.rejected.load(Ordering::Relaxed))),
    );
    gauges(
        &mut r,
        "diffstream_sink_trouble_seconds",
        "How long an external sink has been failing or waiting (0: healthy)",
        health.iter().map(|h| (label("sink", h.sink), h.status().map_or(0, |(d, _)| d.as_secs() as i64))),
    );
    gauges(
        &mut r,
        "diffstream_state_records",
        "Records each stateful operator keeps between logical times: keys, rows or open windows (this process's workers)",
        dataflows::state::sizes()
            .into_iter()
            .map(|((dataflow, operator), n)| (vec![("dataflow".into(), dataflow), ("operator".into(), operator.to_string())], n)),
    );
    gauge(&mut r, "diffstream_subscribers", "Clients following an output now", store.subscribers() as i64);
    gauge(&mut r, "process_resident_memory_bytes", "Resident memory of this process", resident_bytes() as i64);
    let uptime: Gauge<f64, AtomicU64> = Gauge::default();
    uptime.set(live.started.elapsed().as_secs_f64());
    r.register("diffstream_uptime_seconds", "Seconds since the run began", uptime);
    let mut out = String::new();
    encode(&mut out, &r).expect("metrics encode into a string");
    out
}
