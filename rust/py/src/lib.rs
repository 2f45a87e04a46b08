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
    use crate::stores::{handler_key, PyCacheTable, PyIdempotencyTable};
    #[pymodule_export]
    const CLAIMED: u8 = crate::stores::CLAIMED;
    #[pymodule_export]
    const IN_FLIGHT: u8 = crate::stores::IN_FLIGHT;
    #[pymodule_export]
    const COMPLETED: u8 = crate::stores::COMPLETED;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("DEFAULT_EPOCH_MS", catga_core::DEFAULT_EPOCH_MS)?;
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

    use pyo3::types::IntoPyDict;
}
