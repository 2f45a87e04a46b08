//! `CoreError` → Python exceptions, one variant at a time.

use catga_core::CoreError;
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::PyErr;

#[allow(clippy::needless_pass_by_value)] // used as `.map_err(to_py)`
pub(crate) fn to_py(error: CoreError) -> PyErr {
    match error {
        CoreError::InvalidLayout { .. }
        | CoreError::InvalidWorkerId { .. }
        | CoreError::InvalidEpoch { .. }
        | CoreError::InvalidCount { .. }
        | CoreError::InvalidId { .. }
        | CoreError::InvalidArgument { .. } => PyValueError::new_err(error.to_string()),
        CoreError::TimestampOverflow { .. } => PyOverflowError::new_err(error.to_string()),
    }
}
