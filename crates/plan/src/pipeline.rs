//! Pipeline-parallel bubble: the share of time stages sit idle in a GPipe/1F1B
//! schedule of `m` micro-batches over `n` stages.

use crate::error::{PlanError, Result};
use serde::Serialize;

/// Bubble of a pipeline schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Bubble {
    pub stages: u64,
    pub micro_batches: u64,
    /// Idle fraction `1 - m / (m + n - 1)`.
    pub idle_fraction: f64,
}

/// Idle fraction of `stages` pipeline stages fed `micro_batches` micro-batches.
///
/// ```
/// let b = hangar_plan::pipeline::bubble(4, 8).unwrap();
/// assert!((b.idle_fraction - 3.0 / 11.0).abs() < 1e-12);
/// ```
pub fn bubble(stages: u64, micro_batches: u64) -> Result<Bubble> {
    if stages == 0 || micro_batches == 0 {
        return Err(PlanError::Invalid(
            "--pipeline-stages and --micro-batches must both be at least 1".into(),
        ));
    }
    let (n, m) = (stages as f64, micro_batches as f64);
    Ok(Bubble {
        stages,
        micro_batches,
        idle_fraction: 1.0 - m / (m + n - 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bubble_matches_the_gpipe_formula() {
        assert_eq!(bubble(1, 1).unwrap().idle_fraction, 0.0);
        assert_eq!(bubble(4, 1).unwrap().idle_fraction, 0.75);
        assert!((bubble(8, 32).unwrap().idle_fraction - 7.0 / 39.0).abs() < 1e-12);
        assert!(bubble(0, 4).is_err());
    }
}
