//! `Evidence`: why one check of one rule matched, or what cleared it.

use pyo3::prelude::*;

use crate::plan::{Evidence, Plan};

/// Why one check matched, or what cleared it.
#[pyclass(
    frozen,
    get_all,
    name = "Evidence",
    module = "healthcode_matcher._native"
)]
pub(crate) struct PyEvidence {
    rule_id: String,
    source: String,
    day: Option<u32>,
    hour: Option<u32>,
    phone_id: Option<u32>,
    county: Option<u32>,
    /// "fired", "cleared" or "phone_cleared".
    role: &'static str,
}

impl PyEvidence {
    /// The evidence of one rule of `plan`, named by its id.
    pub(crate) fn of(plan: &Plan, e: Evidence) -> Self {
        PyEvidence {
            rule_id: plan.rules[e.rule].id.clone(),
            source: e.source,
            day: e.day,
            hour: e.hour,
            phone_id: e.phone,
            county: e.county,
            role: e.role,
        }
    }
}

#[pymethods]
impl PyEvidence {
    fn __repr__(&self) -> String {
        let opt = |v: Option<u32>| v.map_or_else(|| "None".to_string(), |x| x.to_string());
        format!(
            "Evidence(rule_id={:?}, source={:?}, day={}, hour={}, phone_id={}, county={}, \
             role={:?})",
            self.rule_id,
            self.source,
            opt(self.day),
            opt(self.hour),
            opt(self.phone_id),
            opt(self.county),
            self.role
        )
    }
}
