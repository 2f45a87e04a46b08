//! Snowflake message ids: 63 bits of `timestamp | worker | sequence`.
//!
//! Invariant: every id a generator returns is greater than every id it returned before, on any
//! thread. The generator keeps `(last_ms << sequence_bits) | sequence` in one `AtomicU64` and only
//! ever moves it forward with compare-and-swap, so the ids (a monotone function of that word) are
//! strictly increasing even when the wall clock steps back. When the sequence of a millisecond is
//! spent, the state borrows the next millisecond instead of spinning until the clock gets there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::CoreError;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;

/// 44 bits of milliseconds (557 years), 8 bits of worker id, 11 bits of sequence (2048 ids per ms).
pub const DEFAULT_LAYOUT: Layout = Layout { timestamp_bits: 44, worker_bits: 8, sequence_bits: 11 };

/// How the 63 bits of an id are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub timestamp_bits: u32,
    pub worker_bits: u32,
    pub sequence_bits: u32,
}

impl Layout {
    /// A layout of `(timestamp, worker, sequence)` bits; they must sum to 63, timestamp and sequence
    /// need at least one bit each, the worker id may have none.
    pub fn new(timestamp_bits: i64, worker_bits: i64, sequence_bits: i64) -> Result<Self, CoreError> {
        let layout = (timestamp_bits, worker_bits, sequence_bits);
        let invalid = |reason: String| Err(CoreError::InvalidLayout { layout, reason });
        if timestamp_bits < 1 || sequence_bits < 1 || worker_bits < 0 {
            return invalid("needs at least 1 timestamp bit, 1 sequence bit and no negative part".to_owned());
        }
        let sum = i128::from(timestamp_bits) + i128::from(worker_bits) + i128::from(sequence_bits);
        if sum != 63 {
            return invalid(format!("must sum to 63 bits, not `{sum}`"));
        }
        Ok(Self {
            timestamp_bits: timestamp_bits as u32,
            worker_bits: worker_bits as u32,
            sequence_bits: sequence_bits as u32,
        })
    }

    fn max_timestamp(self) -> u64 {
        (1u64 << self.timestamp_bits) - 1
    }

    fn sequence_mask(self) -> u64 {
        (1u64 << self.sequence_bits) - 1
    }
}

/// The fields of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    /// Unix milliseconds at which the id was made.
    pub timestamp_ms: u64,
    pub worker_id: u64,
    pub sequence: u64,
}

/// A source of Unix milliseconds; injectable so tests control time.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0; the generator's forward-only state absorbs it.
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A lock-free snowflake generator.
#[derive(Debug)]
pub struct IdGenerator<C: Clock = SystemClock> {
    layout: Layout,
    worker_id: AtomicU64,
    epoch_ms: u64,
    /// `(last_ms << sequence_bits) | sequence` of the last id, or `UNUSED` before the first.
    state: AtomicU64,
    clock: C,
}

/// The state before the first id: no real state is this large (it would need 64 - s ms bits).
const UNUSED: u64 = u64::MAX;

impl IdGenerator<SystemClock> {
    /// A generator on the system clock; the epoch may not lie in the future.
    pub fn new(worker_id: i64, epoch_ms: i64, layout: Layout) -> Result<Self, CoreError> {
        Self::with_clock(worker_id, epoch_ms, layout, SystemClock)
    }
}

impl<C: Clock> IdGenerator<C> {
    pub fn with_clock(worker_id: i64, epoch_ms: i64, layout: Layout, clock: C) -> Result<Self, CoreError> {
        if worker_id < 0 || (worker_id as u64) >> layout.worker_bits != 0 {
            return Err(CoreError::InvalidWorkerId { worker_id, bits: layout.worker_bits });
        }
        if epoch_ms < 0 || epoch_ms as u64 > clock.now_ms() {
            return Err(CoreError::InvalidEpoch { epoch_ms });
        }
        Ok(Self {
            layout,
            worker_id: AtomicU64::new(worker_id as u64),
            epoch_ms: epoch_ms as u64,
            state: AtomicU64::new(UNUSED),
            clock,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn worker_id(&self) -> u64 {
        self.worker_id.load(Ordering::Relaxed)
    }

    /// Stamp a new worker id into the ids from now on (a process that leased one, or a forked
    /// child). The current millisecond is marked spent first, so the ids stay increasing whatever
    /// the new worker id is; call it before other threads make ids, or they may interleave.
    pub fn set_worker_id(&self, worker_id: i64) -> Result<(), CoreError> {
        let bits = self.layout.worker_bits;
        if worker_id < 0 || (worker_id as u64) >> bits != 0 {
            return Err(CoreError::InvalidWorkerId { worker_id, bits });
        }
        // Mark the current millisecond as spent: the next id borrows the following one.
        let mask = self.layout.sequence_mask();
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| (state != UNUSED).then_some(state | mask));
        self.worker_id.store(worker_id as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// The next id.
    pub fn next_id(&self) -> Result<u64, CoreError> {
        let now = self.clock.now_ms().saturating_sub(self.epoch_ms);
        let (s, mask) = (self.layout.sequence_bits, self.layout.sequence_mask());
        // NOTE: Relaxed suffices: all updates are RMWs of one atomic, whose modification order is
        // total, so every caller sees a distinct, larger state than any it could have observed.
        let mut current = self.state.load(Ordering::Relaxed);
        let next = loop {
            let (last_ms, sequence) = (current >> s, current & mask);
            let next = if current == UNUSED || now > last_ms {
                now << s
            } else if sequence < mask {
                current + 1
            } else {
                (last_ms + 1) << s
            };
            match self.state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(actual) => current = actual,
            }
        };
        let elapsed_ms = next >> s;
        if elapsed_ms > self.layout.max_timestamp() {
            let Layout { timestamp_bits, worker_bits, sequence_bits } = self.layout;
            return Err(CoreError::TimestampOverflow {
                elapsed_ms,
                layout: (timestamp_bits, worker_bits, sequence_bits),
            });
        }
        let worker_id = self.worker_id.load(Ordering::Relaxed);
        Ok((elapsed_ms << (self.layout.worker_bits + s)) | (worker_id << s) | (next & mask))
    }

    /// `n` ids in increasing order.
    pub fn next_many(&self, n: i64) -> Result<Vec<u64>, CoreError> {
        if n < 1 {
            return Err(CoreError::InvalidCount { n });
        }
        (0..n).map(|_| self.next_id()).collect()
    }

    /// Split an id of this generator's layout and epoch.
    pub fn parse(&self, id: i128) -> Result<IdParts, CoreError> {
        parse(id, self.layout, self.epoch_ms)
    }
}

/// Split an id of the given layout and epoch.
pub fn parse(id: i128, layout: Layout, epoch_ms: u64) -> Result<IdParts, CoreError> {
    if !(0..1i128 << 63).contains(&id) {
        return Err(CoreError::InvalidId { id });
    }
    let id = id as u64;
    let s = layout.sequence_bits;
    Ok(IdParts {
        timestamp_ms: (id >> (layout.worker_bits + s)) + epoch_ms,
        worker_id: (id >> s) & ((1u64 << layout.worker_bits) - 1),
        sequence: id & layout.sequence_mask(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// A clock that stands still until moved.
    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Clock for Arc<ManualClock> {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn manual(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }

    #[test]
    fn default_layout_round_trips() {
        let gen = IdGenerator::new(7, DEFAULT_EPOCH_MS as i64, DEFAULT_LAYOUT).unwrap();
        let before = SystemClock.now_ms();
        let id = gen.next_id().unwrap();
        let parts = gen.parse(i128::from(id)).unwrap();
        assert_eq!(parts.worker_id, 7);
        assert_eq!(parts.sequence, 0);
        assert!(parts.timestamp_ms >= before && parts.timestamp_ms <= SystemClock.now_ms());
        assert!(id < 1 << 63);
    }

    #[test]
    fn layout_validation_names_the_values() {
        assert_eq!(Layout::new(44, 8, 11), Ok(DEFAULT_LAYOUT));
        assert!(Layout::new(52, 0, 11).is_ok());
        let err = Layout::new(40, 8, 11).unwrap_err();
        assert_eq!(err.to_string(), "id layout `(40, 8, 11)` must sum to 63 bits, not `59`");
        assert!(Layout::new(63, 0, 0).is_err());
        assert!(Layout::new(0, 52, 11).is_err());
        assert!(Layout::new(60, -8, 11).is_err());
    }

    #[test]
    fn worker_and_epoch_validation() {
        let err = IdGenerator::new(256, 0, DEFAULT_LAYOUT).unwrap_err();
        assert_eq!(err.to_string(), "worker id `256` does not fit in `8` bits (0..=255)");
        assert!(IdGenerator::new(-1, 0, DEFAULT_LAYOUT).is_err());
        assert!(IdGenerator::new(255, 0, DEFAULT_LAYOUT).is_ok());
        assert!(IdGenerator::new(1, 0, Layout::new(52, 0, 11).unwrap()).is_err());
        assert!(IdGenerator::new(0, -5, DEFAULT_LAYOUT).is_err());
        assert!(IdGenerator::new(0, i64::MAX, DEFAULT_LAYOUT).is_err());
    }

    #[test]
    fn sequence_overflow_borrows_the_next_millisecond() {
        let clock = manual(1_000);
        let layout = Layout::new(50, 8, 5).unwrap();
        let gen = IdGenerator::with_clock(3, 0, layout, Arc::clone(&clock)).unwrap();
        let ids = gen.next_many(100).unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let stamps: Vec<u64> = ids.iter().map(|&i| gen.parse(i128::from(i)).unwrap().timestamp_ms).collect();
        // 32 ids per millisecond: 100 ids span 4 milliseconds although the clock never moved.
        assert_eq!(stamps[0], 1_000);
        assert_eq!(stamps[31], 1_000);
        assert_eq!(stamps[32], 1_001);
        assert_eq!(stamps[99], 1_003);
        // When the clock catches up, the sequence restarts at the clock's millisecond.
        clock.0.store(1_010, Ordering::Relaxed);
        let parts = gen.parse(i128::from(gen.next_id().unwrap())).unwrap();
        assert_eq!((parts.timestamp_ms, parts.sequence), (1_010, 0));
    }

    #[test]
    fn clock_stepping_back_keeps_ids_increasing() {
        let clock = manual(5_000);
        let gen = IdGenerator::with_clock(0, 0, DEFAULT_LAYOUT, Arc::clone(&clock)).unwrap();
        let a = gen.next_id().unwrap();
        clock.0.store(4_000, Ordering::Relaxed);
        let b = gen.next_id().unwrap();
        assert!(b > a);
        assert_eq!(gen.parse(i128::from(b)).unwrap().timestamp_ms, 5_000);
    }

    #[test]
    fn timestamp_overflow_is_an_error() {
        let layout = Layout::new(10, 8, 45).unwrap();
        let gen = IdGenerator::with_clock(0, 0, layout, manual(5_000)).unwrap();
        let err = gen.next_id().unwrap_err();
        assert_eq!(err, CoreError::TimestampOverflow { elapsed_ms: 5_000, layout: (10, 8, 45) });
        assert_eq!(
            err.to_string(),
            "`5000` ms since the epoch do not fit in the 10 timestamp bits of id layout `(10, 8, 45)`"
        );
    }

    #[test]
    fn first_id_at_the_epoch_has_sequence_zero() {
        let gen = IdGenerator::with_clock(0, 1_000, DEFAULT_LAYOUT, manual(1_000)).unwrap();
        let parts = gen.parse(i128::from(gen.next_id().unwrap())).unwrap();
        assert_eq!((parts.timestamp_ms, parts.sequence), (1_000, 0));
    }

    #[test]
    fn changing_the_worker_id_keeps_ids_increasing() {
        let gen = IdGenerator::with_clock(200, 0, DEFAULT_LAYOUT, manual(7_000)).unwrap();
        let before = gen.next_id().unwrap();
        gen.set_worker_id(3).unwrap();
        let after = gen.next_id().unwrap();
        assert!(after > before);
        let parts = gen.parse(i128::from(after)).unwrap();
        assert_eq!((parts.timestamp_ms, parts.worker_id, parts.sequence), (7_001, 3, 0));
        assert!(gen.set_worker_id(256).is_err());
        assert_eq!(gen.worker_id(), 3);
    }

    #[test]
    fn strictly_increasing_across_threads() {
        let gen = Arc::new(IdGenerator::new(1, DEFAULT_EPOCH_MS as i64, DEFAULT_LAYOUT).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let gen = Arc::clone(&gen);
                std::thread::spawn(move || (0..50_000).map(|_| gen.next_id().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            let ids = handle.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            all.extend(ids);
        }
        assert_eq!(all.len(), 200_000);
    }

    #[test]
    fn count_and_id_validation() {
        let gen = IdGenerator::new(0, 0, DEFAULT_LAYOUT).unwrap();
        assert_eq!(gen.next_many(0), Err(CoreError::InvalidCount { n: 0 }));
        assert!(gen.parse(-1).is_err());
        assert!(gen.parse(1 << 63).is_err());
        assert!(gen.parse((1 << 63) - 1).is_ok());
    }
}
