//! `catga._catga`: the `PyO3` binding of `catga-core`, imported by `catga._core`.
//!
//! Public names are re-exported by `python/catga/__init__.py`; `python/catga/_catga.pyi` is the
//! interface, which `catga._pure` implements too (docs/internals.md).

mod awaitable;
mod dispatcher;
mod errors;
mod hooks;
mod ids;
mod limits;
mod metrics;
mod raw;
mod route;
mod stores;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _catga {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::dispatcher::PyDispatcher;
    #[pymodule_export]
    use crate::hooks::PyHooks;
    #[pymodule_export]
    use crate::ids::{_after_fork_in_child, default_generator, new_id, parse_id, PyIdGenerator, PyIdParts};
    #[pymodule_export]
    use crate::limits::{PyCircuitBreaker, PyConcurrencyLimiter, PyTokenBucket};
    #[pymodule_export]
    use crate::metrics::{PyMetricsRegistry, PyTypeMetrics};
    #[pymodule_export]
    use crate::stores::{handler_key, PyCacheTable, PyIdempotencyTable};
    #[pymodule_export]
    const CLAIMED: u8 = crate::stores::CLAIMED;
    #[pymodule_export]
    const IN_FLIGHT: u8 = crate::stores::IN_FLIGHT;
    #[pymodule_export]
    const COMPLETED: u8 = crate::stores::COMPLETED;
    #[pymodule_export]
    const OUTCOME_SUCCESS: u8 = Outcome::Success as u8;
    #[pymodule_export]
    const OUTCOME_FAILURE: u8 = Outcome::Failure as u8;
    #[pymodule_export]
    const OUTCOME_CANCELLED: u8 = Outcome::Cancelled as u8;
    #[pymodule_export]
    const COUNTER_RETRY_ATTEMPTS: u8 = Counter::RetryAttempts as u8;
    #[pymodule_export]
    const COUNTER_IDEMPOTENCY_HITS: u8 = Counter::IdempotencyHits as u8;
    #[pymodule_export]
    const COUNTER_IDEMPOTENCY_MISSES: u8 = Counter::IdempotencyMisses as u8;
    #[pymodule_export]
    const COUNTER_RATE_LIMIT_REJECTED: u8 = Counter::RateLimitRejected as u8;
    #[pymodule_export]
    const COUNTER_CONCURRENCY_REJECTED: u8 = Counter::ConcurrencyRejected as u8;
    #[pymodule_export]
    const COUNTER_DEAD_LETTERS: u8 = Counter::DeadLetters as u8;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("DEFAULT_EPOCH_MS", catga_core::DEFAULT_EPOCH_MS)?;
        #[allow(clippy::cast_precision_loss)] // the bounds are at most 1e10, exact as doubles
        let buckets = DURATION_BUCKETS_NS.map(|ns| ns as f64 / 1e9);
        m.add("DURATION_BUCKETS", PyTuple::new(py, buckets)?)?;
        let current = py
            .import("contextvars")?
            .getattr("ContextVar")?
            .call(("catga_current_message",), Some(&[("default", py.None())].into_py_dict(py)?))?;
        m.add("CURRENT_MESSAGE", &current)?;
        let coroutine_type = py.import("types")?.getattr("CoroutineType")?;
        crate::raw::init_names(coroutine_type.as_ptr(), current.as_ptr());
        crate::awaitable::init_type(py)?;
        crate::ids::init_default(py)?;
        let after_in_child = m.getattr("_after_fork_in_child")?;
        py.import("os")?.call_method(
            "register_at_fork",
            (),
            Some(&[("after_in_child", after_in_child)].into_py_dict(py)?),
        )?;
        // The runtime value of the stub's `Route` alias, so both cores export the same names.
        let route = py.eval(c"tuple[bool, tuple[tuple[object, bool, bool], ...]]", None, None)?;
        m.add("Route", route)?;
        Ok(())
    }

    use catga_core::metrics::{Counter, Outcome, DURATION_BUCKETS_NS};
    use pyo3::types::{IntoPyDict, PyTuple};
}
