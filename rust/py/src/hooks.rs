//! `Hooks`: the built-ins of a route handler that the core runs, and the run that applies them.
//!
//! A `HookedRun` is the state machine of one send through hooks: the observing built-ins (Logging,
//! Tracing, Metrics; docs/internals.md, "Observation") around the bookkeeping ones ("Built-in
//! behaviours", steps 1–7). Observation is decided once at the start (is the level on, is a tracer
//! provider set) and closed once at the end, whichever way the run ends; it never fails a send.
//!
//! A run never blocks and never awaits by itself: when a step must wait (a rate-limit sleep, a
//! permit, the target's coroutine) it hands the awaitable to the `Pending` that owns it, which
//! drives it and reports back through `resume`. Invariant: whatever the run took (an
//! idempotency claim, a permit, the breaker's consent, the context) it gives back exactly once, on
//! success, failure, cancellation, or when it is abandoned unfinished.
#![allow(unsafe_code)] // two raw calls: the context variable and handing objects to the awaitable

use std::sync::Arc;
use std::time::Instant;

use pyo3::exceptions::asyncio::CancelledError;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use catga_core::metrics::{Counter, Outcome, TypeMetrics};
use catga_core::{Claim, Key};

use crate::metrics::PyTypeMetrics;
use crate::raw::{self, Obj};
use crate::stores::PyIdempotencyTable;

/// `logging=(logger, level, log)`: the level is asked once per run, from the logger's own cache.
struct LoggingHook {
    source: Py<PyTuple>,
    logger: Py<PyAny>,
    /// `logger._cache`, the dict in which `Logger.isEnabledFor` keeps its answers per level and
    /// which every level change clears; `None` when the logger has none (then it is asked).
    cache: Option<Py<PyDict>>,
    level: Py<PyAny>,
    log: Py<PyAny>,
}

/// `tracing=(switch, key, tracer, outer, inner)`: live when `switch` is `None` or
/// `switch[key] is not None` (the OpenTelemetry API's global tracer provider, once one is set).
struct TracingHook {
    source: Py<PyTuple>,
    switch: Option<(Py<PyDict>, Py<PyAny>)>,
    tracer: Py<PyAny>,
    outer: Option<Py<PyAny>>,
    inner: Option<Py<PyAny>>,
}

/// `metrics=(type_metrics, role)`.
struct MetricsHook {
    source: Py<PyTuple>,
    metrics: Arc<TypeMetrics>,
    /// Counted as a message (`"message"`), or as one event handler of a publish (`"handler"`).
    message_role: bool,
}

/// The built-ins of one route handler that the core runs around its target: the observing ones
/// (docs/internals.md, "Observation") and the bookkeeping ones ("Built-in behaviours").
#[pyclass(name = "Hooks", module = "catga._catga", frozen)]
pub(crate) struct PyHooks {
    logging: Option<LoggingHook>,
    tracing: Option<TracingHook>,
    metrics: Option<MetricsHook>,
    idempotency: Option<Py<PyTuple>>,
    /// The idempotency table when it is the native one, with the handler key: claims then cost no
    /// Python call (any other table is called through its methods).
    native_idempotency: Option<(Py<PyIdempotencyTable>, u64)>,
    rate_limit: Option<Py<PyTuple>>,
    concurrency: Option<Py<PyTuple>>,
    breaker: Option<Py<PyAny>>,
    cache: Option<Py<PyTuple>>,
    errors: Option<Py<PyAny>>,
}

fn hook_tuple(name: &str, value: Option<Bound<'_, PyAny>>, size: usize) -> PyResult<Option<Py<PyTuple>>> {
    match value {
        None => Ok(None),
        Some(value) if value.is_none() => Ok(None),
        Some(value) => match value.cast::<PyTuple>() {
            Ok(tuple) if tuple.len() == size => Ok(Some(tuple.clone().unbind())),
            _ => Err(PyTypeError::new_err(format!(
                "hook `{name}` must be a tuple of {size} items or None, got `{}`",
                value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))),
        },
    }
}

fn logging_hook(value: Option<Bound<'_, PyAny>>) -> PyResult<Option<LoggingHook>> {
    let Some(py) = value.as_ref().map(Bound::py) else { return Ok(None) };
    let Some(source) = hook_tuple("logging", value, 3)? else { return Ok(None) };
    let tuple = source.bind(py);
    let logger = tuple.get_item(0)?;
    let cache = logger.getattr(intern!(tuple.py(), "_cache")).ok().and_then(|c| c.cast_into::<PyDict>().ok());
    Ok(Some(LoggingHook {
        logger: logger.unbind(),
        cache: cache.map(Bound::unbind),
        level: tuple.get_item(1)?.unbind(),
        log: tuple.get_item(2)?.unbind(),
        source,
    }))
}

fn tracing_hook(value: Option<Bound<'_, PyAny>>) -> PyResult<Option<TracingHook>> {
    let Some(py) = value.as_ref().map(Bound::py) else { return Ok(None) };
    let Some(source) = hook_tuple("tracing", value, 5)? else { return Ok(None) };
    let tuple = source.bind(py);
    let switch = tuple.get_item(0)?;
    let switch = if switch.is_none() {
        None
    } else {
        let dict = switch.cast_into::<PyDict>().map_err(|s| {
            PyTypeError::new_err(format!("the tracing switch must be a dict or None, got `{}`", repr(&s.into_inner())))
        })?;
        Some((dict.unbind(), tuple.get_item(1)?.unbind()))
    };
    let name = |i| tuple.get_item(i).map(|n| Some(n).filter(|n| !n.is_none()).map(Bound::unbind));
    Ok(Some(TracingHook { switch, tracer: tuple.get_item(2)?.unbind(), outer: name(3)?, inner: name(4)?, source }))
}

fn metrics_hook(value: Option<Bound<'_, PyAny>>) -> PyResult<Option<MetricsHook>> {
    let Some(py) = value.as_ref().map(Bound::py) else { return Ok(None) };
    let Some(source) = hook_tuple("metrics", value, 2)? else { return Ok(None) };
    let tuple = source.bind(py);
    let metrics = tuple.get_item(0)?;
    let metrics = metrics
        .cast::<PyTypeMetrics>()
        .map_err(|_| PyTypeError::new_err(format!("`metrics` needs a `TypeMetrics`, got `{}`", repr(&metrics))))?
        .get()
        .inner()
        .clone();
    let role = tuple.get_item(1)?;
    let message_role = match role.extract::<String>().as_deref() {
        Ok("message") => true,
        Ok("handler") => false,
        _ => {
            return Err(PyValueError::new_err(format!(
                "the `metrics` role must be `message` or `handler`, got `{}`",
                repr(&role)
            )))
        }
    };
    Ok(Some(MetricsHook { source, metrics, message_role }))
}

fn repr(value: &Bound<'_, PyAny>) -> String {
    value.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
}

#[pymethods]
impl PyHooks {
    #[new]
    #[pyo3(signature = (
        *, logging=None, tracing=None, metrics=None, idempotency=None, rate_limit=None, concurrency=None, breaker=None,
        cache=None, errors=None
    ))]
    #[allow(clippy::too_many_arguments)] // one keyword per behaviour, as the contract names them
    fn py_new(
        logging: Option<Bound<'_, PyAny>>,
        tracing: Option<Bound<'_, PyAny>>,
        metrics: Option<Bound<'_, PyAny>>,
        idempotency: Option<Bound<'_, PyAny>>,
        rate_limit: Option<Bound<'_, PyAny>>,
        concurrency: Option<Bound<'_, PyAny>>,
        breaker: Option<Bound<'_, PyAny>>,
        cache: Option<Bound<'_, PyAny>>,
        errors: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let idempotency = hook_tuple("idempotency", idempotency, 2)?;
        let native_idempotency = match &idempotency {
            Some(pair) => Python::attach(|py| -> PyResult<_> {
                let pair = pair.bind(py);
                let native = pair.get_item(0)?.cast_into::<PyIdempotencyTable>().ok();
                Ok(match (native, pair.get_item(1)?.extract::<u64>()) {
                    (Some(table), Ok(handler)) => Some((table.unbind(), handler)),
                    _ => None,
                })
            })?,
            None => None,
        };
        let hooks = Self {
            logging: logging_hook(logging)?,
            tracing: tracing_hook(tracing)?,
            metrics: metrics_hook(metrics)?,
            idempotency,
            native_idempotency,
            rate_limit: hook_tuple("rate_limit", rate_limit, 3)?,
            concurrency: hook_tuple("concurrency", concurrency, 2)?,
            breaker: breaker.filter(|b| !b.is_none()).map(Bound::unbind),
            cache: hook_tuple("cache", cache, 4)?,
            errors: errors.filter(|e| !e.is_none()).map(Bound::unbind),
        };
        let any = hooks.idempotency.is_some()
            || hooks.rate_limit.is_some()
            || hooks.concurrency.is_some()
            || hooks.breaker.is_some()
            || hooks.cache.is_some();
        if any && hooks.errors.is_none() {
            return Err(PyTypeError::new_err("`Hooks` needs `errors` when any hook is set"));
        }
        Ok(hooks)
    }

    #[getter]
    fn logging(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.logging.as_ref().map(|hook| hook.source.clone_ref(py))
    }

    #[getter]
    fn tracing(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.tracing.as_ref().map(|hook| hook.source.clone_ref(py))
    }

    #[getter]
    fn metrics(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.metrics.as_ref().map(|hook| hook.source.clone_ref(py))
    }

    #[getter]
    fn idempotency(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.idempotency.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn rate_limit(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.rate_limit.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn concurrency(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.concurrency.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.breaker.as_ref().map(|b| b.clone_ref(py))
    }

    #[getter]
    fn cache(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.cache.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn errors(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.errors.as_ref().map(|e| e.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let on: Vec<&str> = [
            ("logging", self.logging.is_some()),
            ("tracing", self.tracing.is_some()),
            ("metrics", self.metrics.is_some()),
            ("idempotency", self.idempotency.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("breaker", self.breaker.is_some()),
            ("cache", self.cache.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        format!("Hooks({})", on.join(", "))
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for tuple in [&self.idempotency, &self.rate_limit, &self.concurrency, &self.cache].into_iter().flatten() {
            visit.call(tuple)?;
        }
        if let Some(hook) = &self.logging {
            visit.call(&hook.source)?;
            visit.call(&hook.logger)?;
            if let Some(cache) = &hook.cache {
                visit.call(cache)?;
            }
            visit.call(&hook.level)?;
            visit.call(&hook.log)?;
        }
        if let Some(hook) = &self.tracing {
            visit.call(&hook.source)?;
            visit.call(&hook.tracer)?;
            if let Some((switch, key)) = &hook.switch {
                visit.call(switch)?;
                visit.call(key)?;
            }
            for name in [&hook.outer, &hook.inner].into_iter().flatten() {
                visit.call(name)?;
            }
        }
        if let Some(hook) = &self.metrics {
            visit.call(&hook.source)?;
        }
        for object in [&self.breaker, &self.errors].into_iter().flatten() {
            visit.call(object)?;
        }
        if let Some((table, _)) = &self.native_idempotency {
            visit.call(table)?;
        }
        Ok(())
    }
}

/// What a run asks of the awaitable that owns it.
pub(crate) enum Step {
    /// Drive this awaitable, then call `resume` with its outcome.
    Await(Obj),
    /// The send is over with this value.
    Return(Obj),
    /// The send failed with this error.
    Raise(PyErr),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    RateWait,
    PermitWait,
    Target,
    Done,
}

/// An idempotency claim: by key in the native table, or by message id through a table's methods.
enum HeldClaim {
    Native(Key),
    Python(Py<PyAny>),
}

/// One send through hooks.
#[allow(clippy::struct_excessive_bools)] // four independent facts, not a state in disguise
pub(crate) struct HookedRun {
    hooks: Py<PyHooks>,
    target: Py<PyAny>,
    message: Py<PyAny>,
    is_async: bool,
    /// Resolve to `(result, from_cache)` instead of the result (`send_meta`).
    meta: bool,
    phase: Phase,
    /// The idempotency claim, once this run holds it.
    claim: Option<HeldClaim>,
    permit: bool,
    breaker: bool,
    cache_key: Option<Py<PyAny>>,
    token: Option<Obj>,
    /// The result came from the idempotency table or the cache.
    from_cache: bool,
    observing: Observing,
}

/// What one run observes, decided at its start (docs/internals.md, "Observation").
#[derive(Default)]
#[allow(clippy::struct_excessive_bools)] // independent facts about one run, not a state in disguise
struct Observing {
    /// When the run started, when its duration is wanted (a message's metrics, a log record).
    started: Option<Instant>,
    /// `metrics.enter()` happened: the end owes a `leave`.
    entered: bool,
    /// The logger took the level at the start: the end writes a record.
    log: bool,
    /// A tracer provider was set at the start: the run opens spans.
    traced: bool,
    outer_span: Option<Py<PyAny>>,
    inner_span: Option<Py<PyAny>>,
    /// The start was observed: a run dropped before its first step has nothing to end.
    begun: bool,
    /// The end was observed (it happens once, whichever way the run ends).
    ended: bool,
}

const COMPLETED: i64 = 2;
const IN_FLIGHT: i64 = 1;

fn asyncio_sleep(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static SLEEP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    SLEEP.get_or_try_init(py, || Ok(py.import("asyncio")?.getattr("sleep")?.unbind()))
}

fn owned(object: Bound<'_, PyAny>) -> Obj {
    // SAFETY: attached; `into_ptr` hands over a strong reference.
    unsafe { Obj::from_owned(object.into_ptr()) }.expect("a live object")
}

impl HookedRun {
    pub(crate) fn new(hooks: Py<PyHooks>, target: Py<PyAny>, message: Py<PyAny>, is_async: bool, meta: bool) -> Self {
        Self {
            hooks,
            target,
            message,
            is_async,
            meta,
            phase: Phase::Start,
            claim: None,
            permit: false,
            breaker: false,
            cache_key: None,
            token: None,
            from_cache: false,
            observing: Observing::default(),
        }
    }

    /// The first step.
    pub(crate) fn start(&mut self, py: Python<'_>) -> Step {
        self.observe_start(py);
        let step = match self.claim_and_enter(py) {
            Ok(step) => step,
            Err(error) => self.fail(py, error),
        };
        self.observed(py, step)
    }

    /// The awaitable handed out by the last `Step::Await` finished with `outcome`.
    pub(crate) fn resume(&mut self, py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) -> Step {
        let result = match (self.phase, outcome) {
            (Phase::RateWait, Ok(_)) => self.enter(py),
            (Phase::PermitWait, Ok(_)) => {
                self.permit = true;
                self.enter(py)
            }
            (Phase::PermitWait, Err(error)) => {
                if error.is_instance_of::<PyException>(py) {
                    self.count(Counter::ConcurrencyRejected);
                }
                Err(error)
            }
            (Phase::Target, Ok(value)) => {
                self.end_inner_span(py, None);
                self.leave_context();
                let step = self.succeed(py, value, false);
                return self.observed(py, step);
            }
            (Phase::Target, Err(error)) => {
                self.end_inner_span(py, Some(error.value(py).as_any()));
                self.leave_context();
                Err(error)
            }
            (_, Err(error)) => Err(error),
            (phase, Ok(_)) => unreachable!("resumed in phase {}", phase as u8),
        };
        let step = result.unwrap_or_else(|error| self.fail(py, error));
        self.observed(py, step)
    }

    /// The owner stops before the run ended (closed, or collected while suspended): give back
    /// what was taken, as for a cancellation.
    pub(crate) fn abandon(&mut self, py: Python<'_>) {
        if self.phase != Phase::Done {
            self.leave_context();
            let _ = self.settle_failure(py, false);
            self.phase = Phase::Done;
        }
        if !self.observing.ended {
            let cancelled = PyErr::new::<CancelledError, _>(());
            self.observe_end(py, Some(cancelled.value(py).as_any()));
        }
    }

    // ---- observation (docs/internals.md, "Observation") ------------------------------------

    /// Decide what this run observes, and open what opens at its start.
    fn observe_start(&mut self, py: Python<'_>) {
        self.observing.begun = true;
        let hooks = self.hooks(py);
        let hooks = hooks.get();
        if let Some(logging) = &hooks.logging {
            self.observing.log = logging_enabled(py, logging);
        }
        if let Some(tracing) = &hooks.tracing {
            self.observing.traced = tracing_live(py, tracing);
            if let (true, Some(outer)) = (self.observing.traced, &tracing.outer) {
                self.observing.outer_span = start_span(py, tracing, self.message.bind(py), outer);
            }
        }
        if let Some(metrics) = &hooks.metrics {
            if metrics.message_role {
                metrics.metrics.enter();
                self.observing.entered = true;
            }
        }
        if self.observing.entered || self.observing.log {
            self.observing.started = Some(Instant::now());
        }
    }

    fn count(&self, counter: Counter) {
        if let Some(metrics) = &self.hooks.get().metrics {
            metrics.metrics.count(counter, 1);
        }
    }

    /// Open the span around the target, when the run is traced and has one.
    fn start_inner_span(&mut self, py: Python<'_>) {
        if !self.observing.traced {
            return;
        }
        let hooks = self.hooks(py);
        if let Some(tracing) = &hooks.get().tracing {
            if let Some(inner) = &tracing.inner {
                self.observing.inner_span = start_span(py, tracing, self.message.bind(py), inner);
            }
        }
    }

    fn end_inner_span(&mut self, py: Python<'_>, error: Option<&Bound<'_, PyAny>>) {
        if let Some(span) = self.observing.inner_span.take() {
            self.end_span(py, &span, error, false);
        }
    }

    fn end_span(&self, py: Python<'_>, span: &Py<PyAny>, error: Option<&Bound<'_, PyAny>>, from_cache: bool) {
        let tracing = self.hooks.get().tracing.as_ref().expect("a span implies tracing");
        let ended = tracing.tracer.bind(py).call_method1(intern!(py, "end"), (span, error, from_cache));
        if let Err(error) = ended {
            warn(py, "could not end a span", &error);
        }
    }

    /// A step that ends the run (a return or a raise) closes what the start opened.
    fn observed(&mut self, py: Python<'_>, step: Step) -> Step {
        match &step {
            Step::Await(_) => {}
            Step::Return(_) => self.observe_end(py, None),
            Step::Raise(error) => {
                let error = error.value(py).clone();
                self.observe_end(py, Some(error.as_any()));
            }
        }
        step
    }

    fn observe_end(&mut self, py: Python<'_>, error: Option<&Bound<'_, PyAny>>) {
        if self.observing.ended || !self.observing.begun {
            return;
        }
        self.observing.ended = true;
        self.end_inner_span(py, error);
        let elapsed = self.observing.started.map(|started| started.elapsed());
        let from_cache = self.from_cache;
        if let Some(span) = self.observing.outer_span.take() {
            self.end_span(py, &span, error, from_cache);
        }
        let hooks = self.hooks(py);
        let hooks = hooks.get();
        let outcome = match error {
            None => Outcome::Success,
            Some(error) if error.is_instance_of::<PyException>() => Outcome::Failure,
            Some(_) => Outcome::Cancelled,
        };
        if let Some(metrics) = &hooks.metrics {
            if self.observing.entered {
                let nanos = elapsed.map_or(0, |e| u64::try_from(e.as_nanos()).unwrap_or(u64::MAX));
                metrics.metrics.leave(outcome, nanos);
            } else if !metrics.message_role {
                metrics.metrics.handler_done(outcome);
            }
        }
        if let (true, Some(logging)) = (self.observing.log, &hooks.logging) {
            let seconds = elapsed.map_or(0.0, |e| e.as_secs_f64());
            let logged = logging.log.bind(py).call1((self.message.bind(py), seconds, error, from_cache));
            if let Err(error) = logged {
                warn(py, "could not write the log record of a message", &error);
            }
        }
    }

    /// A new reference to the hooks, so that `self` stays free to change while they are read.
    fn hooks(&self, py: Python<'_>) -> Py<PyHooks> {
        self.hooks.clone_ref(py)
    }

    fn errors<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.hooks.get().errors.as_ref().expect("checked when the hooks were made").bind(py).clone()
    }

    /// Step 1, then the rest of the entry.
    fn claim_and_enter(&mut self, py: Python<'_>) -> PyResult<Step> {
        let hooks = self.hooks(py);
        if let Some((table, handler)) = &hooks.get().native_idempotency {
            let message_id: u64 = self.message.bind(py).getattr(intern!(py, "message_id"))?.extract()?;
            let key = Key { message_id, handler: *handler };
            // NOTE: the native table is claimed without a Python call or a result tuple (97 ns for
            // `table.claim(...)` through its method, measured by the stores' tests).
            match table.get().claim_key(py, key)? {
                Claim::Completed(stored) => {
                    self.phase = Phase::Done;
                    self.from_cache = true;
                    self.count(Counter::IdempotencyHits);
                    return Ok(Step::Return(self.output(py, stored.into_bound(py), true)?));
                }
                Claim::InFlight => {
                    self.phase = Phase::Done;
                    let error = self.errors(py).call_method1(intern!(py, "conflict"), (self.message.bind(py),))?;
                    return Ok(Step::Raise(PyErr::from_value(error)));
                }
                Claim::Claimed => {
                    self.count(Counter::IdempotencyMisses);
                    self.claim = Some(HeldClaim::Native(key));
                }
            }
        } else if let Some(idempotency) = &hooks.get().idempotency {
            let (table, handler) = (idempotency.bind(py).get_item(0)?, idempotency.bind(py).get_item(1)?);
            let message_id = self.message.bind(py).getattr(intern!(py, "message_id"))?;
            let claimed = table.call_method1(intern!(py, "claim"), (&message_id, &handler))?;
            let (status, stored): (i64, Bound<'_, PyAny>) = claimed.extract()?;
            if status == COMPLETED {
                self.phase = Phase::Done;
                self.from_cache = true;
                self.count(Counter::IdempotencyHits);
                return Ok(Step::Return(self.output(py, stored, true)?));
            }
            if status == IN_FLIGHT {
                self.phase = Phase::Done;
                let error = self.errors(py).call_method1(intern!(py, "conflict"), (self.message.bind(py),))?;
                return Ok(Step::Raise(PyErr::from_value(error)));
            }
            self.count(Counter::IdempotencyMisses);
            self.claim = Some(HeldClaim::Python(message_id.unbind()));
        }
        self.enter(py)
    }

    /// Steps 2–6, from wherever the run stands.
    fn enter(&mut self, py: Python<'_>) -> PyResult<Step> {
        let hooks = self.hooks(py);
        let hooks = hooks.get();
        if let (Some(rate_limit), false) = (&hooks.rate_limit, self.permit || self.breaker) {
            if let Some(step) = self.take_token(py, rate_limit.bind(py))? {
                return Ok(step);
            }
        }
        if let (Some(concurrency), false) = (&hooks.concurrency, self.permit) {
            if let Some(step) = self.take_permit(py, concurrency.bind(py))? {
                return Ok(step);
            }
        }
        if let Some(breaker) = &hooks.breaker {
            let retry_after: f64 = breaker.bind(py).call_method0(intern!(py, "allow"))?.extract()?;
            if retry_after > 0.0 {
                let error = self.errors(py).call_method1(intern!(py, "circuit_open"), (retry_after,))?;
                return Err(PyErr::from_value(error));
            }
            self.breaker = true;
        }
        if let Some(cache) = &hooks.cache {
            let (table, group, key_of) =
                (cache.bind(py).get_item(0)?, cache.bind(py).get_item(1)?, cache.bind(py).get_item(2)?);
            let key = key_of.call1((self.message.bind(py),))?;
            let looked_up = table.call_method1(intern!(py, "get"), (&group, &key))?;
            self.cache_key = Some(key.unbind());
            let (hit, stored): (bool, Bound<'_, PyAny>) = looked_up.extract()?;
            if hit {
                return Ok(self.succeed(py, stored, true));
            }
        }
        self.run_target(py)
    }

    /// Step 2: `None` when a token was taken, else the sleep to wait first.
    fn take_token(&mut self, py: Python<'_>, rate_limit: &Bound<'_, PyTuple>) -> PyResult<Option<Step>> {
        let bucket = rate_limit.get_item(0)?;
        let wait = rate_limit.get_item(1)?.is_truthy()?;
        let max_wait: Option<f64> = rate_limit.get_item(2)?.extract()?;
        let due: f64 = bucket.call_method1(intern!(py, "try_acquire"), (1,))?.extract()?;
        if due <= 0.0 {
            return Ok(None);
        }
        if !wait || max_wait.is_some_and(|max| due > max) {
            self.count(Counter::RateLimitRejected);
            let error = self.errors(py).call_method1(intern!(py, "rate_limited"), (due,))?;
            return Err(PyErr::from_value(error));
        }
        self.phase = Phase::RateWait;
        Ok(Some(Step::Await(owned(asyncio_sleep(py)?.bind(py).call1((due,))?))))
    }

    /// Step 3: `None` when a permit was taken, else the wait for one.
    fn take_permit(&mut self, py: Python<'_>, concurrency: &Bound<'_, PyTuple>) -> PyResult<Option<Step>> {
        let (limiter, permits) = (concurrency.get_item(0)?, concurrency.get_item(1)?);
        if limiter.call_method0(intern!(py, "try_acquire"))?.is_truthy()? {
            self.permit = true;
            return Ok(None);
        }
        if permits.is_none() {
            self.count(Counter::ConcurrencyRejected);
            limiter.call_method0(intern!(py, "note_rejected"))?;
            let error = self.errors(py).call_method0(intern!(py, "concurrency_limited"))?;
            return Err(PyErr::from_value(error));
        }
        self.phase = Phase::PermitWait;
        Ok(Some(Step::Await(owned(permits.call_method0(intern!(py, "acquire"))?))))
    }

    /// Step 6: call the target with the context set.
    fn run_target(&mut self, py: Python<'_>) -> PyResult<Step> {
        let current = raw::names().current_message.as_ptr();
        // SAFETY: attached; both are live objects.
        self.token = unsafe { raw::context_set(current, self.message.as_ptr()) };
        if self.token.is_none() {
            return Err(PyErr::fetch(py));
        }
        self.start_inner_span(py);
        let result = self.target.bind(py).call1((self.message.bind(py),));
        match result {
            Ok(awaitable) if self.is_async => {
                self.phase = Phase::Target;
                Ok(Step::Await(owned(awaitable)))
            }
            Ok(value) => {
                self.end_inner_span(py, None);
                self.leave_context();
                Ok(self.succeed(py, value, false))
            }
            Err(error) => {
                self.end_inner_span(py, Some(error.value(py).as_any()));
                self.leave_context();
                Err(error)
            }
        }
    }

    fn leave_context(&mut self) {
        if let Some(token) = self.token.take() {
            // SAFETY: attached (every caller runs inside `Python::attach` or a PyO3 method).
            unsafe { raw::context_reset(raw::names().current_message.as_ptr(), token) };
        }
    }

    /// Step 7 on success.
    fn succeed(&mut self, py: Python<'_>, value: Bound<'_, PyAny>, from_cache: bool) -> Step {
        self.from_cache = from_cache;
        let settled = (|| -> PyResult<()> {
            let hooks = self.hooks(py);
            let hooks = hooks.get();
            if let (Some(cache), Some(key), false) = (&hooks.cache, &self.cache_key, from_cache) {
                let cache = cache.bind(py);
                let (table, group, ttl) = (cache.get_item(0)?, cache.get_item(1)?, cache.get_item(3)?);
                keep(py, "cache", table.call_method1(intern!(py, "put"), (&group, key.bind(py), &value, &ttl)));
            }
            if self.breaker {
                self.breaker = false;
                hooks.breaker.as_ref().expect("set").bind(py).call_method0(intern!(py, "record_success"))?;
            }
            self.release_permit(py)?;
            match (self.claim.take(), &hooks.native_idempotency, &hooks.idempotency) {
                (Some(HeldClaim::Native(key)), Some((table, _)), _) => {
                    table.get().complete_key(py, key, value.clone().unbind())?;
                }
                (Some(HeldClaim::Python(message_id)), _, Some(idempotency)) => {
                    let (table, handler) = (idempotency.bind(py).get_item(0)?, idempotency.bind(py).get_item(1)?);
                    let completed = table.call_method1(intern!(py, "complete"), (&message_id, &handler, &value));
                    if !keep(py, "idempotency", completed) {
                        table.call_method1(intern!(py, "release"), (&message_id, &handler))?;
                    }
                }
                _ => {}
            }
            Ok(())
        })();
        self.phase = Phase::Done;
        match settled.and_then(|()| self.output(py, value, from_cache)) {
            Ok(output) => Step::Return(output),
            Err(error) => Step::Raise(error),
        }
    }

    /// Step 7 on failure: give everything back, then raise `error`.
    fn fail(&mut self, py: Python<'_>, error: PyErr) -> Step {
        // Asked only when a breaker records it: observation-only hooks have no `errors`.
        let counts = self.breaker
            && error.is_instance_of::<PyException>(py)
            && !self
                .errors(py)
                .call_method1(intern!(py, "is_ignored"), (error.value(py),))
                .and_then(|r| r.is_truthy())
                .unwrap_or(false);
        let settled = self.settle_failure(py, counts);
        self.phase = Phase::Done;
        match settled {
            Ok(()) => Step::Raise(error),
            Err(settle_error) => {
                settle_error.set_cause(py, Some(error));
                Step::Raise(settle_error)
            }
        }
    }

    fn settle_failure(&mut self, py: Python<'_>, counts: bool) -> PyResult<()> {
        let hooks = self.hooks(py);
        let hooks = hooks.get();
        if self.breaker {
            self.breaker = false;
            let record = if counts { intern!(py, "record_failure") } else { intern!(py, "record_ignored") };
            hooks.breaker.as_ref().expect("set").bind(py).call_method0(record)?;
        }
        self.release_permit(py)?;
        match (self.claim.take(), &hooks.native_idempotency, &hooks.idempotency) {
            (Some(HeldClaim::Native(key)), Some((table, _)), _) => {
                table.get().release_key(key);
            }
            (Some(HeldClaim::Python(message_id)), _, Some(idempotency)) => {
                let (table, handler) = (idempotency.bind(py).get_item(0)?, idempotency.bind(py).get_item(1)?);
                table.call_method1(intern!(py, "release"), (&message_id, &handler))?;
            }
            _ => {}
        }
        Ok(())
    }

    fn release_permit(&mut self, py: Python<'_>) -> PyResult<()> {
        if !self.permit {
            return Ok(());
        }
        self.permit = false;
        let hooks = self.hooks(py);
        let concurrency = hooks.get().concurrency.as_ref().expect("set").bind(py);
        let (limiter, permits) = (concurrency.get_item(0)?, concurrency.get_item(1)?);
        let owner = if permits.is_none() { limiter } else { permits };
        owner.call_method0(intern!(py, "release"))?;
        Ok(())
    }

    fn output(&self, py: Python<'_>, value: Bound<'_, PyAny>, from_cache: bool) -> PyResult<Obj> {
        if self.meta {
            Ok(owned(PyTuple::new(py, [value, PyBool::new(py, from_cache).to_owned().into_any()])?.into_any()))
        } else {
            Ok(owned(value))
        }
    }

    /// Visit the references this run owns (for the owner's GC traversal).
    pub(crate) fn objects(&self) -> impl Iterator<Item = *mut pyo3::ffi::PyObject> + '_ {
        [Some(self.hooks.as_ptr()), Some(self.target.as_ptr()), Some(self.message.as_ptr())]
            .into_iter()
            .chain([
                match &self.claim {
                    Some(HeldClaim::Python(message_id)) => Some(message_id.as_ptr()),
                    _ => None,
                },
                self.cache_key.as_ref().map(Py::as_ptr),
            ])
            .chain([self.token.as_ref().map(Obj::as_ptr)])
            .chain([
                self.observing.outer_span.as_ref().map(Py::as_ptr),
                self.observing.inner_span.as_ref().map(Py::as_ptr),
            ])
            .flatten()
    }
}

/// Whether the logger takes the hook's level, asked the way `Logger.isEnabledFor` answers.
fn logging_enabled(py: Python<'_>, hook: &LoggingHook) -> bool {
    if let Some(cache) = &hook.cache {
        // NOTE: the logger's own cache of answers, read without a Python call: the disabled Logging
        // check costs a dict look-up (BENCHMARKS.md, "Observability"), where `isEnabledFor` cost ~70 ns.
        if let Ok(Some(answer)) = cache.bind(py).get_item(hook.level.bind(py)) {
            if let Ok(answer) = answer.cast::<PyBool>() {
                return answer.is_true();
            }
        }
    }
    match hook.logger.bind(py).call_method1(intern!(py, "isEnabledFor"), (hook.level.bind(py),)) {
        Ok(answer) => answer.is_truthy().unwrap_or(false),
        Err(error) => {
            warn(py, "could not ask the logger for its level", &error);
            false
        }
    }
}

/// Whether a tracer provider is set (or the hook has no switch: always).
fn tracing_live(py: Python<'_>, hook: &TracingHook) -> bool {
    match &hook.switch {
        None => true,
        Some((switch, key)) => matches!(switch.bind(py).get_item(key.bind(py)), Ok(Some(value)) if !value.is_none()),
    }
}

fn start_span(
    py: Python<'_>,
    hook: &TracingHook,
    message: &Bound<'_, PyAny>,
    operation: &Py<PyAny>,
) -> Option<Py<PyAny>> {
    match hook.tracer.bind(py).call_method1(intern!(py, "start"), (message, operation.bind(py))) {
        Ok(span) => Some(span.unbind()),
        Err(error) => {
            warn(py, "could not start a span: tracing skips it", &error);
            None
        }
    }
}

/// Observation must never break message handling: a failure is logged on `catga.observability`.
fn warn(py: Python<'_>, what: &str, error: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", ("catga.observability",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", error.value(py))?;
        logger.call_method("warning", ("%s", what), Some(&kwargs))?;
        Ok(())
    })();
    if let Err(log_error) = logged {
        log_error.write_unraisable(py, None);
    }
}

/// A store that cannot keep a result must not fail the send: log a warning, cache nothing.
fn keep(py: Python<'_>, store: &str, outcome: PyResult<Bound<'_, PyAny>>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(error) => {
            let logged = (|| -> PyResult<()> {
                let logger = py.import("logging")?.call_method1("getLogger", ("catga",))?;
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("exc_info", error.value(py))?;
                logger.call_method(
                    "warning",
                    ("the %s store could not keep a result; it is not cached", store),
                    Some(&kwargs),
                )?;
                Ok(())
            })();
            if let Err(log_error) = logged {
                log_error.write_unraisable(py, None);
            }
            false
        }
    }
}
