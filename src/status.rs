//! What a run shows while it goes, as an observer the commands attach to the runtime
//! ([`crate::runtime::Observer`]): a status line on stderr (records in per input and their rate,
//! the watermark, dead letters, the logical time, the sinks' health), or the demo's live view.
//! On a terminal the status line rewrites itself; otherwise a line is printed every ten
//! intervals, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dataflows::InputName;

use dataflows::Output;

use crate::codec::format_time;
use crate::runtime::{Display, Observer, Plan, Tick};

/// Refreshes the display of the first worker.
pub struct Monitor {
    display: Display,
    interval: Duration,
    tty: bool,
    start: Instant,
    last: Instant,
    last_counts: Vec<u64>,
    ticks: u64,
    inputs: Vec<InputName>,
    live: crate::demo::LiveView,
    kafka: bool,
    mongo: bool,
}

impl Monitor {
    /// A monitor for `plan`, whose run starts now (the live view names `dashboard`).
    pub fn new(plan: &Plan, dashboard: Option<String>) -> Self {
        let start = Instant::now();
        Monitor {
            display: plan.display,
            interval: plan.display_interval,
            tty: std::io::stderr().is_terminal(),
            start,
            last: start,
            last_counts: vec![0; dataflows::InputName::MAX],
            ticks: 0,
            inputs: plan.inputs.keys().copied().filter(|i| plan.needs(*i)).collect(),
            live: crate::demo::LiveView::new(plan, dashboard),
            kafka: plan.kafka_output.is_some(),
            mongo: plan.mongodb_output.is_some(),
        }
    }
}

impl Observer for Monitor {
    /// Draws when the interval has passed, and always at the end.
    fn tick(&mut self, t: &Tick<'_>) {
        let Tick { rows: sink, counters, input_watermarks, time: epoch, done } = *t;
        // (the least of the event-time inputs' watermarks)
        let watermark = input_watermarks.iter().filter_map(|(_, w)| w.get()).min();
        let now = Instant::now();
        if !done && now.duration_since(self.last) < self.interval {
            return;
        }
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-9);
        let counts = counters.snapshot();
        let mut parts = Vec::new();
        for &i in &self.inputs {
            let n = counts[i.index()];
            let rate = (n - self.last_counts[i.index()]) as f64 / secs;
            parts.push(format!("{i} {} ({}/s)", thousands(n), thousands(rate as u64)));
        }
        let wm = watermark.map_or("-".to_string(), format_time);
        let line = format!(
            "{} | watermark {wm} | dead letters {} | decode errors {} | time {epoch} | {:.0}s",
            parts.join(", "),
            thousands(counters.tally.rows(Output::DeadLetters).max(0) as u64),
            thousands(counters.decode_errors.load(Ordering::Relaxed)),
            now.duration_since(self.start).as_secs_f64(),
        );
        let mut line = line;
        for (on, health) in [(self.kafka, &counters.kafka), (self.mongo, &counters.mongo)] {
            if on {
                line = format!("{line} | {}", health.line());
            }
        }
        self.last = now;
        self.last_counts = counts;
        self.ticks += 1;
        match self.display {
            Display::Quiet => {}
            Display::Live if self.tty && sink.is_some() => self.live.draw(sink.expect("checked"), &line, done),
            Display::Status | Display::Live => {
                let mut err = std::io::stderr().lock();
                if self.tty {
                    let _ = write!(err, "\r\x1b[K{line}");
                    if done {
                        let _ = writeln!(err);
                    }
                } else if done || self.ticks % 10 == 1 {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
