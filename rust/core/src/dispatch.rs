//! The dispatch table: message type identity → compiled route.
//!
//! Keys are the addresses of the Python type objects (the binding keeps each type alive while its
//! entry exists, so an address cannot be reused under a live key). Reads take no lock: the map
//! sits behind an `ArcSwap` and writers replace it whole (copy on write), which suits a table that
//! is written once per message type and read on every message.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A hasher for pointer-sized keys: one multiply, no `SipHash` rounds.
///
/// Type objects are 8- or 16-byte aligned, so the low bits carry no information; the Fibonacci
/// multiply spreads the high bits over the whole word before the map takes its low bits.
#[derive(Default, Clone, Copy)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, key: usize) {
        self.0 = (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_right(29);
    }
}

type Map<V> = HashMap<usize, V, BuildHasherDefault<AddressHasher>>;

/// A copy-on-write map from type address to route, read without locks.
///
/// Compiling a route runs user code, which may change the registrations meanwhile; the generation
/// counter lets the compiler detect that and not cache a route compiled from stale registrations.
pub struct DispatchTable<V> {
    routes: ArcSwap<Map<V>>,
    generation: AtomicU64,
}

impl<V> Default for DispatchTable<V> {
    fn default() -> Self {
        Self { routes: ArcSwap::from_pointee(Map::default()), generation: AtomicU64::new(0) }
    }
}

impl<V: Clone> DispatchTable<V> {
    /// Run `f` on the route of `key`, or on `None` when it is not compiled yet.
    #[inline]
    pub fn with<R>(&self, key: usize, f: impl FnOnce(Option<&V>) -> R) -> R {
        f(self.routes.load().get(&key))
    }

    /// A clone of the route of `key`.
    pub fn get(&self, key: usize) -> Option<V> {
        self.routes.load().get(&key).cloned()
    }

    /// The generation to pass to `insert` for a route about to be compiled.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Add or replace the route of `key`, unless the table was cleared since `generation` was
    /// read; returns whether it was cached.
    pub fn insert(&self, generation: u64, key: usize, route: V) -> bool {
        let mut cached = false;
        self.routes.rcu(|routes| {
            cached = self.generation() == generation;
            let mut routes = Map::clone(routes);
            if cached {
                routes.insert(key, route.clone());
            }
            routes
        });
        cached
    }

    /// Forget every route; returns the old map so the caller decides where it is dropped.
    pub fn clear(&self) -> Arc<Map<V>> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.routes.swap(Arc::new(Map::default()))
    }

    pub fn len(&self) -> usize {
        self.routes.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visit every route (for the binding's garbage-collector traversal).
    pub fn for_each(&self, mut f: impl FnMut(&V)) {
        self.routes.load().values().for_each(&mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::redundant_closure_for_method_calls)]
    fn insert_get_clear() {
        let table = DispatchTable::default();
        assert!(table.is_empty());
        let generation = table.generation();
        table.insert(generation, 0x1000, "a");
        table.insert(generation, 0x2000, "b");
        assert_eq!(table.get(0x1000), Some("a"));
        assert_eq!(table.with(0x2000, |r| r.copied()), Some("b"));
        assert_eq!(table.get(0x3000), None);
        table.insert(generation, 0x1000, "c");
        assert_eq!(table.get(0x1000), Some("c"));
        assert_eq!(table.len(), 2);
        let old = table.clear();
        assert_eq!(old.len(), 2);
        assert!(table.is_empty());
    }

    #[test]
    fn a_route_compiled_across_a_clear_is_not_cached() {
        let table = DispatchTable::default();
        let generation = table.generation();
        drop(table.clear());
        assert!(!table.insert(generation, 0x1000, "stale"));
        assert!(table.is_empty());
        assert!(table.insert(table.generation(), 0x1000, "fresh"));
        assert_eq!(table.get(0x1000), Some("fresh"));
    }

    #[test]
    fn aligned_addresses_spread_over_buckets() {
        let hash = |key: usize| {
            let mut hasher = AddressHasher::default();
            hasher.write_usize(key);
            hasher.finish()
        };
        let low_bits: std::collections::HashSet<u64> = (0..256).map(|i| hash(0x7f00_0000 + i * 16) & 0xff).collect();
        assert!(low_bits.len() > 150, "only {} distinct buckets", low_bits.len());
    }

    #[test]
    fn readers_see_whole_maps_while_writers_insert() {
        let table = Arc::new(DispatchTable::default());
        let writer = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                (0..2_000usize).for_each(|i| {
                    table.insert(table.generation(), i * 16, i);
                });
            })
        };
        let mut seen = 0;
        while seen < 2_000 {
            seen = table.len();
            table.for_each(|&v| assert!(v < 2_000));
        }
        writer.join().unwrap();
        assert_eq!(table.get(1_999 * 16), Some(1_999));
    }
}
