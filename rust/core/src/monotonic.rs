//! Monotonic time for the token bucket and the circuit breaker: nanoseconds since an origin.
//!
//! Both take the time as an argument (`now_ns`), so tests, the binding and the pipeline executor
//! choose the clock. Two sources give it: [`Monotonic`], `std::time::Instant` since the owner was
//! made (no Python call on the hot path), and [`elapsed_ns`], which turns readings of a clock in
//! float seconds (a Python `clock=` callable, `time.monotonic` in the pure core) into the same
//! nanoseconds. The pure-Python core does the same arithmetic step by step, so both cores see the
//! same nanosecond for the same reading.

use std::time::Instant;

use crate::error::{float_repr, CoreError};

/// `Instant`-based nanoseconds since this value was made.
#[derive(Debug, Clone, Copy)]
pub struct Monotonic {
    origin: Instant,
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}

impl Monotonic {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    /// Nanoseconds since `new` (saturating after 584 years).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock reading in seconds, which must be finite (a NaN or infinite time has no meaning).
pub fn check_reading(seconds: f64) -> Result<f64, CoreError> {
    if seconds.is_finite() {
        Ok(seconds)
    } else {
        Err(CoreError::InvalidArgument {
            name: "clock reading",
            value: float_repr(seconds),
            requirement: "must be a finite number of seconds".to_owned(),
        })
    }
}

/// Whole nanoseconds from the reading `origin` to the reading `now` (both checked finite seconds):
/// `floor((now - origin) * 1e9)` in IEEE doubles, 0 when `now` is before `origin`, saturating at
/// `u64::MAX`. The pure core computes exactly these two float operations, so it agrees to the
/// nanosecond. Readings are doubles: around 1e5 s (a day of uptime) they resolve 15 ps, around
/// 1e8 s (3 years) 15 ns.
pub fn elapsed_ns(now: f64, origin: f64) -> u64 {
    // `as` saturates: negative → 0, beyond u64 → u64::MAX, and truncation is floor for positives.
    ((now - origin) * 1e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_only_moves_forward() {
        let clock = Monotonic::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
    }

    #[test]
    fn elapsed_is_floored_clamped_and_saturating() {
        assert_eq!(elapsed_ns(1.0, 0.0), 1_000_000_000);
        assert_eq!(elapsed_ns(1000.1, 1000.0), 100_000_000);
        assert_eq!(elapsed_ns(0.5, 1.0), 0);
        assert_eq!(elapsed_ns(1e300, -1e300), u64::MAX);
        assert_eq!(elapsed_ns(2.0, 2.0), 0);
        // 1 ns below a whole second floors down.
        assert_eq!(elapsed_ns(0.999_999_999_5, 0.0), 999_999_999);
    }

    #[test]
    fn readings_must_be_finite() {
        assert_eq!(check_reading(1.5), Ok(1.5));
        let err = check_reading(f64::NAN).unwrap_err();
        assert_eq!(err.to_string(), "clock reading `nan` must be a finite number of seconds");
        assert!(check_reading(f64::INFINITY).is_err());
        assert!(check_reading(f64::NEG_INFINITY).is_err());
    }
}
