//! diffstream's dataflows: the record types and the pure differential logic, no I/O.
//!
//! Every dataflow is one module with one entry point; this file is the registry that names
//! them, says which inputs each reads and which outputs it writes, and builds a selection of
//! them over shared inputs ([`build`]). The engine binds inputs and outputs to files, topics
//! and collections; nothing here knows about those.
//!
//! Logical time is a batch number ([`Time`]); every collection has `isize` diffs.

pub mod checkpoint;
pub mod ops;
pub mod output;
pub mod records;
pub mod sensor_metrics;
pub mod sql;
pub mod state;
pub mod user_activity;
pub mod user_event_counts;
pub mod watermark;

use std::fmt;
use std::str::FromStr;

use differential_dataflow::VecCollection;

pub use output::{Output, Row};
use records::{AnomalyAlert, Click, DeadLetter, EventTypeCount, Raw, Reading, User, UserActivity, UserEventCount, WindowMetric};
pub use sensor_metrics::{SensorParams, Watermark};

/// Logical time: the number of the batch a record was read in.
pub type Time = u64;

/// A collection at logical time [`Time`] with `isize` diffs.
pub type Coll<'s, D> = VecCollection<'s, Time, D, isize>;

/// The dataflows diffstream can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dataflow {
    /// clicks per user and per event kind
    UserEventCounts,
    /// users ⋈ click counts
    UserActivity,
    /// windowed sensor metrics and anomaly alerts
    SensorMetrics,
}

/// The logical inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputName {
    /// user profiles
    Users,
    /// the clickstream
    Clicks,
    /// sensor readings
    Sensors,
    /// an input of SQL views, by its number in [`sql::registry`]
    Table(u8),
}

impl InputName {
    /// The built-in inputs.
    pub const ALL: [InputName; 3] = [InputName::Users, InputName::Clicks, InputName::Sensors];
    /// How many inputs a run may have (built-in and SQL), for counters indexed by [`InputName::index`].
    pub const MAX: usize = InputName::ALL.len() + sql::registry::MAX;
    /// The input's name in configs and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            InputName::Users => "users",
            InputName::Clicks => "clicks",
            InputName::Sensors => "sensors",
            InputName::Table(i) => sql::registry::table_name(i),
        }
    }
    /// A dense index: the built-ins first, then the tables.
    pub fn index(self) -> usize {
        match self {
            InputName::Users => 0,
            InputName::Clicks => 1,
            InputName::Sensors => 2,
            InputName::Table(i) => 3 + i as usize,
        }
    }
    /// The input of [`InputName::index`] `i`, if there is one.
    pub fn from_index(i: usize) -> Option<InputName> {
        match i {
            0..=2 => Some(InputName::ALL[i]),
            _ => (i - 3 < sql::registry::MAX && sql::registry::table_name((i - 3) as u8) != "?").then(|| InputName::Table((i - 3) as u8)),
        }
    }
}

impl FromStr for InputName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        sql::registry::find_table(s)
            .map(InputName::Table)
            .or_else(|| InputName::ALL.into_iter().find(|i| i.as_str() == s))
            .ok_or_else(|| format!("unknown input `{s}`; the inputs are users, clicks, sensors, and those given `columns` for SQL views"))
    }
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Dataflow {
    /// All dataflows, in the order they are documented.
    pub const ALL: [Dataflow; 3] = [Dataflow::UserEventCounts, Dataflow::UserActivity, Dataflow::SensorMetrics];

    /// The dataflow's name on the command line and in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dataflow::UserEventCounts => "user_event_counts",
            Dataflow::UserActivity => "user_activity",
            Dataflow::SensorMetrics => "sensor_metrics",
        }
    }

    /// The inputs it reads.
    pub fn inputs(self) -> &'static [InputName] {
        match self {
            Dataflow::UserEventCounts => &[InputName::Clicks],
            Dataflow::UserActivity => &[InputName::Users, InputName::Clicks],
            Dataflow::SensorMetrics => &[InputName::Sensors],
        }
    }

    /// The outputs it writes.
    pub fn outputs(self) -> &'static [Output] {
        match self {
            Dataflow::UserEventCounts => &[Output::UserEventCounts, Output::EventTypeCounts],
            Dataflow::UserActivity => &[Output::UserActivity],
            Dataflow::SensorMetrics => &[Output::SensorWindowMetrics, Output::AnomalyAlerts],
        }
    }
}

impl FromStr for Dataflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dataflow::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown dataflow `{s}`; the dataflows are user_event_counts, user_activity, sensor_metrics"))
    }
}

impl fmt::Display for Dataflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of all dataflows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// for `sensor_metrics`
    pub sensors: SensorParams,
    /// keep what a checkpoint needs at the multiples of this many logical times
    pub checkpoint_every: Option<Time>,
    /// the outputs that give their current rows at the end ([`Outputs::current`]) are only
    /// counted as they change: where an operator can, it makes no rows for them
    /// ([`Outputs::counted`])
    pub counted_only: bool,
}

/// The input collections; those no selected dataflow reads may be `None`.
#[derive(Default)]
pub struct Inputs<'s> {
    /// user profile versions
    pub users: Option<Coll<'s, User>>,
    /// clicks
    pub clicks: Option<Coll<'s, Click>>,
    /// readings with their raw bytes (kept for late ones' dead letters)
    pub sensors: Option<Coll<'s, (Reading, Raw)>>,
    /// the sensor dataflow's state from a checkpoint
    pub restored_sensors: Option<sensor_metrics::Restored<'s>>,
}

/// The output collections of the selected dataflows.
#[derive(Default)]
pub struct Outputs<'s> {
    /// `user_event_counts`
    pub user_event_counts: Option<Coll<'s, UserEventCount>>,
    /// `event_type_counts`
    pub event_type_counts: Option<Coll<'s, EventTypeCount>>,
    /// `user_activity`
    pub user_activity: Option<Coll<'s, UserActivity>>,
    /// `sensor_window_metrics`
    pub sensor_window_metrics: Option<Coll<'s, WindowMetric>>,
    /// `anomaly_alerts`
    pub anomaly_alerts: Option<Coll<'s, AnomalyAlert>>,
    /// records the dataflows rejected (late readings)
    pub dead_letters: Option<Coll<'s, DeadLetter>>,
    /// the sensor watermark, when `sensor_metrics` runs
    pub watermark: Option<Watermark>,
    /// with checkpoints, when `sensor_metrics` runs: its state at each checkpoint time
    pub open_readings: Option<sensor_metrics::OpenReadingsLog>,
    /// the outputs whose current rows their operators can give when the run is over
    pub current: Vec<(Output, output::CurrentRows)>,
    /// with [`Params::counted_only`]: outputs whose changes come without rows, to be counted
    /// (their field above is `None`)
    pub counted: Vec<(Output, Coll<'s, ()>)>,
}

/// Builds the selected dataflows over shared inputs. Each input is read once, and the click
/// counts per user are computed once when both click dataflows run, in the same pass as
/// the counts per event kind.
///
/// # Panics
/// When a selected dataflow's input is missing; the engine checks this before building.
pub fn build<'s>(selected: &[Dataflow], inputs: Inputs<'s>, params: &Params) -> Outputs<'s> {
    let mut out = Outputs::default();
    let has = |d| selected.contains(&d);
    let input = |name: InputName| format!("dataflow input `{name}` is not bound");
    let counts = (has(Dataflow::UserEventCounts) || has(Dataflow::UserActivity))
        .then(|| user_event_counts::click_counts(inputs.clicks.clone().expect(&input(InputName::Clicks))));
    let per_user = counts.clone().map(|(c, _)| user_event_counts::per_user(c));
    if has(Dataflow::UserEventCounts) {
        let (counts, current) = counts.expect("built above");
        out.user_event_counts = Some(user_event_counts::user_event_counts(per_user.clone().expect("built above")));
        out.event_type_counts = Some(user_event_counts::event_type_counts(counts));
        out.current.push((Output::UserEventCounts, user_event_counts::current_user_event_counts(current.clone())));
        out.current.push((Output::EventTypeCounts, user_event_counts::current_event_type_counts(current)));
    }
    if has(Dataflow::UserActivity) {
        let users = inputs.users.clone().expect(&input(InputName::Users));
        let per_user = per_user.expect("built above");
        let current = if params.counted_only {
            let (changes, current) = user_activity::user_activity_counted(users, per_user);
            out.counted.push((Output::UserActivity, changes));
            current
        } else {
            let (rows, current) = user_activity::user_activity(users, per_user);
            out.user_activity = Some(rows);
            current
        };
        out.current.push((Output::UserActivity, current));
    }
    if has(Dataflow::SensorMetrics) {
        let sensors = inputs.sensors.expect(&input(InputName::Sensors));
        let s = sensor_metrics::sensor_metrics(sensors, inputs.restored_sensors, &params.sensors, params.checkpoint_every);
        out.sensor_window_metrics = Some(s.window_metrics);
        out.anomaly_alerts = Some(s.alerts);
        out.dead_letters = Some(s.late);
        out.watermark = Some(s.watermark);
        out.open_readings = s.open_readings;
    }
    out
}
