//! `catga._catga.Pending`: the awaitable that runs a pipeline's handlers.
//!
//! It is a heap type built from raw slots because `PyO3` classes cannot define `am_send`, and
//! `am_send` is what lets `CPython` 3.11 (every `await`) and asyncio's C Task (every version)
//! step it without raising `StopIteration` per result (docs/internals.md, research/awaitable.md).
//! It behaves like a coroutine: `__await__`, `send`, `throw`, `close`; `throw`/`close` reach the
//! handler's coroutine, so cancelling the awaiting task cancels the handler.
//!
//! Invariant: `State::inner` is the handler coroutine being driven, and `State::token` is set
//! exactly while a handler with context runs; every exit path (return, error, throw, close)
//! clears both before control leaves the slot.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CStr};
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use catga_core::{pipeline::publish_failure_message, FanOut, FanOutOutcome};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::hooks::{HookedRun, PyHooks, Step};
use crate::raw::{self, names, Obj, PendingError};
use crate::route::Route;

/// What the awaitable does when stepped.
enum Job {
    /// Run one request handler: call `target(message)`, drive its awaitable if `is_async`;
    /// `meta` resolves to `(result, False)` (`send_meta` of a route without hooks).
    Call { target: Obj, message: Obj, is_async: bool, with_context: bool, meta: bool },
    /// Run one handler through its bookkeeping hooks (hooks.rs).
    Hooked(AttachedRun),
    /// Raise an error prepared when `send` was called.
    Fail { error: Obj },
    /// Run every handler of an event route in order, collecting failures.
    Publish { route: SharedRoute, message: Obj, walk: FanOut<Obj> },
}

struct State {
    job: Job,
    started: bool,
    finished: bool,
    inner: Option<Obj>,
    token: Option<Obj>,
}

#[repr(C)]
struct PendingObject {
    ob_base: ffi::PyObject,
    /// The state lives inside the object: one allocation per awaitable, not two.
    // NOTE: inlining it (instead of a `Box`) took publish-3 from 415 to 390 ns (3.11, abi3).
    state: Option<State>,
}

/// A route shared with the dispatch table, safe to drop in a raw slot.
///
/// The table may let go of the route (`_invalidate`) while a publish still runs it; the last
/// reference then releases the route's `Py` fields, which `PyO3` (built without its reference pool,
/// `.cargo/config.toml`) only allows while it knows the thread is attached.
struct SharedRoute(ManuallyDrop<Arc<Route>>);

impl std::ops::Deref for AttachedRun {
    type Target = HookedRun;

    fn deref(&self) -> &HookedRun {
        &self.0
    }
}

impl std::ops::DerefMut for AttachedRun {
    fn deref_mut(&mut self) -> &mut HookedRun {
        &mut self.0
    }
}

impl Deref for SharedRoute {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.0
    }
}

impl Drop for SharedRoute {
    fn drop(&mut self) {
        // SAFETY: `self.0` is not used after this.
        let route = unsafe { ManuallyDrop::take(&mut self.0) };
        if let Some(route) = Arc::into_inner(route) {
            Python::attach(|_| drop(route));
        }
    }
}

/// A hooked run, safe to drop in a raw slot: it gives back what it holds (hooks.rs) and releases
/// its `Py` fields with the thread attached as far as `PyO3` knows.
struct AttachedRun(ManuallyDrop<Box<HookedRun>>);

impl Drop for AttachedRun {
    fn drop(&mut self) {
        // SAFETY: `self.0` is not used after this.
        let mut run = unsafe { ManuallyDrop::take(&mut self.0) };
        // A dealloc may run while an exception propagates: giving back what the run holds calls
        // Python code, which must neither see nor clobber that exception.
        // SAFETY: attached (a drop of a `Pending` happens in its slots or in PyO3 methods).
        let pending = unsafe { PendingError::take() };
        Python::attach(|py| {
            run.abandon(py);
            drop(run);
        });
        if let Some(pending) = pending {
            // SAFETY: as above.
            unsafe { pending.restore() };
        }
    }
}

/// What a step was given.
#[derive(Clone, Copy)]
enum Input {
    /// A value sent in (borrowed); `None` for the first step.
    Send(*mut ffi::PyObject),
    /// An exception instance thrown in (borrowed).
    Throw(*mut ffi::PyObject),
}

/// How a step ended: yielded (new ref), returned (new ref), or raised (exception set).
enum Output {
    Yield(Obj),
    Return(Obj),
    Raise,
}

static PENDING_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

/// A new awaitable for `job`.
fn new_pending(py: Python<'_>, job: Job) -> PyResult<Bound<'_, PyAny>> {
    let tp = PENDING_TYPE.load(Ordering::Acquire);
    // SAFETY: attached; the type was made at module init; GenericAlloc zeroes and GC-tracks it.
    unsafe {
        let object = ffi::PyType_GenericAlloc(tp, 0);
        if object.is_null() {
            return Err(PyErr::fetch(py));
        }
        let state = State { job, started: false, finished: false, inner: None, token: None };
        // The allocation is zeroed, which is not a valid `Option<State>`: write, never assign.
        ptr::addr_of_mut!((*object.cast::<PendingObject>()).state).write(Some(state));
        Ok(Bound::from_owned_ptr(py, object))
    }
}

/// An awaitable that calls `target(message)` when first stepped.
pub(crate) fn call<'py>(
    py: Python<'py>,
    target: &Py<PyAny>,
    message: &Bound<'py, PyAny>,
    is_async: bool,
    with_context: bool,
    meta: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: attached; both pointers are live references.
    let (target, message) = unsafe { (Obj::from_borrowed(target.as_ptr()), Obj::from_borrowed(message.as_ptr())) };
    new_pending(py, Job::Call { target, message, is_async, with_context, meta })
}

/// An awaitable that runs `target(message)` inside its bookkeeping hooks.
pub(crate) fn hooked<'py>(
    py: Python<'py>,
    hooks: &Py<PyHooks>,
    target: &Py<PyAny>,
    message: &Bound<'py, PyAny>,
    is_async: bool,
    meta: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let run = HookedRun::new(hooks.clone_ref(py), target.clone_ref(py), message.clone().unbind(), is_async, meta);
    new_pending(py, Job::Hooked(AttachedRun(ManuallyDrop::new(Box::new(run)))))
}

/// An awaitable that raises `error` when first stepped.
pub(crate) fn fail(py: Python<'_>, error: PyErr) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: attached; `into_value` attaches the traceback to the instance.
    let error = unsafe { Obj::from_owned(error.into_value(py).into_ptr()) }.expect("an exception instance");
    new_pending(py, Job::Fail { error })
}

/// An awaitable that runs the handlers of an event route, inside its observer when it has one.
pub(crate) fn publish<'py>(
    py: Python<'py>,
    route: Arc<Route>,
    message: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(observer) = &route.observer {
        // The observer's hooked run drives the fan-out as its target: one code path observes a
        // send and a publish alike, and the fan-out itself stays as fast without an observer.
        let observer = observer.clone_ref(py);
        let target = Py::new(py, PublishRun { route: SharedRoute(ManuallyDrop::new(route)) })?.into_any();
        return hooked(py, &observer, &target, message, true, false);
    }
    fan_out(py, route, message)
}

/// The fan-out of an observed publish, called as its observer's target.
#[pyclass(name = "_PublishRun", module = "catga._catga", frozen)]
struct PublishRun {
    route: SharedRoute,
}

#[pymethods]
impl PublishRun {
    fn __call__<'py>(&self, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        fan_out(event.py(), Arc::clone(&self.route.0), event)
    }
}

/// An awaitable that runs the handlers of an event route in order.
fn fan_out<'py>(py: Python<'py>, route: Arc<Route>, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let walk = FanOut::new(route.handlers.len());
    // SAFETY: attached; a live reference.
    let message = unsafe { Obj::from_borrowed(message.as_ptr()) };
    new_pending(py, Job::Publish { route: SharedRoute(ManuallyDrop::new(route)), message, walk })
}

impl State {
    /// Set the current-message context for a handler that needs it.
    unsafe fn enter(&mut self, message: *mut ffi::PyObject) -> bool {
        match raw::context_set(names().current_message.as_ptr(), message) {
            Some(token) => {
                self.token = Some(token);
                true
            }
            None => false,
        }
    }

    /// Undo `enter`, if it happened; any exception already set stays set.
    unsafe fn leave(&mut self) {
        if let Some(token) = self.token.take() {
            raw::context_reset(names().current_message.as_ptr(), token);
        }
    }

    /// Step the handler coroutine that is running.
    unsafe fn step_inner(inner: &Obj, input: Input) -> (ffi::PySendResult, Option<Obj>) {
        match input {
            Input::Send(value) => {
                let mut result = ptr::null_mut();
                let status = ffi::PyIter_Send(inner.as_ptr(), value, &raw mut result);
                (status, Obj::from_owned(result))
            }
            Input::Throw(error) => match Obj::from_owned(raw::call_method(inner.as_ptr(), &names().throw, Some(error)))
            {
                Some(yielded) => (ffi::PySendResult::PYGEN_NEXT, Some(yielded)),
                None if ffi::PyErr_ExceptionMatches(ffi::PyExc_StopIteration) != 0 => {
                    (ffi::PySendResult::PYGEN_RETURN, raw::take_stop_iteration_value())
                }
                None => (ffi::PySendResult::PYGEN_ERROR, None),
            },
        }
    }

    /// Start driving what a handler's target returned: a coroutine as it is, else its `__await__()`.
    unsafe fn start_inner(&mut self, awaitable: Obj) -> bool {
        let is_coroutine = ffi::Py_TYPE(awaitable.as_ptr()).cast::<ffi::PyObject>() == names().coroutine_type.as_ptr();
        let inner = if is_coroutine {
            Some(awaitable)
        } else {
            Obj::from_owned(raw::call_method(awaitable.as_ptr(), &names().await_, None))
        };
        self.inner = inner;
        self.inner.is_some()
    }

    /// Advance the job as far as it goes without suspending.
    unsafe fn drive(&mut self, mut input: Input) -> Output {
        if self.finished {
            raw::raise_str(ffi::PyExc_RuntimeError, c"cannot reuse already awaited coroutine");
            return Output::Raise;
        }
        loop {
            if let Some(inner) = &self.inner {
                let (status, value) = Self::step_inner(inner, input);
                input = Input::Send(ffi::Py_None());
                match status {
                    ffi::PySendResult::PYGEN_NEXT => return Output::Yield(value.unwrap_or_else(|| raw::none())),
                    ffi::PySendResult::PYGEN_RETURN => {
                        self.inner = None;
                        self.leave();
                        let value = value.unwrap_or_else(|| raw::none());
                        match &mut self.job {
                            Job::Publish { .. } => {}
                            Job::Hooked(run) => {
                                let step = Python::attach(|py| run.resume(py, Ok(value.bind(py))));
                                if let Some(output) = self.apply(step) {
                                    return output;
                                }
                            }
                            Job::Call { meta: true, .. } => {
                                self.finished = true;
                                return with_meta(&value);
                            }
                            _ => {
                                self.finished = true;
                                return Output::Return(value);
                            }
                        }
                    }
                    ffi::PySendResult::PYGEN_ERROR => {
                        self.inner = None;
                        self.leave();
                        if let Job::Hooked(run) = &mut self.job {
                            let step = Python::attach(|py| run.resume(py, Err(PyErr::fetch(py))));
                            if let Some(output) = self.apply(step) {
                                return output;
                            }
                        } else if !self.absorb_handler_error() {
                            return Output::Raise;
                        }
                    }
                }
                continue;
            }
            if let Input::Throw(error) = input {
                // Nothing is running: the exception ends the job where it stands, as for a coroutine.
                self.finished = true;
                raw::raise(Obj::from_borrowed(error));
                return Output::Raise;
            }
            if let Some(output) = self.start_next() {
                return output;
            }
            input = Input::Send(ffi::Py_None());
        }
    }

    /// Carry out what a hooked run asks; `None` when there is an awaitable to drive now.
    unsafe fn apply(&mut self, step: Step) -> Option<Output> {
        match step {
            Step::Await(awaitable) => {
                if self.start_inner(awaitable) {
                    return None;
                }
                // Its `__await__` raised: the run fails with that error.
                let Job::Hooked(run) = &mut self.job else { unreachable!("only hooked runs ask to await") };
                let step = Python::attach(|py| run.resume(py, Err(PyErr::fetch(py))));
                self.apply(step)
            }
            Step::Return(value) => {
                self.finished = true;
                Some(Output::Return(value))
            }
            Step::Raise(error) => {
                self.finished = true;
                Python::attach(|py| error.restore(py));
                Some(Output::Raise)
            }
        }
    }

    /// A handler failed (its exception is set). Publish records an `Exception` and goes on (true);
    /// everything else ends the job with the exception set (false).
    unsafe fn absorb_handler_error(&mut self) -> bool {
        if let Job::Publish { walk, .. } = &mut self.job {
            if ffi::PyErr_ExceptionMatches(ffi::PyExc_Exception) != 0 {
                let error = PendingError::take().expect("an exception is set").into_value();
                walk.record_failure(error);
                return true;
            }
        }
        self.finished = true;
        false
    }

    /// Start the next piece of work; `Some` when the job ends (or fails) without suspending.
    unsafe fn start_next(&mut self) -> Option<Output> {
        let first = !self.started;
        self.started = true;
        let (target, message, is_async, with_context) = match &mut self.job {
            Job::Fail { error } if first => {
                self.finished = true;
                raw::raise(Obj::from_borrowed(error.as_ptr()));
                return Some(Output::Raise);
            }
            Job::Call { target, message, is_async, with_context, .. } if first => {
                (target.as_ptr(), message.as_ptr(), *is_async, *with_context)
            }
            Job::Hooked(run) if first => {
                let step = Python::attach(|py| run.start(py));
                return self.apply(step);
            }
            Job::Publish { route, message, walk } => match walk.next_handler() {
                Some(i) => {
                    let handler = &route.handlers[i];
                    if let Some(hooks) = &handler.hooks {
                        // Each handler runs inside its own hooks: drive a hooked awaitable for it.
                        let (target, message) = (handler.target.as_ptr(), message.as_ptr());
                        let made = Python::attach(|py| {
                            let message = Bound::from_borrowed_ptr(py, message);
                            let target = Bound::from_borrowed_ptr(py, target).unbind();
                            hooked(py, hooks, &target, &message, handler.spec.is_async, false)
                                .map(|pending| Obj::from_owned(pending.into_ptr()).expect("a new object"))
                                .map_err(|error| error.restore(py))
                        });
                        if let Ok(pending) = made {
                            if self.start_inner(pending) {
                                return None;
                            }
                        }
                        return if self.absorb_handler_error() { None } else { Some(Output::Raise) };
                    }
                    (handler.target.as_ptr(), message.as_ptr(), handler.spec.is_async, handler.spec.with_context)
                }
                None => return Some(self.finish_publish()),
            },
            _ => unreachable!("a call or failure that already started has finished"),
        };
        if with_context && !self.enter(message) {
            self.finished = true;
            return Some(Output::Raise);
        }
        let result = Obj::from_owned(raw::call1(target, message));
        let started = match result {
            Some(awaitable) if is_async => self.start_inner(awaitable),
            Some(value) => {
                self.leave();
                if matches!(self.job, Job::Publish { .. }) {
                    return None;
                }
                self.finished = true;
                if matches!(self.job, Job::Call { meta: true, .. }) {
                    return Some(with_meta(&value));
                }
                return Some(Output::Return(value));
            }
            None => false,
        };
        if started {
            return None;
        }
        // The call (or `__await__`) raised.
        self.leave();
        if self.absorb_handler_error() {
            None
        } else {
            Some(Output::Raise)
        }
    }

    /// Every handler of the event has run.
    unsafe fn finish_publish(&mut self) -> Output {
        self.finished = true;
        let Job::Publish { route, walk, .. } = &mut self.job else { unreachable!("only publish walks handlers") };
        match walk.finish() {
            FanOutOutcome::AllSucceeded => Output::Return(raw::none()),
            FanOutOutcome::Failed { failures, total } => {
                let message = publish_failure_message(failures.len(), total, &route.type_name);
                raise_publish_error(&message, failures);
                Output::Raise
            }
        }
    }

    /// `close()`: stop the handler that runs, and the job with it.
    unsafe fn close(&mut self) -> bool {
        self.finished = true;
        let closed = match self.inner.take() {
            Some(inner) => Obj::from_owned(raw::call_method(inner.as_ptr(), &names().close, None)).is_some(),
            None => true,
        };
        self.leave();
        if let Job::Hooked(run) = &mut self.job {
            let pending = PendingError::take();
            Python::attach(|py| run.abandon(py));
            if let Some(pending) = pending {
                pending.restore();
            }
        }
        closed
    }
}

/// `(value, False)`: the result of `send_meta` for a route without hooks.
unsafe fn with_meta(value: &Obj) -> Output {
    match Obj::from_owned(ffi::PyTuple_Pack(2, value.as_ptr(), ffi::Py_False())) {
        Some(pair) => Output::Return(pair),
        None => Output::Raise,
    }
}

/// Raise `catga._errors.PublishError(message, failures)`.
#[cold]
unsafe fn raise_publish_error(message: &str, failures: Vec<Obj>) {
    // A cold path: attaching through PyO3 here is worth its cost for the safe API.
    Python::attach(|py| {
        let result = (|| -> PyResult<PyErr> {
            let errors = PyList::empty(py);
            for failure in failures {
                errors.append(Bound::from_owned_ptr(py, failure.into_ptr()))?;
            }
            let publish_error = py.import("catga._errors")?.getattr("PublishError")?;
            Ok(PyErr::from_value(publish_error.call1((message, errors))?))
        })();
        result.unwrap_or_else(|error| error).restore(py);
    });
}

unsafe fn state<'a>(object: *mut ffi::PyObject) -> Option<&'a mut State> {
    (*object.cast::<PendingObject>()).state.as_mut()
}

/// Run `f` on the state; a cleared (collected) awaitable raises instead.
unsafe fn with_state<R>(object: *mut ffi::PyObject, on_cleared: R, f: impl FnOnce(&mut State) -> R) -> R {
    if let Some(state) = state(object) {
        f(state)
    } else {
        raw::raise_str(ffi::PyExc_RuntimeError, c"cannot reuse already awaited coroutine");
        on_cleared
    }
}

unsafe fn drive(object: *mut ffi::PyObject, input: Input) -> Output {
    with_state(object, Output::Raise, |state| state.drive(input))
}

// ---- slots ---------------------------------------------------------------------------------

unsafe extern "C" fn am_send(
    object: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    match drive(object, Input::Send(arg)) {
        Output::Yield(value) => {
            *result = value.into_ptr();
            ffi::PySendResult::PYGEN_NEXT
        }
        Output::Return(value) => {
            *result = value.into_ptr();
            ffi::PySendResult::PYGEN_RETURN
        }
        Output::Raise => {
            *result = ptr::null_mut();
            ffi::PySendResult::PYGEN_ERROR
        }
    }
}

/// Finish a `tp_iternext`-style step: a yielded value is returned, a result becomes `StopIteration`.
unsafe fn finish_iteration(output: Output, none_without_exception: bool) -> *mut ffi::PyObject {
    match output {
        Output::Yield(value) => value.into_ptr(),
        // NOTE: returning NULL with no exception set means `return None` to the interpreter and
        // skips building a StopIteration (research/awaitable.md: 151 vs 237 ns per await on 3.12).
        Output::Return(value) if none_without_exception && value.as_ptr() == ffi::Py_None() => ptr::null_mut(),
        Output::Return(value) => {
            raw::raise_stop_iteration(&value);
            ptr::null_mut()
        }
        Output::Raise => ptr::null_mut(),
    }
}

unsafe extern "C" fn tp_iternext(object: *mut ffi::PyObject) -> *mut ffi::PyObject {
    finish_iteration(drive(object, Input::Send(ffi::Py_None())), true)
}

unsafe extern "C" fn return_self(object: *mut ffi::PyObject) -> *mut ffi::PyObject {
    ffi::Py_INCREF(object);
    object
}

unsafe extern "C" fn method_send(object: *mut ffi::PyObject, value: *mut ffi::PyObject) -> *mut ffi::PyObject {
    finish_iteration(drive(object, Input::Send(value)), false)
}

/// `throw(exception)` or the legacy `throw(type, value=None, traceback=None)`.
unsafe extern "C" fn method_throw(object: *mut ffi::PyObject, args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let Some(error) = thrown_exception(args) else {
        return ptr::null_mut();
    };
    finish_iteration(drive(object, Input::Throw(error.as_ptr())), false)
}

/// The exception instance that `throw(*args)` means.
unsafe fn thrown_exception(args: *mut ffi::PyObject) -> Option<Obj> {
    Python::attach(|py| {
        let args = Bound::from_borrowed_ptr(py, args).cast_into_unchecked::<pyo3::types::PyTuple>();
        let result = (|| -> PyResult<Py<PyAny>> {
            let kind = args.get_item(0)?;
            let error = if kind.is_instance_of::<pyo3::exceptions::PyBaseException>() {
                kind
            } else if kind
                .cast::<pyo3::types::PyType>()
                .is_ok_and(|t| t.is_subclass_of::<pyo3::exceptions::PyBaseException>().unwrap_or(false))
            {
                match args.get_item(1).ok().filter(|v| !v.is_none()) {
                    Some(value) if value.is_instance(&kind)? => value,
                    Some(value) => kind.call1((value,))?,
                    None => kind.call0()?,
                }
            } else {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "exceptions must be classes or instances deriving from BaseException",
                ));
            };
            if let Ok(traceback) = args.get_item(2) {
                if !traceback.is_none() {
                    ffi::PyException_SetTraceback(error.as_ptr(), traceback.as_ptr());
                }
            }
            Ok(error.unbind())
        })();
        match result {
            Ok(error) => Obj::from_owned(error.into_ptr()),
            Err(error) => {
                error.restore(py);
                None
            }
        }
    })
}

unsafe extern "C" fn method_close(object: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let closed = state(object).is_none_or(|state| state.close());
    if closed {
        raw::none().into_ptr()
    } else {
        ptr::null_mut()
    }
}

unsafe extern "C" fn tp_traverse(object: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    if let Some(state) = state(object) {
        // Only references this object owns; a route's objects are visited by its dispatcher.
        let owned: Vec<*mut ffi::PyObject> = match &state.job {
            Job::Call { target, message, .. } => vec![target.as_ptr(), message.as_ptr()],
            Job::Fail { error } => vec![error.as_ptr()],
            Job::Publish { message, walk, .. } => {
                std::iter::once(message).chain(walk.failures()).map(Obj::as_ptr).collect()
            }
            Job::Hooked(run) => run.objects().collect(),
        };
        for pointer in owned.into_iter().chain(state.inner.iter().chain(&state.token).map(Obj::as_ptr)) {
            let code = visit(pointer, arg);
            if code != 0 {
                return code;
            }
        }
    }
    visit(ffi::Py_TYPE(object).cast(), arg)
}

unsafe extern "C" fn tp_clear(object: *mut ffi::PyObject) -> c_int {
    // Take the state out before dropping it: dropping releases objects, which may run code that
    // reaches this object again, and it must then find it cleared.
    let state = (*object.cast::<PendingObject>()).state.take();
    drop(state);
    0
}

unsafe extern "C" fn tp_dealloc(object: *mut ffi::PyObject) {
    ffi::PyObject_GC_UnTrack(object.cast());
    tp_clear(object);
    let tp = ffi::Py_TYPE(object);
    let free: ffi::freefunc = std::mem::transmute(ffi::PyType_GetSlot(tp, ffi::Py_tp_free));
    free(object.cast());
    ffi::Py_DECREF(tp.cast());
}

/// Create the `Pending` type; called once from module init. It is not exported: users only ever
/// meet its instances, as the awaitables `send` and `publish` return.
pub(crate) fn init_type(py: Python<'_>) -> PyResult<()> {
    fn method(name: &'static CStr, meth: ffi::PyCFunction, flags: c_int, doc: &'static CStr) -> ffi::PyMethodDef {
        ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: meth },
            ml_flags: flags,
            ml_doc: doc.as_ptr(),
        }
    }
    // The interpreter keeps pointers into the spec, slots and methods for the type's lifetime,
    // which is the process's: leak them.
    let methods: &'static mut [ffi::PyMethodDef] = Box::leak(Box::new([
        method(
            c"send",
            method_send,
            ffi::METH_O,
            c"send(value) -> next yielded value; StopIteration(result) at the end",
        ),
        method(c"throw", method_throw, ffi::METH_VARARGS, c"throw(exception) -> raise it inside the running handler"),
        method(c"close", method_close, ffi::METH_NOARGS, c"close() -> stop the running handler"),
        ffi::PyMethodDef::zeroed(),
    ]));
    let slot = |slot: c_int, pfunc: *mut c_void| ffi::PyType_Slot { slot, pfunc };
    let slots: &'static mut [ffi::PyType_Slot] = Box::leak(Box::new([
        slot(ffi::Py_am_await, return_self as ffi::unaryfunc as *mut c_void),
        slot(ffi::Py_am_send, am_send as *mut c_void),
        slot(ffi::Py_tp_iter, return_self as ffi::getiterfunc as *mut c_void),
        slot(ffi::Py_tp_iternext, tp_iternext as ffi::iternextfunc as *mut c_void),
        slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
        slot(ffi::Py_tp_traverse, tp_traverse as ffi::traverseproc as *mut c_void),
        slot(ffi::Py_tp_clear, tp_clear as ffi::inquiry as *mut c_void),
        slot(ffi::Py_tp_dealloc, tp_dealloc as ffi::destructor as *mut c_void),
        slot(
            ffi::Py_tp_doc,
            c"An awaitable running a catga pipeline; behaves like a coroutine.".as_ptr() as *mut c_void,
        ),
        slot(0, ptr::null_mut()),
    ]));
    let spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"catga._catga.Pending".as_ptr(),
        basicsize: std::mem::size_of::<PendingObject>() as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT
            | ffi::Py_TPFLAGS_HAVE_GC
            | ffi::Py_TPFLAGS_IMMUTABLETYPE
            | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
        slots: slots.as_mut_ptr(),
    }));
    // SAFETY: attached; the spec is 'static and well-formed.
    let tp = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))? };
    // The type lives as long as the process: its one reference is never released.
    PENDING_TYPE.store(tp.into_ptr().cast(), Ordering::Release);
    Ok(())
}
