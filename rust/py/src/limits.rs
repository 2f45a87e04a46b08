//! `TokenBucket`, `ConcurrencyLimiter` and `CircuitBreaker` over `catga_core`'s state machines.
//!
//! Python sees seconds as floats; the core sees nanoseconds since the object was made. With
//! `clock=None` the time is `std::time::Instant` (no Python call); a `clock` callable returns
//! monotonic seconds, converted as `catga_core::monotonic::elapsed_ns` says, which the pure core
//! repeats step by step.

use catga_core::error::float_repr;
use catga_core::monotonic::{check_reading, elapsed_ns, Monotonic};
use catga_core::{CircuitBreaker, ConcurrencyLimiter, TokenBucket};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::to_py;

/// Where the nanoseconds come from.
pub(crate) enum Clock {
    Monotonic(Monotonic),
    /// A Python callable and its first reading, the origin.
    Python {
        callable: Py<PyAny>,
        origin: f64,
    },
}

impl Clock {
    /// The clock of a new object; a callable is read once, for the origin.
    fn new(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        match clock {
            Some(callable) if !callable.is_none() => {
                let origin = read(callable)?;
                Ok(Self::Python { callable: callable.clone().unbind(), origin })
            }
            _ => Ok(Self::Monotonic(Monotonic::new())),
        }
    }

    /// Nanoseconds since the origin.
    pub(crate) fn now_ns(&self, py: Python<'_>) -> PyResult<u64> {
        match self {
            Self::Monotonic(clock) => Ok(clock.now_ns()),
            Self::Python { callable, origin } => Ok(elapsed_ns(read(callable.bind(py))?, *origin)),
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::Monotonic(_) => Ok(()),
            Self::Python { callable, .. } => visit.call(callable),
        }
    }
}

/// One reading of a Python clock: a finite float (an int or anything with `__float__` will do).
/// Every `clock=` argument (limiters, breaker, stores) is read through this one conversion.
pub(crate) fn read(callable: &Bound<'_, PyAny>) -> PyResult<f64> {
    let value = callable.call0()?;
    let seconds = value.extract::<f64>().map_err(|error| {
        if error.is_instance_of::<PyTypeError>(value.py()) {
            let shown = value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
            PyTypeError::new_err(format!("clock must return monotonic seconds as a float, got `{shown}`"))
        } else {
            error
        }
    })?;
    check_reading(seconds).map_err(to_py)
}

/// A float argument, or a `ValueError` naming it.
fn float_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    value.extract::<f64>().map_err(|_| PyValueError::new_err(format!("{name} `{value}` must be a number")))
}

/// An int argument as i64, or a `ValueError` naming it (huge and negative values included).
fn int_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    value
        .extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("{name} `{value}` must be an int in the range of a 64-bit integer")))
}

#[allow(clippy::cast_precision_loss)] // nanoseconds as float seconds, as the pure core does
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

// ------------------------------------------------------------------------------------ TokenBucket

/// A token bucket: `rate` tokens per second, at most `burst`, starting full.
#[pyclass(name = "TokenBucket", module = "catga._catga", frozen)]
pub(crate) struct PyTokenBucket {
    pub(crate) bucket: TokenBucket,
    pub(crate) clock: Clock,
}

#[pymethods]
impl PyTokenBucket {
    #[new]
    #[pyo3(signature = (rate, burst, clock = None))]
    fn py_new(rate: &Bound<'_, PyAny>, burst: &Bound<'_, PyAny>, clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let bucket = TokenBucket::new(float_arg(rate, "rate")?, float_arg(burst, "burst")?).map_err(to_py)?;
        Ok(Self { bucket, clock: Clock::new(clock)? })
    }

    /// Take `n` tokens: `0.0` when taken, else the seconds until `n` are available (nothing taken).
    #[pyo3(signature = (n = None), text_signature = "($self, n=1)")]
    fn try_acquire(&self, py: Python<'_>, n: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let n = n.map_or(Ok(1), |n| int_arg(n, "n"))?;
        let now = self.clock.now_ns(py)?;
        match self.bucket.try_acquire(n, now).map_err(to_py)? {
            Ok(()) => Ok(0.0),
            Err(wait) => Ok(seconds(wait)),
        }
    }

    #[getter]
    fn available(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(self.bucket.available(self.clock.now_ns(py)?))
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.bucket.rate()
    }

    #[getter]
    fn burst(&self) -> f64 {
        self.bucket.burst()
    }

    fn __repr__(&self) -> String {
        format!("TokenBucket(rate={}, burst={})", float_repr(self.bucket.rate()), float_repr(self.bucket.burst()))
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.clock.traverse(&visit)
    }
}

// ----------------------------------------------------------------------------- ConcurrencyLimiter

/// At most `max_concurrent` permits out at once, with counters.
#[pyclass(name = "ConcurrencyLimiter", module = "catga._catga", frozen)]
pub(crate) struct PyConcurrencyLimiter {
    pub(crate) limiter: ConcurrencyLimiter,
}

#[pymethods]
impl PyConcurrencyLimiter {
    #[new]
    #[pyo3(signature = (max_concurrent))]
    fn py_new(max_concurrent: &Bound<'_, PyAny>) -> PyResult<Self> {
        let limiter = ConcurrencyLimiter::new(int_arg(max_concurrent, "max_concurrent")?).map_err(to_py)?;
        Ok(Self { limiter })
    }

    /// Take a permit if one is free.
    fn try_acquire(&self) -> bool {
        self.limiter.try_acquire()
    }

    /// Give a permit back.
    fn release(&self) {
        self.limiter.release();
    }

    /// Count a caller that gave up waiting for a permit.
    fn note_rejected(&self) {
        self.limiter.note_rejected();
    }

    #[getter]
    fn in_flight(&self) -> u64 {
        self.limiter.in_flight()
    }

    #[getter]
    fn rejected(&self) -> u64 {
        self.limiter.rejected()
    }

    #[getter]
    fn max_concurrent(&self) -> u64 {
        self.limiter.max_concurrent()
    }

    fn __repr__(&self) -> String {
        format!("ConcurrencyLimiter(max_concurrent={})", self.limiter.max_concurrent())
    }
}

// -------------------------------------------------------------------------------- CircuitBreaker

/// Closed, open, half-open with a single probe.
#[pyclass(name = "CircuitBreaker", module = "catga._catga", frozen)]
pub(crate) struct PyCircuitBreaker {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) clock: Clock,
}

#[pymethods]
impl PyCircuitBreaker {
    #[new]
    #[pyo3(
        signature = (failure_threshold = None, reset_timeout = None, clock = None),
        text_signature = "(failure_threshold=5, reset_timeout=30.0, clock=None)"
    )]
    fn py_new(
        failure_threshold: Option<&Bound<'_, PyAny>>,
        reset_timeout: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let threshold = failure_threshold.map_or(Ok(5), |t| int_arg(t, "failure_threshold"))?;
        let reset_timeout = reset_timeout.map_or(Ok(30.0), |r| float_arg(r, "reset_timeout"))?;
        let breaker = CircuitBreaker::new(threshold, reset_timeout).map_err(to_py)?;
        Ok(Self { breaker, clock: Clock::new(clock)? })
    }

    /// `0.0` when the call may go ahead (in half-open, as the probe), else the seconds to wait.
    fn allow(&self, py: Python<'_>) -> PyResult<f64> {
        match self.breaker.allow(self.clock.now_ns(py)?) {
            Ok(()) => Ok(0.0),
            Err(wait) => Ok(seconds(wait)),
        }
    }

    fn record_success(&self) {
        self.breaker.record_success();
    }

    fn record_failure(&self, py: Python<'_>) -> PyResult<()> {
        self.breaker.record_failure(self.clock.now_ns(py)?);
        Ok(())
    }

    fn record_ignored(&self) {
        self.breaker.record_ignored();
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    #[getter]
    fn consecutive_failures(&self) -> u64 {
        self.breaker.consecutive_failures()
    }

    #[getter]
    fn state_changes(&self) -> u64 {
        self.breaker.state_changes()
    }

    #[getter]
    fn failure_threshold(&self) -> u64 {
        self.breaker.failure_threshold()
    }

    #[getter]
    fn reset_timeout(&self) -> f64 {
        self.breaker.reset_timeout()
    }

    fn __repr__(&self) -> String {
        format!(
            "CircuitBreaker(failure_threshold={}, reset_timeout={}, state='{}')",
            self.breaker.failure_threshold(),
            float_repr(self.breaker.reset_timeout()),
            self.breaker.state().as_str()
        )
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.clock.traverse(&visit)
    }
}
