//! An order-independent exact sum of floats: SUM and AVG of floats give the same result
//! whatever the order (and the workers) their rows came in.

use serde::{Deserialize, Serialize};

/// A sum of `f64`s that does not depend on the order of its terms: each term is rounded to a
/// multiple of 2⁻⁶⁴ (a no-op for every value of magnitude 2⁻¹¹ or more, so for any sensor
/// reading) and added as a 128-bit integer, which is associative where float addition is not.
/// Terms beyond ±2⁶² saturate: a SUM or AVG refuses a float beyond
/// [`super::reduce::FLOAT_SUM_LIMIT`] (the row is a dead letter of its view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactSum(i128);

impl ExactSum {
    const SCALE: f64 = 18_446_744_073_709_551_616.0; // 2^64

    /// Adds a term.
    pub fn add(&mut self, v: f64) {
        self.0 = self.0.saturating_add((v * Self::SCALE).round() as i128);
    }

    /// Adds `n` times the term `v` (`n` may be negative: a retraction).
    pub fn add_times(&mut self, v: f64, n: i64) {
        self.0 = self.0.saturating_add((v * Self::SCALE).round() as i128 * n as i128);
    }

    /// Adds another sum's terms.
    pub fn merge(&mut self, other: ExactSum) {
        self.0 = self.0.saturating_add(other.0);
    }

    /// The sum, rounded once to the nearest `f64`.
    pub fn value(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::ExactSum;

    #[test]
    fn exact_sum_ignores_order() {
        let values = [0.1, 1e6 + 0.37, -3.3, 22.45, 1e-3, 7.77, 1020.01];
        let sum = |vs: &mut dyn Iterator<Item = &f64>| {
            let mut s = ExactSum::default();
            vs.for_each(|v| s.add(*v));
            s.value()
        };
        let forward = sum(&mut values.iter());
        assert_eq!(forward, sum(&mut values.iter().rev()));
        let naive: f64 = values.iter().sum();
        assert!((forward - naive).abs() < 1e-9);
    }
}
