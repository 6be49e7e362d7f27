//! `Verdicts`: a plan evaluated over a whole index on one day; immutable and shared.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::convert::{bitmap_bytes, key_of, keys_of, u32s_of};
use super::errors::{py_err, InvalidOperation};
use super::evidence::PyEvidence;
use super::index::PyIndex;
use super::plan::PyPlan;
use super::transitions::PyTransitions;
use super::verdict::PyVerdict;
use crate::{batch, plan};

/// Validate, hash and look up an ID number, then evaluate it; `None` if not registered.
pub(crate) fn evaluate_id_number(
    v: &plan::Verdicts,
    id_number: &str,
) -> PyResult<Option<plan::Verdict>> {
    let k = v.index.hasher.person_key(id_number).map_err(py_err)?;
    match v.index.registry.persons.get(k) {
        None => Ok(None),
        Some(p) => Ok(Some(v.evaluate(p).map_err(py_err)?)),
    }
}

/// Manual colours from Python (a dict: 16-byte person key -> Colour number 1-3); none, or an
/// empty dict, is no override at all (the batch takes its plain path). Read in place: a key's
/// bytes are borrowed, not copied element by element.
fn overrides_of(raw: Option<&Bound<'_, PyDict>>) -> PyResult<Option<batch::Overrides>> {
    let Some(raw) = raw.filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let mut out = batch::Overrides::with_capacity(raw.len());
    for (key, byte) in raw.iter() {
        let key = key
            .cast::<PyBytes>()
            .map_err(|_| InvalidOperation::new_err("an override's key is 16 bytes"))?;
        let byte: u8 = byte.extract().unwrap_or(0);
        if !(1..=3).contains(&byte) {
            return Err(InvalidOperation::new_err(
                "an override is a Colour number 1-3 (green, yellow, red)",
            ));
        }
        out.insert(key_of(key.as_bytes())?, byte);
    }
    Ok(Some(out))
}

/// A batch's colour bytes and its invalid entries as (position, what is wrong).
type PackedColours<'py> = (Bound<'py, PyBytes>, Vec<(u32, String)>);

/// A plan evaluated over an index on one day.
#[pyclass(frozen, name = "Verdicts", module = "healthcode_matcher._native")]
pub(crate) struct PyVerdicts {
    pub(crate) inner: Arc<plan::Verdicts>,
}

impl PyVerdicts {
    fn verdict(&self, v: plan::Verdict) -> PyVerdict {
        PyVerdict {
            v,
            plan: self.inner.plan.clone(),
        }
    }
}

#[pymethods]
impl PyVerdicts {
    #[new]
    #[pyo3(signature = (index, plan, today, hour=None))]
    fn new(
        py: Python<'_>,
        index: &PyIndex,
        plan: &PyPlan,
        today: i64,
        hour: Option<i64>,
    ) -> PyResult<Self> {
        // wide integers in, so a negative or huge day is a ValueError like every other refusal
        let unit = |v: i64, what: &str| {
            u32::try_from(v)
                .map_err(|_| InvalidOperation::new_err(format!("{what} {v} is out of range")))
        };
        let today = unit(today, "day")?;
        let hour = hour.map(|h| unit(h, "hour")).transpose()?;
        let (index, plan) = (index.inner.clone(), plan.inner.clone());
        let now = match hour {
            None => plan::Now::end_of(today),
            Some(hour) => plan::Now { today, hour },
        };
        let v = py
            .detach(|| plan::Verdicts::at(index, plan, now))
            .map_err(py_err)?;
        Ok(PyVerdicts { inner: Arc::new(v) })
    }

    /// The verdicts of a later index version, re-evaluating only `persons` (LE u32 ids) and
    /// the persons new in `index`; the GIL is released.
    fn update(&self, py: Python<'_>, index: &PyIndex, persons: &[u8]) -> PyResult<Self> {
        let ids = u32s_of(persons, "person ids")?;
        let (v, index) = (self.inner.clone(), index.inner.clone());
        let next = py.detach(|| v.update(index, &ids)).map_err(py_err)?;
        Ok(PyVerdicts {
            inner: Arc::new(next),
        })
    }

    #[getter]
    fn index(&self) -> PyIndex {
        PyIndex {
            inner: self.inner.index.clone(),
        }
    }

    #[getter]
    fn plan(&self) -> PyPlan {
        PyPlan {
            inner: self.inner.plan.clone(),
        }
    }

    #[getter]
    fn today(&self) -> u32 {
        self.inner.today
    }

    #[getter]
    fn hour(&self) -> u32 {
        self.inner.hour
    }

    fn evaluate(&self, person_id: u32) -> PyResult<PyVerdict> {
        Ok(self.verdict(self.inner.evaluate(person_id).map_err(py_err)?))
    }

    fn colour(&self, person_id: u32) -> PyResult<u8> {
        Ok(self.inner.evaluate(person_id).map_err(py_err)?.colour)
    }

    fn evaluate_id_number(&self, id_number: &str) -> PyResult<Option<PyVerdict>> {
        Ok(evaluate_id_number(&self.inner, id_number)?.map(|v| self.verdict(v)))
    }

    /// A batch of raw ID numbers, newline-separated UTF-8 bytes (one entry a line, blank lines
    /// included): validated, hashed, looked up and coloured with the GIL released.
    /// Returns (one byte per entry: the proto's Colour number 1-3, 0 not registered, 255
    /// invalid; the invalid entries as (position, what is wrong), in order). `overrides`
    /// (person key -> Colour number 1-3) replace the computed byte of registered persons.
    #[pyo3(signature = (id_numbers, overrides=None))]
    fn colours_of_id_numbers<'py>(
        &self,
        py: Python<'py>,
        id_numbers: &[u8],
        overrides: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PackedColours<'py>> {
        let text = std::str::from_utf8(id_numbers)
            .map_err(|_| InvalidOperation::new_err("ID numbers are UTF-8 text"))?;
        let manual = overrides_of(overrides)?;
        let v = self.inner.clone();
        let (colours, problems) =
            py.detach(|| v.colours_of_id_numbers_with(&batch::entries(text), manual.as_ref()));
        let problems = problems.into_iter().map(|p| (p.entry, p.message)).collect();
        Ok((PyBytes::new(py, &colours), problems))
    }

    /// A batch of 16-byte person keys, concatenated: one byte per key (the proto's Colour
    /// number 1-3, 0 not registered), `overrides` as above. The GIL is released.
    #[pyo3(signature = (person_keys, overrides=None))]
    fn colours_of_keys<'py>(
        &self,
        py: Python<'py>,
        person_keys: &[u8],
        overrides: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let keys = keys_of(person_keys)?;
        let manual = overrides_of(overrides)?;
        let v = self.inner.clone();
        let colours = py.detach(|| v.colours_of_keys_with(&keys, manual.as_ref()));
        Ok(PyBytes::new(py, &colours))
    }

    fn evaluate_many<'py>(
        &self,
        py: Python<'py>,
        person_ids: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let ids = u32s_of(person_ids, "person ids")?;
        let v = self.inner.clone();
        let (colours, masks) = py
            .detach(|| {
                v.evaluate_many(&ids).map(|(c, m)| {
                    (
                        c,
                        m.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                    )
                })
            })
            .map_err(py_err)?;
        Ok((PyBytes::new(py, &colours), PyBytes::new(py, &masks)))
    }

    fn explain(&self, py: Python<'_>, person_id: u32) -> PyResult<Vec<PyEvidence>> {
        let v = self.inner.clone();
        let ev = py.detach(|| v.explain(person_id)).map_err(py_err)?;
        Ok(ev
            .into_iter()
            .map(|e| PyEvidence::of(&self.inner.plan, e))
            .collect())
    }

    fn colour_counts(&self) -> (u64, u64, u64) {
        let [g, y, r] = self.inner.colour_counts();
        (g, y, r)
    }

    fn rule_counts(&self) -> HashMap<String, u64> {
        self.inner
            .plan
            .rules
            .iter()
            .zip(self.inner.rule_counts())
            .map(|(r, &n)| (r.id.clone(), n))
            .collect()
    }

    /// How `draft` (same index and day, another plan) would change colours.
    #[pyo3(signature = (draft, district_source=None))]
    fn transitions(
        &self,
        py: Python<'_>,
        draft: &PyVerdicts,
        district_source: Option<&str>,
    ) -> PyResult<PyTransitions> {
        let (a, b) = (self.inner.clone(), draft.inner.clone());
        let inner = py
            .detach(|| a.transitions(&b, district_source))
            .map_err(py_err)?;
        Ok(PyTransitions { inner })
    }

    fn non_green<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let v = self.inner.clone();
        let out = py.detach(|| bitmap_bytes(&v.non_green()));
        PyBytes::new(py, &out)
    }
}
