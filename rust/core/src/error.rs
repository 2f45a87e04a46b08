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
    /// A limiter or breaker argument out of its range: a non-positive rate, burst, threshold or
    /// timeout, a token count the bucket can never grant, a clock reading that is not finite.
    /// `value` is already formatted the way Python shows it (see [`float_repr`]), so both cores
    /// word the message alike.
    InvalidArgument { name: &'static str, value: String, requirement: String },
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
            Self::InvalidArgument { name, value, requirement } => write!(f, "{name} `{value}` {requirement}"),
        }
    }
}

impl std::error::Error for CoreError {}

/// `x` as Python's `repr(float)` writes it, so that a message about a float reads the same from the
/// native and the pure-Python core. Rust's `Debug` picks the same shortest round-trip digits and
/// the same switch to exponent notation (below 1e-4, from 1e16); only the exponent's spelling
/// (`1e16` vs `1e+16`, `1e-5` vs `1e-05`) and `NaN` differ.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    let text = format!("{x:?}");
    let Some((mantissa, exponent)) = text.split_once('e') else { return text };
    let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
    format!("{mantissa}e{sign}{digits:0>2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_is_pythons() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (-1.5e-5, "-1.5e-05"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (1.797_693_134_862_315_7e308, "1.7976931348623157e+308"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, expected) in cases {
            assert_eq!(float_repr(x), expected, "{x:?}");
        }
    }

    #[test]
    fn invalid_argument_message() {
        let error =
            CoreError::InvalidArgument { name: "rate", value: float_repr(0.0), requirement: "must be > 0".to_owned() };
        assert_eq!(error.to_string(), "rate `0.0` must be > 0");
    }
}
