//! `Plan`: a compiled rule plan, read from rule dicts.
//!
//! Rule and check dicts are read by `#[derive(FromPyObject)]` structs ([`RuleArg`],
//! [`CheckArg`]). Each of their fields is a [`Field`], whose extraction never fails, so a
//! malformed rule is refused here with the rule id and the field's path
//! (`rule "fever" (checks[0].days): a whole number of days`) rather than PyO3's generic
//! "failed to extract field".

use std::convert::Infallible;
use std::sync::Arc;

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::errors::{py_err, PlanError};
use crate::plan::{self, Check, Plan, Rule};

/// One entry of a dict as Python gave it.
#[derive(Default)]
enum Field<T> {
    /// The key is not there.
    #[default]
    Absent,
    /// The value has another type.
    Wrong,
    /// The value, converted.
    Value(T),
}

impl<'a, 'py, T: FromPyObjectOwned<'py>> FromPyObject<'a, 'py> for Field<T> {
    type Error = Infallible;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> Result<Self, Infallible> {
        Ok(obj.extract::<T>().map_or(Field::Wrong, Field::Value))
    }
}

impl<T> Field<T> {
    /// The value, `absent` if the key is not there, or a `PlanError` naming the rule and the
    /// field when the value has another type.
    fn or(self, absent: T, rule: &str, field: &str, expected: &str) -> PyResult<T> {
        match self {
            Field::Value(v) => Ok(v),
            Field::Absent => Ok(absent),
            Field::Wrong => Err(plan_err(rule, field, expected)),
        }
    }
}

fn plan_err(rule: &str, field: &str, msg: &str) -> PyErr {
    PlanError::new_err(format!("rule {rule:?} ({field}): {msg}"))
}

/// The keys a rule dict may hold.
const RULE_KEYS: [&str; 5] = ["id", "colour", "match", "checks", "clears"];
/// The keys a check dict may hold.
const CHECK_KEYS: [&str; 4] = ["source", "days", "hours", "min_level"];

/// A rule as Python gives it: `{"id": str, "colour": "yellow" | "red", "match": "any" | "all",
/// "checks": [check, ...], "clears": [check, ...]}`; "id" is required (a `KeyError` here).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct RuleArg<'py> {
    id: Field<String>,
    #[pyo3(default)]
    colour: Field<String>,
    #[pyo3(item("match"), default)]
    match_: Field<String>,
    #[pyo3(default)]
    checks: Field<Bound<'py, PyList>>,
    #[pyo3(default)]
    clears: Field<Bound<'py, PyList>>,
}

/// A check as Python gives it: `{"source": str, "days": int, "hours": int, "min_level": int}`;
/// "source" is required (a `KeyError` here), the others may be absent or None.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct CheckArg {
    source: Field<String>,
    #[pyo3(default)]
    days: Field<Option<u32>>,
    #[pyo3(default)]
    hours: Field<Option<u32>>,
    #[pyo3(default)]
    min_level: Field<Option<u8>>,
}

/// The first key of `d` that is not one of `known`.
fn unknown_key(d: &Bound<'_, PyDict>, known: &[&str]) -> PyResult<Option<String>> {
    for k in d.keys() {
        let k: String = k.extract()?;
        if !known.contains(&k.as_str()) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

fn parse_check(rule: &str, field: &str, obj: &Bound<'_, PyAny>) -> PyResult<Check> {
    let d = obj
        .cast::<PyDict>()
        .map_err(|_| plan_err(rule, field, "a check is a dict"))?;
    if let Some(k) = unknown_key(d, &CHECK_KEYS)? {
        return Err(plan_err(rule, field, &format!("unknown field {k:?}")));
    }
    let c: CheckArg = match d.extract() {
        Ok(c) => c,
        Err(e) if e.is_instance_of::<PyKeyError>(d.py()) => {
            return Err(plan_err(rule, &format!("{field}.source"), "missing"))
        }
        Err(e) => return Err(e),
    };
    let at = |key: &str| format!("{field}.{key}");
    Ok(Check {
        source: c
            .source
            .or(String::new(), rule, field, "source is a string")?,
        days: c
            .days
            .or(None, rule, &at("days"), "a whole number of days")?,
        hours: c
            .hours
            .or(None, rule, &at("hours"), "a whole number of hours")?,
        min_level: c.min_level.or(None, rule, &at("min_level"), "1, 2 or 3")?,
    })
}

fn parse_rule(i: usize, obj: &Bound<'_, PyAny>) -> PyResult<Rule> {
    let at = format!("#{i}");
    let d = obj
        .cast::<PyDict>()
        .map_err(|_| plan_err(&at, "rule", "a rule is a dict"))?;
    let r: RuleArg<'_> = match d.extract() {
        Ok(r) => r,
        Err(e) if e.is_instance_of::<PyKeyError>(d.py()) => {
            return Err(plan_err(&at, "id", "missing"))
        }
        Err(e) => return Err(e),
    };
    let id = r.id.or(String::new(), &at, "id", "a string")?;
    if let Some(k) = unknown_key(d, &RULE_KEYS)? {
        return Err(plan_err(&id, &k, "unknown field"));
    }
    let colour = match r.colour {
        Field::Value(c) if c == "yellow" => plan::YELLOW,
        Field::Value(c) if c == "red" => plan::RED,
        _ => return Err(plan_err(&id, "colour", "\"yellow\" or \"red\"")),
    };
    let match_all = match r.match_ {
        Field::Absent => false,
        Field::Value(m) if m == "any" => false,
        Field::Value(m) if m == "all" => true,
        _ => return Err(plan_err(&id, "match", "\"any\" or \"all\"")),
    };
    let list = |field: &str, given: Field<Bound<'_, PyList>>| -> PyResult<Vec<Check>> {
        match given {
            Field::Absent => Ok(Vec::new()),
            Field::Wrong => Err(plan_err(&id, field, "a list")),
            Field::Value(l) => l
                .iter()
                .enumerate()
                .map(|(j, c)| parse_check(&id, &format!("{field}[{j}]"), &c))
                .collect(),
        }
    };
    Ok(Rule {
        checks: list("checks", r.checks)?,
        clears: list("clears", r.clears)?,
        id,
        colour,
        match_all,
    })
}

/// A compiled rule plan.
#[pyclass(frozen, name = "Plan", module = "healthcode_matcher._native")]
pub(crate) struct PyPlan {
    pub(crate) inner: Arc<Plan>,
}

#[pymethods]
impl PyPlan {
    #[new]
    #[pyo3(signature = (rules, version=String::new()))]
    fn new(rules: &Bound<'_, PyList>, version: String) -> PyResult<Self> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| parse_rule(i, &r))
            .collect::<PyResult<_>>()?;
        Ok(PyPlan {
            inner: Arc::new(Plan::new(version, rules).map_err(py_err)?),
        })
    }

    #[getter]
    fn version(&self) -> String {
        self.inner.version.clone()
    }

    #[getter]
    fn rule_ids(&self) -> Vec<String> {
        self.inner.rules.iter().map(|r| r.id.clone()).collect()
    }

    #[getter]
    fn check_count(&self) -> usize {
        self.inner.check_count()
    }

    fn colour_of_mask(&self, mask: u64) -> u8 {
        self.inner.colour_of(mask)
    }
}
