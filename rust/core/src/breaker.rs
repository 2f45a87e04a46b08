//! Circuit breaker: closed, open, half-open with a single probe (API.md §6).
//!
//! - Closed: every call is allowed. `failure_threshold` failures in a row open it; a success resets
//!   the count.
//! - Open: calls are refused with the time left until `reset_timeout` has passed since it opened.
//!   The first `allow` after that moves it to half-open and is the probe.
//! - Half-open: exactly one probe is out; other callers are refused. The probe's success closes the
//!   circuit (count 0), its failure reopens it at once (a new `reset_timeout` from now), and an
//!   ignored outcome (`record_ignored`, for errors that say nothing about the downstream) frees
//!   the probe slot so that the next caller probes. Any outcome recorded while half-open counts as
//!   the probe's: outcomes carry no ticket.
//! - A probe whose outcome never arrives (a caller that forgot to report, a cancelled call that
//!   was not reported as ignored) would leave the circuit half-open forever; instead its slot is
//!   reclaimed `reset_timeout` after the probe started, and the next `allow` probes again.
//! - Outcomes recorded while open (calls let through before it opened) change nothing.
//! - The clock stepping back never keeps it open longer than `reset_timeout` on the clock as it
//!   now reads: an open (or probing) time in the future is moved back to now.
//!
//! Representation: one `AtomicU64`, updated by compare-and-swap, holds the whole state:
//! bits 63–62 the state (0 closed, 1 open, 2 half-open), bit 61 the probe flag (half-open), and
//! bits 60–0 either the consecutive failures (closed) or the nanosecond at which it opened or the
//! probe started (open, half-open). One word means every transition is a single CAS, with no
//! moment where a reader could pair a new state with an old time. The price: while open or
//! half-open the word has no room for the count, so `consecutive_failures` reads
//! `failure_threshold` then (the count that opened it). A second atomic counts state changes;
//! it is bumped after the CAS that made the change, so it may trail the state by an instant but
//! never misses one. No other data is published through the word: `Relaxed` throughout.
//!
//! Limits: times are nanoseconds since the breaker's origin, saturating at `2^61 - 1` (73 years);
//! `reset_timeout` is at most 1e9 s (31 years), rounded up to a whole nanosecond; counts saturate at
//! `2^61 - 1`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{float_repr, CoreError};

const STATE_SHIFT: u32 = 62;
const CLOSED: u64 = 0;
const OPEN: u64 = 1 << STATE_SHIFT;
const HALF_OPEN: u64 = 2 << STATE_SHIFT;
const STATE_MASK: u64 = 3 << STATE_SHIFT;
const PROBE: u64 = 1 << 61;
/// The count or time field; also the largest time and count.
const PAYLOAD: u64 = PROBE - 1;

/// The longest `reset_timeout`, seconds.
pub const MAX_RESET_TIMEOUT: f64 = 1e9;

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`, as Python reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A lock-free circuit breaker; see the module documentation.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u64,
    reset_timeout: f64,
    reset_ns: u64,
    word: AtomicU64,
    state_changes: AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker opening after `failure_threshold` (> 0) consecutive failures and probing
    /// again `reset_timeout` seconds (`0 < reset_timeout <= 1e9`) after it opened.
    pub fn new(failure_threshold: i64, reset_timeout: f64) -> Result<Self, CoreError> {
        if failure_threshold < 1 {
            return Err(CoreError::InvalidArgument {
                name: "failure_threshold",
                value: failure_threshold.to_string(),
                requirement: "must be > 0".to_owned(),
            });
        }
        let invalid = |requirement: &str| CoreError::InvalidArgument {
            name: "reset_timeout",
            value: float_repr(reset_timeout),
            requirement: requirement.to_owned(),
        };
        if reset_timeout.is_nan() || reset_timeout <= 0.0 {
            return Err(invalid("must be > 0"));
        }
        if reset_timeout > MAX_RESET_TIMEOUT {
            return Err(invalid("must be at most 1e9 seconds"));
        }
        Ok(Self {
            failure_threshold: failure_threshold.unsigned_abs(),
            reset_timeout,
            // At least 1 ns: ceil of a positive number. At most 1e18 < PAYLOAD.
            reset_ns: (reset_timeout * 1e9).ceil() as u64,
            word: AtomicU64::new(CLOSED),
            state_changes: AtomicU64::new(0),
        })
    }

    pub fn failure_threshold(&self) -> u64 {
        self.failure_threshold
    }

    /// Seconds, as given.
    pub fn reset_timeout(&self) -> f64 {
        self.reset_timeout
    }

    pub fn state(&self) -> BreakerState {
        Self::state_of(self.word.load(Ordering::Relaxed))
    }

    fn state_of(word: u64) -> BreakerState {
        match word & STATE_MASK {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Failures in a row while closed; `failure_threshold` while open or half-open.
    pub fn consecutive_failures(&self) -> u64 {
        let word = self.word.load(Ordering::Relaxed);
        if word & STATE_MASK == CLOSED {
            word & PAYLOAD
        } else {
            self.failure_threshold
        }
    }

    /// Transitions between states so far.
    pub fn state_changes(&self) -> u64 {
        self.state_changes.load(Ordering::Relaxed)
    }

    /// Apply `step` to the word until a CAS lands; `step` returns the new word (or `None` to
    /// leave it) and what to return. Counts a state change when the state bits differ.
    fn update<R>(&self, mut step: impl FnMut(u64) -> (Option<u64>, R)) -> R {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            let (next, result) = step(word);
            let Some(next) = next else { return result };
            match self.word.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if next & STATE_MASK != word & STATE_MASK {
                        self.state_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    return result;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// May a call go ahead at `now_ns`? `Ok(())`: yes (in half-open, it is the probe); `Err(ns)`:
    /// no, retry after that many nanoseconds (>= 1).
    pub fn allow(&self, now_ns: u64) -> Result<(), u64> {
        let now = now_ns.min(PAYLOAD);
        let reset = self.reset_ns;
        let probe = HALF_OPEN | PROBE | now;
        self.update(|word| {
            let since = word & PAYLOAD;
            match word & STATE_MASK {
                CLOSED => (None, Ok(())),
                // The clock stepped back past the opening: count from now.
                OPEN if now < since => (Some(OPEN | now), Err(reset)),
                OPEN if now - since >= reset => (Some(probe), Ok(())),
                OPEN => (None, Err(since + reset - now)),
                _ if word & PROBE == 0 => (Some(probe), Ok(())),
                _ if now < since => (Some(probe), Err(reset)),
                // A probe out for `reset_timeout` is presumed lost: this caller probes.
                _ if now - since >= reset => (Some(probe), Ok(())),
                _ => (None, Err(since + reset - now)),
            }
        })
    }

    /// The call succeeded: closed → count reset; half-open → closed; open → nothing.
    pub fn record_success(&self) {
        self.update(|word| match word & STATE_MASK {
            CLOSED if word & PAYLOAD == 0 => (None, ()),
            CLOSED | HALF_OPEN => (Some(CLOSED), ()),
            _ => (None, ()),
        });
    }

    /// The call failed at `now_ns`: closed → count + 1, opening at the threshold; half-open →
    /// open again from now; open → nothing.
    pub fn record_failure(&self, now_ns: u64) {
        let now = now_ns.min(PAYLOAD);
        let threshold = self.failure_threshold;
        self.update(|word| match word & STATE_MASK {
            CLOSED => {
                let count = (word & PAYLOAD).saturating_add(1).min(PAYLOAD);
                (Some(if count >= threshold { OPEN | now } else { CLOSED | count }), ())
            }
            OPEN => (None, ()),
            _ => (Some(OPEN | now), ()),
        });
    }

    /// The call ended in a way that says nothing about the downstream (a validation error, a
    /// conflict, a cancellation): half-open frees the probe slot; otherwise nothing.
    pub fn record_ignored(&self) {
        self.update(|word| {
            if word & STATE_MASK == HALF_OPEN && word & PROBE != 0 {
                (Some(word & !PROBE), ())
            } else {
                (None, ())
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values are the point
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    const SECOND: u64 = 1_000_000_000;

    fn breaker(threshold: i64, reset_seconds: f64) -> CircuitBreaker {
        CircuitBreaker::new(threshold, reset_seconds).unwrap()
    }

    #[test]
    fn opens_after_exactly_the_threshold() {
        let b = breaker(3, 30.0);
        for count in 1..=2 {
            assert_eq!(b.allow(0), Ok(()));
            b.record_failure(0);
            assert_eq!((b.state(), b.consecutive_failures()), (BreakerState::Closed, count));
        }
        assert_eq!(b.allow(0), Ok(()));
        b.record_failure(5 * SECOND);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.consecutive_failures(), 3);
        assert_eq!(b.state_changes(), 1);
        assert_eq!(b.allow(5 * SECOND), Err(30 * SECOND));
        assert_eq!(b.allow(20 * SECOND), Err(15 * SECOND));
        assert_eq!(b.allow(35 * SECOND - 1), Err(1));
    }

    #[test]
    fn success_resets_the_count() {
        let b = breaker(2, 1.0);
        b.record_failure(0);
        b.record_success();
        assert_eq!(b.consecutive_failures(), 0);
        b.record_failure(0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure(0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_probe_success_closes() {
        let b = breaker(1, 10.0);
        b.record_failure(0);
        assert_eq!(b.allow(10 * SECOND), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe: the others wait for the probe's slot to be reclaimed at the latest.
        assert_eq!(b.allow(10 * SECOND), Err(10 * SECOND));
        assert_eq!(b.allow(12 * SECOND), Err(8 * SECOND));
        b.record_success();
        assert_eq!((b.state(), b.consecutive_failures(), b.state_changes()), (BreakerState::Closed, 0, 3));
        assert_eq!(b.allow(12 * SECOND), Ok(()));
    }

    #[test]
    fn half_open_probe_failure_reopens_from_now() {
        let b = breaker(1, 10.0);
        b.record_failure(0);
        assert_eq!(b.allow(15 * SECOND), Ok(()));
        b.record_failure(17 * SECOND);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.state_changes(), 3);
        assert_eq!(b.allow(17 * SECOND), Err(10 * SECOND));
        assert_eq!(b.allow(27 * SECOND), Ok(()));
        assert_eq!(b.state_changes(), 4);
    }

    #[test]
    fn ignored_outcomes_free_the_probe_and_count_nothing_else() {
        let b = breaker(2, 1.0);
        b.record_failure(0);
        b.record_ignored();
        assert_eq!((b.state(), b.consecutive_failures()), (BreakerState::Closed, 1));
        b.record_failure(0);
        b.record_ignored();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(SECOND), Ok(()));
        assert!(b.allow(SECOND).is_err());
        b.record_ignored();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.allow(SECOND), Ok(()));
        assert!(b.allow(SECOND).is_err());
        assert_eq!(b.state_changes(), 2);
    }

    #[test]
    fn outcomes_while_open_change_nothing() {
        let b = breaker(1, 5.0);
        b.record_failure(SECOND);
        b.record_success();
        b.record_failure(3 * SECOND);
        b.record_ignored();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(SECOND), Err(5 * SECOND));
        assert_eq!(b.state_changes(), 1);
    }

    #[test]
    fn a_lost_probe_is_reclaimed_after_the_reset_timeout() {
        let b = breaker(1, 2.0);
        b.record_failure(0);
        assert_eq!(b.allow(2 * SECOND), Ok(()));
        assert_eq!(b.allow(4 * SECOND - 1), Err(1));
        assert_eq!(b.allow(4 * SECOND), Ok(()));
        assert_eq!(b.allow(4 * SECOND), Err(2 * SECOND));
        assert_eq!(b.state_changes(), 2);
    }

    #[test]
    fn clock_going_back_never_keeps_it_open() {
        let b = breaker(1, 10.0);
        b.record_failure(1_000 * SECOND);
        // The clock jumps back 900 s: open for 10 s on the clock as it now reads.
        assert_eq!(b.allow(100 * SECOND), Err(10 * SECOND));
        assert_eq!(b.allow(105 * SECOND), Err(5 * SECOND));
        assert_eq!(b.allow(110 * SECOND), Ok(()));
        // A probe that started in the "future" is moved back too.
        assert_eq!(b.allow(50 * SECOND), Err(10 * SECOND));
        assert_eq!(b.allow(60 * SECOND), Ok(()));
        assert_eq!(b.state_changes(), 2);
    }

    #[test]
    fn times_saturate_instead_of_wrapping() {
        let b = breaker(1, 1.0);
        b.record_failure(u64::MAX);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(u64::MAX), Err(SECOND));
        // Back from the saturated end: moved to now, open for `reset_timeout`.
        assert_eq!(b.allow(PAYLOAD - SECOND), Err(SECOND));
        assert_eq!(b.allow(PAYLOAD), Ok(()));
    }

    #[test]
    fn validation_names_the_parameter() {
        let message = |t: i64, r: f64| CircuitBreaker::new(t, r).unwrap_err().to_string();
        assert_eq!(message(0, 1.0), "failure_threshold `0` must be > 0");
        assert_eq!(message(-2, 1.0), "failure_threshold `-2` must be > 0");
        assert_eq!(message(1, 0.0), "reset_timeout `0.0` must be > 0");
        assert_eq!(message(1, f64::NAN), "reset_timeout `nan` must be > 0");
        assert_eq!(message(1, f64::INFINITY), "reset_timeout `inf` must be at most 1e9 seconds");
        let b = breaker(5, 1e-12);
        assert_eq!(b.reset_ns, 1);
        assert_eq!((b.failure_threshold(), b.reset_timeout()), (5, 1e-12));
        assert_eq!(breaker(1, 1e9).reset_ns, 1_000_000_000 * SECOND);
    }

    #[test]
    fn eight_threads_race_for_one_probe() {
        let b = Arc::new(breaker(1, 1.0));
        let barrier = Arc::new(Barrier::new(8));
        let rounds = 500u64;
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (b, barrier) = (b.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut probes = 0u64;
                    for round in 0..rounds {
                        let opened_at = round * 10 * SECOND;
                        // Everyone fails at the same instant: exactly one opens it (or it is
                        // open already).
                        b.record_failure(opened_at);
                        barrier.wait();
                        // All race for the probe after the reset timeout.
                        if b.allow(opened_at + SECOND).is_ok() {
                            probes += 1;
                        }
                        barrier.wait();
                    }
                    probes
                })
            })
            .collect();
        let probes: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(probes, rounds);
        // Each round: closed→open (round 0) or half-open→open, then open→half-open.
        assert_eq!(b.state_changes(), 2 * rounds);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn eight_threads_count_failures_exactly() {
        let b = Arc::new(breaker(8 * 10_000 + 1, 1.0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| b.record_failure(0)))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!((b.state(), b.consecutive_failures()), (BreakerState::Closed, 80_000));
        b.record_failure(0);
        assert_eq!((b.state(), b.state_changes()), (BreakerState::Open, 1));
    }
}
