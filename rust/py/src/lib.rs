//! `catga._catga`: the `PyO3` binding of `catga-core`, imported by `catga._core`.
//!
//! Public names are re-exported by `python/catga/__init__.py`; `python/catga/_catga.pyi` is the
//! interface, which `catga._pure` implements too (docs/internals.md).

mod awaitable;
mod dispatcher;
mod errors;
mod ids;
mod raw;
mod route;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _catga {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};

    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::dispatcher::PyDispatcher;
    #[pymodule_export]
    use crate::ids::{default_generator, new_id, parse_id, PyIdGenerator, PyIdParts};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("DEFAULT_EPOCH_MS", catga_core::DEFAULT_EPOCH_MS)?;
        let current = py.import("contextvars")?.getattr("ContextVar")?.call(
            ("catga_current_message",),
            Some(&[("default", py.None())].into_py_dict(py)?),
        )?;
        m.add("CURRENT_MESSAGE", &current)?;
        let coroutine_type = py.import("types")?.getattr("CoroutineType")?;
        crate::raw::init_names(coroutine_type.as_ptr(), current.as_ptr());
        m.add("Pending", crate::awaitable::init_type(py)?)?;
        // A purely local process picks a random worker id (API.md §2); RandomState is seeded per
        // process by the OS, which is all the randomness this needs.
        let mut seed = RandomState::new().build_hasher();
        seed.write_u32(std::process::id());
        crate::ids::init_default(py, seed.finish())?;
        Ok(())
    }

    use pyo3::types::IntoPyDict;
}
