//! Collective operations between the ranks of a tensor-parallel group.
//!
//! [`LocalGroup`] keeps one slot per rank in shared memory. A collective writes the
//! rank's buffer into its slot, waits for every rank, reads the slots in rank order
//! and waits again before the slots may be reused. Waits have a deadline and the
//! group can be aborted (a rank that panics aborts it as it unwinds), so one failing
//! rank makes the others return [`CommError`] instead of hanging — the in-process
//! counterpart of NCCL's timeouts and `ncclCommAbort`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why a collective failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommError {
    #[error("rank {rank} aborted the tensor-parallel group ({why})")]
    Aborted { rank: usize, why: String },
    #[error("rank {rank} waited {waited_ms} ms for the other ranks at a collective; ranks {missing:?} never arrived")]
    Timeout {
        rank: usize,
        waited_ms: u64,
        missing: Vec<usize>,
    },
    #[error("ranks passed buffers of different lengths to one collective: {lens:?}")]
    LengthMismatch { lens: Vec<usize> },
    #[error("all_gather: {out} output floats for {world} ranks of {part}")]
    GatherSize {
        out: usize,
        world: usize,
        part: usize,
    },
}

/// The collectives a tensor-parallel forward pass needs.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank with the sum of all ranks' `buf`, added in rank
    /// order (rank 0 + rank 1 + ...): identical bits on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Fills `out` with every rank's `part` (all of one length) in rank order.
    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), CommError>;
}

struct State {
    /// Ranks that reached the current barrier generation.
    arrived: Vec<bool>,
    generation: u64,
    aborted: Option<(usize, String)>,
    slots: Vec<Vec<f32>>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// Builds the ranks of an in-process group.
pub struct LocalGroup;

impl LocalGroup {
    /// `world` ranks whose collectives give up after `timeout` of waiting.
    pub fn ranks(world: usize, timeout: Duration) -> Vec<LocalComm> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                arrived: vec![false; world],
                generation: 0,
                aborted: None,
                slots: vec![Vec::new(); world],
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| LocalComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`LocalGroup`]; move it to the rank's thread.
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    /// Fails every collective of the group, now and later, naming this rank.
    pub fn abort(&self, why: &str) {
        let mut st = self.lock();
        if st.aborted.is_none() {
            st.aborted = Some((self.rank, why.to_string()));
        }
        self.shared.cv.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A rank that panicked while holding the lock leaves the state as it was:
        // the abort flag is what the others need to see.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, st: &State) -> Result<(), CommError> {
        match &st.aborted {
            Some((rank, why)) => Err(CommError::Aborted {
                rank: *rank,
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until every rank arrived (after `arrive` ran under the lock).
    fn barrier(&self, arrive: impl FnOnce(&mut State)) -> Result<(), CommError> {
        let start = Instant::now();
        let mut st = self.lock();
        self.check(&st)?;
        arrive(&mut st);
        st.arrived[self.rank] = true;
        let gen = st.generation;
        if st.arrived.iter().all(|&a| a) {
            st.arrived.iter_mut().for_each(|a| *a = false);
            st.generation += 1;
            self.shared.cv.notify_all();
            return Ok(());
        }
        while st.generation == gen {
            self.check(&st)?;
            let left = self.shared.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let missing = (0..self.shared.world).filter(|&r| !st.arrived[r]).collect();
                let err = CommError::Timeout {
                    rank: self.rank,
                    waited_ms: start.elapsed().as_millis() as u64,
                    missing,
                };
                st.aborted = Some((self.rank, err.to_string()));
                self.shared.cv.notify_all();
                return Err(err);
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Publishes `data` in this rank's slot, then runs `read` over all slots once
    /// every rank has published; returns after every rank has read.
    fn exchange(
        &self,
        data: &[f32],
        read: impl FnOnce(&[Vec<f32>]) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        self.barrier(|st| {
            let slot = &mut st.slots[self.rank];
            slot.clear();
            slot.extend_from_slice(data);
        })?;
        let result = {
            let st = self.lock();
            self.check(&st)?;
            read(&st.slots)
        };
        // Nobody may overwrite a slot before every rank has read it.
        self.barrier(|_| {})?;
        result
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        if self.shared.world == 1 {
            return Ok(());
        }
        let mine = buf.to_vec();
        self.exchange(&mine, |slots| {
            if slots.iter().any(|s| s.len() != buf.len()) {
                return Err(CommError::LengthMismatch {
                    lens: slots.iter().map(Vec::len).collect(),
                });
            }
            buf.copy_from_slice(&slots[0]);
            for s in &slots[1..] {
                for (b, x) in buf.iter_mut().zip(s) {
                    *b += x;
                }
            }
            Ok(())
        })
    }

    fn all_gather(&self, part: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let world = self.shared.world;
        if out.len() != part.len() * world {
            return Err(CommError::GatherSize {
                out: out.len(),
                world,
                part: part.len(),
            });
        }
        if world == 1 {
            out.copy_from_slice(part);
            return Ok(());
        }
        self.exchange(part, |slots| {
            if slots.iter().any(|s| s.len() != part.len()) {
                return Err(CommError::LengthMismatch {
                    lens: slots.iter().map(Vec::len).collect(),
                });
            }
            for (chunk, s) in out.chunks_exact_mut(part.len()).zip(slots) {
                chunk.copy_from_slice(s);
            }
            Ok(())
        })
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        // A rank unwinding from a panic takes the group down with it, so the other
        // ranks return an error instead of waiting for it.
        if std::thread::panicking() {
            self.abort("its thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send + 'static>(
        world: usize,
        f: impl Fn(LocalComm) -> T + Send + Sync + 'static,
    ) -> Vec<std::thread::Result<T>> {
        let f = Arc::new(f);
        let handles: Vec<_> = LocalGroup::ranks(world, Duration::from_secs(5))
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    }

    #[test]
    fn all_reduce_adds_in_rank_order_and_every_rank_gets_the_same_bits() {
        for world in [1, 2, 3, 4, 8] {
            let out = run(world, move |c| {
                let r = c.rank() as f32;
                // Values whose sum depends on the order of addition.
                let mut buf = vec![1e8 * (r - 1.5), 1.0 + r, -(r * 0.1) + 1e-7];
                for _ in 0..50 {
                    let mut b = buf.clone();
                    c.all_reduce_sum(&mut b).unwrap();
                    buf = b;
                    buf.iter_mut().for_each(|x| *x *= 0.5);
                }
                buf
            });
            let results: Vec<Vec<f32>> = out.into_iter().map(|r| r.unwrap()).collect();
            for r in &results[1..] {
                assert_eq!(
                    r.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    results[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
            }
        }
        // One reduction against a sequential sum in rank order.
        let out = run(4, |c| {
            let mut b = vec![0.1f32 * (c.rank() as f32 + 1.0); 3];
            c.all_reduce_sum(&mut b).unwrap();
            b
        });
        let want = ((0.1f32 + 0.2) + 0.3f32) + 0.4f32;
        for r in out {
            assert_eq!(r.unwrap()[0].to_bits(), want.to_bits());
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order() {
        let out = run(3, |c| {
            let part = vec![c.rank() as f32; 2];
            let mut all = vec![0.0; 6];
            c.all_gather(&part, &mut all).unwrap();
            let mut wrong = vec![0.0; 5];
            let err = c.all_gather(&part, &mut wrong).unwrap_err();
            (all, err)
        });
        for r in out {
            let (all, err) = r.unwrap();
            assert_eq!(all, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
            assert!(matches!(err, CommError::GatherSize { .. }));
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_on_every_rank() {
        let out = run(2, |c| {
            let mut b = vec![1.0; 2 + c.rank()];
            c.all_reduce_sum(&mut b)
        });
        for r in out {
            assert!(matches!(r.unwrap(), Err(CommError::LengthMismatch { .. })));
        }
    }

    #[test]
    fn a_rank_that_panics_or_never_comes_does_not_hang_the_others() {
        let start = Instant::now();
        let out = run(3, |c| {
            if c.rank() == 1 {
                panic!("rank 1 fails to start");
            }
            let mut b = vec![1.0; 4];
            c.all_reduce_sum(&mut b)
        });
        assert!(out[1].is_err(), "rank 1 panicked");
        for r in [&out[0], &out[2]] {
            match r.as_ref().unwrap() {
                Err(CommError::Aborted { rank: 1, why }) => assert!(why.contains("panicked")),
                other => panic!("expected an abort naming rank 1, got {other:?}"),
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "no waiting for the timeout"
        );
        // A rank that just never arrives: the others time out and name it.
        let mut ranks = LocalGroup::ranks(2, Duration::from_millis(200));
        let absent = ranks.pop().unwrap();
        let c = ranks.pop().unwrap();
        let mut b = vec![1.0];
        match c.all_reduce_sum(&mut b) {
            Err(CommError::Timeout { missing, .. }) => assert_eq!(missing, vec![1]),
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The group stays failed: the late rank gets an error, not a hang.
        assert!(absent.all_reduce_sum(&mut b).is_err());
    }
}
