//! A compiled route: what `Mediator._compile_route` described, checked once and kept in Rust form.

use catga_core::{HandlerSpec, Mode};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyTuple, PyType};
use pyo3::PyTraverseError;
use pyo3::PyVisit;

use crate::hooks::PyHooks;

/// One handler of a route.
pub(crate) struct Handler {
    pub(crate) target: Py<PyAny>,
    /// The handler's bookkeeping behaviours; a handler with hooks always runs with context.
    pub(crate) hooks: Option<Py<PyHooks>>,
    pub(crate) spec: HandlerSpec,
    pub(crate) mode: Mode,
}

/// The route of one message type.
pub(crate) struct Route {
    /// Held so the type, whose address is the table key, cannot be freed and its address reused.
    message_type: Py<PyType>,
    /// The tuple `_compile_route` returned, handed back by `Dispatcher._route`.
    pub(crate) source: Py<PyTuple>,
    pub(crate) is_event: bool,
    pub(crate) handlers: Box<[Handler]>,
    /// An event route's hooks that observe the whole publish (docs/internals.md, "Observation").
    pub(crate) observer: Option<Py<PyHooks>>,
    pub(crate) type_name: String,
}

impl Route {
    /// Check and compile `(is_event, ((target, is_async, with_context[, hooks]), ...)[, observer])`.
    pub(crate) fn compile(message_type: &Bound<'_, PyType>, source: &Bound<'_, PyAny>) -> PyResult<Route> {
        let type_name = message_type.qualname().map_or_else(|_| "?".to_owned(), |name| name.to_string());
        let malformed = |what: &str| {
            PyTypeError::new_err(format!(
                "`_compile_route` returned a malformed route for `{type_name}`: {what}, got `{}`",
                source.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))
        };
        let source = source.cast::<PyTuple>().map_err(|_| malformed("expected a tuple"))?;
        if source.len() != 2 && source.len() != 3 {
            return Err(malformed("expected `(is_event, handlers)` or `(is_event, handlers, observer)`"));
        }
        let is_event =
            source.get_item(0)?.cast::<PyBool>().map_err(|_| malformed("`is_event` must be a bool"))?.is_true();
        let entries = source.get_item(1)?;
        let entries = entries.cast::<PyTuple>().map_err(|_| malformed("`handlers` must be a tuple"))?;
        let handlers = entries
            .iter()
            .map(|entry| {
                let entry = entry.cast_into::<PyTuple>().map_err(|_| malformed("each handler must be a tuple"))?;
                if entry.len() != 3 && entry.len() != 4 {
                    return Err(malformed("each handler must be `(target, is_async, with_context)` or `(..., hooks)`"));
                }
                let hooks = match entry.get_item(3).ok().filter(|hooks| !hooks.is_none()) {
                    None => None,
                    Some(hooks) => Some(
                        hooks
                            .cast_into::<PyHooks>()
                            .map_err(|_| malformed("`hooks` must be a `Hooks` or None"))?
                            .unbind(),
                    ),
                };
                let flag = |i| -> PyResult<bool> {
                    Ok(entry
                        .get_item(i)?
                        .cast::<PyBool>()
                        .map_err(|_| malformed("handler flags must be bools"))?
                        .is_true())
                };
                let spec = HandlerSpec { is_async: flag(1)?, with_context: flag(2)? || hooks.is_some() };
                Ok(Handler { target: entry.get_item(0)?.unbind(), hooks, spec, mode: Mode::of(spec) })
            })
            .collect::<PyResult<Box<[Handler]>>>()?;
        if !is_event && handlers.len() != 1 {
            return Err(malformed("a request route needs exactly one handler"));
        }
        let observer = match source.get_item(2).ok().filter(|observer| !observer.is_none()) {
            None => None,
            Some(_) if !is_event => {
                return Err(malformed("only an event route has an observer (a request's goes in its handler's hooks)"))
            }
            Some(observer) => Some(
                observer
                    .cast_into::<PyHooks>()
                    .map_err(|_| malformed("`observer` must be a `Hooks` or None"))?
                    .unbind(),
            ),
        };
        Ok(Route {
            message_type: message_type.clone().unbind(),
            source: source.clone().unbind(),
            is_event,
            handlers,
            observer,
            type_name,
        })
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.message_type)?;
        visit.call(&self.source)?;
        if let Some(observer) = &self.observer {
            visit.call(observer)?;
        }
        self.handlers.iter().try_for_each(|handler| {
            visit.call(&handler.target)?;
            handler.hooks.as_ref().map_or(Ok(()), |hooks| visit.call(hooks))
        })
    }
}
