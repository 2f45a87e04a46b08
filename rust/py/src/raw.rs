//! Owned raw object pointers and the few C-API calls the awaitable's slots make.
//!
//! The awaitable's slots are called by the interpreter directly, not through a `PyO3` trampoline,
//! so `PyO3` does not know the thread is attached there: a `Py<T>` dropped in a slot would only be
//! queued for a later decref. Slots therefore hold [`Obj`]s, which decref at once, and every
//! function here must be called with the thread attached (which is always the case in a slot).
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use pyo3::ffi;

/// A strong reference, released when dropped.
#[derive(Debug)]
pub(crate) struct Obj(NonNull<ffi::PyObject>);

// SAFETY: an `Obj` is only touched while the thread is attached to the interpreter (see module doc).
unsafe impl Send for Obj {}
unsafe impl Sync for Obj {}

impl Obj {
    /// Take ownership of a new reference; `None` for NULL (an exception is set then).
    pub(crate) unsafe fn from_owned(ptr: *mut ffi::PyObject) -> Option<Obj> {
        NonNull::new(ptr).map(Obj)
    }

    /// A new reference to a borrowed object.
    pub(crate) unsafe fn from_borrowed(ptr: *mut ffi::PyObject) -> Obj {
        ffi::Py_INCREF(ptr);
        Obj(NonNull::new_unchecked(ptr))
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// The object as a `PyO3` reference (within an attached scope).
    pub(crate) fn bind<'py>(&self, py: pyo3::Python<'py>) -> pyo3::Bound<'py, pyo3::PyAny> {
        // SAFETY: `self` holds a strong reference for at least as long as the borrow.
        unsafe { pyo3::Bound::from_borrowed_ptr(py, self.as_ptr()) }
    }

    /// Give the reference away.
    pub(crate) fn into_ptr(self) -> *mut ffi::PyObject {
        let ptr = self.0.as_ptr();
        std::mem::forget(self);
        ptr
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: the thread is attached (module doc) and we own this reference.
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

/// Interned names and cached objects the slots use, created once at module init.
pub(crate) struct Names {
    pub(crate) throw: Obj,
    pub(crate) close: Obj,
    pub(crate) await_: Obj,
    /// `CURRENT_MESSAGE.set` and `.reset`, bound once: the stable ABI has no context-variable C API.
    // NOTE: calling the bound methods instead of looking `set`/`reset` up per call saves ~20 ns
    // per send with context (abi3, 3.11).
    #[cfg(Py_LIMITED_API)]
    pub(crate) set: Obj,
    #[cfg(Py_LIMITED_API)]
    pub(crate) reset: Obj,
    /// `types.CoroutineType`: a coroutine is driven as it is, anything else through `__await__`.
    pub(crate) coroutine_type: Obj,
    /// `CURRENT_MESSAGE`, the context variable set while a handler with context runs.
    pub(crate) current_message: Obj,
}

static NAMES: OnceLock<Names> = OnceLock::new();

unsafe fn intern(name: &CStr) -> Obj {
    Obj::from_owned(ffi::PyUnicode_InternFromString(name.as_ptr())).expect("interning an ASCII name cannot fail")
}

/// Create the cached names; called from the module's init.
pub(crate) fn init_names(coroutine_type: *mut ffi::PyObject, current_message: *mut ffi::PyObject) {
    // SAFETY: called while attached, from module init.
    NAMES.get_or_init(|| unsafe {
        Names {
            throw: intern(c"throw"),
            close: intern(c"close"),
            await_: intern(c"__await__"),
            #[cfg(Py_LIMITED_API)]
            set: bound_method(current_message, c"set"),
            #[cfg(Py_LIMITED_API)]
            reset: bound_method(current_message, c"reset"),
            coroutine_type: Obj::from_borrowed(coroutine_type),
            current_message: Obj::from_borrowed(current_message),
        }
    });
}

#[cfg(Py_LIMITED_API)]
unsafe fn bound_method(object: *mut ffi::PyObject, name: &CStr) -> Obj {
    Obj::from_owned(ffi::PyObject_GetAttrString(object, name.as_ptr())).expect("a context variable has this method")
}

pub(crate) fn names() -> &'static Names {
    NAMES.get().expect("catga._catga initialises its names when it is imported")
}

/// `callable(arg)`; NULL with an exception set on failure.
#[inline]
pub(crate) unsafe fn call1(callable: *mut ffi::PyObject, arg: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // NOTE: under the stable ABI of 3.11 there is no PyObject_Vectorcall; CallFunctionObjArgs
    // builds a small stack array, not a tuple as PyO3's `call1` does there.
    #[cfg(Py_LIMITED_API)]
    {
        ffi::PyObject_CallFunctionObjArgs(callable, arg, ptr::null_mut::<ffi::PyObject>())
    }
    #[cfg(not(Py_LIMITED_API))]
    {
        ffi::PyObject_CallOneArg(callable, arg)
    }
}

/// `obj.name(*args)` for zero or one argument.
pub(crate) unsafe fn call_method(
    obj: *mut ffi::PyObject,
    name: &Obj,
    arg: Option<*mut ffi::PyObject>,
) -> *mut ffi::PyObject {
    let null = ptr::null_mut::<ffi::PyObject>();
    match arg {
        Some(arg) => ffi::PyObject_CallMethodObjArgs(obj, name.as_ptr(), arg, null),
        None => ffi::PyObject_CallMethodObjArgs(obj, name.as_ptr(), null),
    }
}

/// `var.set(value)` → the token, or `None` with an exception set.
pub(crate) unsafe fn context_set(var: *mut ffi::PyObject, value: *mut ffi::PyObject) -> Option<Obj> {
    #[cfg(Py_LIMITED_API)]
    let token = {
        let _ = var; // `names().set` is bound to it
        call1(names().set.as_ptr(), value)
    };
    #[cfg(not(Py_LIMITED_API))]
    let token = ffi::PyContextVar_Set(var, value);
    Obj::from_owned(token)
}

/// `var.reset(token)`, keeping whatever exception is already set.
///
/// A reset can only fail when the awaitable was finished in another context than it started in;
/// the variable was then never set in the current context, so there is nothing to undo here.
pub(crate) unsafe fn context_reset(var: *mut ffi::PyObject, token: Obj) {
    let pending = PendingError::take();
    #[cfg(Py_LIMITED_API)]
    {
        let _ = var; // `names().reset` is bound to it
        let result = call1(names().reset.as_ptr(), token.as_ptr());
        if result.is_null() {
            ffi::PyErr_Clear();
        } else {
            ffi::Py_DECREF(result);
        }
    }
    #[cfg(not(Py_LIMITED_API))]
    if ffi::PyContextVar_Reset(var, token.as_ptr()) < 0 {
        ffi::PyErr_Clear();
    }
    drop(token);
    if let Some(pending) = pending {
        pending.restore();
    }
}

/// The exception currently set, taken out of the interpreter.
pub(crate) struct PendingError {
    kind: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    traceback: *mut ffi::PyObject,
}

impl PendingError {
    pub(crate) unsafe fn take() -> Option<PendingError> {
        if ffi::PyErr_Occurred().is_null() {
            return None;
        }
        let (mut kind, mut value, mut traceback) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        ffi::PyErr_Fetch(&raw mut kind, &raw mut value, &raw mut traceback);
        Some(PendingError { kind, value, traceback })
    }

    pub(crate) unsafe fn restore(self) {
        ffi::PyErr_Restore(self.kind, self.value, self.traceback);
    }

    /// The exception instance, with its traceback attached.
    pub(crate) unsafe fn into_value(mut self) -> Obj {
        ffi::PyErr_NormalizeException(&raw mut self.kind, &raw mut self.value, &raw mut self.traceback);
        if !self.traceback.is_null() {
            ffi::PyException_SetTraceback(self.value, self.traceback);
            ffi::Py_DECREF(self.traceback);
        }
        if !self.kind.is_null() {
            ffi::Py_DECREF(self.kind);
        }
        Obj::from_owned(self.value).expect("a normalized exception has a value")
    }
}

/// Raise an exception instance as it is, without chaining it to the exception being handled.
pub(crate) unsafe fn raise(exception: Obj) {
    let kind = ffi::Py_TYPE(exception.as_ptr()).cast::<ffi::PyObject>();
    ffi::Py_INCREF(kind);
    let traceback = ffi::PyException_GetTraceback(exception.as_ptr());
    ffi::PyErr_Restore(kind, exception.into_ptr(), traceback);
}

/// Raise `kind(message)`.
pub(crate) unsafe fn raise_str(kind: *mut ffi::PyObject, message: &CStr) {
    ffi::PyErr_SetString(kind, message.as_ptr().cast::<c_char>());
}

/// Raise `StopIteration(value)`, building the instance so that a tuple value is not unpacked.
pub(crate) unsafe fn raise_stop_iteration(value: &Obj) {
    let stop = ffi::PyExc_StopIteration;
    let instance = call1(stop, value.as_ptr());
    if !instance.is_null() {
        ffi::PyErr_SetObject(stop, instance);
        ffi::Py_DECREF(instance);
    }
}

/// The value of the pending `StopIteration`, clearing it.
pub(crate) unsafe fn take_stop_iteration_value() -> Option<Obj> {
    let error = PendingError::take()?.into_value();
    let value = ffi::PyObject_GetAttrString(error.as_ptr(), c"value".as_ptr());
    Obj::from_owned(value)
}

/// A new reference to `None`.
pub(crate) unsafe fn none() -> Obj {
    Obj::from_borrowed(ffi::Py_None())
}
