//! `diffstream bench`: throughput of each dataflow at `-w 1` and `-w 2` next to the plain
//! single-threaded `HashMap` implementation ([`crate::reference`]) over the same JSON Lines
//! in memory, measured in the same process, JSON decoding included on both sides; and the
//! sensor dataflow's peak memory at two stream lengths, each in a fresh child process.
//! It prints ratios, never asserts on time.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dataflows::{Dataflow, InputName, Params};

use crate::cli::BenchArgs;
use crate::reference;
use crate::runtime::{self, Cluster, Display, Plan};
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
    Plan {
        dataflows: vec![dataflow],
        inputs: inputs
            .iter()
            .filter(|(i, _)| dataflow.inputs().contains(i))
            .map(|(i, bytes)| (*i, InputSpec { source: SourceSpec::Memory(bytes.clone()), rate: None }))
            .collect(),
        params: Params::default(),
        output_dir: None,
        changes: false,
        keep_state: false,
        batch_size,
        max_inflight: 4,
        cluster: Cluster::local(workers),
        display: Display::Quiet,
        display_interval: Duration::from_secs(3600),
        duration: None,
        kafka_output: None,
    }
}

/// Entry point.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.memory_child {
        return memory_child(n);
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
