//! The three dataflows diffstream ships are SQL views: `user_event_counts` and `user_activity`
//! are the views of `dataflows/clicks.sql`, `sensor_metrics` those of `dataflows/sensors.sql`
//! with the window and normal ranges of `[sensor_metrics]`. Naming one (in `dataflows`, or on
//! the command line) runs its views over the inputs `users`, `clicks` and `sensors`, whose
//! columns are declared here when the config does not declare them: there is one path, the
//! compiled views, and these are views like any other.

use super::{Config, ConfigError, EventTimeConfig, Names, WindowKind};

/// The shipped per-user views.
const CLICKS_SQL: &str = include_str!("../../dataflows/clicks.sql");
/// The shipped sensor views, with a one-minute tumbling window and the default ranges.
const SENSORS_SQL: &str = include_str!("../../dataflows/sensors.sql");
/// The window of [`SENSORS_SQL`], replaced by the config's.
const SHIPPED_WINDOW: &str = r#"TUMBLE(sensors, "timestamp", INTERVAL '1' MINUTE)"#;

/// The window and normal ranges of `[sensor_metrics]`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorParams {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// Distance between window starts; equal to `size_ms` for tumbling windows. Divides `size_ms`.
    pub slide_ms: i64,
    /// How far behind the greatest event time a reading may be and still count.
    pub allowed_lateness_ms: i64,
    /// Inclusive normal range per sensor type; types not listed only alert when flagged.
    pub normal_ranges: Vec<(String, f64, f64)>,
    /// How far ahead of the clock a reading's event time may be.
    pub max_future_ms: i64,
}

impl Default for SensorParams {
    fn default() -> Self {
        SensorParams {
            size_ms: 60_000,
            slide_ms: 60_000,
            allowed_lateness_ms: 30_000,
            normal_ranges: default_normal_ranges(),
            max_future_ms: 3_600_000,
        }
    }
}

/// The normal ranges the IoT producers use (those the sensor generator draws around).
pub fn default_normal_ranges() -> Vec<(String, f64, f64)> {
    crate::sources::generator::SENSOR_TYPES.iter().map(|(t, lo, hi)| (t.to_string(), *lo, *hi)).collect()
}

/// The dataflows' names.
pub const DATAFLOWS: [&str; 3] = ["user_event_counts", "user_activity", "sensor_metrics"];

/// The outputs (views) a dataflow writes.
pub fn outputs(dataflow: &str) -> &'static [&'static str] {
    match dataflow {
        "user_event_counts" => &["user_event_counts", "event_type_counts"],
        "user_activity" => &["user_activity"],
        "sensor_metrics" => &["sensor_window_metrics", "anomaly_alerts"],
        _ => &[],
    }
}

/// The inputs a dataflow reads.
pub fn inputs(dataflow: &str) -> &'static [&'static str] {
    match dataflow {
        "user_event_counts" => &["clicks"],
        "user_activity" => &["users", "clicks"],
        "sensor_metrics" => &["sensors"],
        _ => &[],
    }
}

/// A shipped input's columns, its required fields (no view reads them: checked, not kept) and
/// its primary key, as a config declares them.
type Declared = (&'static [&'static str], &'static [&'static str], Option<&'static str>);

fn declared(input: &str) -> Option<Declared> {
    // (a user id is a number or a string, as the producers write it: json holds either, a
    // number as an int)
    match input {
        "users" => Some((&["user_id json not null", "email text", "name text"], &["event_timestamp timestamp"], Some("user_id"))),
        "clicks" => Some((&["user_id json not null", "event text"], &["event_timestamp timestamp", "page text"], None)),
        "sensors" => {
            Some((&["sensor_id text", "sensor_type text", "value float", "location text", "timestamp timestamp", "status text"], &[], None))
        }
        _ => None,
    }
}

/// Whether `input` is one whose columns this module declares.
pub fn declares(input: &str) -> bool {
    declared(input).is_some()
}

/// What [`expand`] made of a selection: the SQL texts to compile before the config's own views
/// (each with the name its errors give) and the outputs the selection names.
pub struct Expanded {
    /// `(name, text)` of the shipped views the selection runs
    pub sql: Vec<(String, String)>,
    /// the selection with each dataflow replaced by its views
    pub outputs: Vec<String>,
}

/// Expands the dataflows among `names` that no view of the config defines (`defined`) into
/// their views, and declares the columns of the inputs `users`, `clicks` and `sensors` that
/// the config does not (`sensors` with its event time from `[sensor_metrics]`).
pub fn expand(config: &mut Config, names: &[String], defined: &[String], file: &str) -> Result<Expanded, ConfigError> {
    let mut outputs = Vec::new();
    let mut dataflows = Vec::new();
    for name in names {
        if DATAFLOWS.contains(&name.as_str()) && !defined.contains(name) {
            dataflows.push(name.as_str());
            outputs.extend(self::outputs(name).iter().map(|o| o.to_string()));
        } else {
            outputs.push(name.clone());
        }
    }
    outputs.dedup();
    let params = config.sensor_params(file)?;
    for (name, input) in config.inputs.iter_mut().filter(|(_, i)| i.columns().is_empty()) {
        let Some((cols, required, key)) = declared(name) else { continue };
        let event_time = (name == "sensors").then(|| EventTimeConfig {
            column: "timestamp".into(),
            allowed_lateness: config.sensor_metrics.allowed_lateness,
            max_future: config.sensor_metrics.max_future,
        });
        let strings = |list: &[&str]| list.iter().map(|c| c.to_string()).collect();
        input.declare(strings(cols), strings(required), event_time, key.map(|k| Names::One(k.into())));
    }
    let mut sql = Vec::new();
    let per_user: Vec<&str> = match (dataflows.contains(&"user_event_counts"), dataflows.contains(&"user_activity")) {
        (_, true) => vec!["user_event_counts", "event_type_counts", "user_activity"],
        (true, false) => vec!["user_event_counts", "event_type_counts"],
        (false, false) => vec![],
    };
    if !per_user.is_empty() {
        let text: String = statements(CLICKS_SQL).into_iter().filter(|(name, _)| per_user.contains(name)).map(|(_, s)| s).collect();
        sql.push(("dataflows/clicks.sql (embedded)".to_string(), text));
    }
    if dataflows.contains(&"sensor_metrics") {
        sql.push((format!("dataflows/sensors.sql with {file}'s [sensor_metrics]"), sensors_sql(&config.sensor_metrics.window, &params)));
        config
            .keys
            .entry("sensor_window_metrics".into())
            .or_insert_with(|| vec!["sensor_type".into(), "location".into(), "window_start".into()]);
    }
    Ok(Expanded { sql, outputs })
}

/// The `CREATE VIEW` statements of a shipped text with their names, each with the comments
/// before it (a statement ends with the line that ends in `;`, comments aside).
fn statements(text: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut statement = String::new();
    for line in text.lines() {
        statement.push_str(line);
        statement.push('\n');
        if !line.trim_start().starts_with("--") && line.trim_end().ends_with(';') {
            let at = statement.find("CREATE VIEW ").map(|i| i + "CREATE VIEW ".len());
            let name = at.and_then(|i| statement[i..].split_whitespace().next());
            if let Some(name) = name.and_then(|n| text.find(n).map(|i| &text[i..i + n.len()])) {
                out.push((name, std::mem::take(&mut statement)));
            }
        }
    }
    out
}

/// `dataflows/sensors.sql` with the window and the normal ranges of `params`.
fn sensors_sql(kind: &WindowKind, params: &SensorParams) -> String {
    let window = match kind {
        WindowKind::Tumbling => format!(r#"TUMBLE(sensors, "timestamp", INTERVAL '{} milliseconds')"#, params.size_ms),
        WindowKind::Sliding => {
            format!(r#"HOP(sensors, "timestamp", INTERVAL '{} milliseconds', INTERVAL '{} milliseconds')"#, params.slide_ms, params.size_ms)
        }
    };
    let ranges: Vec<String> =
        params.normal_ranges.iter().map(|(t, min, max)| format!("    ('{}', {min:?}, {max:?})", t.replace('\'', "''"))).collect();
    let start = SENSORS_SQL.find("(VALUES\n").expect("the shipped ranges") + "(VALUES\n".len();
    let end = start + SENSORS_SQL[start..].find("\n  ) AS r").expect("the shipped ranges' end");
    let text = format!("{}{}{}", &SENSORS_SQL[..start], ranges.join(",\n"), &SENSORS_SQL[end..]);
    assert!(text.contains(SHIPPED_WINDOW), "dataflows/sensors.sql has its window");
    text.replace(SHIPPED_WINDOW, &window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_texts_give_each_dataflow_its_views() {
        let names: Vec<&str> = statements(CLICKS_SQL).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["user_event_counts", "event_type_counts", "user_activity"]);
        let params =
            SensorParams { size_ms: 20_000, slide_ms: 10_000, normal_ranges: vec![("it's".into(), 0.5, 2.0)], ..Default::default() };
        let text = sensors_sql(&WindowKind::Sliding, &params);
        assert!(text.contains(r#"HOP(sensors, "timestamp", INTERVAL '10000 milliseconds', INTERVAL '20000 milliseconds')"#), "{text}");
        assert!(text.contains("(VALUES\n    ('it''s', 0.5, 2.0)\n  ) AS r"), "{text}");
        assert_eq!(dataflows::sql::view_names(&text), ["normal_ranges", "sensor_window_metrics", "anomaly_alerts"]);
    }
}
