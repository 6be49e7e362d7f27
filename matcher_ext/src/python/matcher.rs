//! `Matcher`: the live verdicts of a replica behind an atomic swap.

use arc_swap::ArcSwap;
use pyo3::prelude::*;

use super::errors::py_err;
use super::verdict::PyVerdict;
use super::verdicts::{evaluate_id_number, PyVerdicts};
use crate::plan;

/// The live verdicts of a replica: an atomic pointer, so readers never wait for a swap.
#[pyclass(frozen, name = "Matcher", module = "healthcode_matcher._native")]
pub(crate) struct PyMatcher {
    current: ArcSwap<plan::Verdicts>,
}

#[pymethods]
impl PyMatcher {
    #[new]
    fn new(verdicts: &PyVerdicts) -> Self {
        PyMatcher {
            current: ArcSwap::new(verdicts.inner.clone()),
        }
    }

    #[getter]
    fn current(&self) -> PyVerdicts {
        PyVerdicts {
            inner: self.current.load_full(),
        }
    }

    fn swap(&self, verdicts: &PyVerdicts) -> PyVerdicts {
        PyVerdicts {
            inner: self.current.swap(verdicts.inner.clone()),
        }
    }

    fn evaluate(&self, person_id: u32) -> PyResult<PyVerdict> {
        let v = self.current.load();
        let got = v.evaluate(person_id).map_err(py_err)?;
        Ok(PyVerdict {
            v: got,
            plan: v.plan.clone(),
        })
    }

    fn colour(&self, person_id: u32) -> PyResult<u8> {
        Ok(self
            .current
            .load()
            .evaluate(person_id)
            .map_err(py_err)?
            .colour)
    }

    fn evaluate_id_number(&self, id_number: &str) -> PyResult<Option<PyVerdict>> {
        let v = self.current.load();
        Ok(evaluate_id_number(&v, id_number)?.map(|got| PyVerdict {
            v: got,
            plan: v.plan.clone(),
        }))
    }
}
