//! `IdGenerator`, `IdParts`, `new_id` and `parse_id` over `catga_core::ids`.

use std::sync::OnceLock;

use catga_core::ids::{parse, IdGenerator, IdParts, Layout};
use catga_core::{DEFAULT_EPOCH_MS, DEFAULT_LAYOUT};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use crate::errors::to_py;

/// The fields of a message id.
#[pyclass(name = "IdParts", module = "catga._catga", frozen, eq, skip_from_py_object)]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PyIdParts(IdParts);

#[pymethods]
impl PyIdParts {
    #[getter]
    fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms
    }

    #[getter]
    fn worker_id(&self) -> u64 {
        self.0.worker_id
    }

    #[getter]
    fn sequence(&self) -> u64 {
        self.0.sequence
    }

    #[getter]
    fn datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static FROM_TIMESTAMP: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
        let (from_timestamp, utc) = FROM_TIMESTAMP.get_or_try_init(py, || -> PyResult<_> {
            let datetime = py.import("datetime")?;
            Ok((
                datetime.getattr("datetime")?.getattr("fromtimestamp")?.unbind(),
                datetime.getattr("timezone")?.getattr("utc")?.unbind(),
            ))
        })?;
        // Exact: milliseconds up to 2**53 (year 287396) convert to f64 without loss.
        #[allow(clippy::cast_precision_loss)]
        let seconds = self.0.timestamp_ms as f64 / 1000.0;
        from_timestamp.bind(py).call1((seconds, utc.bind(py)))
    }

    fn __repr__(&self) -> String {
        format!(
            "IdParts(timestamp_ms={}, worker_id={}, sequence={})",
            self.0.timestamp_ms, self.0.worker_id, self.0.sequence
        )
    }

    fn __hash__(&self) -> u64 {
        self.0.timestamp_ms ^ (self.0.worker_id << 48) ^ (self.0.sequence << 32)
    }
}

/// A lock-free snowflake id generator.
#[pyclass(name = "IdGenerator", module = "catga._catga", frozen)]
pub(crate) struct PyIdGenerator(IdGenerator);

/// An int argument as i64, or a `ValueError` naming it (huge and negative values included).
fn int_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    value
        .extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("{name} `{value}` must be an int in the range of a 64-bit integer")))
}

fn layout_arg(layout: &Bound<'_, PyAny>) -> PyResult<Layout> {
    let parts = layout
        .cast::<PyTuple>()
        .ok()
        .filter(|t| t.len() == 3)
        .map(|t| t.iter().map(|p| p.extract::<i64>()).collect::<PyResult<Vec<i64>>>())
        .transpose()
        .ok()
        .flatten()
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "id layout `{layout}` must be a tuple of 3 ints (timestamp, worker, sequence)"
            ))
        })?;
    Layout::new(parts[0], parts[1], parts[2]).map_err(to_py)
}

fn id_arg(id: &Bound<'_, PyAny>) -> PyResult<i128> {
    id.extract::<i128>()
        .map_err(|_| PyValueError::new_err(format!("message id `{id}` is not a 63-bit non-negative integer")))
}

#[pymethods]
impl PyIdGenerator {
    #[new]
    #[pyo3(
        signature = (worker_id = None, epoch_ms = None, layout = None),
        text_signature = "(worker_id=0, epoch_ms=1704067200000, layout=(44, 8, 11))"
    )]
    fn py_new(
        worker_id: Option<&Bound<'_, PyAny>>,
        epoch_ms: Option<&Bound<'_, PyAny>>,
        layout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let layout = layout.map_or(Ok(DEFAULT_LAYOUT), layout_arg)?;
        let worker_id = worker_id.map_or(Ok(0), |w| int_arg(w, "worker id"))?;
        let epoch_ms = epoch_ms.map_or(Ok(DEFAULT_EPOCH_MS as i64), |e| int_arg(e, "epoch"))?;
        let generator = IdGenerator::new(worker_id, epoch_ms, layout);
        generator.map(Self).map_err(to_py)
    }

    #[getter]
    fn worker_id(&self) -> u64 {
        self.0.worker_id()
    }

    #[getter]
    fn epoch_ms(&self) -> u64 {
        self.0.epoch_ms()
    }

    #[getter]
    fn layout(&self) -> (u32, u32, u32) {
        let l = self.0.layout();
        (l.timestamp_bits, l.worker_bits, l.sequence_bits)
    }

    /// Stamp a new worker id into the ids from now on; ids stay increasing across the change.
    fn set_worker_id(&self, worker_id: &Bound<'_, PyAny>) -> PyResult<()> {
        self.0.set_worker_id(int_arg(worker_id, "worker id")?).map_err(to_py)
    }

    fn next(&self) -> PyResult<u64> {
        self.0.next_id().map_err(to_py)
    }

    fn next_many(&self, n: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        self.0.next_many(int_arg(n, "number of ids")?).map_err(to_py)
    }

    fn parse(&self, id: &Bound<'_, PyAny>) -> PyResult<PyIdParts> {
        self.0.parse(id_arg(id)?).map(PyIdParts).map_err(to_py)
    }

    fn __repr__(&self) -> String {
        let (t, w, s) = self.layout();
        format!("IdGenerator(worker_id={}, epoch_ms={}, layout=({t}, {w}, {s}))", self.0.worker_id(), self.0.epoch_ms())
    }
}

static DEFAULT: OnceLock<Py<PyIdGenerator>> = OnceLock::new();

/// The worker id `CATGA_WORKER_ID` sets, if it is set.
fn worker_id_from_env() -> PyResult<Option<i64>> {
    match std::env::var("CATGA_WORKER_ID") {
        Ok(text) if !text.trim().is_empty() => match text.trim().parse::<i64>() {
            Ok(id) if (0..=255).contains(&id) => Ok(Some(id)),
            _ => Err(PyValueError::new_err(format!("CATGA_WORKER_ID `{text}` must be an int from 0 to 255"))),
        },
        _ => Ok(None),
    }
}

/// A random worker id: a purely local process picks one at random (API.md §2). `RandomState` is
/// seeded per process by the OS, which is all the randomness this needs.
fn random_worker_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() % 256) as i64
}

/// Build the process-wide generator: worker id from `CATGA_WORKER_ID`, else a random one.
pub(crate) fn init_default(py: Python<'_>) -> PyResult<()> {
    let worker_id = worker_id_from_env()?.unwrap_or_else(random_worker_id);
    let generator = IdGenerator::new(worker_id, DEFAULT_EPOCH_MS as i64, DEFAULT_LAYOUT).map_err(to_py)?;
    let generator = Py::new(py, PyIdGenerator(generator))?;
    let _ = DEFAULT.set(generator);
    Ok(())
}

fn default_ref() -> &'static IdGenerator {
    &DEFAULT.get().expect("initialised at import").get().0
}

/// Registered with `os.register_at_fork`: a forked child must not make the parent's ids, so unless
/// `CATGA_WORKER_ID` pins the worker id, it picks a new random one.
#[pyfunction]
pub(crate) fn _after_fork_in_child() -> PyResult<()> {
    if worker_id_from_env()?.is_none() {
        default_ref().set_worker_id(random_worker_id()).map_err(to_py)?;
    }
    Ok(())
}

/// A new message id from the process-wide generator.
#[pyfunction]
pub(crate) fn new_id() -> PyResult<u64> {
    default_ref().next_id().map_err(to_py)
}

/// Split an id of the default layout and epoch into its fields.
#[pyfunction]
pub(crate) fn parse_id(id: &Bound<'_, PyAny>) -> PyResult<PyIdParts> {
    parse(id_arg(id)?, DEFAULT_LAYOUT, DEFAULT_EPOCH_MS).map(PyIdParts).map_err(to_py)
}

/// The process-wide generator that `new_id()` uses.
#[pyfunction]
pub(crate) fn default_generator(py: Python<'_>) -> Py<PyIdGenerator> {
    DEFAULT.get().expect("initialised at import").clone_ref(py)
}
