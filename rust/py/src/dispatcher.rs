//! `Dispatcher`: the dispatch table and the entry points `send` and `publish`.
//!
//! `catga.Mediator` subclasses it, so `mediator.send(msg)` resolves straight to the Rust method with
//! no Python frame in between. A route is compiled once per message type by calling the
//! subclass's `_compile_route(type)`, then found by the type's address.

#![allow(unsafe_code)]

use std::sync::Arc;

use catga_core::pipeline::{publish_of_request_message, send_of_event_message};
use catga_core::{DispatchTable, Mode};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::awaitable;
use crate::raw;
use crate::route::Route;

/// The dispatch table and pipeline executor that `catga.Mediator` subclasses.
#[pyclass(name = "Dispatcher", module = "catga._catga", subclass, frozen)]
pub(crate) struct PyDispatcher {
    routes: DispatchTable<Arc<Route>>,
}

impl PyDispatcher {
    /// The route of `message_type`, compiling it on a miss.
    fn route(slf: &Bound<'_, Self>, message_type: &Bound<'_, PyType>) -> PyResult<Arc<Route>> {
        let key = message_type.as_ptr() as usize;
        if let Some(route) = slf.get().routes.get(key) {
            return Ok(route);
        }
        let generation = slf.get().routes.generation();
        let source = slf.call_method1(intern!(slf.py(), "_compile_route"), (message_type,))?;
        let route = Arc::new(Route::compile(message_type, &source)?);
        slf.get().routes.insert(generation, key, Arc::clone(&route));
        Ok(route)
    }
}

fn send_route<'py>(route: &Route, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = message.py();
    if route.is_event {
        return awaitable::fail(py, PyTypeError::new_err(send_of_event_message(&route.type_name)));
    }
    let handler = &route.handlers[0];
    if let Some(hooks) = &handler.hooks {
        return awaitable::hooked(py, hooks, &handler.target, message, handler.spec.is_async, false);
    }
    match handler.mode {
        // NOTE: the handler's own coroutine goes back to the caller: no wrapper, no extra frame
        // (perf_design.md option "C core.send(req)": +22 ns over a direct await).
        Mode::Direct => {
            // SAFETY: attached; both are live references; `call1` returns a new reference or NULL.
            let coroutine = unsafe { raw::call1(handler.target.as_ptr(), message.as_ptr()) };
            // SAFETY: a new reference or NULL with an exception set.
            unsafe { Bound::from_owned_ptr_or_err(py, coroutine) }.or_else(|error| awaitable::fail(py, error))
        }
        Mode::CallLazily | Mode::Drive => {
            awaitable::call(py, &handler.target, message, handler.spec.is_async, handler.spec.with_context, false)
        }
    }
}

#[pymethods]
impl PyDispatcher {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self { routes: DispatchTable::default() }
    }

    /// Run the handler of a request through its pipeline. Errors are raised on await.
    #[pyo3(signature = (message, /))]
    fn send<'py>(slf: &Bound<'py, Self>, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let key = message.get_type_ptr() as usize;
        if let Some(result) = slf.get().routes.with(key, |route| route.map(|route| send_route(route, message))) {
            return result;
        }
        match Self::route(slf, &message.get_type()) {
            Ok(route) => send_route(&route, message),
            Err(error) => awaitable::fail(slf.py(), error),
        }
    }

    /// Run every handler of an event, in order; failures are raised together as `PublishError`.
    #[pyo3(signature = (event, /))]
    fn publish<'py>(slf: &Bound<'py, Self>, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let route = match slf.get().routes.get(event.get_type_ptr() as usize) {
            Some(route) => route,
            None => match Self::route(slf, &event.get_type()) {
                Ok(route) => route,
                Err(error) => return awaitable::fail(py, error),
            },
        };
        if !route.is_event {
            return awaitable::fail(py, PyTypeError::new_err(publish_of_request_message(&route.type_name)));
        }
        awaitable::publish(py, route, event)
    }

    /// `send`, resolving to `(result, from_cache)`: whether the result was stored, not computed.
    #[pyo3(signature = (message, /))]
    fn send_meta<'py>(slf: &Bound<'py, Self>, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let route = match Self::route(slf, &message.get_type()) {
            Ok(route) => route,
            Err(error) => return awaitable::fail(py, error),
        };
        if route.is_event {
            return send_route(&route, message);
        }
        let handler = &route.handlers[0];
        match &handler.hooks {
            Some(hooks) => awaitable::hooked(py, hooks, &handler.target, message, handler.spec.is_async, true),
            None => {
                awaitable::call(py, &handler.target, message, handler.spec.is_async, handler.spec.with_context, true)
            }
        }
    }

    /// The compiled route of a type (compiling it on a miss).
    #[pyo3(signature = (message_type, /))]
    fn _route(slf: &Bound<'_, Self>, message_type: &Bound<'_, PyType>) -> PyResult<Py<PyTuple>> {
        Ok(Self::route(slf, message_type)?.source.clone_ref(slf.py()))
    }

    /// Forget every compiled route.
    fn _invalidate(&self) {
        drop(self.routes.clear());
    }

    #[allow(clippy::needless_pass_by_value)] // the signature PyO3 requires
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let mut result = Ok(());
        self.routes.for_each(|route| {
            if result.is_ok() {
                result = route.traverse(&visit);
            }
        });
        result
    }

    fn __clear__(&self) {
        drop(self.routes.clear());
    }
}
