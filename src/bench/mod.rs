//! `diffstream bench`: what users run, against what they would write by hand.
//!
//! The engine side is the whole `diffstream run` path — reading JSON Lines files, decoding,
//! the dataflows, the sinks, writing the snapshot files — each run in a fresh child process
//! (`-w 1` and `-w 2`), timed from spawn to exit, with its peak RSS. The baseline is a plain
//! single-threaded loop over the same files ([`baseline`]: serde_json and a fast hash map,
//! streaming, writing the same files), also in a fresh child process, the fastest of three
//! runs. Both run in the same `bench` invocation; it prints events/s, ratios and peak memory,
//! and checks that the engine's files equal the baseline's byte for byte (a benchmark of wrong
//! results is no benchmark). The dataflows are the shipped SQL views (`config::builtin`), as
//! `run` runs them. Jobs: clicks (`user_event_counts` + `user_activity` over users
//! and clicks) at 10 000 and 1 000 000 distinct users, and sensors (`sensor_metrics`);
//! `--sites 10,1000` adds sensor jobs with 720 and 72 000 keys (about 1 000 and 100 000 open
//! windows), the same readings spread over more windows.
//!
//! `--soak` runs 10× more input at a constant number of keys through the same path in this
//! process and prints the RSS at each tenth of the input: flat means bounded memory.
//! `--kafka` and `--mongodb` measure the connectors instead. Nothing here asserts on time.

mod baseline;
mod kafka;
mod mongo;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::builtin::SensorParams;
use anyhow::Context;
use clap::Parser;

use crate::cli::{BenchArgs, Cli};
use crate::runtime::{self, Counters, Plan};
use crate::sources::generator::{GeneratorSpec, Kind};
use crate::sources::{InputSpec, SourceSpec};

/// Writes `count` generated records of `kind` to `path` (kept when already there).
fn generate(path: &Path, kind: Kind, count: u64, seed: u64, users: u64, sites: u64) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let spec = GeneratorSpec { kind, count: Some(count), seed, users, sites };
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    for i in 0..count {
        use std::io::Write;
        w.write_all(&spec.line(i))?;
        w.write_all(b"\n")?;
    }
    std::io::Write::flush(&mut w)?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What a child process measured: wall time from spawn to exit, and its peak RSS.
#[derive(Clone)]
struct Measured {
    seconds: f64,
    peak_kb: f64,
}

/// Runs `diffstream bench --measure ARGS…` in a fresh process.
fn measure(args: &[String]) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let out = Command::new(exe).args(["bench", "--measure"]).args(args).output().context("running a measured child")?;
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "`diffstream {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let peak_kb = text.split_whitespace().skip_while(|w| *w != "peak_rss_kb").nth(1).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    Ok(Measured { seconds, peak_kb })
}

/// The fastest of `n` runs of [`measure`] (its own peak RSS).
fn best_of(n: usize, args: &[String]) -> anyhow::Result<Measured> {
    let mut best = measure(args)?;
    for _ in 1..n {
        let m = measure(args)?;
        if m.seconds < best.seconds {
            best = m;
        }
    }
    Ok(best)
}

/// The arguments of one engine run of `run`: its snapshot files into `dir`.
fn engine_args(run: &[String], dir: &Path, batch: usize, workers: usize) -> Vec<String> {
    let mut a = run.to_vec();
    a.extend(["--output-dir".into(), path(dir), "--batch-size".into(), batch.to_string(), "-w".into(), workers.to_string(), "-q".into()]);
    a
}

/// This process's peak (`VmHWM`) or current (`VmRSS`) resident set, in KiB.
fn rss_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The child side of [`measure`]: `run …` exactly as the command line would, or `baseline …`.
fn measured_child(args: &[String]) -> anyhow::Result<()> {
    let s = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match s(0) {
        "baseline" if s(1) == "clicks" => baseline::clicks(Path::new(s(2)), Path::new(s(3)), Path::new(s(4)))?,
        "baseline" if s(1) == "sensors" => baseline::sensors(Path::new(s(2)), s(3).parse()?, &SensorParams::default(), Path::new(s(4)))?,
        _ => {
            let cli = Cli::try_parse_from(std::iter::once("diffstream".to_string()).chain(args.iter().cloned()))?;
            let crate::cli::Command::Run(run) = &cli.command else { anyhow::bail!("--measure takes `run …` or `baseline …`") };
            crate::commands::execute(crate::commands::plan_run(run)?)?;
        }
    }
    println!("peak_rss_kb {}", rss_kb("VmHWM:"));
    Ok(())
}

/// Whether every file of `a` is in `b` with the same bytes; names the first difference.
fn same_files(a: &Path, b: &Path) -> anyhow::Result<Result<(), String>> {
    for entry in std::fs::read_dir(a)? {
        let name = entry?.file_name();
        let (x, y) = (std::fs::read(a.join(&name))?, std::fs::read(b.join(&name)).unwrap_or_default());
        if x != y {
            return Ok(Err(format!("{} differs", name.to_string_lossy())));
        }
    }
    Ok(Ok(()))
}

/// Entry point.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    if !args.measure.is_empty() {
        return measured_child(&args.measure);
    }
    if let Some(uri) = &args.mongodb {
        return mongo::main(uri, args.events);
    }
    if let Some(bootstrap) = &args.kafka {
        return kafka::main(bootstrap, args.events, args.latency_rate);
    }
    if args.soak {
        return soak(args);
    }
    if args.http {
        return http_cost(args);
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join("diffstream-bench"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = args.events;
    let batch = args.batch_size;
    println!("whole `run` path (files in, snapshot files out, each run a fresh process) vs a plain single-threaded loop");
    println!("{n} events per job, {batch} records per batch (logical times as `run` makes them), files in {}", dir.display());
    println!(
        "{:<26} {:>11} {:>9} | {:>11} {:>9} {:>6} {:>6} | {:>11} {:>9} {:>6} {:>6} | outputs",
        "job", "plain ev/s", "MiB", "-w 1 ev/s", "MiB", "speed", "mem", "-w 2 ev/s", "MiB", "speed", "mem"
    );
    let runs = args.runs as usize;
    // (name, baseline run, engine run, output folder)
    let mut jobs: Vec<(String, Vec<String>, Vec<String>, PathBuf)> = Vec::new();
    for &users in &args.users {
        let (u, c) = (dir.join(format!("users-{users}.jsonl")), dir.join(format!("clicks-{users}-{n}.jsonl")));
        eprintln!("generating {} …", c.display());
        generate(&u, Kind::Users, users + n / 20, 1, users, 1)?;
        generate(&c, Kind::Clicks, n, 2, users, 1)?;
        let out = dir.join(format!("out-clicks-{users}"));
        let base = vec!["baseline".into(), "clicks".into(), path(&u), path(&c), path(&out.join("plain"))];
        let mut run: Vec<String> = ["run", "user_event_counts", "user_activity"].map(String::from).to_vec();
        run.extend(["--input".into(), format!("users={}", path(&u)), "--input".into(), format!("clicks={}", path(&c))]);
        jobs.push((format!("clicks, {users} users"), base, run, out));
    }
    for &sites in &args.sites {
        // 72 keys (type, location) per site; with 1-minute windows and 30 s of lateness about
        // 1.5 windows per key are open at a time.
        let (sensors, name) = match sites {
            1 => (dir.join(format!("sensors-{n}.jsonl")), "sensors".to_string()),
            _ => (dir.join(format!("sensors-{sites}-{n}.jsonl")), format!("sensors, {} keys", 72 * sites)),
        };
        eprintln!("generating {} …", sensors.display());
        generate(&sensors, Kind::Sensors, n, 3, 1000, sites)?;
        let out = dir.join(format!("out-sensors-{sites}"));
        let base = vec!["baseline".into(), "sensors".into(), path(&sensors), batch.to_string(), path(&out.join("plain"))];
        let run = vec!["run".into(), "sensor_metrics".into(), "--input".into(), format!("sensors={}", path(&sensors))];
        jobs.push((name, base, run, out));
    }
    for (name, base, run, out) in jobs.into_iter().filter(|(name, ..)| args.only.as_deref().is_none_or(|o| name.starts_with(o))) {
        // The baseline's best of three: a single run of it was once 40% slower than the same
        // run a minute later (a cold start), which flattered the engine beside it.
        let plain = best_of(runs, &base)?;
        let mut cells = Vec::new();
        let mut verdict = Ok(());
        for w in [1, 2] {
            let dir = out.join(format!("w{w}"));
            let m = best_of(runs, &engine_args(&run, &dir, batch, w))?;
            if verdict.is_ok() {
                verdict = same_files(&out.join("plain"), &dir)?;
            }
            cells.push(format!(
                "{:>11.0} {:>9.1} {:>5.2}x {:>5.2}x",
                n as f64 / m.seconds,
                m.peak_kb / 1024.0,
                plain.seconds / m.seconds,
                m.peak_kb / plain.peak_kb
            ));
        }
        println!(
            "{:<26} {:>11.0} {:>9.1} | {} | {} | {}",
            name,
            n as f64 / plain.seconds,
            plain.peak_kb / 1024.0,
            cells[0],
            cells[1],
            match verdict {
                Ok(()) => "equal".to_string(),
                Err(e) => format!("DIFFER: {e}"),
            },
        );
    }
    println!("speed = engine events/s ÷ plain; mem = engine peak RSS ÷ plain (both whole processes); each the fastest of {runs} runs");
    Ok(())
}

/// `--http`: each job at `-w 2` without the server, with it and no client, with a client
/// that follows an output as fast as it can, and with one that reads 4 KiB every 20 ms (it
/// falls behind and is dropped); best of three runs each, events/s and its ratio to no server.
fn http_cost(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("diffstream-bench"));
    std::fs::create_dir_all(&dir)?;
    let n = args.events;
    let users = args.users.first().copied().unwrap_or(10_000);
    let (u, c, s) =
        (dir.join(format!("users-{users}.jsonl")), dir.join(format!("clicks-{users}-{n}.jsonl")), dir.join(format!("sensors-{n}.jsonl")));
    generate(&u, Kind::Users, users + n / 20, 1, users, 1)?;
    generate(&c, Kind::Clicks, n, 2, users, 1)?;
    generate(&s, Kind::Sensors, n, 3, 1000, 1)?;
    let jobs = [
        (
            format!("clicks, {users} users"),
            vec![
                "user_event_counts".to_string(),
                "user_activity".into(),
                "--input".into(),
                format!("users={}", path(&u)),
                "--input".into(),
                format!("clicks={}", path(&c)),
            ],
            "user_activity",
        ),
        (
            "sensors".to_string(),
            vec!["sensor_metrics".to_string(), "--input".into(), format!("sensors={}", path(&s))],
            "sensor_window_metrics",
        ),
    ];
    println!("the HTTP server's cost: whole `run` path at -w 2, {n} events, snapshot files on; best of 3 runs");
    println!(
        "{:<22} {:>12} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6} | snapshots",
        "job", "no server", "no client", "ratio", "following", "ratio", "slow client", "ratio"
    );
    for (name, job, followed) in jobs {
        let mut cells = Vec::new();
        let mut base = f64::NAN;
        let mut verdict = Ok(());
        for (n_client, client) in [None, Some(None), Some(Some(false)), Some(Some(true))].into_iter().enumerate() {
            let mut best = f64::INFINITY;
            let out = dir.join("out-http").join(n_client.to_string());
            for _ in 0..3 {
                let mut a: Vec<String> = vec!["run".into()];
                a.extend(job.iter().cloned());
                a.extend([
                    "--output-dir".into(),
                    path(&out),
                    "--batch-size".into(),
                    args.batch_size.to_string(),
                    "-w".into(),
                    "2".into(),
                    "-q".into(),
                ]);
                let follower = match client {
                    None => None,
                    Some(slow) => {
                        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                        a.extend(["--http".into(), format!("127.0.0.1:{port}")]);
                        slow.map(|slow| std::thread::spawn(move || follow(port, followed, slow)))
                    }
                };
                best = best.min(measure(&a)?.seconds);
                if let Some(f) = follower {
                    let _ = f.join();
                }
            }
            if verdict.is_ok() && client.is_some() {
                verdict = same_files(&dir.join("out-http").join("0"), &out)?;
            }
            let rate = n as f64 / best;
            if client.is_none() {
                base = rate;
                cells.push(format!("{rate:>12.0}"));
            } else {
                cells.push(format!("{rate:>12.0} {:>5.2}x", rate / base));
            }
        }
        let verdict = match verdict {
            Ok(()) => "equal".to_string(),
            Err(e) => format!("DIFFER: {e}"),
        };
        println!("{:<22} {} | {verdict}", name, cells.join(" | "));
    }
    println!("ratio = events/s ÷ events/s without the server; snapshots: every run's files equal the run's without it");
    Ok(())
}

/// Follows `output` on the server at `port` once it answers, reading as fast as it can or
/// (`slow`) 4 KiB every 20 ms, until the run ends or the server drops it.
fn follow(port: u16, output: &str, slow: bool) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return,
        }
    };
    if write!(stream, "GET /outputs/{output}/subscribe HTTP/1.0\r\n\r\n").is_err() {
        return;
    }
    let mut buf = vec![0u8; if slow { 4096 } else { 1 << 16 }];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        if slow {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `--soak`: 10× `--events` through the whole path at a constant number of keys (the first
/// `--users` figure, and the sensors' 1000 sensors with tumbling windows), snapshot files on,
/// `-w 2`, printing the RSS at each tenth of the input.
fn soak(args: &BenchArgs) -> anyhow::Result<()> {
    let total = args.events * 10;
    let users = args.users.first().copied().unwrap_or(10_000);
    let out = tempfile_dir()?;
    let generator = |kind: Kind, count, seed| InputSpec {
        source: SourceSpec::Generator(GeneratorSpec { kind, count: Some(count), seed, users, sites: 1 }),
        rate: None,
    };
    let jobs = [
        (
            "clicks",
            &["user_event_counts", "user_activity"][..],
            vec![("users", generator(Kind::Users, users, 1)), ("clicks", generator(Kind::Clicks, total, 2))],
        ),
        ("sensors", &["sensor_metrics"][..], vec![("sensors", generator(Kind::Sensors, total, 3))]),
    ];
    println!("soak: {total} events per job (10 × --events), -w 2, snapshot files on; RSS at each tenth of the input");
    let mut plans: Vec<(String, Plan)> = Vec::new();
    for (name, dataflows, inputs) in jobs {
        let inputs = inputs.into_iter().map(|(n, spec)| (n.to_string(), spec)).collect();
        let plan = crate::commands::embedded(crate::config::Config::default(), dataflows, inputs, 2, args.batch_size)?;
        plans.push((name.to_string(), plan));
    }
    for (name, mut plan) in plans {
        plan.output_dir = Some(out.join(name.replace(' ', "_")));
        let counters = Arc::new(Counters::default());
        let watched = counters.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        // (every input's records: the users' profiles too)
        let target: u64 =
            plan.inputs.values().map(|i| if let SourceSpec::Generator(g) = &i.source { g.count.unwrap_or(0) } else { 0 }).sum();
        let sampler = std::thread::spawn(move || {
            let mut marks = Vec::new();
            let mut next = 1;
            while next <= 10 && !stop.load(Ordering::Relaxed) {
                let read = watched.snapshot().iter().sum::<u64>();
                if read >= target * next / 10 {
                    marks.push(rss_kb("VmRSS:") / 1024.0);
                    next += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            marks
        });
        let start = Instant::now();
        runtime::run_with(plan, counters, None)?;
        done.store(true, Ordering::Relaxed);
        let marks = sampler.join().expect("the sampler thread");
        let (lo, hi) = marks.iter().fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
        // The peak so far includes the end of the run (gathering and writing the snapshot),
        // which the tenths do not see.
        println!(
            "{:<18} {:>6.1}s  RSS MiB at each tenth: {}  (max/min {:.2}); process peak so far {:.0} MiB",
            name,
            start.elapsed().as_secs_f64(),
            marks.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" "),
            hi / lo,
            rss_kb("VmHWM:") / 1024.0
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("diffstream-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
