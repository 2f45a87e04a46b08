//! `IdempotencyTable`, `CacheTable` and `handler_key` over `catga_core::{idempotency, cache}`.
//!
//! The tables hold `Py<PyAny>` values. Every method runs attached, and the core drops the values it
//! removes only after releasing its lock, so a value's destructor may use the table again. The
//! values may refer back to their table (a result holding the service that holds the mediator), so
//! `__traverse__` shows them to the garbage collector and `__clear__` drops them.
//!
//! The pipeline executor calls the `*_key`/`*_bytes` methods directly (no Python call, no tuple):
//! see `PyIdempotencyTable::claim_key` and `PyCacheTable::get_bytes`.

use std::sync::{Mutex, PoisonError};

use catga_core::cache::CacheTable;
use catga_core::error::float_repr;
use catga_core::idempotency::{ttl_ns, Claim, IdempotencyTable, Key};
use catga_core::monotonic::{elapsed_ns, Monotonic};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::to_py;
use crate::limits::read;

/// `claim` statuses, exported as module constants.
pub(crate) const CLAIMED: u8 = 0;
pub(crate) const IN_FLIGHT: u8 = 1;
pub(crate) const COMPLETED: u8 = 2;

const NS_PER_SECOND: f64 = 1e9;

/// 24 hours (API.md §6).
const DEFAULT_TTL_NS: u64 = 86_400 * 1_000_000_000;

/// Where a table reads the time, in nanoseconds since the table was made: `std::time::Instant`
/// (no Python call), or a Python callable returning monotonic seconds (for tests), converted as
/// `catga_core::monotonic::elapsed_ns` says, like the limiters' clocks (`limits.rs`).
struct TableClock {
    monotonic: Monotonic,
    /// The callable and its first reading, the origin. The callable sits in a mutex only so that
    /// `__clear__` can drop it.
    python: Option<(Mutex<Option<Py<PyAny>>>, f64)>,
}

impl TableClock {
    fn new(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let python = match clock {
            Some(callable) if !callable.is_none() => {
                Some((Mutex::new(Some(callable.clone().unbind())), read(callable)?))
            }
            _ => None,
        };
        Ok(Self { monotonic: Monotonic::new(), python })
    }

    #[inline]
    fn now_ns(&self, py: Python<'_>) -> PyResult<u64> {
        let Some((callable, origin)) = &self.python else { return Ok(self.monotonic.now_ns()) };
        let callable = callable.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.clone_ref(py));
        match callable {
            Some(callable) => Ok(elapsed_ns(read(callable.bind(py))?, *origin)),
            None => Ok(self.monotonic.now_ns()), // cleared by the garbage collector
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match &self.python {
            Some((callable, _)) => match callable.try_lock() {
                Ok(callable) => visit.call(callable.as_ref()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn clear(&self) {
        if let Some((callable, _)) = &self.python {
            let callable = callable.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop(callable);
        }
    }
}

fn u64_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    value
        .extract::<u64>()
        .map_err(|_| PyValueError::new_err(format!("{name} `{value}` must be an int from 0 to 2**64 - 1")))
}

/// An optional handler key: `None` (or no argument) means 0, a request.
fn handler_arg(value: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    value.filter(|value| !value.is_none()).map_or(Ok(0), |value| u64_arg(value, "handler"))
}

fn max_entries_arg(value: Option<&Bound<'_, PyAny>>, default: i64) -> PyResult<i64> {
    let Some(value) = value.filter(|value| !value.is_none()) else { return Ok(default) };
    value
        .extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("max_entries `{value}` must be an int from 1 to 2**63 - 1")))
}

/// A TTL in seconds (a float or an int) as nanoseconds.
fn ttl_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    let seconds = value
        .extract::<f64>()
        .map_err(|_| PyValueError::new_err(format!("ttl `{value}` must be a positive, finite number of seconds")))?;
    ttl_ns("ttl", seconds).map_err(to_py)
}

fn shards_arg(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    value
        .filter(|value| !value.is_none())
        .map(|value| {
            value.extract::<i64>().map_err(|_| {
                PyValueError::new_err(format!("shards `{value}` must be None or a power of two from 1 to 65536"))
            })
        })
        .transpose()
}

fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    match key.cast::<PyBytes>() {
        Ok(bytes) => Ok(bytes.as_bytes()),
        Err(_) => Err(PyValueError::new_err(format!("key `{key}` must be bytes"))),
    }
}

#[allow(clippy::cast_precision_loss)] // a TTL is far below 2**53 ns (104 days) in practice; exact up to there
fn seconds(ns: u64) -> f64 {
    ns as f64 / NS_PER_SECOND
}

/// `(status, None)`, made once per status.
fn status_only(py: Python<'_>, status: u8) -> PyResult<Py<PyTuple>> {
    static CLAIMED_TUPLE: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    static IN_FLIGHT_TUPLE: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let cell = if status == CLAIMED { &CLAIMED_TUPLE } else { &IN_FLIGHT_TUPLE };
    let tuple = cell.get_or_try_init(py, || (status, py.None()).into_pyobject(py).map(Bound::unbind))?;
    Ok(tuple.clone_ref(py))
}

/// The 64-bit key of an event handler for the idempotency table: FNV-1a of the UTF-8 bytes of its
/// qualified name, the same in every process and version (never 0, which means "a request").
#[pyfunction]
pub(crate) fn handler_key(name: &Bound<'_, PyAny>) -> PyResult<u64> {
    let name = name.cast::<PyString>().map_err(|_| PyValueError::new_err(format!("name `{name}` must be a str")))?;
    let text = name.to_str()?;
    Ok(catga_core::handler_key(text))
}

/// A sharded, bounded table of idempotency claims and results (docs: `catga_core::idempotency`).
#[pyclass(name = "IdempotencyTable", module = "catga._catga", frozen)]
pub(crate) struct PyIdempotencyTable {
    table: IdempotencyTable<Py<PyAny>>,
    clock: TableClock,
}

impl PyIdempotencyTable {
    /// Claim `key` now: the pipeline executor's entry point (no Python call with the default clock).
    #[inline]
    pub(crate) fn claim_key(&self, py: Python<'_>, key: Key) -> PyResult<Claim<Py<PyAny>>> {
        let now = self.clock.now_ns(py)?;
        Ok(self.table.claim_with(key, now, |value| value.clone_ref(py)))
    }

    /// Store the result of a claimed key.
    pub(crate) fn complete_key(&self, py: Python<'_>, key: Key, result: Py<PyAny>) -> PyResult<()> {
        let now = self.clock.now_ns(py)?;
        self.table.complete(key, result, now);
        Ok(())
    }

    /// Drop the claim of `key` (its handler failed or was cancelled).
    pub(crate) fn release_key(&self, key: Key) -> bool {
        self.table.release(key)
    }
}

#[pymethods]
impl PyIdempotencyTable {
    // NOTE: arguments are converted in the body, not by `from_py_with` (PyO3 adds a "while
    // processing" note to the errors of that), so both cores raise the same exceptions.
    #[new]
    #[pyo3(
        signature = (max_entries = None, ttl = None, shards = None, clock = None),
        text_signature = "(max_entries=100000, ttl=86400.0, shards=None, clock=None)"
    )]
    fn py_new(
        max_entries: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let max_entries = max_entries_arg(max_entries, 100_000)?;
        let ttl = ttl.filter(|ttl| !ttl.is_none()).map_or(Ok(DEFAULT_TTL_NS), ttl_arg)?;
        let table = IdempotencyTable::new(max_entries, ttl, shards_arg(shards)?).map_err(to_py)?;
        Ok(Self { table, clock: TableClock::new(clock)? })
    }

    /// `(CLAIMED, None)`: the caller runs the handler and must `complete` or `release`;
    /// `(IN_FLIGHT, None)`: another caller is running it; `(COMPLETED, result)`: it ran already.
    #[pyo3(signature = (message_id, handler = None), text_signature = "($self, message_id, handler=0)")]
    fn claim(
        &self,
        py: Python<'_>,
        message_id: &Bound<'_, PyAny>,
        handler: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyTuple>> {
        let key = Key::new(u64_arg(message_id, "message_id")?, handler_arg(handler)?);
        Ok(match self.claim_key(py, key)? {
            Claim::Claimed => status_only(py, CLAIMED)?,
            Claim::InFlight => status_only(py, IN_FLIGHT)?,
            Claim::Completed(result) => (COMPLETED, result).into_pyobject(py)?.unbind(),
        })
    }

    /// Store the result of a claimed key; it is returned by `claim` until `ttl` from now.
    fn complete(
        &self,
        py: Python<'_>,
        message_id: &Bound<'_, PyAny>,
        handler: &Bound<'_, PyAny>,
        result: Py<PyAny>,
    ) -> PyResult<()> {
        let key = Key::new(u64_arg(message_id, "message_id")?, u64_arg(handler, "handler")?);
        self.complete_key(py, key, result)
    }

    /// Drop the claim of a key whose handler failed; a completed entry is left alone.
    #[pyo3(signature = (message_id, handler = None), text_signature = "($self, message_id, handler=0)")]
    fn release(&self, message_id: &Bound<'_, PyAny>, handler: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.release_key(Key::new(u64_arg(message_id, "message_id")?, handler_arg(handler)?));
        Ok(())
    }

    #[getter]
    fn hits(&self) -> u64 {
        self.table.hits()
    }

    #[getter]
    fn misses(&self) -> u64 {
        self.table.misses()
    }

    #[getter]
    fn evictions(&self) -> u64 {
        self.table.evictions()
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.table.max_entries()
    }

    #[getter]
    fn ttl(&self) -> f64 {
        seconds(self.table.ttl_ns())
    }

    #[getter]
    fn shards(&self) -> usize {
        self.table.shards()
    }

    fn __len__(&self) -> usize {
        self.table.len()
    }

    /// Drop every entry (the counters stay).
    fn clear(&self) {
        self.table.clear();
    }

    /// Drop every expired entry now; returns how many were dropped.
    fn purge_expired(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.table.purge_expired(self.clock.now_ns(py)?))
    }

    fn __repr__(&self) -> String {
        format!(
            "IdempotencyTable(max_entries={}, ttl={}, shards={})",
            self.table.max_entries(),
            float_repr(self.ttl()),
            self.table.shards()
        )
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.table.try_visit(|value| visit.call(value))?;
        self.clock.traverse(&visit)
    }

    fn __clear__(&self) {
        self.table.clear();
        self.clock.clear();
    }
}

/// A bounded cache of query results with a TTL per entry (docs: `catga_core::cache`).
#[pyclass(name = "CacheTable", module = "catga._catga", frozen)]
pub(crate) struct PyCacheTable {
    table: CacheTable<Py<PyAny>>,
    clock: TableClock,
}

impl PyCacheTable {
    /// The value cached under `(group, key)`: the pipeline executor's entry point.
    #[inline]
    pub(crate) fn get_bytes(&self, py: Python<'_>, group: u64, key: &[u8]) -> PyResult<Option<Py<PyAny>>> {
        let now = self.clock.now_ns(py)?;
        Ok(self.table.get_with(group, key, now, |value| value.clone_ref(py)))
    }

    /// Cache `value` under `(group, key)` for `ttl_ns`.
    pub(crate) fn put_bytes(
        &self,
        py: Python<'_>,
        group: u64,
        key: &[u8],
        value: Py<PyAny>,
        ttl_ns: u64,
    ) -> PyResult<()> {
        let now = self.clock.now_ns(py)?;
        self.table.put(group, key, value, ttl_ns, now).map_err(to_py)
    }
}

#[pymethods]
impl PyCacheTable {
    #[new]
    #[pyo3(signature = (max_entries = None, clock = None), text_signature = "(max_entries=10000, clock=None)")]
    fn py_new(max_entries: Option<&Bound<'_, PyAny>>, clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let table = CacheTable::new(max_entries_arg(max_entries, 10_000)?).map_err(to_py)?;
        Ok(Self { table, clock: TableClock::new(clock)? })
    }

    /// `(True, value)` when `(group, key)` holds a live entry, else `(False, None)`.
    fn get(&self, py: Python<'_>, group: &Bound<'_, PyAny>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyTuple>> {
        static MISS: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
        let group = u64_arg(group, "group")?;
        Ok(match self.get_bytes(py, group, key_bytes(key)?)? {
            Some(value) => (true, value).into_pyobject(py)?.unbind(),
            None => MISS.get_or_try_init(py, || (false, py.None()).into_pyobject(py).map(Bound::unbind))?.clone_ref(py),
        })
    }

    /// Cache `value` under `(group, key)` for `ttl` seconds, replacing what was there.
    fn put(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (group, ttl) = (u64_arg(group, "group")?, ttl_arg(ttl)?);
        self.put_bytes(py, group, key_bytes(key)?, value, ttl)
    }

    /// Drop every entry of `group`; returns how many were dropped.
    fn invalidate_group(&self, group: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.table.invalidate_group(u64_arg(group, "group")?))
    }

    /// Drop the entries of `group` whose key bytes `predicate` is true for; returns how many.
    fn invalidate_where(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        predicate: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let group = u64_arg(group, "group")?;
        // The core calls the predicate outside its lock, on a snapshot of the group's keys.
        self.table.try_invalidate_where(group, |key| predicate.call1((PyBytes::new(py, key),))?.is_truthy())
    }

    #[getter]
    fn hits(&self) -> u64 {
        self.table.hits()
    }

    #[getter]
    fn misses(&self) -> u64 {
        self.table.misses()
    }

    #[getter]
    fn evictions(&self) -> u64 {
        self.table.evictions()
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.table.max_entries()
    }

    fn __len__(&self) -> usize {
        self.table.len()
    }

    /// Drop every entry (the counters stay).
    fn clear(&self) {
        self.table.clear();
    }

    /// Drop every expired entry now; returns how many were dropped.
    fn purge_expired(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.table.purge_expired(self.clock.now_ns(py)?))
    }

    fn __repr__(&self) -> String {
        format!("CacheTable(max_entries={})", self.table.max_entries())
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.table.try_visit(|value| visit.call(value))?;
        self.clock.traverse(&visit)
    }

    fn __clear__(&self) {
        self.table.clear();
        self.clock.clear();
    }
}
