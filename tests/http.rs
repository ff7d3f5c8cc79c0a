//! The HTTP server against a running engine, through a plain socket client of the test's own
//! (not the engine's `inspect`): a subscription replayed holds, at every closed time, exactly
//! what a naive count of the input up to that time gives; key lookups; `/metrics` as
//! Prometheus text with the run's counts; a client that reads nothing is dropped without
//! holding the run up; addresses beyond loopback refused unless asked; the dashboard in a real
//! headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running engine and its server's address; killed when dropped.
struct Engine {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Engine {
    /// Waits until the server says the run ended and wrote its outputs.
    fn wait_until_finished(&self, limit: Duration) {
        let started = Instant::now();
        while get_json(&self.addr, "/outputs")["done"] != true {
            assert!(started.elapsed() < limit, "the run did not finish in {limit:?}:\n{}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `diffstream ARGS` in `dir` and waits for its `dashboard: http://ADDR/` line.
fn start(dir: &Path, args: &[&str]) -> Engine {
    let mut child = Command::new(common::bin()).current_dir(dir).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    let log = stderr.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.trim().strip_prefix("dashboard: http://") {
                let _ = tx.send(rest.split('/').next().unwrap().to_string());
            }
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Engine { child, addr, stderr },
        Err(_) => panic!("diffstream {} did not serve HTTP:\n{}", args.join(" "), stderr.lock().unwrap()),
    }
}

/// `GET path`: status and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The events of a subscription, `(event, data)`, until `end`, `dropped` or the connection closes.
fn events(stream: TcpStream) -> Vec<(String, Value)> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    let (mut out, mut event) = (Vec::new(), String::new());
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return out;
        }
        let l = line.trim_end();
        if let Some(e) = l.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = l.strip_prefix("data: ") {
            out.push((event.clone(), serde_json::from_str(d).unwrap()));
            if event == "end" || event == "dropped" {
                return out;
            }
        }
    }
}

fn subscribe(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    s
}

/// Clicks of `users` users, a malformed line every 1000th: the test's own data.
fn clicks(n: usize, users: u64) -> Vec<String> {
    let kinds = ["page_view", "click", "search", "add_to_cart", "purchase"];
    let mut x: u64 = 7;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if i % 1000 == 999 {
                return "{\"user_id\": oops".to_string();
            }
            let user = (x >> 33) % users;
            format!(
                "{{\"event_timestamp\":\"2026-01-01 00:00:00\",\"user_id\":{user},\"page\":\"/\",\"event\":\"{}\"}}",
                kinds[((x >> 20) % 5) as usize]
            )
        })
        .collect()
}

/// The naive reference: clicks per user over the first `lines` lines, as the output's rows.
fn counts(lines: &[String]) -> BTreeMap<String, isize> {
    let mut per_user: BTreeMap<u64, u64> = BTreeMap::new();
    for l in lines {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            *per_user.entry(v["user_id"].as_u64().unwrap()).or_default() += 1;
        }
    }
    per_user.into_iter().map(|(u, n)| (serde_json::json!({"user_id": u, "event_count": n}).to_string(), 1)).collect()
}

fn rows(v: &Value) -> BTreeMap<String, isize> {
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().unwrap() {
        *out.entry(r.to_string()).or_default() += 1;
    }
    out
}

#[test]
fn a_subscription_replayed_holds_every_closed_time_and_the_final_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = clicks(6000, 300);
    std::fs::write(dir.path().join("clicks.jsonl"), input.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.path().join("run.toml"),
        "dataflows = [\"user_event_counts\"]\n[inputs.clicks]\nkind = \"file\"\npath = \"clicks.jsonl\"\nrate = 3000\n",
    )
    .unwrap();
    let batch = 200;
    let args = ["run", "--config", "run.toml", "--batch-size", "200", "-w", "2", "--output-dir", "out"];
    let engine = start(dir.path(), &[&args[..], &["--http", "127.0.0.1:0", "--http-linger", "60"]].concat());
    let addr = engine.addr.clone();
    let all = subscribe(&addr, "/outputs/user_event_counts/subscribe");
    let one = subscribe(&addr, "/outputs/user_event_counts/subscribe?key=7");
    let dead = subscribe(&addr, "/outputs/dead_letters/subscribe");

    // Replayed: at every closed time, exactly the counts of the lines read by then (batch `t`
    // is lines `t·200 ..`, on any layout).
    let prefix = |t: u64| counts(&input[..input.len().min((t as usize + 1) * batch)]);
    let mut state: BTreeMap<String, isize> = BTreeMap::new();
    let (mut closed, mut checked) = (None::<u64>, 0);
    let evs = events(all);
    assert_eq!(evs.first().map(|e| e.0.as_str()), Some("snapshot"), "{evs:?}");
    for (event, data) in &evs {
        match event.as_str() {
            "snapshot" => {
                state = rows(data);
                if let Some(t) = data["time"].as_u64() {
                    assert_eq!(state, prefix(t), "the snapshot at time {t}");
                    closed = Some(t);
                }
            }
            "change" => {
                let t = data["time"].as_u64().unwrap();
                assert!(closed.is_none_or(|c| t > c), "a change at {t} after time {closed:?} closed");
                let e = state.entry(data["row"].to_string()).or_default();
                *e += data["diff"].as_i64().unwrap() as isize;
                if *e == 0 {
                    state.remove(&data["row"].to_string());
                }
            }
            "progress" | "end" => {
                let t = data["time"].as_u64().unwrap();
                assert_eq!(state, prefix(t), "the rows at closed time {t}");
                closed = Some(t);
                checked += 1;
            }
            other => panic!("unexpected event {other}: {data}"),
        }
    }
    assert_eq!(evs.last().unwrap().0, "end");
    assert!(checked >= 5, "the subscription saw {checked} closed times; the run should have had about 30");
    let reference = counts(&input);
    assert_eq!(state, reference);
    // The snapshot file says the same.
    let file: BTreeMap<String, isize> = std::fs::read_to_string(dir.path().join("out/user_event_counts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| (serde_json::from_str::<Value>(l).unwrap().to_string(), 1))
        .collect();
    assert_eq!(file, reference);

    // One key's subscription holds that key's row only, and so does a lookup.
    let mut seven = BTreeMap::new();
    for (event, data) in events(one) {
        match event.as_str() {
            "snapshot" => seven = rows(&data),
            "change" => {
                assert_eq!(data["row"]["user_id"], 7, "{data}");
                *seven.entry(data["row"].to_string()).or_default() += data["diff"].as_i64().unwrap() as isize;
                seven.retain(|_, n| *n != 0);
            }
            _ => {}
        }
    }
    let want: BTreeMap<String, isize> =
        reference.iter().filter(|(r, _)| r.starts_with("{\"user_id\":7,")).map(|(r, n)| (r.clone(), *n)).collect();
    assert_eq!(seven, want);
    let looked_up = get_json(&addr, "/outputs/user_event_counts?key=7");
    assert_eq!(rows(&looked_up), want);
    assert_eq!(rows(&get_json(&addr, "/outputs/user_event_counts?key=%7B%22user_id%22%3A7%7D")), want);
    assert_eq!(rows(&get_json(&addr, "/outputs/user_event_counts")), reference);
    assert!(get_json(&addr, "/outputs/user_event_counts?key=100000")["rows"].as_array().unwrap().is_empty());
    let (status, body) = get(&addr, "/outputs/no_such_output");
    assert_eq!(status, 404);
    assert!(body.contains("user_event_counts"), "{body}");

    // The malformed lines are dead letters, followed like any output.
    let dead_rows: Vec<Value> = events(dead)
        .into_iter()
        .flat_map(|(e, d)| match e.as_str() {
            "snapshot" => d["rows"].as_array().unwrap().clone(),
            "change" => vec![d["row"].clone()],
            _ => vec![],
        })
        .collect();
    assert_eq!(dead_rows.len(), 6, "{dead_rows:?}");

    // The terminal client prints the same rows, one JSON object a line, and follows to the end.
    let inspect = |extra: &[&str]| {
        let out = common::diffstream(&[&["inspect", "--connect", &addr][..], extra].concat());
        String::from_utf8(out.stdout).unwrap().lines().map(|l| (serde_json::from_str::<Value>(l).unwrap().to_string(), 1)).collect()
    };
    let printed: BTreeMap<String, isize> = inspect(&["user_event_counts"]);
    assert_eq!(printed, reference);
    assert_eq!(inspect(&["user_event_counts", "--key", "7"]), want);
    assert_eq!(inspect(&["user_event_counts", "--key", "7", "--follow"]), want);
    let listed = common::diffstream(&["inspect", "--connect", &addr]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("user_event_counts"));

    // /outputs and /metrics agree with the reference.
    let outputs = get_json(&addr, "/outputs");
    assert_eq!(outputs["done"], true);
    let uec = outputs["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "user_event_counts").unwrap();
    assert_eq!(uec["rows"].as_u64().unwrap() as usize, reference.len());
    let (status, text) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let metrics = parse_prometheus(&text);
    assert_eq!(metrics["diffstream_records_in_total{input=\"clicks\"}"], 6000.0);
    assert_eq!(metrics["diffstream_output_rows{output=\"user_event_counts\"}"], reference.len() as f64);
    let dead_total: f64 = metrics.iter().filter(|(k, _)| k.starts_with("diffstream_dead_letters_total")).map(|(_, v)| v).sum();
    assert_eq!(dead_total, 6.0);
    assert!(metrics["process_resident_memory_bytes"] > 0.0);
    drop(engine);
}

/// Prometheus text: every sample line is `name{labels} value`; `# EOF` ends it. Returns
/// `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "a metric name: {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "labels: {line:?}");
        }
        out.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("a value: {line:?}")));
    }
    out
}

#[test]
fn a_client_that_reads_nothing_is_dropped_and_does_not_hold_the_run_up() {
    let dir = tempfile::tempdir().unwrap();
    // ~19 000 changed rows per time for 50 times: far more than the socket and the subscriber's
    // buffer hold.
    let input = clicks(500_000, 100_000);
    std::fs::write(dir.path().join("clicks.jsonl"), input.join("\n") + "\n").unwrap();
    let args = ["run", "user_event_counts", "--input", "clicks=clicks.jsonl", "--batch-size", "10000", "--batches-per-time", "1"];
    let engine =
        start(dir.path(), &[&args[..], &["-w", "2", "--output-dir", "out", "--http", "127.0.0.1:0", "--http-linger", "60"]].concat());
    let stalled = subscribe(&engine.addr, "/outputs/user_event_counts/subscribe");
    // The run finishes while the client reads nothing.
    engine.wait_until_finished(Duration::from_secs(300));
    let file: BTreeMap<String, isize> = std::fs::read_to_string(dir.path().join("out/user_event_counts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| (serde_json::from_str::<Value>(l).unwrap().to_string(), 1))
        .collect();
    assert_eq!(file, counts(&input));
    // What the client finally reads ends with its being dropped, and the server still serves.
    let evs = events(stalled);
    assert_eq!(evs.last().map(|e| e.0.as_str()), Some("dropped"), "{} events, the last {:?}", evs.len(), evs.last());
    assert_eq!(rows(&get_json(&engine.addr, "/outputs/user_event_counts")), file);
}

#[test]
fn the_server_refuses_an_address_beyond_loopback_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("clicks.jsonl"), clicks(10, 3).join("\n") + "\n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(common::bin())
            .current_dir(dir.path())
            .args(["run", "user_event_counts", "--input", "clicks=clicks.jsonl", "-q"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = run(&["--http", "0.0.0.0:0"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--http 0.0.0.0:0") && err.contains("--http-allow-remote"), "{err}");
    std::fs::write(dir.path().join("remote.toml"), "[http]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let refused = run(&["--config", "remote.toml"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("remote.toml") && err.contains("allow_remote"), "{err}");
    let allowed = run(&["--http", "0.0.0.0:0", "--http-allow-remote"]);
    let err = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success() && err.contains("dashboard: http://0.0.0.0:"), "{err}");
}

/// Chromium, installed by scripts/test.sh; fails (never skips) without it.
fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!("no Chromium: run the tests with scripts/test.sh, which installs it, or `apt-get install chromium`");
}

fn chrome(args: &[&str], url: &str) -> String {
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1500", "--virtual-time-budget=8000"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The values of `attr` in every element of the DOM text that has it, in order.
fn attr_values(dom: &str, attr: &str) -> Vec<String> {
    let pat = format!(" {attr}=\"");
    // (the page's script holds the templates, `${…}`: not values)
    dom.match_indices(&pat)
        .map(|(i, _)| dom[i + pat.len()..].split('"').next().unwrap().to_string())
        .filter(|v| !v.starts_with("${"))
        .collect()
}

fn snapshot(dir: &Path, output: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{output}.jsonl"))).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_dashboard_shows_the_demo_outputs_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["demo", "--duration", "4", "--plain", "-w", "2", "--output-dir", "out", "--http", "127.0.0.1:0", "--http-linger", "120"];
    let engine = start(dir.path(), &args);
    engine.wait_until_finished(Duration::from_secs(120));
    let out = dir.path().join("out");
    let url = format!("http://{}/", engine.addr);
    let dom = chrome(&["--dump-dom"], &url);

    // Top users: the ten with the most events (ties by user id), with their counts.
    let mut users: Vec<(i64, i64)> =
        snapshot(&out, "user_activity").iter().map(|r| (r["event_count"].as_i64().unwrap(), r["user_id"].as_i64().unwrap())).collect();
    users.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let shown_users: Vec<String> = attr_values(&dom, "data-user");
    let shown_counts: Vec<String> = attr_values(&dom, "data-count");
    assert_eq!(shown_users, users.iter().take(10).map(|(_, u)| u.to_string()).collect::<Vec<_>>(), "top users");
    // Event kinds: a bar per kind with its count (the bars' counts follow the users' in the DOM).
    let mut kinds: Vec<(String, String)> =
        snapshot(&out, "event_type_counts").iter().map(|r| (r["event"].as_str().unwrap().to_string(), r["count"].to_string())).collect();
    kinds.sort();
    let shown_kinds = attr_values(&dom, "data-kind");
    let bars: Vec<(String, String)> =
        shown_kinds.iter().take(kinds.len()).cloned().zip(shown_counts[10..10 + kinds.len()].iter().cloned()).collect();
    let mut bars = bars;
    bars.sort();
    assert_eq!(bars, kinds, "event kinds");
    // Windowed metrics: one line per location of the first sensor type.
    let windows = snapshot(&out, "sensor_window_metrics");
    let first_type = windows.iter().map(|r| r["sensor_type"].as_str().unwrap()).min().unwrap();
    let mut locations: Vec<String> =
        windows.iter().filter(|r| r["sensor_type"] == first_type).map(|r| r["location"].as_str().unwrap().to_string()).collect();
    locations.sort();
    locations.dedup();
    let series = attr_values(&dom, "data-series");
    for l in &locations {
        assert!(series.contains(l), "no line for {l} in {series:?}");
    }
    // Every output listed with its row count.
    for o in ["user_event_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts"] {
        let n = snapshot(&out, o).len();
        let at = dom.find(&format!("data-output=\"{o}\"")).unwrap_or_else(|| panic!("{o} is not listed"));
        let cells = &dom[at..dom[at..].find("</tr>").unwrap() + at];
        assert!(cells.contains(&format!(">{}<", diffstream::status::thousands(n as u64))), "{o}: {n} rows, the row says {cells}");
    }
    // Alerts: the latest ones, each one of the output's.
    let alerts = snapshot(&out, "anomaly_alerts");
    let alerts_table = &dom[dom.find("id=\"alerts\"").unwrap()..];
    let alerts_table = &alerts_table[..alerts_table.find("</table>").unwrap()];
    let shown = alerts_table.matches("<tr>").count() - 1;
    assert_eq!(shown, alerts.len().min(15), "alert rows");
    let newest = alerts.iter().map(|a| a["timestamp"].as_str().unwrap()).max().unwrap();
    assert!(alerts_table.contains(newest), "the newest alert ({newest}) is shown");

    // A picture of it, for people.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard.png");
    chrome(&[&format!("--screenshot={}", shot.display())], &url);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot in {}", shot.display());
}

#[test]
fn the_first_process_serves_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let input = clicks(20_000, 500);
    std::fs::write(dir.path().join("clicks.jsonl"), input.join("\n") + "\n").unwrap();
    let hosts = common::hostfile(dir.path());
    let hosts = hosts.to_str().unwrap();
    let args = |p: &str| {
        let args =
            ["run", "user_event_counts", "--input", "clicks=clicks.jsonl", "--batch-size", "1000", "-w", "1", "-n", "2", "-h", hosts];
        [&args[..], &["-p", p, "--http", "127.0.0.1:0", "--http-linger", "60"]].concat().iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let second = Command::new(common::bin()).current_dir(dir.path()).args(args("1")).stderr(Stdio::piped()).spawn().unwrap();
    let first_args = args("0");
    let engine = start(dir.path(), &first_args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("dashboard:"), "only the first process serves");
    engine.wait_until_finished(Duration::from_secs(120));
    // Both processes' shares, through the dataflow.
    assert_eq!(rows(&get_json(&engine.addr, "/outputs/user_event_counts")), counts(&input));
}

#[test]
fn metrics_show_each_kafka_partitions_lag() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = common::kafka_bootstrap();
    let topic = common::unique("lag") + ".clicks";
    common::create_topics(std::slice::from_ref(&topic), 2);
    common::diffstream(&["gen", "clicks", "--count", "400", "--to", "kafka", "--topic", &topic, "--bootstrap", &bootstrap]);
    let state = dir.path().join("state");
    let cfg = format!(
        "dataflows = [\"user_event_counts\"]\n[runtime]\nstate_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n\
         [inputs.clicks]\nkind = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\nstop_when_idle = \"4s\"\n",
        state.display(),
        common::unique("g")
    );
    std::fs::write(dir.path().join("kafka.toml"), cfg).unwrap();
    // While the run waits for more, the per-user and per-kind counts hold one group per user
    // and per event kind of the clicks (the same 400 `gen` writes to stdout).
    let clicks = common::diffstream(&["gen", "clicks", "--count", "400"]).stdout;
    let (mut users, mut kinds) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for c in String::from_utf8(clicks).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        users.insert(c["user_id"].to_string());
        kinds.insert(c["event"].to_string());
    }
    // (each view's GROUP BY keeps its groups: one per user, one per event kind)
    let state = |view: &str| format!("diffstream_state_records{{dataflow=\"{view}\",operator=\"Reduce\"}}");
    let mut states = Vec::new();
    let engine = start(dir.path(), &["run", "--config", "kafka.toml", "--http", "127.0.0.1:0", "--http-linger", "60"]);
    let started = Instant::now();
    let (lag, metrics) = loop {
        let metrics = parse_prometheus(&get(&engine.addr, "/metrics").1);
        if let (Some(u), Some(k)) = (metrics.get(&state("user_event_counts")), metrics.get(&state("event_type_counts"))) {
            states.push((*u, *k));
        }
        let lag: Vec<f64> = (0..2)
            .filter_map(|p| {
                metrics.get(&format!("diffstream_kafka_consumer_lag{{input=\"clicks\",topic=\"{topic}\",partition=\"{p}\"}}")).copied()
            })
            .collect();
        let committed = metrics.get("diffstream_kafka_commit_latency_seconds_count").is_some_and(|n| *n >= 1.0);
        if metrics.get("diffstream_records_in_total{input=\"clicks\"}") == Some(&400.0)
            && lag.len() == 2
            && lag.iter().all(|l| *l <= 1.0)
            && committed
        {
            break (lag, metrics);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no lag of 0 for both partitions in 60 s:\n{metrics:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // Everything read is committed once written: nothing left (Tansu's end offset is the last
    // record rather than one past it, hence at most 1).
    assert!(lag.iter().all(|l| (0.0..=1.0).contains(l)), "{lag:?}");
    // Records read per partition add up to the input, every partition had some; every batch
    // read was acknowledged by the sinks and its offsets committed, each timed.
    let read: Vec<f64> = (0..2)
        .map(|p| metrics[&format!("diffstream_kafka_records_read_total{{input=\"clicks\",topic=\"{topic}\",partition=\"{p}\"}}")])
        .collect();
    assert!(read.iter().sum::<f64>() == 400.0 && read.iter().all(|n| *n > 0.0), "{read:?}");
    for h in ["diffstream_sink_ack_latency_seconds", "diffstream_kafka_commit_latency_seconds"] {
        let count = metrics[&format!("{h}_count")];
        assert!(count >= 1.0 && metrics[&format!("{h}_bucket{{le=\"+Inf\"}}")] == count, "{h}: {metrics:?}");
        assert!(metrics[&format!("{h}_sum")] / count < 30.0, "{h}: {metrics:?}");
    }
    // (sampled while the run went on: once it ends, its operators and their state are gone)
    assert!(states.contains(&(users.len() as f64, kinds.len() as f64)), "{states:?}: want {} and {}", users.len(), kinds.len());
    assert!(states.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "counts only gain keys here: {states:?}");
}

#[test]
fn metrics_show_an_sql_inputs_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let readings = common::diffstream(&["gen", "sensors", "--count", "20000", "--seed", "5"]).stdout;
    std::fs::write(dir.path().join("readings.jsonl"), &readings).unwrap();
    std::fs::write(dir.path().join("sensors.toml"), common::shipped(dir.path(), "sensors")).unwrap();
    let engine = start(dir.path(), &["run", "--config", "sensors.toml", "-w", "2", "--http", "127.0.0.1:0", "--http-linger", "60"]);
    engine.wait_until_finished(Duration::from_secs(120));
    // The reference: the greatest timestamp of the readings that decode and are not dated past
    // the clock's hour ahead, less the 30 s of allowed lateness the config gives.
    let horizon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 3_600_000;
    let newest = String::from_utf8(readings)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["sensor_id"].is_string() && v["value"].is_number() && v["status"].is_string())
        .filter_map(|v| chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok().map(|t| t.timestamp_millis()))
        .filter(|t| *t <= horizon)
        .max()
        .unwrap();
    let metrics = parse_prometheus(&get(&engine.addr, "/metrics").1);
    assert_eq!(metrics.get("diffstream_watermark_milliseconds{input=\"sensors\"}"), Some(&((newest - 30_000) as f64)), "{metrics:?}");
}
