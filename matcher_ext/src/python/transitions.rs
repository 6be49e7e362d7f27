//! `Transitions`: what a draft plan would change, against the active one (the what-if).

use std::collections::BTreeMap;

use pyo3::prelude::*;

use crate::plan;

/// Counts by (from colour, to colour): rows are the active colour, columns the draft's.
type Matrix = ((u64, u64, u64), (u64, u64, u64), (u64, u64, u64));

fn matrix(m: &[[u64; 3]; 3]) -> Matrix {
    let row = |r: [u64; 3]| (r[0], r[1], r[2]);
    (row(m[0]), row(m[1]), row(m[2]))
}

/// How a draft plan would change colours over the same index and day.
#[pyclass(frozen, name = "Transitions", module = "healthcode_matcher._native")]
pub(crate) struct PyTransitions {
    pub(crate) inner: plan::Transitions,
}

#[pymethods]
impl PyTransitions {
    /// Persons by [active colour][draft colour], over every registered person.
    #[getter]
    fn colours(&self) -> Matrix {
        matrix(&self.inner.colours)
    }

    /// Rule id -> (starts firing, stops firing), among persons whose colour changes.
    #[getter]
    fn rules(&self) -> BTreeMap<String, (u64, u64)> {
        self.inner.rules.clone()
    }

    /// County -> counts of persons whose colour changes, by [active colour][draft colour].
    #[getter]
    fn districts(&self) -> BTreeMap<u32, Matrix> {
        self.inner
            .districts
            .iter()
            .map(|(&county, m)| (county, matrix(m)))
            .collect()
    }

    /// Persons whose colour changes.
    #[getter]
    fn changed(&self) -> u64 {
        self.inner.changed()
    }

    fn __repr__(&self) -> String {
        format!(
            "Transitions(colours={:?}, changed={}, rules={}, districts={})",
            self.inner.colours,
            self.inner.changed(),
            self.inner.rules.len(),
            self.inner.districts.len()
        )
    }
}
