//! Concurrency limiter: at most `max_concurrent` permits out at once, with counters.
//!
//! Invariant: `in_flight` never exceeds `max_concurrent`, and it equals the permits granted minus
//! the permits released (each an atomic read-modify-write on one word, so concurrent callers never
//! lose or double-count one). Waiting for a permit is the caller's business (the Python behaviour
//! waits with asyncio); the core only grants, takes back and counts. `rejected` counts the callers
//! that finally gave up, as the behaviour reports them with [`ConcurrencyLimiter::note_rejected`].
//!
//! Releasing more permits than were acquired is a bug in the caller: debug builds panic, release
//! builds leave `in_flight` at 0 instead of wrapping around.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::CoreError;

/// Permits and counters; lock-free.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max_concurrent: u64,
    in_flight: AtomicU64,
    rejected: AtomicU64,
}

impl ConcurrencyLimiter {
    /// A limiter of `max_concurrent` (> 0) permits, none out.
    pub fn new(max_concurrent: i64) -> Result<Self, CoreError> {
        if max_concurrent < 1 {
            return Err(CoreError::InvalidArgument {
                name: "max_concurrent",
                value: max_concurrent.to_string(),
                requirement: "must be > 0".to_owned(),
            });
        }
        Ok(Self {
            max_concurrent: max_concurrent.unsigned_abs(),
            in_flight: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    pub fn max_concurrent(&self) -> u64 {
        self.max_concurrent
    }

    /// Take a permit if one is free.
    pub fn try_acquire(&self) -> bool {
        // Acquire/Release: a permit orders what its holder did before `release` before what the
        // next holder does, like any semaphore.
        self.in_flight
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| (n < self.max_concurrent).then_some(n + 1))
            .is_ok()
    }

    /// Give a permit back.
    pub fn release(&self) {
        let released = self.in_flight.fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
        debug_assert!(released.is_ok(), "ConcurrencyLimiter::release without a permit in flight");
    }

    /// Count a caller that gave up waiting for a permit.
    pub fn note_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Permits out now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Callers that gave up, as reported by `note_rejected`.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn grants_up_to_the_limit() {
        let limiter = ConcurrencyLimiter::new(2).unwrap();
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        assert_eq!(limiter.in_flight(), 2);
        limiter.release();
        assert_eq!(limiter.in_flight(), 1);
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        assert_eq!(limiter.rejected(), 0);
        limiter.note_rejected();
        assert_eq!(limiter.rejected(), 1);
        limiter.release();
        limiter.release();
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(limiter.max_concurrent(), 2);
    }

    #[test]
    fn validation_names_the_parameter() {
        let err = ConcurrencyLimiter::new(0).unwrap_err();
        assert_eq!(err.to_string(), "max_concurrent `0` must be > 0");
        assert!(ConcurrencyLimiter::new(-3).is_err());
        assert_eq!(ConcurrencyLimiter::new(i64::MAX).unwrap().max_concurrent(), i64::MAX as u64);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without a permit")]
    fn releasing_more_than_acquired_panics_in_debug_builds() {
        ConcurrencyLimiter::new(1).unwrap().release();
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn releasing_more_than_acquired_saturates_in_release_builds() {
        let limiter = ConcurrencyLimiter::new(1).unwrap();
        limiter.release();
        assert_eq!(limiter.in_flight(), 0);
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
    }

    #[test]
    fn eight_threads_never_exceed_the_limit_and_counts_add_up() {
        let limiter = Arc::new(ConcurrencyLimiter::new(3).unwrap());
        let holding = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, holding, barrier) = (limiter.clone(), holding.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (mut granted, mut refused) = (0u64, 0u64);
                    for _ in 0..20_000 {
                        if limiter.try_acquire() {
                            granted += 1;
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 3, "{now} permits held");
                            std::hint::spin_loop();
                            holding.fetch_sub(1, Ordering::SeqCst);
                            limiter.release();
                        } else {
                            refused += 1;
                            limiter.note_rejected();
                        }
                    }
                    (granted, refused)
                })
            })
            .collect();
        let (mut granted, mut refused) = (0, 0);
        for handle in handles {
            let (g, r) = handle.join().unwrap();
            granted += g;
            refused += r;
        }
        assert_eq!(granted + refused, 8 * 20_000);
        assert_eq!(limiter.rejected(), refused);
        assert_eq!(limiter.in_flight(), 0);
    }
}
