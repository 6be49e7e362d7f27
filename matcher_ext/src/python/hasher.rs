//! `Hasher`: keyed BLAKE3 of normalised identifiers.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::secret_of;
use super::errors::py_err;
use crate::ids;

/// Keyed BLAKE3 of normalised identifiers.
#[pyclass(frozen, name = "Hasher", module = "healthcode_matcher._native")]
pub(crate) struct PyHasher {
    pub(crate) inner: ids::Hasher,
}

#[pymethods]
impl PyHasher {
    #[new]
    fn new(secret: &[u8]) -> PyResult<Self> {
        Ok(PyHasher {
            inner: ids::Hasher::new(secret_of(secret)?),
        })
    }

    fn person_key<'py>(&self, py: Python<'py>, id_number: &str) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.inner.person_key(id_number).map_err(py_err)?;
        Ok(PyBytes::new(py, &k.to_le_bytes()))
    }

    fn phone_key<'py>(&self, py: Python<'py>, phone: &str) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.inner.phone_key(phone).map_err(py_err)?;
        Ok(PyBytes::new(py, &k.to_le_bytes()))
    }

    fn card_key<'py>(&self, py: Python<'py>, card: &str) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.inner.card_key(card).map_err(py_err)?;
        Ok(PyBytes::new(py, &k.to_le_bytes()))
    }
}
