//! The pyo3-free core of catga.
//!
//! Everything here is plain Rust, unit-tested with `cargo test`; `rust/py` wraps it for Python.
//! The split keeps the hot-path logic testable without an interpreter and makes the compiler
//! enforce that no Python object leaks into the core.

pub mod dispatch;
pub mod error;
pub mod ids;
pub mod pipeline;

pub use dispatch::DispatchTable;
pub use error::CoreError;
pub use ids::{Clock, IdGenerator, IdParts, Layout, SystemClock, DEFAULT_EPOCH_MS, DEFAULT_LAYOUT};
pub use pipeline::{FanOut, FanOutOutcome, HandlerSpec, Mode, Stage};
