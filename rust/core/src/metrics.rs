//! Per-message-type metrics, recorded lock-free from the pipeline's hot path.
//!
//! The pipeline takes one [`TypeMetrics`] per `(kind, type)` from a [`Registry`] when a route
//! compiles, keeps the `Arc`, and from then on records every message with a few `Relaxed` atomic
//! adds: no lock, no allocation, no Python call. Exporters (Prometheus, OpenTelemetry, the CLI)
//! read the numbers with [`Registry::snapshot`], which copies them into plain data.
//!
//! Every number is a count (or a sum of nanoseconds), and no other memory is published through
//! them, so `Relaxed` is enough: each count is exact once its writers are done, and a reader never
//! needs to see one count "before" another. The price is that a snapshot taken while messages are
//! recorded is not a cut across counts: a message may already be in `messages` and not yet in the
//! duration histogram, or gone from `active` and not yet counted. A snapshot taken while nothing is
//! recorded is exact and consistent.
//!
//! The duration histogram has the fixed bounds [`DURATION_BUCKETS_NS`] (Prometheus `le`, inclusive)
//! and one overflow bucket. The buckets are stored non-cumulative (one add per observation); an
//! exporter sums them up. The count of observations is the sum of the buckets, so it always agrees
//! with them. The sum of durations saturates at `u64::MAX` nanoseconds (584 years) instead of
//! wrapping around; so does a counter given a huge `n`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{float_repr, CoreError};

/// What an outcome index must be, for a binding that refuses a value before it is an `i64`.
pub const OUTCOME_REQUIREMENT: &str = "must be 0, 1 or 2";

/// What a counter index must be, for a binding that refuses a value before it is an `i64`.
pub const COUNTER_REQUIREMENT: &str = "must be between 0 and 5";

/// How a message (or one event handler of a publish) ended.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success = 0,
    Failure = 1,
    Cancelled = 2,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Self; 3] = [Self::Success, Self::Failure, Self::Cancelled];

    /// The name exporters and the snapshot dicts use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
        }
    }
}

impl TryFrom<i64> for Outcome {
    type Error = CoreError;

    fn try_from(value: i64) -> Result<Self, CoreError> {
        match value {
            0 => Ok(Self::Success),
            1 => Ok(Self::Failure),
            2 => Ok(Self::Cancelled),
            _ => Err(CoreError::InvalidArgument {
                name: "`outcome`",
                value: value.to_string(),
                requirement: OUTCOME_REQUIREMENT.to_owned(),
            }),
        }
    }
}

/// The events counted per type besides messages and durations.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    RetryAttempts = 0,
    IdempotencyHits = 1,
    IdempotencyMisses = 2,
    RateLimitRejected = 3,
    ConcurrencyRejected = 4,
    DeadLetters = 5,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Self; 6] = [
        Self::RetryAttempts,
        Self::IdempotencyHits,
        Self::IdempotencyMisses,
        Self::RateLimitRejected,
        Self::ConcurrencyRejected,
        Self::DeadLetters,
    ];

    /// The name exporters and the snapshot dicts use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetryAttempts => "retry_attempts",
            Self::IdempotencyHits => "idempotency_hits",
            Self::IdempotencyMisses => "idempotency_misses",
            Self::RateLimitRejected => "rate_limit_rejected",
            Self::ConcurrencyRejected => "concurrency_rejected",
            Self::DeadLetters => "dead_letters",
        }
    }
}

impl TryFrom<i64> for Counter {
    type Error = CoreError;

    fn try_from(value: i64) -> Result<Self, CoreError> {
        usize::try_from(value).ok().and_then(|index| Self::ALL.get(index).copied()).ok_or_else(|| {
            CoreError::InvalidArgument {
                name: "`counter`",
                value: value.to_string(),
                requirement: COUNTER_REQUIREMENT.to_owned(),
            }
        })
    }
}

/// Upper bounds (Prometheus `le`, inclusive) of the duration histogram, in nanoseconds:
/// 5µs, 10µs, 25µs, 50µs, 100µs, 250µs, 500µs, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms,
/// 500ms, 1s, 2.5s, 5s, 10s.
pub const DURATION_BUCKETS_NS: [u64; 20] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets of a histogram: one per bound and the overflow (`+Inf`) bucket.
pub const BUCKETS: usize = DURATION_BUCKETS_NS.len() + 1;

/// The bucket of a duration: the first bound `>= ns`, or the overflow bucket past the last.
#[inline]
pub fn bucket_index(ns: u64) -> usize {
    // NOTE: `partition_point` is a branchless binary search (5 steps over 20 bounds): about 2 ns
    // whatever the duration, where a linear scan took 4-10 ns on random durations (mispredicted
    // exits) and a branchless count of the bounds below took 7 ns (measured on x86-64, release,
    // one million durations log-uniform in 1 µs..100 ms, and uniform in 2..22 µs and 0..20 s).
    DURATION_BUCKETS_NS.partition_point(|&bound| bound < ns)
}

/// The counts now, one `Relaxed` load each.
fn load<const N: usize>(counts: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| counts[i].load(Ordering::Relaxed))
}

/// Seconds as whole nanoseconds, rounded half up: `floor(seconds * 1e9 + 0.5)` in doubles, saturating
/// at `u64::MAX`. Rounding to nearest (not down) makes a duration that was whole nanoseconds turn
/// back into the same nanoseconds (`5001 / 1e9 * 1e9` is `5000.999...`), so a duration given in
/// seconds lands in the bucket its nanoseconds would. NaN, infinite and negative seconds are refused:
/// no clock measures them. The pure core repeats this step by step.
pub fn seconds_to_ns(seconds: f64) -> Result<u64, CoreError> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(CoreError::InvalidArgument {
            name: "`seconds`",
            value: float_repr(seconds),
            requirement: SECONDS_REQUIREMENT.to_owned(),
        });
    }
    // `as` saturates a double above `u64::MAX`.
    Ok((seconds * 1e9 + 0.5).floor() as u64)
}

/// What [`seconds_to_ns`] requires, for a binding that refuses a value before it is a double.
pub const SECONDS_REQUIREMENT: &str = "must be a finite number >= 0";

/// Add `n` to a count, stopping at `u64::MAX` instead of wrapping around.
#[inline]
fn saturating_add(count: &AtomicU64, n: u64) {
    // NOTE: one `fetch_add` on the hot path instead of a compare-and-swap loop; the rare addition
    // that wraps around (584 years of nanoseconds) is put right afterwards. A reader racing with
    // that addition may see the wrapped value once.
    let before = count.fetch_add(n, Ordering::Relaxed);
    if before.checked_add(n).is_none() {
        count.store(u64::MAX, Ordering::Relaxed);
    }
}

/// A histogram of durations over [`DURATION_BUCKETS_NS`], lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative: `buckets[i]` counts the durations in `(bound[i - 1], bound[i]]`, the last
    /// one those above the largest bound.
    buckets: [AtomicU64; BUCKETS],
    /// Nanoseconds, saturating.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    #[inline]
    pub fn observe(&self, ns: u64) {
        self.buckets[bucket_index(ns)].fetch_add(1, Ordering::Relaxed);
        saturating_add(&self.sum_ns, ns);
    }

    /// The bucket counts, non-cumulative.
    pub fn buckets(&self) -> [u64; BUCKETS] {
        load(&self.buckets)
    }

    /// The sum of the durations in nanoseconds (saturated at `u64::MAX`).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }
}

/// The metrics of one message type, recorded lock-free.
#[derive(Debug)]
pub struct TypeMetrics {
    kind: Box<str>,
    name: Box<str>,
    /// Finished messages by [`Outcome`].
    messages: [AtomicU64; 3],
    duration: Histogram,
    /// Messages started and not finished. Signed: a `leave` racing ahead of its `enter` on another
    /// thread (or a caller's bug) shows as a negative number instead of a huge one.
    active: AtomicI64,
    /// Finished event handlers of publishes by [`Outcome`].
    handlers: [AtomicU64; 3],
    /// By [`Counter`].
    counters: [AtomicU64; 6],
}

impl TypeMetrics {
    /// Zeroed metrics of the type `name` of kind `kind` (`command`, `query`, `event`, ...).
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            messages: Default::default(),
            duration: Histogram::default(),
            active: AtomicI64::new(0),
            handlers: Default::default(),
            counters: Default::default(),
        }
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A message starts.
    #[inline]
    pub fn enter(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A message that [`enter`](Self::enter)ed ended with `outcome` after `elapsed_ns`.
    #[inline]
    pub fn leave(&self, outcome: Outcome, elapsed_ns: u64) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.messages[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed_ns);
    }

    /// One event handler of a publish finished with `outcome`.
    #[inline]
    pub fn handler_done(&self, outcome: Outcome) {
        self.handlers[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to `counter` (saturating at `u64::MAX`).
    #[inline]
    pub fn count(&self, counter: Counter, n: u64) {
        saturating_add(&self.counters[counter as usize], n);
    }

    /// The numbers now, as plain data (see the module docs on consistency).
    pub fn snapshot(&self) -> TypeSnapshot {
        let buckets = self.duration.buckets();
        TypeSnapshot {
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            messages: load(&self.messages),
            buckets,
            duration_sum_ns: self.duration.sum_ns(),
            duration_count: buckets.iter().fold(0u64, |total, &n| total.saturating_add(n)),
            active: self.active.load(Ordering::Relaxed),
            handlers: load(&self.handlers),
            counters: load(&self.counters),
        }
    }
}

/// The numbers of one type at one moment, indexed like [`Outcome`] and [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSnapshot {
    pub kind: String,
    pub name: String,
    pub messages: [u64; 3],
    /// Non-cumulative: the count in `(previous bound, bound]`; the last, those above 10 s.
    pub buckets: [u64; BUCKETS],
    pub duration_sum_ns: u64,
    /// The sum of `buckets`.
    pub duration_count: u64,
    pub active: i64,
    pub handlers: [u64; 3],
    pub counters: [u64; 6],
}

/// `(name, kind)` of a type.
type TypeKey = (Box<str>, Box<str>);

/// The metrics of every type, created on first use.
///
/// A mutex guards the map: it is taken when a route compiles and when an exporter reads, never per
/// message (the pipeline keeps the `Arc` it got).
#[derive(Debug, Default)]
pub struct Registry {
    /// Keyed by `(name, kind)`, so that iterating gives the snapshot's order.
    types: Mutex<BTreeMap<TypeKey, Arc<TypeMetrics>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The metrics of `(kind, name)`: the same `Arc` every time, created on the first call.
    pub fn for_type(&self, kind: &str, name: &str) -> Arc<TypeMetrics> {
        let mut types = self.types.lock().unwrap_or_else(PoisonError::into_inner);
        types.entry((name.into(), kind.into())).or_insert_with(|| Arc::new(TypeMetrics::new(kind, name))).clone()
    }

    /// A snapshot of every type, sorted by `(name, kind)`.
    pub fn snapshot(&self) -> Vec<TypeSnapshot> {
        // The snapshots are taken after the lock is released: a route compiling meanwhile waits
        // only for the copy of the `Arc`s.
        let types: Vec<Arc<TypeMetrics>> =
            self.types.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        types.iter().map(|metrics| metrics.snapshot()).collect()
    }

    /// The number of types.
    pub fn len(&self) -> usize {
        self.types.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn bucket_of(ns: u64) -> usize {
        let metrics = TypeMetrics::new("command", "t");
        metrics.enter();
        metrics.leave(Outcome::Success, ns);
        let buckets = metrics.snapshot().buckets;
        assert_eq!(buckets.iter().sum::<u64>(), 1);
        buckets.iter().position(|&n| n == 1).unwrap()
    }

    #[test]
    fn bounds_are_inclusive_and_increasing() {
        assert!(DURATION_BUCKETS_NS.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        for (i, &bound) in DURATION_BUCKETS_NS.iter().enumerate() {
            assert_eq!(bucket_of(bound), i, "exactly on {bound}");
            assert_eq!(bucket_of(bound - 1), if bound == 5_000 { 0 } else { i }, "just below {bound}");
            assert_eq!(bucket_of(bound + 1), i + 1, "just above {bound}");
        }
        assert_eq!(bucket_of(10_000_000_001), 20);
        assert_eq!(bucket_of(u64::MAX), 20);
        for ns in [0, 4_999, 5_000, 5_001, 7_777_777, 10_000_000_000, 10_000_000_001, u64::MAX] {
            let linear = DURATION_BUCKETS_NS.iter().position(|&bound| ns <= bound).unwrap_or(20);
            assert_eq!(bucket_index(ns), linear, "{ns}");
        }
    }

    #[test]
    #[allow(clippy::cast_precision_loss)] // nanoseconds below 2**53, exact as doubles
    fn seconds_round_half_up_to_whole_nanoseconds() {
        let cases = [
            (0.0, 0),
            (-0.0, 0),
            (4e-10, 0),
            (5e-10, 1),
            (5e-6, 5_000),
            (5.000_001e-6, 5_000),
            (5.001e-6, 5_001),
            (5_001.0 / 1e9, 5_001),
            (11.0, 11_000_000_000),
            (1e300, u64::MAX),
        ];
        for (seconds, ns) in cases {
            assert_eq!(seconds_to_ns(seconds).unwrap(), ns, "{seconds:?}");
        }
        for ns in [1u64, 999, 4_999, 5_001, 9_999_999_999, 10_000_000_001] {
            assert_eq!(seconds_to_ns(ns as f64 / 1e9).unwrap(), ns, "round trip of {ns}");
        }
        let error = |seconds: f64| seconds_to_ns(seconds).unwrap_err().to_string();
        assert_eq!(error(f64::NAN), "`seconds` `nan` must be a finite number >= 0");
        assert_eq!(error(f64::INFINITY), "`seconds` `inf` must be a finite number >= 0");
        assert_eq!(error(-1.0), "`seconds` `-1.0` must be a finite number >= 0");
        assert_eq!(error(-5e-324), "`seconds` `-5e-324` must be a finite number >= 0");
    }

    #[test]
    fn leave_counts_outcomes_durations_and_active() {
        let metrics = TypeMetrics::new("query", "orders.get");
        assert_eq!((metrics.kind(), metrics.name()), ("query", "orders.get"));
        metrics.enter();
        metrics.enter();
        metrics.enter();
        assert_eq!(metrics.snapshot().active, 3);
        metrics.leave(Outcome::Success, 1_000);
        metrics.leave(Outcome::Failure, 2_000_000);
        assert_eq!(metrics.snapshot().active, 1);
        metrics.leave(Outcome::Cancelled, 20_000_000_000);
        metrics.leave(Outcome::Success, 3_000);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.active, -1, "a leave without its enter shows");
        assert_eq!(snapshot.messages, [2, 1, 1]);
        assert_eq!(snapshot.duration_count, 4);
        assert_eq!(snapshot.duration_sum_ns, 20_002_004_000);
        assert_eq!((snapshot.buckets[0], snapshot.buckets[8], snapshot.buckets[20]), (2, 1, 1));
        assert_eq!(snapshot.handlers, [0, 0, 0]);
        assert_eq!(snapshot.counters, [0; 6]);
    }

    #[test]
    fn handlers_and_counters() {
        let metrics = TypeMetrics::new("event", "orders.created");
        metrics.handler_done(Outcome::Success);
        metrics.handler_done(Outcome::Success);
        metrics.handler_done(Outcome::Cancelled);
        for (i, counter) in Counter::ALL.into_iter().enumerate() {
            metrics.count(counter, i as u64 + 1);
        }
        metrics.count(Counter::DeadLetters, 0);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.handlers, [2, 0, 1]);
        assert_eq!(snapshot.counters, [1, 2, 3, 4, 5, 6]);
        assert_eq!(snapshot.messages, [0, 0, 0]);
        assert_eq!(snapshot.duration_count, 0);
    }

    #[test]
    fn sums_and_counters_saturate() {
        let metrics = TypeMetrics::new("command", "t");
        metrics.leave(Outcome::Success, u64::MAX - 1);
        metrics.leave(Outcome::Success, 5);
        metrics.count(Counter::RetryAttempts, u64::MAX);
        metrics.count(Counter::RetryAttempts, 1);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.duration_sum_ns, u64::MAX);
        assert_eq!(snapshot.counters[0], u64::MAX);
        assert_eq!(snapshot.buckets[20], 1);
        assert_eq!(snapshot.buckets[0], 1);
    }

    #[test]
    fn indices_convert_and_name_the_value() {
        assert_eq!(Outcome::try_from(2).unwrap(), Outcome::Cancelled);
        assert_eq!(Outcome::try_from(7).unwrap_err().to_string(), "`outcome` `7` must be 0, 1 or 2");
        assert!(Outcome::try_from(-1).is_err());
        assert_eq!(Counter::try_from(5).unwrap(), Counter::DeadLetters);
        assert_eq!(Counter::try_from(6).unwrap_err().to_string(), "`counter` `6` must be between 0 and 5");
        assert!(Counter::try_from(-1).is_err());
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i);
        }
        for (i, counter) in Counter::ALL.into_iter().enumerate() {
            assert_eq!(counter as usize, i);
            assert_eq!(Counter::try_from(i as i64).unwrap(), counter);
        }
        assert_eq!(Outcome::Failure.as_str(), "failure");
        assert_eq!(Counter::RateLimitRejected.as_str(), "rate_limit_rejected");
    }

    #[test]
    fn registry_gets_or_creates_and_snapshots_in_order() {
        let registry = Registry::new();
        assert!(registry.is_empty());
        let create = registry.for_type("command", "orders.create");
        let created_event = registry.for_type("event", "orders.create");
        let get = registry.for_type("query", "orders.get");
        assert!(Arc::ptr_eq(&create, &registry.for_type("command", "orders.create")));
        assert!(!Arc::ptr_eq(&create, &created_event), "same name, another kind");
        assert_eq!(registry.len(), 3);
        let billing = registry.for_type("command", "billing.charge");
        create.enter();
        create.leave(Outcome::Failure, 10);
        assert_eq!(registry.for_type("command", "orders.create").snapshot().messages, [0, 1, 0]);
        let order: Vec<(String, String)> =
            registry.snapshot().into_iter().map(|snapshot| (snapshot.name, snapshot.kind)).collect();
        assert_eq!(
            order,
            [
                ("billing.charge".to_owned(), "command".to_owned()),
                ("orders.create".to_owned(), "command".to_owned()),
                ("orders.create".to_owned(), "event".to_owned()),
                ("orders.get".to_owned(), "query".to_owned()),
            ]
        );
        assert_eq!(registry.snapshot()[1], create.snapshot());
        drop((get, billing));
        assert_eq!(registry.len(), 4, "the registry keeps what it created");
    }

    #[test]
    fn four_threads_record_exact_totals() {
        const PER_THREAD: u64 = 10_000;
        let registry = Arc::new(Registry::new());
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4u64)
            .map(|thread| {
                let (registry, barrier) = (registry.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let metrics = registry.for_type("command", "orders.create");
                    barrier.wait();
                    for i in 0..PER_THREAD {
                        metrics.enter();
                        let outcome = Outcome::ALL[(i % 3) as usize];
                        metrics.leave(outcome, DURATION_BUCKETS_NS[(i % 20) as usize] + thread);
                        metrics.handler_done(outcome);
                        metrics.count(Counter::RetryAttempts, 2);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(registry.len(), 1);
        let snapshot = registry.for_type("command", "orders.create").snapshot();
        let total = 4 * PER_THREAD;
        assert_eq!(snapshot.active, 0);
        assert_eq!(snapshot.messages, [13_336, 13_332, 13_332]);
        assert_eq!(snapshot.handlers, snapshot.messages);
        assert_eq!(snapshot.duration_count, total);
        assert_eq!(snapshot.counters, [2 * total, 0, 0, 0, 0, 0]);
        // Thread 0 hits every bound exactly, threads 1-3 land one bucket up.
        let per_bound = PER_THREAD / 20;
        assert_eq!(snapshot.buckets[0], per_bound);
        assert!(snapshot.buckets[1..20].iter().all(|&n| n == 4 * per_bound));
        assert_eq!(snapshot.buckets[20], 3 * per_bound);
        let bounds: u64 = DURATION_BUCKETS_NS.iter().sum();
        assert_eq!(snapshot.duration_sum_ns, 4 * per_bound * bounds + per_bound * 20 * (1 + 2 + 3));
    }
}
