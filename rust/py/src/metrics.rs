//! `MetricsRegistry` and `TypeMetrics` over `catga_core::metrics`.
//!
//! The pipeline records from Rust: it takes the `Arc` out of a `TypeMetrics` object
//! ([`PyTypeMetrics::inner`]) when a route compiles and calls the core directly per message. The
//! Python methods are for Python behaviours, exporters and tests; they check their arguments the
//! way the pure core does, so both raise the same errors with the same messages.
//!
//! The registry hands out one Python object per `(kind, type)`, so `for_type` called twice returns
//! the same object in both cores (the pure core keeps its objects in a dict). It keeps those
//! objects beside the core's registry, which owns the metrics and their order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use catga_core::metrics::{
    seconds_to_ns, Counter, Outcome, Registry, TypeMetrics, TypeSnapshot, COUNTER_REQUIREMENT, OUTCOME_REQUIREMENT,
    SECONDS_REQUIREMENT,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::to_py;

/// An int argument: `TypeError` when it is not an int (no `__index__`), `ValueError` with
/// `requirement` when it does not fit in an `i64`.
fn int_arg(value: &Bound<'_, PyAny>, name: &str, requirement: &str) -> PyResult<i64> {
    value.extract::<i64>().map_err(|error| {
        if error.is_instance_of::<PyOverflowError>(value.py()) {
            PyValueError::new_err(format!("`{name}` `{value}` {requirement}"))
        } else {
            not_an_int(error, value, name)
        }
    })
}

/// The error of an int argument that did not convert for another reason than its size.
fn not_an_int(error: PyErr, value: &Bound<'_, PyAny>, name: &str) -> PyErr {
    if error.is_instance_of::<PyTypeError>(value.py()) {
        PyTypeError::new_err(format!("`{name}` `{}` must be an int", shown(value)))
    } else {
        error
    }
}

/// `repr(value)`, or `?` when that raises.
fn shown(value: &Bound<'_, PyAny>) -> String {
    value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
}

fn outcome_arg(value: &Bound<'_, PyAny>) -> PyResult<Outcome> {
    Outcome::try_from(int_arg(value, "outcome", OUTCOME_REQUIREMENT)?).map_err(to_py)
}

fn counter_arg(value: &Bound<'_, PyAny>) -> PyResult<Counter> {
    Counter::try_from(int_arg(value, "counter", COUNTER_REQUIREMENT)?).map_err(to_py)
}

/// A count to add: an int from 0 to `2**63 - 1`.
fn n_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    const NEGATIVE: &str = "must be zero or positive";
    match value.extract::<i64>() {
        Ok(n) => u64::try_from(n).map_err(|_| PyValueError::new_err(format!("`n` `{n}` {NEGATIVE}"))),
        Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => {
            let requirement = if value.lt(0)? { NEGATIVE } else { "must be at most 9223372036854775807" };
            Err(PyValueError::new_err(format!("`n` `{value}` {requirement}")))
        }
        Err(error) => Err(not_an_int(error, value, "n")),
    }
}

/// Seconds as a double (anything `float()` takes but a string), then whole nanoseconds.
fn seconds_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
    let seconds = value.extract::<f64>().map_err(|error| {
        let py = value.py();
        if error.is_instance_of::<PyTypeError>(py) {
            PyTypeError::new_err(format!("`seconds` `{}` must be a number", shown(value)))
        } else if error.is_instance_of::<PyOverflowError>(py) {
            PyValueError::new_err(format!("`seconds` `{value}` {SECONDS_REQUIREMENT}"))
        } else {
            error
        }
    })?;
    seconds_to_ns(seconds).map_err(to_py)
}

/// A str argument, or a `TypeError` naming it.
fn str_arg<'a>(value: &'a Bound<'_, PyAny>, name: &str) -> PyResult<&'a Bound<'a, PyString>> {
    value.cast::<PyString>().map_err(|_| PyTypeError::new_err(format!("`{name}` `{}` must be a str", shown(value))))
}

#[allow(clippy::cast_precision_loss)] // nanoseconds as float seconds, as the pure core does
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `{"success": .., "failure": .., "cancelled": ..}`.
fn by_outcome<'py>(py: Python<'py>, counts: &[u64; 3]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (outcome, count) in Outcome::ALL.into_iter().zip(counts) {
        dict.set_item(outcome.as_str(), count)?;
    }
    Ok(dict)
}

/// The snapshot dict, in the shape docs/internals.md gives (the pure core builds the same).
fn snapshot_dict<'py>(py: Python<'py>, snapshot: &TypeSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("kind", &snapshot.kind)?;
    dict.set_item("type", &snapshot.name)?;
    dict.set_item("messages", by_outcome(py, &snapshot.messages)?)?;
    let duration = PyDict::new(py);
    duration.set_item("buckets", snapshot.buckets.to_vec())?;
    duration.set_item("sum", seconds(snapshot.duration_sum_ns))?;
    duration.set_item("count", snapshot.duration_count)?;
    dict.set_item("duration", duration)?;
    dict.set_item("active", snapshot.active)?;
    dict.set_item("publish_handlers", by_outcome(py, &snapshot.handlers)?)?;
    for (counter, count) in Counter::ALL.into_iter().zip(&snapshot.counters) {
        dict.set_item(counter.as_str(), count)?;
    }
    Ok(dict)
}

// ------------------------------------------------------------------------------------ TypeMetrics

/// The metrics of one message type.
#[pyclass(name = "TypeMetrics", module = "catga._catga", frozen)]
pub(crate) struct PyTypeMetrics {
    metrics: Arc<TypeMetrics>,
}

impl PyTypeMetrics {
    /// The core's metrics, for the pipeline to record into without a Python call.
    pub(crate) fn inner(&self) -> &Arc<TypeMetrics> {
        &self.metrics
    }
}

#[pymethods]
impl PyTypeMetrics {
    /// Metrics of their own, outside any registry.
    #[new]
    #[pyo3(signature = (kind, r#type, /))]
    fn py_new(kind: &Bound<'_, PyAny>, r#type: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (kind, name) = (str_arg(kind, "kind")?.to_str()?, str_arg(r#type, "type")?.to_str()?);
        Ok(Self { metrics: Arc::new(TypeMetrics::new(kind, name)) })
    }

    #[getter]
    fn kind(&self) -> &str {
        self.metrics.kind()
    }

    #[getter]
    fn r#type(&self) -> &str {
        self.metrics.name()
    }

    /// A message starts.
    fn enter(&self) {
        self.metrics.enter();
    }

    /// A message ends with `outcome` after `seconds`.
    fn leave(&self, outcome: &Bound<'_, PyAny>, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let outcome = outcome_arg(outcome)?;
        self.metrics.leave(outcome, seconds_arg(seconds)?);
        Ok(())
    }

    /// One event handler of a publish finished with `outcome`.
    fn handler_done(&self, outcome: &Bound<'_, PyAny>) -> PyResult<()> {
        self.metrics.handler_done(outcome_arg(outcome)?);
        Ok(())
    }

    /// Add `n` to `counter`.
    #[pyo3(signature = (counter, n = None), text_signature = "($self, counter, n=1)")]
    fn count(&self, counter: &Bound<'_, PyAny>, n: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let counter = counter_arg(counter)?;
        self.metrics.count(counter, n.map_or(Ok(1), n_arg)?);
        Ok(())
    }

    /// The numbers now, as a dict.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        snapshot_dict(py, &self.metrics.snapshot())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let kind = PyString::new(py, self.metrics.kind()).repr()?;
        let name = PyString::new(py, self.metrics.name()).repr()?;
        Ok(format!("TypeMetrics(kind={kind}, type={name})"))
    }
}

// -------------------------------------------------------------------------------- MetricsRegistry

/// `(kind, type)` of a type.
type TypeKey = (Box<str>, Box<str>);

/// The metrics of every message type, created on first use.
#[pyclass(name = "MetricsRegistry", module = "catga._catga", frozen)]
pub(crate) struct PyMetricsRegistry {
    registry: Registry,
    /// The Python object of each `(kind, type)`. They hold no Python references, so the registry
    /// cannot be part of a reference cycle and needs no `__traverse__`.
    objects: Mutex<HashMap<TypeKey, Py<PyTypeMetrics>>>,
}

#[pymethods]
impl PyMetricsRegistry {
    #[new]
    fn py_new() -> Self {
        Self { registry: Registry::new(), objects: Mutex::new(HashMap::new()) }
    }

    /// The metrics of `(kind, type)`: the same object every time, created on the first call.
    #[pyo3(signature = (kind, r#type, /))]
    fn for_type(
        &self,
        py: Python<'_>,
        kind: &Bound<'_, PyAny>,
        r#type: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyTypeMetrics>> {
        let (kind, name) = (str_arg(kind, "kind")?.to_str()?, str_arg(r#type, "type")?.to_str()?);
        let key: TypeKey = (kind.into(), name.into());
        if let Some(object) = self.objects.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(object.clone_ref(py));
        }
        // The object is made outside the lock (making a Python object may run a garbage
        // collection, whose finalizers may call `for_type`); a thread that raced us here got the
        // same `Arc` from the core, and the first object put in the map wins.
        // (Dropping the loser runs no Python code: the object holds only the `Arc`.)
        let made = Py::new(py, PyTypeMetrics { metrics: self.registry.for_type(kind, name) })?;
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(objects.entry(key).or_insert(made).clone_ref(py))
    }

    /// One dict per type (see `TypeMetrics.snapshot`), sorted by `(type, kind)`.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.registry.snapshot().iter().map(|snapshot| snapshot_dict(py, snapshot)).collect()
    }

    fn __len__(&self) -> usize {
        self.registry.len()
    }

    fn __repr__(&self) -> String {
        format!("MetricsRegistry(types={})", self.registry.len())
    }
}
