//! The demo's live terminal view: the top rows of every output as they change, redrawn in
//! place. Rows are read from the first worker's snapshot.

use std::fmt::Write as _;
use std::io::Write;

use serde_json::Value;

use crate::runtime::Plan;
use crate::sinks::jsonl::JsonlSink;
use dataflows::Output;

/// How each output is shown: sort field (descending) and columns.
const VIEWS: [(&str, &str, &[&str], usize); 6] = [
    ("user_event_counts", "event_count", &["user_id", "event_count"], 5),
    ("event_type_counts", "count", &["event", "count"], 5),
    ("user_activity", "event_count", &["user_id", "name", "email", "event_count"], 5),
    (
        "sensor_window_metrics",
        "window_start",
        &["sensor_type", "location", "window_start", "count", "avg", "min", "max", "anomaly_count"],
        6,
    ),
    ("anomaly_alerts", "timestamp", &["sensor_id", "sensor_type", "value", "timestamp", "alert_type"], 5),
    ("dead_letters", "reason", &["input", "position", "reason"], 3),
];

/// Draws the live view.
pub struct LiveView {
    outputs: Vec<Output>,
    /// what is shown, in order: output, sort column (descending), columns, rows — the
    /// built-in outputs, then the SQL views written, then the dead letters
    shown: Vec<(String, String, Vec<String>, usize)>,
    out_dir: String,
    dashboard: Option<String>,
}

impl LiveView {
    /// A view of `plan`'s outputs, naming the dashboard's address when one is served.
    pub fn new(plan: &Plan, dashboard: Option<String>) -> Self {
        let owned =
            |(n, s, c, t): &(&str, &str, &[&str], usize)| (n.to_string(), s.to_string(), c.iter().map(|c| c.to_string()).collect(), *t);
        let (dead, builtin): (Vec<_>, Vec<_>) = VIEWS.iter().map(owned).partition(|(n, ..)| n == "dead_letters");
        let mut shown = builtin;
        for s in plan.sql.iter() {
            for v in s.views.iter().filter(|v| s.outputs.iter().any(|o| o.as_str() == v.name)) {
                shown.push((v.name.clone(), sort_column(v), v.columns.iter().take(8).map(|c| c.name.clone()).collect(), 5));
            }
        }
        shown.extend(dead);
        LiveView { outputs: plan.outputs(), shown, out_dir: crate::commands::describe_dir(plan.output_dir.as_deref()), dashboard }
    }

    /// Redraws the screen.
    pub fn draw(&self, sink: &JsonlSink, status: &str, done: bool) {
        let mut screen = String::from("\x1b[H\x1b[2J");
        let _ = writeln!(screen, "diffstream demo — exact, incremental outputs (Ctrl-C stops; files in {})", self.out_dir);
        if let Some(d) = &self.dashboard {
            let _ = writeln!(screen, "dashboard: {d}");
        }
        let _ = writeln!(screen, "{status}\n");
        for (name, sort, cols, top) in &self.shown {
            let Ok(o) = name.parse::<Output>() else { continue };
            if !self.outputs.contains(&o) {
                continue;
            }
            let mut rows: Vec<Value> = sink.rows(o).into_iter().filter_map(|(_, r, _)| serde_json::from_str(&r).ok()).collect();
            rows.sort_by(|a, b| cmp_desc(&a[sort.as_str()], &b[sort.as_str()]));
            let _ = writeln!(screen, "\x1b[1m{name}\x1b[0m ({} rows)", rows.len());
            let mut table: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_string()).collect()];
            table.extend(rows.iter().take(*top).map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect()));
            let widths: Vec<usize> = (0..cols.len()).map(|i| table.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
            for (n, row) in table.iter().enumerate() {
                let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                let mut line = format!("  {}", cells.join("  "));
                line.truncate(line.char_indices().nth(126).map_or(line.len(), |(i, _)| i));
                let line = line.trim_end();
                if n == 0 {
                    let _ = writeln!(screen, "\x1b[2m{line}\x1b[0m");
                } else {
                    let _ = writeln!(screen, "{line}");
                }
            }
            screen.push('\n');
        }
        if done {
            screen.push_str("finished; writing snapshots\n");
        }
        let mut out = std::io::stderr().lock();
        let _ = out.write_all(screen.as_bytes());
        let _ = out.flush();
    }
}

/// What a SQL view's live rows are sorted by, descending: the latest window first; else its
/// first number that is not part of its key (a count, a total); else its first column.
fn sort_column(v: &dataflows::sql::View) -> String {
    use dataflows::sql::Type;
    let numeric = |i: &usize| matches!(v.columns[*i].ty, Type::Int | Type::Float) && !v.key.contains(i);
    v.columns
        .iter()
        .find(|c| c.name == "window_start")
        .or_else(|| (0..v.columns.len()).find(numeric).map(|i| &v.columns[i]))
        .or(v.columns.first())
        .map_or_else(String::new, |c| c.name.clone())
}

fn cmp_desc(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => y.as_f64().unwrap_or(0.0).total_cmp(&x.as_f64().unwrap_or(0.0)),
        _ => b.to_string().cmp(&a.to_string()),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
