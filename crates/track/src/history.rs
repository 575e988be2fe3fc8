//! Metric history: every point of one metric of one run in step order, and its
//! server-side down-sampling (first and last point kept, and each bucket's minimum and
//! maximum, so spikes survive).

use rusqlite::params;

use crate::error::{invalid, Result, TrackError};
use crate::tracker::{load_run_info, Tracker};
use crate::types::Metric;

/// Down-samples `points` (in step order) to at most `max_points`: the first and last
/// point, and for each of `(max_points - 2) / 2` equal-count buckets of the points
/// between them, the bucket's minimum and maximum (in their original order). NaN
/// values count as neither minimum nor maximum unless the whole bucket is NaN.
pub fn downsample(points: &[Metric], max_points: usize) -> Vec<Metric> {
    let n = points.len();
    if n <= max_points || n <= 2 {
        return points.to_vec();
    }
    if max_points < 2 {
        return points[..max_points.min(n)].to_vec();
    }
    let inner = &points[1..n - 1];
    let buckets = (max_points - 2) / 2;
    let mut out = Vec::with_capacity(max_points);
    out.push(points[0].clone());
    if buckets > 0 {
        for b in 0..buckets {
            let lo = b * inner.len() / buckets;
            let hi = (b + 1) * inner.len() / buckets;
            let bucket = &inner[lo..hi];
            if bucket.is_empty() {
                continue;
            }
            let key = |m: &Metric| {
                if m.value.is_nan() {
                    None
                } else {
                    Some(m.value)
                }
            };
            let (mut imin, mut imax) = (0, 0);
            for (i, m) in bucket.iter().enumerate() {
                if let Some(v) = key(m) {
                    if key(&bucket[imin]).is_none_or(|x| v < x) {
                        imin = i;
                    }
                    if key(&bucket[imax]).is_none_or(|x| v > x) {
                        imax = i;
                    }
                }
            }
            let (a, b) = (imin.min(imax), imin.max(imax));
            out.push(bucket[a].clone());
            if b != a {
                out.push(bucket[b].clone());
            }
        }
    }
    out.push(points[n - 1].clone());
    out
}

impl Tracker {
    /// Every point of `key` logged to `run_id`, ordered by step then timestamp;
    /// down-sampled to at most `max_points` when given (at least 2).
    pub fn metric_history(
        &self,
        run_id: &str,
        key: &str,
        max_points: Option<usize>,
    ) -> Result<Vec<Metric>> {
        if let Some(m) = max_points {
            if m < 2 {
                return Err(invalid(format!(
                    "max_points must be at least 2 (the first and last point), got {m}"
                )));
            }
        }
        let conn = self.conn();
        if load_run_info(&conn, run_id)?.is_none() {
            return Err(TrackError::NotFound(format!(
                "run with id={run_id} not found"
            )));
        }
        let mut st = conn.prepare_cached(
            "SELECT value, timestamp, step FROM metrics WHERE run_uuid = ?1 AND key = ?2
             ORDER BY step, timestamp, rowid",
        )?;
        let points = st
            .query_map(params![run_id, key], |r| {
                Ok(Metric {
                    key: key.to_string(),
                    value: r.get::<_, Option<f64>>(0)?.unwrap_or(f64::NAN),
                    timestamp: r.get(1)?,
                    step: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(match max_points {
            Some(m) => downsample(&points, m),
            None => points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Metric> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Metric {
                key: "m".into(),
                value: *v,
                timestamp: i as i64,
                step: i as i64,
            })
            .collect()
    }

    fn steps(ms: &[Metric]) -> Vec<i64> {
        ms.iter().map(|m| m.step).collect()
    }

    #[test]
    fn keeps_first_last_and_each_buckets_extremes() {
        // inner points 1..=8 in two buckets of four: [5, 9, 1, 4] and [3, 3, 0, 7]
        let pts = series(&[2.0, 5.0, 9.0, 1.0, 4.0, 3.0, 3.0, 0.0, 7.0, 6.0]);
        let d = downsample(&pts, 6);
        assert_eq!(steps(&d), vec![0, 2, 3, 7, 8, 9]);
        assert_eq!(
            d.iter().map(|m| m.value).collect::<Vec<_>>(),
            vec![2.0, 9.0, 1.0, 0.0, 7.0, 6.0]
        );
    }

    #[test]
    fn short_series_are_returned_whole_and_spikes_survive() {
        let pts = series(&[1.0, 2.0, 3.0]);
        assert_eq!(downsample(&pts, 10), pts);
        let mut v = vec![1.0; 10_000];
        v[4321] = 100.0;
        v[777] = -5.0;
        let d = downsample(&series(&v), 100);
        assert!(d.len() <= 100);
        assert!(d.iter().any(|m| m.value == 100.0 && m.step == 4321));
        assert!(d.iter().any(|m| m.value == -5.0 && m.step == 777));
        assert_eq!((d[0].step, d[d.len() - 1].step), (0, 9999));
        assert!(d.windows(2).all(|w| w[0].step < w[1].step));
    }

    #[test]
    fn nan_points_do_not_hide_real_extremes() {
        let d = downsample(&series(&[0.0, f64::NAN, 5.0, f64::NAN, 0.0]), 4);
        assert_eq!(steps(&d), vec![0, 2, 4]);
    }
}
