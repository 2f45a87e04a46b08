//! The in-memory cache of query results: `(group, key bytes) → value`, each entry with its own TTL.
//!
//! `group` is the query type, `key` the encoding of the query's fields, so a whole type can be
//! invalidated at once ([`CacheTable::invalidate_group`]) or by a test on the key bytes
//! ([`CacheTable::invalidate_where`]).
//!
//! Invariants:
//!
//! - An expired entry counts as absent: `get` compares its expiry with `now` and drops it (a miss).
//!   Each `put` also drops up to [`SWEEP_STEP`] expired entries from the front of the insertion
//!   queue, stopping at the first live one (TTLs differ per entry, so this sweep is best effort;
//!   [`CacheTable::purge_expired`] scans everything). [`CacheTable::len`] counts expired entries
//!   that are still held.
//! - At most `max_entries` entries: a `put` of a new key into a full table drops the oldest entry
//!   (least recently put; counted in `evictions` unless it had expired).
//! - One lock, not shards: invalidation works on a whole group, which shards would split (every
//!   invalidation would lock every shard, and a group's entries would be evicted by per-shard rather
//!   than global age); a lookup hashes the key bytes and costs far more than the uncontended lock
//!   (≈ 8 ns); under the GIL Rust locks never contend; and only queries that opt in use the cache.
//!   Sharding can come later behind the same API if free-threaded benchmarks ask for it.
//! - Key bytes come from user data, so they are hashed with the standard `RandomState` (`SipHash`,
//!   seeded per process): chosen keys cannot force collisions.
//! - No value is dropped and no caller code runs while the lock is held, except the `read` closure
//!   of [`CacheTable::get_with`]: removed values are dropped after the guard is released, and the
//!   predicate of `invalidate_where` runs on a snapshot of the group's keys, outside the lock.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use crate::error::CoreError;
use crate::idempotency::{lock, try_lock, SeededState};

/// At most this many expired entries are dropped by one `put`.
pub const SWEEP_STEP: usize = 8;

/// Queues may hold this many stale items beyond twice the entries before they are rebuilt.
const COMPACT_SLACK: usize = 16;

struct Entry<V> {
    expires_ns: u64,
    /// Matches the live queue item of this entry; other items of the key are stale.
    stamp: u64,
    value: V,
}

type Group<V> = HashMap<Arc<[u8]>, Entry<V>, RandomState>;

struct Inner<V> {
    groups: HashMap<u64, Group<V>, SeededState>,
    /// `(group, key, stamp)` in the order of the puts; see `Entry::stamp`.
    order: VecDeque<(u64, Arc<[u8]>, u64)>,
    len: usize,
    next_stamp: u64,
    key_hasher: RandomState,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl<V> Inner<V> {
    fn remove(&mut self, group: u64, key: &[u8]) -> Option<V> {
        let entries = self.groups.get_mut(&group)?;
        let entry = entries.remove(key)?;
        if entries.is_empty() {
            self.groups.remove(&group);
        }
        self.len -= 1;
        Some(entry.value)
    }

    /// The expiry of the oldest live entry, dropping stale queue items on the way.
    fn front(&mut self) -> Option<u64> {
        while let Some((group, key, stamp)) = self.order.front() {
            match self.groups.get(group).and_then(|entries| entries.get(key)) {
                Some(entry) if entry.stamp == *stamp => return Some(entry.expires_ns),
                _ => drop(self.order.pop_front()),
            }
        }
        None
    }

    fn pop_front(&mut self, garbage: &mut Vec<V>) {
        if let Some((group, key, _)) = self.order.pop_front() {
            garbage.extend(self.remove(group, &key));
        }
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.len + COMPACT_SLACK {
            let groups = &self.groups;
            self.order.retain(|(group, key, stamp)| {
                groups.get(group).and_then(|entries| entries.get(key)).is_some_and(|entry| entry.stamp == *stamp)
            });
        }
    }
}

/// A bounded cache of query results with a TTL per entry.
pub struct CacheTable<V> {
    inner: Mutex<Inner<V>>,
    max_entries: usize,
}

impl<V> CacheTable<V> {
    pub fn new(max_entries: i64) -> Result<Self, CoreError> {
        if max_entries < 1 {
            return Err(CoreError::InvalidArgument {
                name: "max_entries",
                value: max_entries.to_string(),
                requirement: "must be an int from 1 to 2**63 - 1".to_owned(),
            });
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                groups: HashMap::with_hasher(SeededState::new()),
                order: VecDeque::new(),
                len: 0,
                next_stamp: 0,
                key_hasher: RandomState::new(),
                hits: 0,
                misses: 0,
                evictions: 0,
            }),
            max_entries: max_entries as usize,
        })
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The value stored under `(group, key)`, made by `read` (under the lock: it must be quick and
    /// must not use the cache), or `None` when absent or expired.
    pub fn get_with<R>(&self, group: u64, key: &[u8], now_ns: u64, read: impl FnOnce(&V) -> R) -> Option<R> {
        let expired = {
            let mut inner = lock(&self.inner);
            let expires_ns = match inner.groups.get(&group).and_then(|entries| entries.get(key)) {
                Some(entry) if now_ns < entry.expires_ns => {
                    let value = read(&entry.value);
                    inner.hits += 1;
                    return Some(value);
                }
                Some(entry) => Some(entry.expires_ns),
                None => None,
            };
            inner.misses += 1;
            expires_ns.and_then(|_| inner.remove(group, key))
        };
        drop(expired);
        None
    }

    /// Store `value` under `(group, key)` for `ttl_ns` from `now_ns`, replacing what was there.
    pub fn put(&self, group: u64, key: &[u8], value: V, ttl_ns: u64, now_ns: u64) -> Result<(), CoreError> {
        if ttl_ns == 0 {
            return Err(CoreError::InvalidArgument {
                name: "ttl_ns",
                value: "0".to_owned(),
                requirement: "must be at least 1 nanosecond".to_owned(),
            });
        }
        let mut garbage = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let inner = &mut *inner;
            for _ in 0..SWEEP_STEP {
                if inner.front().is_none_or(|expires| now_ns < expires) {
                    break;
                }
                inner.pop_front(&mut garbage);
            }
            let stamp = inner.next_stamp;
            inner.next_stamp += 1;
            let entry = Entry { expires_ns: now_ns.saturating_add(ttl_ns), stamp, value };
            let existing = inner.groups.get(&group).and_then(|entries| entries.get_key_value(key));
            if let Some(shared) = existing.map(|(shared, _)| Arc::clone(shared)) {
                let entries = inner.groups.get_mut(&group).expect("found above");
                garbage.extend(entries.insert(Arc::clone(&shared), entry).map(|old| old.value));
                inner.order.push_back((group, shared, stamp));
            } else {
                while inner.len >= self.max_entries {
                    let Some(expires) = inner.front() else { break };
                    inner.pop_front(&mut garbage);
                    if now_ns < expires {
                        inner.evictions += 1;
                    }
                }
                let shared: Arc<[u8]> = Arc::from(key);
                let hasher = inner.key_hasher.clone();
                let entries = inner.groups.entry(group).or_insert_with(|| HashMap::with_hasher(hasher));
                entries.insert(Arc::clone(&shared), entry);
                inner.order.push_back((group, shared, stamp));
                inner.len += 1;
            }
            inner.compact();
        }
        drop(garbage);
        Ok(())
    }

    /// Drop every entry of `group`; returns how many were dropped (expired ones included).
    pub fn invalidate_group(&self, group: u64) -> usize {
        let Some(entries) = lock(&self.inner).groups.remove(&group) else { return 0 };
        let count = entries.len();
        {
            let mut inner = lock(&self.inner);
            inner.len -= count;
            inner.compact();
        }
        drop(entries);
        count
    }

    /// Drop the entries of `group` whose key bytes `matches`; returns how many were dropped.
    pub fn invalidate_where(&self, group: u64, mut matches: impl FnMut(&[u8]) -> bool) -> usize {
        let result: Result<usize, Infallible> = self.try_invalidate_where(group, |key| Ok(matches(key)));
        result.unwrap_or_else(|never| match never {})
    }

    /// [`invalidate_where`](Self::invalidate_where) with a predicate that may fail: the first error
    /// is returned and nothing is dropped. The predicate runs outside the lock, on a snapshot of the
    /// group's keys; a key put again meanwhile is dropped all the same (the test is on the key).
    pub fn try_invalidate_where<E>(
        &self,
        group: u64,
        mut matches: impl FnMut(&[u8]) -> Result<bool, E>,
    ) -> Result<usize, E> {
        let keys: Vec<Arc<[u8]>> = {
            let inner = lock(&self.inner);
            inner.groups.get(&group).map_or_else(Vec::new, |entries| entries.keys().cloned().collect())
        };
        let mut doomed = Vec::new();
        for key in keys {
            if matches(&key)? {
                doomed.push(key);
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut garbage = Vec::with_capacity(doomed.len());
        {
            let mut inner = lock(&self.inner);
            for key in &doomed {
                garbage.extend(inner.remove(group, key));
            }
            inner.compact();
        }
        Ok(garbage.len())
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        lock(&self.inner).len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hits(&self) -> u64 {
        lock(&self.inner).hits
    }

    /// Lookups that found nothing or an expired entry.
    pub fn misses(&self) -> u64 {
        lock(&self.inner).misses
    }

    /// Live entries dropped to make room.
    pub fn evictions(&self) -> u64 {
        lock(&self.inner).evictions
    }

    /// Drop every entry (the counters stay).
    pub fn clear(&self) {
        let groups = {
            let mut inner = lock(&self.inner);
            inner.order = VecDeque::new();
            inner.len = 0;
            let hasher = *inner.groups.hasher();
            std::mem::replace(&mut inner.groups, HashMap::with_hasher(hasher))
        };
        drop(groups);
    }

    /// Drop every expired entry now; returns how many were dropped.
    pub fn purge_expired(&self, now_ns: u64) -> usize {
        let mut garbage = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let expired: Vec<(u64, Arc<[u8]>)> = inner
                .groups
                .iter()
                .flat_map(|(&group, entries)| {
                    entries
                        .iter()
                        .filter(|(_, entry)| now_ns >= entry.expires_ns)
                        .map(move |(key, _)| (group, Arc::clone(key)))
                })
                .collect();
            for (group, key) in expired {
                garbage.extend(inner.remove(group, &key));
            }
            inner.compact();
        }
        garbage.len()
    }

    /// Call `visit` on every stored value, unless another thread holds the lock. For a garbage
    /// collector's traversal, which must never block; stops at the first error.
    pub fn try_visit<E>(&self, mut visit: impl FnMut(&V) -> Result<(), E>) -> Result<(), E> {
        if let Some(inner) = try_lock(&self.inner) {
            inner.groups.values().flat_map(HashMap::values).try_for_each(|entry| visit(&entry.value))?;
        }
        Ok(())
    }
}

impl<V: Clone> CacheTable<V> {
    /// [`get_with`](Self::get_with), cloning the stored value.
    pub fn get(&self, group: u64, key: &[u8], now_ns: u64) -> Option<V> {
        self.get_with(group, key, now_ns, V::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn cache(max_entries: i64) -> CacheTable<String> {
        CacheTable::new(max_entries).unwrap()
    }

    fn put(c: &CacheTable<String>, group: u64, key: &str, ttl: u64, now: u64) {
        c.put(group, key.as_bytes(), key.to_uppercase(), ttl, now).unwrap();
    }

    #[test]
    fn get_put_hits_and_misses() {
        let c = cache(10);
        assert_eq!(c.get(1, b"a", 0), None);
        put(&c, 1, "a", 100, 0);
        assert_eq!(c.get(1, b"a", 1), Some("A".to_owned()));
        assert_eq!(c.get(2, b"a", 1), None, "groups are separate");
        assert_eq!((c.hits(), c.misses(), c.len()), (1, 2, 1));
        c.put(1, b"a", "new".to_owned(), 100, 2).unwrap();
        assert_eq!(c.get(1, b"a", 3), Some("new".to_owned()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn ttl_is_per_entry() {
        let c = cache(10);
        put(&c, 1, "short", 10, 0);
        put(&c, 1, "long", 1_000, 0);
        assert_eq!(c.get(1, b"short", 9), Some("SHORT".to_owned()));
        assert_eq!(c.get(1, b"short", 10), None);
        assert_eq!(c.len(), 1, "an expired entry is dropped when looked up");
        assert_eq!(c.get(1, b"long", 999), Some("LONG".to_owned()));
        assert_eq!(c.get(1, b"long", 1_000), None);
        assert!(c.is_empty());
        assert_eq!(
            c.put(1, b"x", String::new(), 0, 0).unwrap_err().to_string(),
            "ttl_ns `0` must be at least 1 nanosecond"
        );
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_put() {
        let c = cache(3);
        for key in ["a", "b", "c"] {
            put(&c, 1, key, 100, 0);
        }
        put(&c, 1, "a", 100, 1); // refreshed: now the newest
        put(&c, 2, "d", 100, 2);
        assert_eq!(c.get(1, b"b", 3), None);
        assert_eq!(c.get(1, b"a", 3), Some("A".to_owned()));
        assert_eq!((c.evictions(), c.len()), (1, 3));
    }

    #[test]
    fn expired_entries_go_first_and_are_not_evictions() {
        let c = cache(2);
        put(&c, 1, "a", 5, 0);
        put(&c, 1, "b", 100, 0);
        put(&c, 1, "c", 100, 10);
        assert_eq!((c.evictions(), c.len()), (0, 2));
        assert_eq!(c.get(1, b"b", 11), Some("B".to_owned()));
    }

    #[test]
    fn the_sweep_drops_expired_entries_from_the_front() {
        let c = cache(100);
        for i in 0..20 {
            put(&c, 1, &format!("k{i}"), 10, 0);
        }
        put(&c, 1, "new", 10, 50);
        assert_eq!(c.len(), 20 - SWEEP_STEP + 1);
        assert_eq!(c.purge_expired(50), 20 - SWEEP_STEP);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn invalidation() {
        let c = cache(100);
        for key in ["o1", "o2", "x1"] {
            put(&c, 1, key, 100, 0);
        }
        put(&c, 2, "o1", 100, 0);
        assert_eq!(c.invalidate_where(1, |key| key.starts_with(b"o")), 2);
        assert_eq!(c.get(1, b"x1", 1), Some("X1".to_owned()));
        assert_eq!(c.get(2, b"o1", 1), Some("O1".to_owned()));
        assert_eq!(c.invalidate_where(3, |_| true), 0);
        assert_eq!(c.invalidate_group(1), 1);
        assert_eq!(c.invalidate_group(1), 0);
        assert_eq!(c.len(), 1);
        let failed: Result<usize, &str> = c.try_invalidate_where(2, |_| Err("boom"));
        assert_eq!(failed, Err("boom"));
        assert_eq!(c.len(), 1, "nothing dropped when the predicate fails");
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.hits(), 2);
    }

    #[test]
    fn queues_stay_bounded_under_churn() {
        let c = cache(4);
        for i in 0..10_000u64 {
            put(&c, i % 3, "k", 100, i);
            c.invalidate_group(i % 3);
        }
        assert!(lock(&c.inner).order.len() <= 2 * 4 + COMPACT_SLACK + 1);
    }

    #[test]
    fn validation_names_the_parameter() {
        let err = CacheTable::<u8>::new(0).err().unwrap();
        assert_eq!(err.to_string(), "max_entries `0` must be an int from 1 to 2**63 - 1");
    }

    #[test]
    fn eight_threads_keep_the_bound_and_the_counts() {
        let c: Arc<CacheTable<u64>> = Arc::new(CacheTable::new(500).unwrap());
        let gets = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8u64)
            .map(|thread| {
                let (c, gets) = (Arc::clone(&c), Arc::clone(&gets));
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let key = ((i * 31 + thread) % 1_000).to_le_bytes();
                        gets.fetch_add(1, Ordering::Relaxed);
                        match c.get(i % 4, &key, i) {
                            Some(value) => assert_eq!(value, u64::from_le_bytes(key)),
                            None => c.put(i % 4, &key, u64::from_le_bytes(key), 1_000, i).unwrap(),
                        }
                        if i % 5_000 == 0 {
                            c.invalidate_where(thread % 4, |key| key[0] % 2 == 0);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(c.hits() + c.misses(), gets.load(Ordering::Relaxed));
        assert!(c.len() <= 500);
        assert!(c.evictions() > 0);
    }
}
