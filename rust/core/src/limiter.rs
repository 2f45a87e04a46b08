//! Token bucket: `rate` tokens per second, at most `burst`, starting full, refilled continuously.
//!
//! Invariant: over any span `[0, T]` of the bucket's clock the tokens granted never exceed
//! `burst + rate * T`, and a caller that keeps asking gets each token at the first nanosecond it is
//! due. No fraction of a token is ever lost to rounding, however the acquisitions fall.
//!
//! # Representation (GCRA on a unit clock)
//!
//! Refill is counted in *units* of `1/U` token, `U = 10^d` with `d` the largest of `0..=9` for which
//! at most one unit accrues per nanosecond (`rate * U <= 1e9`): nano-tokens up to 1 token/s,
//! micro-tokens at 1000/s, whole tokens at 1e9/s. The *unit clock* at `t` ns after the bucket was
//! made is `units(t) = floor(t * rate * U / 1e9)`, with `rate` the exact binary value of the `f64`:
//! exact rational arithmetic and one floor. The bucket's only state is one `AtomicU64`, `full_at`:
//! the unit-clock reading at which the bucket is full again (GCRA's "theoretical arrival time"
//! moved by the capacity `C = floor(burst * U)`); it starts at 0, full. At time `t`, with
//! `base = max(full_at, units(t))`:
//!
//! - available: `units(t) + C - base` units;
//! - acquiring `c` units sets `full_at = base + c` by compare-and-swap if `base + c <= units(t) + C`;
//! - otherwise nothing changes and the wait is the first nanosecond `t'` with
//!   `units(t') >= base + c - C`, minus `t` (so at least 1 ns).
//!
//! `units(t)` depends only on the absolute elapsed time and `full_at` moves by whole units, so the
//! floors never accumulate: the units granted up to `T` are at most `units(T) + C`. `full_at` only
//! grows, so the compare-and-swap has no ABA problem; it publishes no other data, so `Relaxed`.
//!
//! # Limits
//!
//! - `0 < rate <= 1e9` tokens/s: one token per nanosecond is all the clock can tell apart.
//! - Elapsed time saturates at `2^63 - 1` ns, 292 years after the bucket was made; the bucket stops
//!   refilling there. Below that, an idle gap of any length simply leaves the bucket full: `full_at`
//!   is an absolute reading of a clock that cannot outrun the nanoseconds, so nothing wraps around.
//! - `C <= 2^62` units (4.6e9 tokens at rates up to 1/s, proportionally more at higher rates); a
//!   burst that is not a whole number of units is rounded down to one. With these bounds every
//!   sum fits: `full_at <= 2^63 - 1 + 2^62` and `base + c < 2^64`.
//! - A rate so low that the wait runs past the clock's range (under one unit in 292 years) reports
//!   a wait of `u64::MAX` ns.
//! - A clock that steps back gives a smaller `units(t)`: less is available and the bucket waits for
//!   the clock to catch up. It never over-grants and never reports a negative wait.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{float_repr, CoreError};

/// The fastest rate, tokens per second: one per nanosecond.
pub const MAX_RATE: f64 = 1e9;

/// Elapsed nanoseconds saturate here (292 years).
pub const MAX_ELAPSED_NS: u64 = (1 << 63) - 1;

/// The largest capacity, in units.
const MAX_CAPACITY: u64 = 1 << 62;

/// `10^k` for `k` in `0..=9`, exact in both integer and float.
const POW10: [u64; 10] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000];

/// `x = mantissa * 2^exponent` with an odd mantissa below 2^53 (`x` finite and positive).
fn decompose(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased - 1075) };
    let zeros = mantissa.trailing_zeros();
    (mantissa >> zeros, exponent + zeros as i32)
}

/// `x >> shift`, 0 when the shift is 128 or more.
fn shr(x: u128, shift: u32) -> u128 {
    x.checked_shr(shift).unwrap_or(0)
}

/// The unit clock: `units(t) = floor(t * p / (five * 2^shift))`, the exact rational `rate * U / 1e9`.
#[derive(Debug, Clone, Copy)]
struct UnitClock {
    p: u128,
    five: u128,
    shift: u32,
}

impl UnitClock {
    /// `rate * 10^digits / 1e9` as `p / (five * 2^shift)`; `rate * 10^digits <= 1e9`.
    fn new(rate: f64, digits: u32) -> Self {
        let (mantissa, exponent) = decompose(rate);
        // rate * 10^d / 10^9 = m * 2^(e + d - 9) / 5^(9 - d)
        let five = u128::from(5u64.pow(9 - digits));
        let twos = exponent + digits as i32 - 9;
        if twos >= 0 {
            // p <= five < 2^21 (at most one unit per ns), so the shift is small.
            Self { p: u128::from(mantissa) << twos, five, shift: 0 }
        } else {
            Self { p: u128::from(mantissa), five, shift: twos.unsigned_abs() }
        }
    }

    /// The unit clock at `t` ns (`t <= MAX_ELAPSED_NS`): at most `t`.
    fn at(self, t: u64) -> u64 {
        // t * p < 2^63 * 2^53: no overflow; floor(floor(x / a) / b) == floor(x / (a * b)).
        shr(u128::from(t) * self.p / self.five, self.shift) as u64
    }

    /// The first nanosecond at which the unit clock reads at least `x`, if within the clock's range.
    fn due(self, x: u64) -> Option<u64> {
        // units(t) >= x  <=>  t * p >= x * five * 2^shift  <=>  t >= ceil(x * five * 2^shift / p).
        let scaled = u128::from(x) * self.five; // < 2^64 * 2^21
                                                // Any t in range has t * p < 2^116; a product past 2^120 is out of range for sure.
        if 128 - scaled.leading_zeros() + self.shift > 120 {
            return None;
        }
        let t = (scaled << self.shift).div_ceil(self.p);
        u64::try_from(t).ok().filter(|&t| t <= MAX_ELAPSED_NS)
    }
}

/// A lock-free token bucket; see the module documentation for the representation and its limits.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Units per token, `10^d`.
    unit: u64,
    /// `floor(burst * unit)`.
    capacity: u64,
    clock: UnitClock,
    /// The unit-clock reading at which the bucket is full again.
    full_at: AtomicU64,
}

fn invalid(name: &'static str, value: String, requirement: String) -> CoreError {
    CoreError::InvalidArgument { name, value, requirement }
}

impl TokenBucket {
    /// A full bucket: `rate` tokens per second (`0 < rate <= 1e9`), `burst` tokens at most (`> 0`).
    #[allow(clippy::cast_precision_loss)] // powers of ten up to 1e9 and 2^62 are exact doubles
    pub fn new(rate: f64, burst: f64) -> Result<Self, CoreError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(invalid("rate", float_repr(rate), "must be > 0".to_owned()));
        }
        if rate > MAX_RATE {
            return Err(invalid("rate", float_repr(rate), "must be at most 1e9 tokens per second".to_owned()));
        }
        if burst.is_nan() || burst <= 0.0 {
            return Err(invalid("burst", float_repr(burst), "must be > 0".to_owned()));
        }
        // The smallest k with rate <= 10^k; units are 10^-(9 - k) tokens.
        let k = POW10.iter().position(|&p| rate <= p as f64).expect("rate <= 1e9") as u32;
        let digits = 9 - k;
        let unit = POW10[digits as usize];
        let capacity = Self::units_of(burst, unit);
        if capacity.is_none_or(|c| c > MAX_CAPACITY) {
            return Err(invalid(
                "burst",
                float_repr(burst),
                format!("must be at most {} tokens at rate `{}`", MAX_CAPACITY / unit, float_repr(rate)),
            ));
        }
        Ok(Self {
            rate,
            burst,
            unit,
            capacity: capacity.expect("checked"),
            clock: UnitClock::new(rate, digits),
            full_at: AtomicU64::new(0),
        })
    }

    /// `floor(x * unit)` for a positive `x`, or `None` when it exceeds `MAX_CAPACITY`.
    #[allow(clippy::cast_precision_loss)] // 2^62 is an exact double
    fn units_of(x: f64, unit: u64) -> Option<u64> {
        if x > MAX_CAPACITY as f64 {
            return None;
        }
        let (mantissa, exponent) = decompose(x);
        let scaled = u128::from(mantissa) * u128::from(unit); // < 2^53 * 2^30
                                                              // x = m * 2^e <= 2^62, so m * unit * 2^e <= 2^92: fits.
        let units = if exponent >= 0 { scaled << exponent } else { shr(scaled, exponent.unsigned_abs()) };
        u64::try_from(units).ok().filter(|&u| u <= MAX_CAPACITY)
    }

    /// Tokens per second, as given.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The capacity in tokens, as given.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// The units of `n` tokens, checked: `n >= 1` and at most the burst (or it could never succeed).
    fn cost(&self, n: i64) -> Result<u64, CoreError> {
        if n < 1 {
            return Err(invalid("n", n.to_string(), "must be at least 1".to_owned()));
        }
        let units = u128::from(n.unsigned_abs()) * u128::from(self.unit);
        if units > u128::from(self.capacity) {
            let requirement = format!("exceeds the burst `{}`: it can never be acquired", float_repr(self.burst));
            return Err(invalid("n", n.to_string(), requirement));
        }
        Ok(units as u64)
    }

    /// Take `n` tokens at `now_ns` (nanoseconds since the bucket's origin): `Ok(Ok(()))` when taken,
    /// `Ok(Err(wait_ns))` when not, with the exact wait (>= 1 ns) until `n` are available, nothing
    /// consumed; `Err` when `n < 1` or `n > burst`.
    pub fn try_acquire(&self, n: i64, now_ns: u64) -> Result<Result<(), u64>, CoreError> {
        let cost = self.cost(n)?;
        Ok(self.acquire_units(cost, now_ns))
    }

    fn acquire_units(&self, cost: u64, now_ns: u64) -> Result<(), u64> {
        let now = now_ns.min(MAX_ELAPSED_NS);
        let clock = self.clock.at(now);
        let ceiling = clock + self.capacity;
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(clock) + cost;
            if next > ceiling {
                // `next - capacity > clock`: due strictly after `now`.
                return Err(self.clock.due(next - self.capacity).map_or(u64::MAX, |due| due - now));
            }
            match self.full_at.compare_exchange_weak(full_at, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => full_at = actual,
            }
        }
    }

    /// Tokens available at `now_ns`, in `[0, burst]` (a multiple of the unit).
    pub fn available(&self, now_ns: u64) -> f64 {
        let clock = self.clock.at(now_ns.min(MAX_ELAPSED_NS));
        let units = (clock + self.capacity).saturating_sub(self.full_at.load(Ordering::Relaxed).max(clock));
        // Both cores divide the same two doubles, so they agree to the last bit.
        #[allow(clippy::cast_precision_loss)]
        let tokens = units as f64 / self.unit as f64;
        tokens
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)] // exact values are the point
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};

    const SECOND: u64 = 1_000_000_000;

    fn ok(bucket: &TokenBucket, n: i64, now: u64) -> Result<(), u64> {
        bucket.try_acquire(n, now).unwrap()
    }

    #[test]
    fn burst_two_at_one_per_second() {
        let bucket = TokenBucket::new(1.0, 2.0).unwrap();
        assert_eq!(bucket.available(0), 2.0);
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, 0), Err(SECOND));
        assert_eq!(bucket.available(0), 0.0);
        assert_eq!(ok(&bucket, 1, SECOND - 1), Err(1));
        assert_eq!(bucket.available(SECOND / 2), 0.5);
        assert_eq!(ok(&bucket, 1, SECOND), Ok(()));
        assert_eq!(ok(&bucket, 1, SECOND), Err(SECOND));
        // Asking for 2 at once waits for both.
        assert_eq!(ok(&bucket, 2, SECOND), Err(2 * SECOND));
    }

    #[test]
    fn fractions_are_never_lost() {
        // 3 tokens/s: one is due every 333_333_333.33 ns. Acquiring at each due nanosecond for
        // 3 million tokens must drift by less than a nanosecond from the exact schedule.
        let bucket = TokenBucket::new(3.0, 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        let mut now = 0;
        for k in 1..=3_000_000u64 {
            let wait = ok(&bucket, 1, now).unwrap_err();
            now += wait;
            assert_eq!(ok(&bucket, 1, now), Ok(()));
            // Token k (after the first) is due at ceil(k / 3 s).
            assert_eq!(now, (k * SECOND).div_ceil(3), "token {k}");
        }
        assert_eq!(now, SECOND * 1_000_000);
    }

    #[test]
    fn idle_bucket_is_full_and_refill_is_capped() {
        let bucket = TokenBucket::new(1000.0, 5.0).unwrap();
        for _ in 0..5 {
            assert_eq!(ok(&bucket, 1, 0), Ok(()));
        }
        // Idle for 200 years: simply full, no more than the burst.
        let later = 200 * 365 * 86_400 * SECOND;
        assert_eq!(bucket.available(later), 5.0);
        assert_eq!(ok(&bucket, 5, later), Ok(()));
        assert_eq!(ok(&bucket, 1, later), Err(SECOND / 1000));
    }

    #[test]
    fn highest_rate_over_the_longest_uptime() {
        let bucket = TokenBucket::new(MAX_RATE, 1e9).unwrap();
        let end = MAX_ELAPSED_NS;
        assert_eq!(ok(&bucket, 1_000_000_000, end), Ok(()));
        assert_eq!(ok(&bucket, 1, end), Err(u64::MAX));
        assert_eq!(bucket.available(end - 1), 0.0);
        // Past the clock's range: saturated, so no refill.
        assert_eq!(bucket.available(u64::MAX), 0.0);
        // Lower rates at the end of the range: the wait is exact.
        let bucket = TokenBucket::new(1.0, 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, end - SECOND), Ok(()));
        assert_eq!(ok(&bucket, 1, end - SECOND), Err(SECOND));
        assert_eq!(ok(&bucket, 1, end), Ok(()));
    }

    #[test]
    fn tiny_rates_refill_exactly_or_never() {
        // 2^-20 tokens/s: one token every 2^20 s (12 days), to the nanosecond.
        let bucket = TokenBucket::new(f64::powi(2.0, -20), 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        let wait = ok(&bucket, 1, 0).unwrap_err();
        assert_eq!(wait, (1u64 << 20) * SECOND);
        assert_eq!(ok(&bucket, 1, wait - 1), Err(1));
        assert_eq!(ok(&bucket, 1, wait), Ok(()));
        // One token per 2^40 s is beyond the clock's range (35,000 years).
        let bucket = TokenBucket::new(f64::powi(2.0, -40), 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, 0), Err(u64::MAX));
        // Under one unit in 292 years: never.
        let bucket = TokenBucket::new(1e-30, 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, MAX_ELAPSED_NS - 1), Err(u64::MAX));
        let bucket = TokenBucket::new(5e-324, 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, 0), Err(u64::MAX));
    }

    #[test]
    fn clock_going_back_waits_for_it_and_never_over_grants() {
        let bucket = TokenBucket::new(1.0, 1.0).unwrap();
        assert_eq!(ok(&bucket, 1, 10 * SECOND), Ok(()));
        // The clock steps back 5 s: the next token is due at 11 s on that clock.
        assert_eq!(ok(&bucket, 1, 5 * SECOND), Err(6 * SECOND));
        assert_eq!(bucket.available(5 * SECOND), 0.0);
        assert_eq!(bucket.available(0), 0.0);
        assert_eq!(ok(&bucket, 1, 11 * SECOND), Ok(()));
    }

    #[test]
    fn units_follow_the_rate() {
        let units = |rate: f64| TokenBucket::new(rate, 1.0).unwrap().unit;
        assert_eq!(units(1e-6), 1_000_000_000);
        assert_eq!(units(1.0), 1_000_000_000);
        assert_eq!(units(1.5), 100_000_000);
        assert_eq!(units(10.0), 100_000_000);
        assert_eq!(units(1000.0), 1_000_000);
        assert_eq!(units(1e9), 1);
        // A burst below one unit rounds down; a fractional burst in units is exact.
        let bucket = TokenBucket::new(1e9, 2.5).unwrap();
        assert_eq!(bucket.available(0), 2.0);
        let bucket = TokenBucket::new(1.0, 2.5).unwrap();
        assert_eq!(bucket.available(0), 2.5);
        assert_eq!(ok(&bucket, 2, 0), Ok(()));
        assert_eq!(ok(&bucket, 1, 0), Err(SECOND / 2));
    }

    #[test]
    fn validation_names_the_parameter() {
        let message = |rate: f64, burst: f64| TokenBucket::new(rate, burst).unwrap_err().to_string();
        assert_eq!(message(0.0, 1.0), "rate `0.0` must be > 0");
        assert_eq!(message(-1.0, 1.0), "rate `-1.0` must be > 0");
        assert_eq!(message(f64::NAN, 1.0), "rate `nan` must be > 0");
        assert_eq!(message(2e9, 1.0), "rate `2000000000.0` must be at most 1e9 tokens per second");
        assert_eq!(message(f64::INFINITY, 1.0), "rate `inf` must be at most 1e9 tokens per second");
        assert_eq!(message(1.0, 0.0), "burst `0.0` must be > 0");
        assert_eq!(message(1.0, f64::NAN), "burst `nan` must be > 0");
        assert_eq!(message(1.0, 1e10), "burst `10000000000.0` must be at most 4611686018 tokens at rate `1.0`");
        assert_eq!(
            message(1e9, f64::INFINITY),
            "burst `inf` must be at most 4611686018427387904 tokens at rate `1000000000.0`"
        );
        assert!(TokenBucket::new(1.0, 4.6e9).is_ok());
        assert!(TokenBucket::new(1e9, 4.6e18).is_ok());
        assert!(TokenBucket::new(1e9, 4.7e18).is_err());

        let bucket = TokenBucket::new(1.0, 2.0).unwrap();
        let err = bucket.try_acquire(0, 0).unwrap_err();
        assert_eq!(err.to_string(), "n `0` must be at least 1");
        assert!(bucket.try_acquire(-5, 0).is_err());
        let err = bucket.try_acquire(3, 0).unwrap_err();
        assert_eq!(err.to_string(), "n `3` exceeds the burst `2.0`: it can never be acquired");
        assert!(bucket.try_acquire(i64::MAX, 0).is_err());
        assert_eq!(bucket.available(0), 2.0);
    }

    // ------------------------------------------------------------------ property test vs a model

    /// splitmix64: a tiny deterministic generator, enough to drive the property test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The textbook bucket, written independently of the GCRA: a level that refills by the
    /// difference of an exact rational clock and is capped, with the rate given as `num / den`
    /// tokens per second.
    struct Model {
        num: u128,
        den: u128,
        unit: u128,
        capacity: u128,
        level: u128,
        last: u64,
    }

    impl Model {
        /// `floor(t ns * num / den tokens/s * unit)`.
        fn clock(&self, t: u64) -> u128 {
            u128::from(t) * self.num * self.unit / (self.den * u128::from(SECOND))
        }

        fn advance(&mut self, now: u64) {
            let gained = self.clock(now) - self.clock(self.last);
            self.level = (self.level + gained).min(self.capacity);
            self.last = now;
        }

        fn try_acquire(&mut self, n: u128, now: u64) -> Result<(), u64> {
            self.advance(now);
            let cost = n * self.unit;
            if self.level >= cost {
                self.level -= cost;
                return Ok(());
            }
            // The first t with level + clock(t) - clock(now) >= cost, by search over whole ns.
            let target = self.clock(now) + cost - self.level;
            let (mut lo, mut hi) = (now, now + (1 << 50));
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.clock(mid) >= target {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            Err(lo - now)
        }
    }

    #[test]
    fn matches_an_exact_rational_model() {
        let mut rng = Rng(0x5eed);
        // Rates as exact binary fractions, from slow to fast, covering several unit sizes.
        let rates: [(u128, u128); 9] =
            [(1, 1), (3, 1), (1, 8), (5, 4), (7, 1), (1000, 1), (12_345, 16), (1, 1024), (2_000_000, 1)];
        let (mut grants, mut refusals) = (0, 0);
        for case in 0..300 {
            let (num, den) = rates[case % rates.len()];
            let burst = 1 + rng.below(5);
            let rate = num as f64 / den as f64;
            let bucket = TokenBucket::new(rate, burst as f64).unwrap();
            // The finest decimal unit at which at most one accrues per nanosecond.
            let unit = (0..=9u32).rev().map(|d| 10u128.pow(d)).find(|u| num * u <= den * 1_000_000_000).unwrap();
            assert_eq!(u128::from(bucket.unit), unit);
            let mut model =
                Model { num, den, unit, capacity: u128::from(burst) * unit, level: u128::from(burst) * unit, last: 0 };
            let mut now = 0u64;
            let mut granted = 0u128;
            for _ in 0..200 {
                // Steps from 0 to ~3 token intervals, with odd nanoseconds.
                let interval = (den * u128::from(SECOND) / num) as u64;
                now += match rng.below(4) {
                    0 => 0,
                    1 => rng.below(interval.max(1) * 3),
                    2 => rng.below(1000),
                    _ => interval,
                };
                let n = 1 + rng.below(burst);
                let expected = model.try_acquire(u128::from(n), now);
                assert_eq!(ok(&bucket, n as i64, now), expected, "case {case} rate {rate} burst {burst} at {now}");
                if expected.is_ok() {
                    granted += u128::from(n);
                    grants += 1;
                } else {
                    refusals += 1;
                }
                let level = model.level as f64 / unit as f64;
                assert_eq!(bucket.available(now), level);
                // Never more than burst + rate * T, in exact integers.
                assert!(
                    granted * den * u128::from(SECOND)
                        <= u128::from(burst) * den * u128::from(SECOND) + num * u128::from(now)
                );
            }
        }
        // Both branches were exercised plenty.
        assert!(grants > 10_000 && refusals > 10_000, "{grants} grants, {refusals} refusals");
    }

    #[test]
    fn a_denied_caller_gets_its_tokens_exactly_when_due() {
        let mut rng = Rng(7);
        for _ in 0..2_000 {
            let rate = (1 + rng.below(1_000_000)) as f64 / (1 + rng.below(1000)) as f64;
            let burst = 1 + rng.below(10);
            let bucket = TokenBucket::new(rate, burst as f64).unwrap();
            let mut now = rng.below(1 << 40);
            bucket.try_acquire(burst as i64, now).unwrap().unwrap();
            now += rng.below(1 << 20);
            let n = 1 + rng.below(burst) as i64;
            if let Err(wait) = ok(&bucket, n, now) {
                assert!(wait >= 1);
                assert!(ok(&bucket, n, now + wait - 1).is_err(), "rate {rate}: early");
                assert_eq!(ok(&bucket, n, now + wait), Ok(()), "rate {rate}: late");
            }
        }
    }

    // -------------------------------------------------------------------------------- threads

    #[test]
    fn eight_threads_get_exactly_what_is_due() {
        let bucket = Arc::new(TokenBucket::new(1000.0, 100.0).unwrap());
        let now = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let rounds = 200u64;
        let barrier = Arc::new(Barrier::new(9));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (bucket, now, done, barrier) = (bucket.clone(), now.clone(), done.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    loop {
                        barrier.wait();
                        if done.load(Ordering::Relaxed) {
                            return granted;
                        }
                        // Hammer until refused at this instant.
                        let t = now.load(Ordering::Relaxed);
                        while bucket.try_acquire(1, t).unwrap().is_ok() {
                            granted += 1;
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for round in 1..=rounds {
            barrier.wait();
            barrier.wait();
            // Each round advances 37.5 ms: 37.5 tokens, so fractions carry across rounds.
            now.store(round * 37_500_000, Ordering::Relaxed);
        }
        done.store(true, Ordering::Relaxed);
        barrier.wait();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The burst plus every whole token due by the last instant the threads saw.
        let last = (rounds - 1) * 37_500_000;
        assert_eq!(total, 100 + last * 1000 / SECOND);
    }
}
