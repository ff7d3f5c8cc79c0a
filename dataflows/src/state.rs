//! How much each stateful operator keeps between logical times, for the metrics: every
//! instance (one per worker) sets its own gauge after it changes its state; [`sizes`] adds them
//! up per (dataflow or view, operator) over the process's live operators.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

type Gauges = Vec<(String, &'static str, Weak<AtomicI64>)>;

static GAUGES: Mutex<Gauges> = Mutex::new(Vec::new());

/// One operator instance's count of what it keeps.
#[derive(Debug)]
pub struct StateSize(Arc<AtomicI64>);

impl StateSize {
    /// The gauge of an instance of `operator` in `dataflow` (a view's
    /// name). It leaves the sums when dropped, with its operator.
    pub fn new(dataflow: &str, operator: &'static str) -> StateSize {
        let gauge = Arc::new(AtomicI64::new(0));
        let mut all = GAUGES.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, _, g)| g.strong_count() > 0);
        all.push((dataflow.to_string(), operator, Arc::downgrade(&gauge)));
        StateSize(gauge)
    }

    /// It now keeps `n` records (keys, rows or windows).
    pub fn set(&self, n: usize) {
        self.0.store(n as i64, Ordering::Relaxed);
    }
}

/// Records kept per (dataflow, operator), summed over this process's workers.
pub fn sizes() -> BTreeMap<(String, &'static str), i64> {
    let mut out = BTreeMap::new();
    for (dataflow, operator, g) in GAUGES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if let Some(g) = g.upgrade() {
            *out.entry((dataflow.clone(), *operator)).or_insert(0) += g.load(Ordering::Relaxed);
        }
    }
    out
}
