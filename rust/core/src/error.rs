//! The one error type of the core; `rust/py/src/errors.rs` maps each variant to a Python exception.

use std::fmt;

/// A failure of a core operation, with the offending values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// An id layout whose parts are negative or zero where they may not be, or that does not sum to 63 bits.
    InvalidLayout { layout: (i64, i64, i64), reason: String },
    /// A worker id that is negative or does not fit in the layout's worker bits.
    InvalidWorkerId { worker_id: i64, bits: u32 },
    /// An epoch that is negative or later than the current time.
    InvalidEpoch { epoch_ms: i64 },
    /// A count of ids below 1.
    InvalidCount { n: i64 },
    /// An id that is negative or wider than 63 bits.
    InvalidId { id: i128 },
    /// The clock has run past what the timestamp bits can hold.
    TimestampOverflow { elapsed_ms: u64, layout: (u32, u32, u32) },
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidLayout { layout: (t, w, s), reason } => write!(f, "id layout `({t}, {w}, {s})` {reason}"),
            Self::InvalidWorkerId { worker_id, bits } => {
                let max = (1u64 << bits) - 1;
                write!(f, "worker id `{worker_id}` does not fit in `{bits}` bits (0..={max})")
            }
            Self::InvalidEpoch { epoch_ms } => {
                write!(f, "epoch `{epoch_ms}` must be Unix milliseconds between 0 and now")
            }
            Self::InvalidCount { n } => write!(f, "number of ids `{n}` must be at least 1"),
            Self::InvalidId { id } => write!(f, "message id `{id}` is not a 63-bit non-negative integer"),
            Self::TimestampOverflow { elapsed_ms, layout: (t, w, s) } => write!(
                f,
                "`{elapsed_ms}` ms since the epoch do not fit in the {t} timestamp bits of id layout `({t}, {w}, {s})`"
            ),
        }
    }
}

impl std::error::Error for CoreError {}
