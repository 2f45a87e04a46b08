//! The pyo3-free core of catga.
//!
//! Everything here is plain Rust, unit-tested with `cargo test`; `rust/py` wraps it for Python.
//! The split keeps the hot-path logic testable without an interpreter and makes the compiler
//! enforce that no Python object leaks into the core.

pub mod breaker;
pub mod cache;
pub mod concurrency;
pub mod dispatch;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod limiter;
pub mod metrics;
pub mod monotonic;
pub mod pipeline;

pub use breaker::{BreakerState, CircuitBreaker};
pub use cache::CacheTable;
pub use concurrency::ConcurrencyLimiter;
pub use dispatch::DispatchTable;
pub use error::CoreError;
pub use idempotency::{handler_key, Claim, IdempotencyTable, Key};
pub use ids::{Clock, IdGenerator, IdParts, Layout, SystemClock, DEFAULT_EPOCH_MS, DEFAULT_LAYOUT};
pub use limiter::TokenBucket;
pub use metrics::{Counter, Outcome, Registry as MetricsRegistry, TypeMetrics, TypeSnapshot, DURATION_BUCKETS_NS};
pub use monotonic::Monotonic;
pub use pipeline::{FanOut, FanOutOutcome, HandlerSpec, Mode, Stage};
