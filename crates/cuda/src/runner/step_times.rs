//! `HANGAR_CUDA_STEP_TIMES=1`: where the wall time of graphed steps (decode) goes,
//! printed when the runner is dropped. Run 48's ablations left 0.68 ms of a 3.0 ms
//! 8B token when every GEMV was dropped. This splits a step's wall time into the
//! engine's time between steps, the host's preparation and uploads, recording the
//! launches, the graph launch call, the graph on the GPU (events around it) and the
//! work after it (the greedy pick, the copies back). `=2` also runs each graph a
//! second time, queued behind the first: its GPU time has no wait for the host's
//! launch call in it, so the difference is what the launch call costs the GPU.

use std::time::Instant;

#[derive(Default)]
pub(super) struct StepTimes {
    steps: usize,
    /// Microseconds summed: between steps, prepare, record, launch call, after.
    host: [f64; 5],
    /// Milliseconds of the graph on the GPU, summed.
    gpu_ms: f64,
    /// `HANGAR_CUDA_STEP_TIMES=2`: each graph runs again, queued behind itself.
    pub twice: bool,
    /// Milliseconds of those second runs, summed.
    queued_ms: f64,
    last_end: Option<Instant>,
}

/// The instants of one step, in order.
pub(super) struct StepMarks {
    pub entry: Instant,
    pub prepared: Instant,
    pub recorded: Instant,
    pub launched: Instant,
    pub end: Instant,
}

impl StepTimes {
    pub fn from_env() -> Option<Self> {
        match std::env::var("HANGAR_CUDA_STEP_TIMES").as_deref() {
            Ok("1") => Some(Self::default()),
            Ok("2") => Some(Self {
                twice: true,
                ..Self::default()
            }),
            _ => None,
        }
    }

    pub fn add(&mut self, m: &StepMarks, gpu_ms: f64, queued_ms: Option<f64>) {
        let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e6;
        // The first step has no step before it: its gap is not counted.
        let between = self.last_end.map_or(0.0, |e| us(e, m.entry));
        let parts = [
            between,
            us(m.entry, m.prepared),
            us(m.prepared, m.recorded),
            us(m.recorded, m.launched),
            us(m.launched, m.end),
        ];
        for (h, p) in self.host.iter_mut().zip(parts) {
            *h += p;
        }
        self.gpu_ms += gpu_ms;
        self.queued_ms += queued_ms.unwrap_or(0.0);
        self.steps += 1;
        self.last_end = Some(m.end);
    }

    /// The mean of each part, in microseconds.
    pub fn report(&self) -> Option<String> {
        let n = self.steps.max(1) as f64;
        let gaps = self.steps.saturating_sub(1).max(1) as f64;
        (self.steps > 0).then(|| {
            let h = &self.host;
            format!(
                "HANGAR_CUDA_STEP_TIMES: {} graphed steps, mean us: between steps {:.1} | \
                 prepare + uploads {:.1} | record {:.1} | graph launch call {:.1} | \
                 launch to done (until the sync) {:.1}, of which the graph on the GPU {:.1}",
                self.steps,
                h[0] / gaps,
                h[1] / n,
                h[2] / n,
                h[3] / n,
                h[4] / n,
                1000.0 * self.gpu_ms / n
            ) + &if self.twice {
                format!(
                    " | the graph again, queued behind itself {:.1}",
                    1000.0 * self.queued_ms / n
                )
            } else {
                String::new()
            }
        })
    }
}

impl Drop for StepTimes {
    fn drop(&mut self) {
        if let Some(r) = self.report() {
            eprintln!("{r}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn splits_a_step_into_its_parts_and_skips_the_first_gap() {
        let mut t = StepTimes::default();
        let at = |base: Instant, us: u64| base + Duration::from_micros(us);
        let b = Instant::now();
        let marks = |s: u64| StepMarks {
            entry: at(b, s),
            prepared: at(b, s + 10),
            recorded: at(b, s + 40),
            launched: at(b, s + 45),
            end: at(b, s + 3045),
        };
        t.add(&marks(0), 2.9, None);
        t.add(&marks(3145), 2.9, None);
        let r = t.report().expect("two steps");
        assert!(r.contains("2 graphed steps"), "{r}");
        assert!(r.contains("between steps 100.0"), "{r}");
        assert!(r.contains("prepare + uploads 10.0"), "{r}");
        assert!(r.contains("record 30.0"), "{r}");
        assert!(r.contains("graph launch call 5.0"), "{r}");
        assert!(r.contains("until the sync) 3000.0"), "{r}");
        assert!(r.contains("graph on the GPU 2900.0"), "{r}");
        assert!(!r.contains("queued"), "{r}");
        t.twice = true;
        t.add(&marks(6290), 2.9, Some(2.6));
        let r = t.report().expect("three steps");
        assert!(r.contains("queued behind itself 866.7"), "{r}");
        t.steps = 0;
        assert!(t.report().is_none());
    }
}
