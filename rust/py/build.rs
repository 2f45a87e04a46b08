//! Expose the interpreter cfgs of `PyO3` (`Py_LIMITED_API`, `Py_3_12`, …) to this crate's `#[cfg]`s.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
