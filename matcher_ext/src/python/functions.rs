//! Module-level functions: identifier validation and synthetic identifiers.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::py_err;
use crate::ids;

/// Validate and normalise a resident ID number.
#[pyfunction]
pub(crate) fn normalise_id_number(raw: &str) -> PyResult<String> {
    ids::normalise_id_number(raw).map_err(py_err)
}

/// Validate and normalise a mobile number.
#[pyfunction]
pub(crate) fn normalise_phone(raw: &str) -> PyResult<String> {
    ids::normalise_phone(raw).map_err(py_err)
}

/// Distinct valid ID numbers, newline-separated.
#[pyfunction]
pub(crate) fn synthetic_id_numbers(py: Python<'_>, count: u64, seed: u64) -> Py<PyBytes> {
    let out = py.detach(|| ids::synthetic_id_numbers(count, seed).join("\n"));
    PyBytes::new(py, out.as_bytes()).unbind()
}

/// Distinct valid mobile numbers, newline-separated.
#[pyfunction]
pub(crate) fn synthetic_phones(py: Python<'_>, count: u64, seed: u64) -> Py<PyBytes> {
    let out = py.detach(|| ids::synthetic_phones(count, seed).join("\n"));
    PyBytes::new(py, out.as_bytes()).unbind()
}
