//! Pipelines written as SQL views, run by the binary from a config: the snapshots equal a plain
//! recomputation of the same file (written here, sharing no code with the engine) at 1, 2 and
//! 4 workers; bad records and rows whose expressions fail are dead letters with their reason,
//! and the run goes on; a bad view file is refused with its file, line and column.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{bin, shipped, snapshots};

/// Order applications (the Quix Streams example's records): `content` is "<product> <quantity>".
const VIEWS: &str = "\
-- the applications whose content parses; the others are dead letters of this view
CREATE VIEW applications AS
  SELECT id, lower(name) AS name, split_part(content, ' ', 1) AS product,
         CAST(split_part(content, ' ', 2) AS int) AS quantity
  FROM inputs
  WHERE subject <> 'spam';

CREATE VIEW applications_per_product AS
  SELECT product, COUNT(*) AS applications, SUM(quantity) AS quantity, MAX(quantity) AS largest
  FROM applications
  GROUP BY product
  HAVING COUNT(*) > 1;

-- products with their category, from a second input
CREATE VIEW product_totals AS
  SELECT a.product, c.category, SUM(a.quantity) AS quantity
  FROM applications a JOIN catalog c ON a.product = c.product
  GROUP BY a.product, c.category;
";

const CONFIG: &str = "\
views = [\"apps.sql\"]
dataflows = [\"applications\", \"applications_per_product\", \"product_totals\"]

[inputs.inputs]
kind = \"file\"
path = \"inputs.jsonl\"
columns = [\"id int\", \"name text\", \"subject text\", \"content text\"]

[inputs.catalog]
kind = \"file\"
path = \"catalog.jsonl\"
columns = [\"product text\", \"category text\"]
";

const PRODUCTS: [&str; 6] = ["widget", "gadget", "gizmo", "doohickey", "sprocket", "flange"];

/// `n` input lines, deterministic; about one in twelve malformed in some way.
fn inputs(n: u64) -> Vec<String> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            // skewed: low products far more often
            let product = PRODUCTS[((r % 36) as f64).sqrt() as usize];
            let quantity = (r >> 8) % 20;
            let subject = if (r >> 16) % 10 == 0 { "spam" } else { "order" };
            match (r >> 24) % 24 {
                0 => format!("{{\"id\": {i}, \"name\": \"N{i}\", \"subject\": \"{subject}\", \"content\": \"{product}\"}}"),
                1 => format!("{{\"id\": {i}, \"name\": \"N{i}\", \"subject\": \"{subject}\", \"content\": \"{product} many\"}}"),
                2 => format!("{{\"id\": \"{i}\", \"name\": \"N{i}\", \"subject\": \"{subject}\", \"content\": \"{product} 1\"}}"),
                3 => "{not json".to_string(),
                _ => format!("{{\"id\": {i}, \"name\": \"N{i}\", \"subject\": \"{subject}\", \"content\": \"{product} {quantity}\"}}"),
            }
        })
        .collect()
}

/// The expected snapshots, recomputed by plain loops over the lines: rows as JSON text, sorted.
fn expected(lines: &[String]) -> BTreeMap<&'static str, Vec<String>> {
    let mut apps: Vec<(i64, String, String, i64)> = Vec::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(id), Some(name), Some(subject), Some(content)) =
            (v["id"].as_i64(), v["name"].as_str(), v["subject"].as_str(), v["content"].as_str())
        else {
            continue;
        };
        if subject == "spam" {
            continue;
        }
        let mut parts = content.split(' ');
        let product = parts.next().unwrap_or("").to_string();
        let Some(Ok(quantity)) = parts.next().map(str::parse::<i64>) else { continue };
        apps.push((id, name.to_lowercase(), product, quantity));
    }
    let mut per: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for (_, _, p, q) in &apps {
        let e = per.entry(p).or_default();
        e.0 += 1;
        e.1 += q;
        e.2 = e.2.max(*q);
    }
    let category = |p: &str| if p.len() > 6 { "long" } else { "short" };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    BTreeMap::from([
        (
            "applications",
            sorted(
                apps.iter().map(|(i, n, p, q)| format!("{{\"id\":{i},\"name\":\"{n}\",\"product\":\"{p}\",\"quantity\":{q}}}")).collect(),
            ),
        ),
        (
            "applications_per_product",
            sorted(
                per.iter()
                    .filter(|(_, (n, _, _))| *n > 1)
                    .map(|(p, (n, q, m))| format!("{{\"product\":\"{p}\",\"applications\":{n},\"quantity\":{q},\"largest\":{m}}}"))
                    .collect(),
            ),
        ),
        (
            "product_totals",
            sorted(
                per.iter()
                    .filter(|(p, _)| **p != "flange")
                    .map(|(p, (_, q, _))| format!("{{\"product\":\"{p}\",\"category\":\"{}\",\"quantity\":{q}}}", category(p)))
                    .collect(),
            ),
        ),
    ])
}

fn setup(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("apps.sql"), VIEWS).unwrap();
    std::fs::write(dir.join("apps.toml"), CONFIG).unwrap();
    std::fs::write(dir.join("inputs.jsonl"), lines.join("\n") + "\n").unwrap();
    // every product but flange has a category
    let catalog: Vec<String> = PRODUCTS[..5]
        .iter()
        .map(|p| format!("{{\"product\": \"{p}\", \"category\": \"{}\"}}", if p.len() > 6 { "long" } else { "short" }))
        .collect();
    std::fs::write(dir.join("catalog.jsonl"), catalog.join("\n") + "\n").unwrap();
}

/// Runs the config (`apps.toml` unless `extra` names another) in `dir`; the sorted snapshots.
fn run(dir: &Path, workers: &str, extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let out = dir.join(format!("out-{workers}"));
    let mut args = vec!["run", "--output-dir", out.to_str().unwrap(), "-w", workers, "-q"];
    if !extra.contains(&"--config") {
        args.extend(["--config", "apps.toml"]);
    }
    args.extend(extra);
    let o = Command::new(bin()).current_dir(dir).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut s = snapshots(&out);
    for rows in s.values_mut() {
        rows.sort();
    }
    s
}

#[test]
fn sql_views_equal_a_plain_recomputation_at_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let lines = inputs(20_000);
    setup(dir.path(), &lines);
    let want = expected(&lines);
    for workers in ["1", "2", "4"] {
        // small batches: many logical times, so every view is updated many times on the way
        let got = run(dir.path(), workers, &["--batch-size", "500"]);
        for (view, rows) in &want {
            assert!(rows.len() > 3, "{view}: a test with rows");
            assert_eq!(&got[*view], rows, "{view} at -w {workers}");
        }
        // every malformed record and every row a view could not compute is a dead letter
        let dead = &got["dead_letters"];
        let reasons = |needle: &str| dead.iter().filter(|d| d.contains(needle)).count();
        let kinds: Vec<u64> = lines
            .iter()
            .map(|l| {
                if l.starts_with("{not") {
                    3
                } else if l.contains("\"id\": \"") {
                    2
                } else {
                    9
                }
            })
            .collect();
        assert_eq!(reasons("invalid_json"), kinds.iter().filter(|k| **k == 3).count(), "-w {workers}");
        assert_eq!(reasons("wrong_type: id is not int"), kinds.iter().filter(|k| **k == 2).count(), "-w {workers}");
        assert!(dead.iter().any(|d| d.contains("\"input\":\"view applications\"") && d.contains("cannot cast 'many' to int")), "{dead:?}");
        assert!(dead.iter().any(|d| d.contains("\"input\":\"view applications\"") && d.contains("cannot cast '' to int")), "{dead:?}");
    }
}

/// Two processes of one worker each (`-n 2`): the views' rows are exchanged between them and the
/// first process writes the same snapshots as one process does.
#[test]
fn sql_views_on_two_processes_equal_the_plain_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let lines = inputs(5_000);
    setup(dir.path(), &lines);
    let got = common::two_processes(dir.path(), &["run", "--config", "apps.toml", "-q", "--batch-size", "500"], true);
    for (view, rows) in expected(&lines) {
        assert_eq!(got[view], rows, "{view} at -n 2");
    }
}

#[test]
fn bad_views_are_refused_with_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &inputs(10));
    let fails = |views: &str, dataflows: &str| {
        std::fs::write(dir.path().join("apps.sql"), views).unwrap();
        std::fs::write(
            dir.path().join("apps.toml"),
            CONFIG.replace("[\"applications\", \"applications_per_product\", \"product_totals\"]", dataflows),
        )
        .unwrap();
        let o = Command::new(bin()).current_dir(dir.path()).args(["run", "--config", "apps.toml", "-q"]).output().unwrap();
        assert!(!o.status.success(), "{views} should be refused");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = fails("CREATE VIEW v AS\n  SELECT id, nope FROM inputs;", "[\"v\"]");
    assert!(e.contains("apps.sql: line 2, column 14: unknown column `nope`"), "{e}");
    let e = fails("CREATE VIEW v AS SELECT id FROM inputs ORDER BY id;", "[\"v\"]");
    assert!(e.contains("apps.sql: line 1") && e.contains("ORDER BY and LIMIT are not supported"), "{e}");
    let e = fails("CREATE VIEW v AS SELECT id + name AS x FROM inputs;", "[\"v\"]");
    assert!(e.contains("type mismatch: int + text"), "{e}");
    let e = fails("CREATE VIEW v AS SELECT id FROM inputs;", "[\"w\"]");
    assert!(e.contains("unknown dataflow `w`") && e.contains("the views are v"), "{e}");
    std::fs::write(dir.path().join("apps.sql"), VIEWS).unwrap();
    std::fs::write(
        dir.path().join("apps.toml"),
        CONFIG.replace("\"product text\", \"category text\"", "\"product text\", \"category txt\""),
    )
    .unwrap();
    let o = Command::new(bin()).current_dir(dir.path()).args(["run", "--config", "apps.toml", "-q"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("inputs.catalog.columns[1]") && e.contains("`txt` is not one of int, float, text, bool, timestamp"), "{e}");
}

#[test]
fn the_shipped_applications_pipeline_runs_and_explains() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .current_dir(root)
        .args(["run", "--config", "configs/applications.sample.toml", "--output-dir", out.path().to_str().unwrap(), "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = snapshots(out.path());
    assert_eq!(
        s["applications_per_product"],
        [r#"{"product":"gadget","applications":2,"quantity":6}"#, r#"{"product":"widget","applications":2,"quantity":7}"#]
    );
    assert_eq!(s["applications"].len(), 4);
    assert!(
        s["dead_letters"].iter().all(|d| d.contains("\"input\":\"view applications\"")) && s["dead_letters"].len() == 2,
        "{:?}",
        s["dead_letters"]
    );
    let o = Command::new(bin())
        .current_dir(root)
        .args(["explain", "--config", "configs/applications.sample.toml", "applications_per_product"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && text.contains("Reduce: pre-aggregate on each worker, exchange by (#3), groups in a hash map; count(*), sum(#4)")
            && !text.contains("view applications ")
            && text.contains("input inputs: a checkpoint keeps every distinct row with its count"),
        "{text}"
    );
}

/// The shipped per-user views run from a config that declares the inputs' columns itself
/// (configs/clicks.toml: ids as int) equal the dataflows run by name (`run user_event_counts
/// user_activity`: the columns config::builtin declares, ids as json) byte for byte, over the
/// generators' users (with profile updates: an upsert input) and clicks, at 1, 2 and 4 workers.
/// (Both are checked against the reference in tests/cli.rs and tests/properties.rs.)
#[test]
fn the_per_user_views_from_a_config_equal_the_dataflows_run_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gen = |kind: &str, count: &str, file: &str| {
        let o = Command::new(bin()).args(["gen", kind, "--count", count, "--users", "2000", "--seed", "4"]).output().unwrap();
        assert!(o.status.success());
        std::fs::write(d.join(file), o.stdout).unwrap();
    };
    gen("users", "3000", "users.jsonl");
    gen("clicks", "30000", "clicks.jsonl");
    // the shipped per-user pipeline (dataflows/clicks.sql, configs/clicks.toml)
    std::fs::write(d.join("sql.toml"), shipped(d, "clicks")).unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let hand = d.join("hand");
    let o = Command::new(bin())
        .current_dir(d)
        .args(["run", "user_event_counts", "user_activity", "--input", "users=users.jsonl", "--input", "clicks=clicks.jsonl"])
        .args(["--output-dir", hand.to_str().unwrap(), "-q", "--batch-size", "1000"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = snapshots(&hand);
    assert!(want["user_activity"].len() > 1000, "a test with rows");
    for workers in ["1", "2", "4"] {
        let got = run(d, workers, &["--config", "sql.toml", "--batch-size", "1000"]);
        for (view, output) in
            [("user_event_counts", "user_event_counts"), ("event_type_counts", "event_type_counts"), ("user_activity", "user_activity")]
        {
            assert_eq!(got[view], sorted(want[output].clone()), "{view} at -w {workers}");
            // keyed alike (the join's rows by `user_id`, which the planner finds unique), so the
            // files are the same bytes in the same order
            let file = |dir: &Path, name: &str| std::fs::read(dir.join(format!("{name}.jsonl"))).unwrap();
            assert!(file(&d.join(format!("out-{workers}")), view) == file(&hand, output), "{view} at -w {workers}: not the same bytes");
        }
    }
    // the upsert key declared as `primary_key` (the issue's spelling) instead of in `columns`
    let config = std::fs::read_to_string(d.join("sql.toml")).unwrap();
    let keyed = config.replace("\"user_id int primary key\"", "\"user_id int\"");
    assert_ne!(keyed, config);
    std::fs::write(d.join("keyed.toml"), keyed.replace("[inputs.users]", "[inputs.users]\nprimary_key = \"user_id\"\nformat = \"json\""))
        .unwrap();
    let got = run(d, "2", &["--config", "keyed.toml", "--batch-size", "1000"]);
    assert_eq!(got["user_activity"], sorted(want["user_activity"].clone()), "with primary_key = \"user_id\"");
    for (add, wanted) in [
        ("primary_key = \"id\"", "keyed.toml: `inputs.users.primary_key`: `id` is not one of the columns (user_id, name, email)"),
        ("format = \"csv\"", "keyed.toml: `inputs.users.format`: `csv` is not read: records are JSON"),
    ] {
        let text = config.replace("[inputs.users]", &format!("[inputs.users]\n{add}"));
        std::fs::write(d.join("keyed.toml"), text).unwrap();
        let o = Command::new(bin()).current_dir(d).args(["run", "--config", "keyed.toml", "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(wanted), "{add}: {err}");
    }
}

/// The shipped sensor views as a config's own file (`dataflows/sensors.sql` with its window
/// written in, `configs/sensors.toml`) over readings that arrive out of order (some late, one
/// dated far in the future) equal the `sensor_metrics` dataflow run by name with that window in
/// `[sensor_metrics]` row for row — window metrics, alerts and dead letters — with tumbling and
/// with sliding windows, at 1, 2 and 4 workers and on two processes.
#[test]
fn the_sensor_views_from_a_config_equal_the_dataflow_run_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = Command::new(bin()).args(["gen", "sensors", "--count", "40000", "--seed", "5"]).output().unwrap();
    assert!(o.status.success());
    // every 37th reading arrives 2 500 readings (about 2.5 s of event time) later: with 1 s of
    // allowed lateness, many are late
    let mut lines: Vec<String> = String::from_utf8(o.stdout).unwrap().lines().map(String::from).collect();
    let mut delayed = Vec::new();
    let mut arrived = Vec::new();
    for (i, l) in lines.drain(..).enumerate() {
        if i % 37 == 5 {
            delayed.push((i + 2500, l));
        } else {
            arrived.push(l);
        }
        while delayed.first().is_some_and(|(at, _)| *at <= i) {
            arrived.push(delayed.remove(0).1);
        }
    }
    arrived.extend(delayed.into_iter().map(|(_, l)| l));
    arrived.insert(20_000, arrived[20_000].replacen("\"timestamp\":\"2026", "\"timestamp\":\"2099", 1));
    std::fs::write(d.join("readings.jsonl"), arrived.join("\n") + "\n").unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let views = std::fs::read_to_string(root.join("dataflows/sensors.sql")).unwrap();
    let config = std::fs::read_to_string(root.join("configs/sensors.toml")).unwrap();
    assert!(views.contains("TUMBLE(sensors, \"timestamp\", INTERVAL '1' MINUTE)") && config.contains("allowed_lateness = \"30s\""));
    let config = config.replace("../dataflows/sensors.sql", "sensors.sql").replace("\"30s\"", "\"1s\"");
    std::fs::write(d.join("sensors.toml"), config).unwrap();
    for (window, hand_window) in [
        ("TUMBLE(sensors, \"timestamp\", INTERVAL '10' SECOND)", "size = \"10s\""),
        ("HOP(sensors, \"timestamp\", INTERVAL '5' SECOND, INTERVAL '10' SECOND)", "window = \"sliding\"\nsize = \"10s\"\nslide = \"5s\""),
    ] {
        std::fs::write(d.join("sensors.sql"), views.replace("TUMBLE(sensors, \"timestamp\", INTERVAL '1' MINUTE)", window)).unwrap();
        std::fs::write(
            d.join("hand.toml"),
            format!("dataflows = [\"sensor_metrics\"]\n[inputs.sensors]\nkind = \"file\"\npath = \"readings.jsonl\"\n[sensor_metrics]\n{hand_window}\nallowed_lateness = \"1s\"\n"),
        )
        .unwrap();
        let want = run(d, "1", &["--config", "hand.toml", "--batch-size", "1000"]);
        let late = want["dead_letters"].iter().filter(|l| l.contains("\"reason\":\"late\"")).count();
        assert!(late > 100 && want["dead_letters"].iter().any(|l| l.contains("\"reason\":\"future")), "{late} late");
        // (a `future` reason names the clock when the run began, which differs between runs)
        let unclocked = |rows: &Vec<String>| -> Vec<String> {
            rows.iter()
                .map(|l| match l.split_once("when the run began (") {
                    Some((a, b)) => format!("{a}{}", &b[b.find(')').unwrap()..]),
                    None => l.clone(),
                })
                .collect()
        };
        let want: BTreeMap<String, Vec<String>> = want.iter().map(|(k, v)| (k.clone(), unclocked(v))).collect();
        let check = |got: &BTreeMap<String, Vec<String>>, layout: &str| {
            let got: BTreeMap<String, Vec<String>> = got.iter().map(|(k, v)| (k.clone(), unclocked(v))).collect();
            for (view, output) in
                [("sensor_window_metrics", "sensor_window_metrics"), ("anomaly_alerts", "anomaly_alerts"), ("dead_letters", "dead_letters")]
            {
                let (g, w) = (&got[view], &want[output]);
                let extra: Vec<&String> = g.iter().filter(|l| !w.contains(l)).take(3).collect();
                let missing: Vec<&String> = w.iter().filter(|l| !g.contains(l)).take(3).collect();
                assert!(g == w, "{view} at {layout}, {window}: {} rows, {} wanted; extra {extra:?}, missing {missing:?}", g.len(), w.len());
            }
        };
        for workers in ["1", "2", "4"] {
            check(&run(d, workers, &["--config", "sensors.toml", "--batch-size", "1000"]), &format!("-w {workers}"));
        }
        let got = common::two_processes(d, &["run", "--config", "sensors.toml", "-q", "--batch-size", "1000"], true);
        check(&got, "-n 2");
    }
}

/// A view without GROUP BY takes the key the config declares (`keys`), which `explain` shows
/// and the sinks use; a key naming no column, or no view, is refused with the file and the fix.
#[test]
fn a_declared_key_keys_a_view_without_group_by() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &inputs(200));
    let write = |keys: &str| std::fs::write(dir.path().join("keyed.toml"), format!("keys = {{ {keys} }}\n{CONFIG}")).unwrap();
    write("applications = [\"id\"]");
    let o = Command::new(bin()).current_dir(dir.path()).args(["explain", "--config", "keyed.toml", "applications"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("keyed by (id);"), "{text}{}", String::from_utf8_lossy(&o.stderr));
    let got = run(dir.path(), "2", &["--config", "keyed.toml"]);
    assert!(got["applications"].len() > 100);
    for (keys, wanted) in [
        (
            "applications = [\"nope\"]",
            "keyed.toml: `keys.applications`: `nope` is not a column of `applications` (id, name, product, quantity)",
        ),
        ("missing = [\"id\"]", "keyed.toml: `keys.missing`: there is no view `missing`; the views are applications"),
    ] {
        write(keys);
        let o = Command::new(bin()).current_dir(dir.path()).args(["run", "--config", "keyed.toml", "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(wanted), "{err}");
    }
}

/// An event time that names no column, or a column that is not a timestamp, is refused with the
/// file, the key and the fix.
#[test]
fn a_bad_event_time_is_refused_with_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sensors.toml")).unwrap();
    for (column, wanted) in [
        ("value", "bad.toml: `inputs.sensors.event_time.column`: `value` is float, not a timestamp: declare it \"value timestamp\""),
        ("nope", "bad.toml: `inputs.sensors.event_time.column`: `nope` is not one of the columns (sensor_id, sensor_type, value, location, timestamp, status)"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), config.replace("column = \"timestamp\"", &format!("column = \"{column}\""))).unwrap();
        let o = Command::new(bin()).current_dir(dir.path()).args(["run", "--config", "bad.toml", "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(wanted), "{err}");
    }
}

/// A `json` column holds any JSON value as it came (a user id that is a number in one record
/// and a string in the next, an object of metadata): grouped and joined by its value, written
/// back into outputs as JSON, its fields read with `->` (json) and `->>` (text). A view that
/// compares one with text, or reads a field of a column that is not json, is refused with the
/// fix.
#[test]
fn json_columns_keep_any_json_value_and_read_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lines = [
        r#"{"user_id": 1, "meta": {"firmware": "1.2", "tags": ["a", "b"]}}"#,
        r#"{"user_id": "u7", "meta": {"firmware": "2.0", "tags": []}}"#,
        r#"{"user_id": 1, "meta": {"tags": null, "firmware": "1.3"}}"#,
        r#"{"user_id": 2.5, "meta": null}"#,
        r#"{"user_id": null, "meta": {"firmware": 3}}"#,
        r#"{"user_id": "u7", "meta": "not an object"}"#,
        r#"{"user_id": [1, {"k": "v"}], "meta": {"firmware": "x"}}"#,
        r#"{"meta": {}}"#,
    ];
    std::fs::write(d.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    let config = |views: &str| {
        std::fs::write(d.join("events.sql"), views).unwrap();
        std::fs::write(
            d.join("events.toml"),
            "views = [\"events.sql\"]\ndataflows = [\"per_user\", \"tagged\"]\n\n[inputs.events]\nkind = \"file\"\npath = \"events.jsonl\"\n\
             columns = [\"user_id json\", \"meta json\"]\n",
        )
        .unwrap();
    };
    config(
        "CREATE VIEW per_user AS
           SELECT user_id, COUNT(*) AS events, MAX(meta ->> 'firmware') AS firmware
           FROM events GROUP BY user_id;
         CREATE VIEW tagged AS
           SELECT user_id, meta -> 'tags' AS tags, (meta -> 'tags') ->> 0 AS first_tag, CAST(user_id AS text) AS id_text
           FROM events WHERE meta -> 'tags' IS NOT NULL;",
    );
    // (the last line lacks user_id: a dead letter)
    for workers in ["1", "2"] {
        let got = run(d, workers, &["--config", "events.toml"]);
        let mut want_per_user = vec![
            r#"{"user_id":1,"events":2,"firmware":"1.3"}"#,
            r#"{"user_id":"u7","events":2,"firmware":"2.0"}"#,
            r#"{"user_id":2.5,"events":1,"firmware":null}"#,
            r#"{"user_id":null,"events":1,"firmware":"3"}"#,
            r#"{"user_id":[1,{"k":"v"}],"events":1,"firmware":"x"}"#,
        ];
        want_per_user.sort();
        assert_eq!(got["per_user"], want_per_user, "-w {workers}");
        let mut want_tagged = vec![
            r#"{"user_id":1,"tags":["a","b"],"first_tag":"a","id_text":"1"}"#,
            r#"{"user_id":"u7","tags":[],"first_tag":null,"id_text":"\"u7\""}"#,
        ];
        want_tagged.sort();
        assert_eq!(got["tagged"], want_tagged, "-w {workers}");
        let dead = &got["dead_letters"];
        assert!(dead.len() == 1 && dead[0].contains("missing_field: user_id") && dead[0].contains("\"line\":8"), "{dead:?}");
    }
    for (views, wanted) in [
        (
            "CREATE VIEW per_user AS SELECT user_id FROM events WHERE meta = 'x';",
            "type mismatch: json = text: read a field of the json value",
        ),
        ("CREATE VIEW per_user AS SELECT user_id FROM events WHERE meta < meta;", "json values are compared with = and <> only"),
        ("CREATE VIEW per_user AS SELECT CAST(user_id AS text) ->> 'a' AS x FROM events;", "->> reads a json value, not text"),
    ] {
        std::fs::write(d.join("events.sql"), views.to_string() + "\nCREATE VIEW tagged AS SELECT user_id FROM events;").unwrap();
        let o = Command::new(bin()).current_dir(d).args(["run", "--config", "events.toml", "-q"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("events.sql: line 1") && err.contains(wanted), "{views}: {err}");
    }
}

/// A float too large for SUM's exact sums is a dead letter of the view named by its line (the
/// engine keeps the positions of such rows only), and the group goes on without it.
#[test]
fn a_float_too_large_to_sum_is_a_dead_letter_named_by_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lines = [r#"{"k": 1, "v": 1.5}"#, r#"{"k": 2, "v": 2.5}"#, r#"{"k": 1, "v": -3e300}"#, r#"{"k": 1, "v": 4}"#];
    std::fs::write(d.join("f.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(d.join("f.sql"), "CREATE VIEW sums AS SELECT k, SUM(v) AS s, COUNT(*) AS n FROM f GROUP BY k;").unwrap();
    std::fs::write(
        d.join("f.toml"),
        "views = [\"f.sql\"]\ndataflows = [\"sums\"]\n[inputs.f]\nkind = \"file\"\npath = \"f.jsonl\"\ncolumns = [\"k int\", \"v float\"]\n",
    )
    .unwrap();
    for workers in ["1", "2"] {
        let got = run(d, workers, &["--config", "f.toml"]);
        assert_eq!(got["sums"], [r#"{"k":1,"s":5.5,"n":2}"#, r#"{"k":2,"s":2.5,"n":1}"#], "-w {workers}");
        let dead = &got["dead_letters"];
        assert!(
            dead.len() == 1
                && dead[0].contains("\"input\":\"view sums\"")
                && dead[0].contains("\"line\":3")
                && dead[0].contains("floats are summed exactly below 1e18"),
            "-w {workers}: {dead:?}"
        );
    }
}
