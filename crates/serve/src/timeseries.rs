//! Server-side history for the dashboard: every few seconds a sample of throughput,
//! latency percentiles over the interval, queue, running sequences, KV usage and error
//! rate goes into a ring (an hour at full resolution, a day at one-minute averages), so
//! that `/ui` shows history on first load. Reads metrics and engine stats only.

use crate::AppState;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One point of history (rates per second over the interval before `t`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Unix time in seconds.
    pub t: f64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub generated_tokens_per_s: f64,
    pub prompt_tokens_per_s: f64,
    pub ttft_p50: Option<f64>,
    pub ttft_p95: Option<f64>,
    pub itl_p50: Option<f64>,
    pub itl_p95: Option<f64>,
    pub queue: f64,
    pub running: f64,
    pub kv_usage: f64,
    /// Drift and quality at this time (monitoring on): the largest unseen-token share
    /// and alert over the served models, and the mean prompt-answer relevance.
    pub unseen_token_share: Option<f64>,
    pub drift_alert: Option<f64>,
    pub relevance: Option<f64>,
}

/// Two rings: fine (`interval`) for the last hour, coarse (one minute) for a day.
pub struct History {
    pub interval: Duration,
    fine: Mutex<VecDeque<Sample>>,
    coarse: Mutex<VecDeque<Sample>>,
    fine_cap: usize,
}

impl History {
    pub fn new(interval: Duration) -> Self {
        let fine_cap = (3600.0 / interval.as_secs_f64()).ceil().max(1.0) as usize;
        History {
            interval,
            fine: Mutex::new(VecDeque::with_capacity(fine_cap)),
            coarse: Mutex::new(VecDeque::with_capacity(1440)),
            fine_cap,
        }
    }

    fn push(&self, s: Sample) {
        let mut fine = self.fine.lock().unwrap_or_else(|e| e.into_inner());
        fine.push_back(s);
        while fine.len() > self.fine_cap {
            fine.pop_front();
        }
        // Each completed minute becomes one averaged coarse sample.
        let minute = (s.t / 60.0).floor();
        let mut coarse = self.coarse.lock().unwrap_or_else(|e| e.into_inner());
        let last_minute = coarse.back().map(|c| (c.t / 60.0).floor());
        if last_minute != Some(minute) {
            let prev: Vec<Sample> = fine
                .iter()
                .filter(|x| (x.t / 60.0).floor() == minute - 1.0)
                .copied()
                .collect();
            if !prev.is_empty() {
                coarse.push_back(average(&prev, (minute - 1.0) * 60.0 + 59.0));
                while coarse.len() > 1440 {
                    coarse.pop_front();
                }
            }
        }
    }

    /// Samples of the last `seconds` (fine up to an hour, coarse beyond), oldest first.
    pub fn range(&self, seconds: f64) -> Vec<Sample> {
        let now = crate::monitoring_now();
        let from = now - seconds;
        if seconds <= 3600.0 {
            let fine = self.fine.lock().unwrap_or_else(|e| e.into_inner());
            fine.iter().filter(|s| s.t >= from).copied().collect()
        } else {
            let coarse = self.coarse.lock().unwrap_or_else(|e| e.into_inner());
            coarse.iter().filter(|s| s.t >= from).copied().collect()
        }
    }
}

fn average(v: &[Sample], t: f64) -> Sample {
    let n = v.len() as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| v.iter().map(f).sum::<f64>() / n;
    let mean_opt = |f: &dyn Fn(&Sample) -> Option<f64>| {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    Sample {
        t,
        requests_per_s: mean(&|s| s.requests_per_s),
        errors_per_s: mean(&|s| s.errors_per_s),
        generated_tokens_per_s: mean(&|s| s.generated_tokens_per_s),
        prompt_tokens_per_s: mean(&|s| s.prompt_tokens_per_s),
        ttft_p50: mean_opt(&|s| s.ttft_p50),
        ttft_p95: mean_opt(&|s| s.ttft_p95),
        itl_p50: mean_opt(&|s| s.itl_p50),
        itl_p95: mean_opt(&|s| s.itl_p95),
        queue: mean(&|s| s.queue),
        running: mean(&|s| s.running),
        kv_usage: mean(&|s| s.kv_usage),
        unseen_token_share: mean_opt(&|s| s.unseen_token_share),
        drift_alert: v.iter().filter_map(|s| s.drift_alert).reduce(f64::max),
        relevance: mean_opt(&|s| s.relevance),
    }
}

/// The monitor's current drift and quality, summed up over models for one sample.
fn drift_now(state: &AppState) -> (Option<f64>, Option<f64>, Option<f64>) {
    let Some(m) = &state.monitor else {
        return (None, None, None);
    };
    let reports = m.drift_reports();
    let ready: Vec<_> = reports.values().filter(|r| r.ready).collect();
    let unseen = ready.iter().map(|r| r.unseen_token_share).reduce(f64::max);
    let alert = ready.iter().map(|r| r.alert as u8 as f64).reduce(f64::max);
    let rel = m.relevance();
    let relevance = (!rel.is_empty())
        .then(|| rel.iter().map(|(_, mean, _)| mean).sum::<f64>() / rel.len() as f64);
    (unseen, alert, relevance)
}

/// Samples the server every `history.interval` until the task is aborted.
pub(crate) async fn run_sampler(state: Arc<AppState>) {
    let history = &state.history;
    let m = &state.metrics;
    let mut tick = tokio::time::interval(history.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut prev_req = m.request_totals();
    let mut prev_gen = m.generation_tokens.load(Ordering::Relaxed);
    let mut prev_prompt = m.prompt_tokens.load(Ordering::Relaxed);
    let mut prev_ttft = m.ttft.snapshot();
    let mut prev_itl = m.itl.snapshot();
    let mut prev_t = std::time::Instant::now();
    // Drift statistics cost more than counters: refresh them every few samples.
    let mut drift = (None, None, None);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let dt = prev_t.elapsed().as_secs_f64().max(1e-3);
        prev_t = std::time::Instant::now();
        let req = m.request_totals();
        let gen = m.generation_tokens.load(Ordering::Relaxed);
        let prompt = m.prompt_tokens.load(Ordering::Relaxed);
        let ttft = m.ttft.snapshot();
        let itl = m.itl.snapshot();
        let (queue, running, kv_usage) = match &state.inference {
            Some(i) => {
                let e = i.current().engine.stats();
                let total = e.kv_blocks_total();
                let kv = if total == 0 {
                    0.0
                } else {
                    e.kv_blocks_used() as f64 / total as f64
                };
                (e.waiting as f64, e.running as f64, kv)
            }
            None => (0.0, 0.0, 0.0),
        };
        if n.is_multiple_of(5) {
            let st = state.clone();
            drift = tokio::task::spawn_blocking(move || drift_now(&st))
                .await
                .unwrap_or((None, None, None));
        }
        n += 1;
        history.push(Sample {
            t: crate::monitoring_now(),
            requests_per_s: req.0.saturating_sub(prev_req.0) as f64 / dt,
            errors_per_s: req.1.saturating_sub(prev_req.1) as f64 / dt,
            generated_tokens_per_s: gen.saturating_sub(prev_gen) as f64 / dt,
            prompt_tokens_per_s: prompt.saturating_sub(prev_prompt) as f64 / dt,
            ttft_p50: m.ttft.quantile_between(&prev_ttft, &ttft, 0.5),
            ttft_p95: m.ttft.quantile_between(&prev_ttft, &ttft, 0.95),
            itl_p50: m.itl.quantile_between(&prev_itl, &itl, 0.5),
            itl_p95: m.itl.quantile_between(&prev_itl, &itl, 0.95),
            queue,
            running,
            kv_usage,
            unseen_token_share: drift.0,
            drift_alert: drift.1,
            relevance: drift.2,
        });
        (prev_req, prev_gen, prev_prompt, prev_ttft, prev_itl) = (req, gen, prompt, ttft, itl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_ring_is_bounded_and_minutes_average_into_the_coarse_ring() {
        let h = History::new(Duration::from_secs(30));
        let base = (crate::monitoring_now() / 60.0).floor() * 60.0 - 600.0;
        for i in 0..200 {
            h.push(Sample {
                t: base + i as f64 * 30.0,
                queue: (i % 2) as f64,
                ..Default::default()
            });
        }
        assert_eq!(h.fine.lock().unwrap().len(), 120);
        let coarse = h.coarse.lock().unwrap();
        assert!(coarse.len() >= 90, "{}", coarse.len());
        // Each minute holds one sample of 0 and one of 1.
        assert!(coarse.iter().all(|c| (c.queue - 0.5).abs() < 1e-9));
    }
}
