//! `Verdict`: one person's colour and the rules behind it.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::plan::{self, Plan};

/// The ids of the rules whose bits are set in `mask`, in plan order.
pub(crate) fn ids_of_mask(plan: &Plan, mask: u64) -> Vec<String> {
    plan.rules
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| r.id.clone())
        .collect()
}

/// One person's colour and the rules behind it.
#[pyclass(frozen, name = "Verdict", module = "healthcode_matcher._native")]
pub(crate) struct PyVerdict {
    pub(crate) v: plan::Verdict,
    pub(crate) plan: Arc<Plan>,
}

#[pymethods]
impl PyVerdict {
    #[getter]
    fn person_id(&self) -> u32 {
        self.v.person
    }

    #[getter]
    fn colour(&self) -> u8 {
        self.v.colour
    }

    #[getter]
    fn fired_mask(&self) -> u64 {
        self.v.fired
    }

    #[getter]
    fn cleared_mask(&self) -> u64 {
        self.v.cleared
    }

    #[getter]
    fn rules(&self) -> Vec<String> {
        ids_of_mask(&self.plan, self.v.fired)
    }

    #[getter]
    fn cleared(&self) -> Vec<String> {
        ids_of_mask(&self.plan, self.v.cleared)
    }

    fn __repr__(&self) -> String {
        format!(
            "Verdict(person_id={}, colour={}, rules={:?}, cleared={:?})",
            self.v.person,
            self.v.colour,
            self.rules(),
            self.cleared()
        )
    }
}
