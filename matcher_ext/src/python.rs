//! The `_native` Python module: thin wrappers over the core. Inputs are converted first, then
//! the Rust work runs detached from the GIL (`py.detach`) wherever it can take more than a
//! microsecond. Errors cross as typed exceptions, all subclasses of `ValueError`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rayon::prelude::*;

use crate::errors::MatcherError;
use crate::ids::{self, Key};
use crate::index::{Builder, Index, KeyedBy, NO_COUNTY, UNDATED};
use crate::plan::{self, Check, Plan, Rule};
use crate::snapshot;

create_exception!(
    healthcode_matcher._native,
    IdentifierError,
    PyValueError,
    "An identifier is not valid."
);
create_exception!(
    healthcode_matcher._native,
    InvalidIdNumber,
    IdentifierError,
    "A resident ID number is not valid."
);
create_exception!(
    healthcode_matcher._native,
    InvalidPhone,
    IdentifierError,
    "Not a mainland mobile number."
);
create_exception!(
    healthcode_matcher._native,
    PlanError,
    PyValueError,
    "A rule plan is malformed."
);
create_exception!(
    healthcode_matcher._native,
    InvalidOperation,
    PyValueError,
    "An operation does not fit the index."
);
create_exception!(
    healthcode_matcher._native,
    SnapshotError,
    PyValueError,
    "A snapshot could not be read."
);

fn py_err(e: MatcherError) -> PyErr {
    let msg = e.to_string();
    match e {
        MatcherError::InvalidIdNumber(_) => InvalidIdNumber::new_err(msg),
        MatcherError::InvalidPhone(_) => InvalidPhone::new_err(msg),
        MatcherError::InvalidCard(_) => IdentifierError::new_err(msg),
        MatcherError::Plan(_) => PlanError::new_err(msg),
        MatcherError::Invalid(_) => InvalidOperation::new_err(msg),
        MatcherError::Snapshot(_) => SnapshotError::new_err(msg),
    }
}

type R<T> = Result<T, MatcherError>;

fn secret_of(secret: &[u8]) -> PyResult<[u8; 32]> {
    secret
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("the secret is 32 bytes, not {}", secret.len())))
}

fn key_of(raw: &[u8]) -> PyResult<Key> {
    let k: [u8; 16] = raw
        .try_into()
        .map_err(|_| InvalidOperation::new_err(format!("a key is 16 bytes, not {}", raw.len())))?;
    Ok(u128::from_le_bytes(k))
}

fn keys_of(raw: &[u8]) -> PyResult<Vec<Key>> {
    if !raw.len().is_multiple_of(16) {
        return Err(InvalidOperation::new_err(
            "keys are concatenated 16-byte values",
        ));
    }
    Ok(raw
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16")))
        .collect())
}

fn u32s_of(raw: &[u8], what: &str) -> PyResult<Vec<u32>> {
    if !raw.len().is_multiple_of(4) {
        return Err(InvalidOperation::new_err(format!(
            "{what} are little-endian u32 values"
        )));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect())
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn lines(raw: &[u8]) -> PyResult<Vec<&str>> {
    let text = std::str::from_utf8(raw).map_err(|_| InvalidOperation::new_err("not UTF-8"))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).collect())
}

fn unit_err(source: &str, hourly: bool) -> PyErr {
    InvalidOperation::new_err(if hourly {
        format!("source {source:?} is hourly: give hours (hour numbers), not days")
    } else {
        format!("source {source:?} is daily: give days, not hours")
    })
}

fn day_of(day: Option<u32>) -> PyResult<u32> {
    match day {
        Some(UNDATED) => Err(InvalidOperation::new_err("day 4294967295 is reserved")),
        Some(d) => Ok(d),
        None => Ok(UNDATED),
    }
}

/// Validate and normalise a resident ID number.
#[pyfunction]
fn normalise_id_number(raw: &str) -> PyResult<String> {
    ids::normalise_id_number(raw).map_err(py_err)
}

/// Validate and normalise a mobile number.
#[pyfunction]
fn normalise_phone(raw: &str) -> PyResult<String> {
    ids::normalise_phone(raw).map_err(py_err)
}

/// Distinct valid ID numbers, newline-separated.
#[pyfunction]
fn synthetic_id_numbers(py: Python<'_>, count: u64, seed: u64) -> PyResult<Py<PyBytes>> {
    let out = py.detach(|| ids::synthetic_id_numbers(count, seed).join("\n"));
    Ok(PyBytes::new(py, out.as_bytes()).unbind())
}

/// Distinct valid mobile numbers, newline-separated.
#[pyfunction]
fn synthetic_phones(py: Python<'_>, count: u64, seed: u64) -> PyResult<Py<PyBytes>> {
    let out = py.detach(|| ids::synthetic_phones(count, seed).join("\n"));
    Ok(PyBytes::new(py, out.as_bytes()).unbind())
}

/// Keyed BLAKE3 of normalised identifiers.
#[pyclass(frozen, name = "Hasher", module = "healthcode_matcher._native")]
struct PyHasher {
    inner: ids::Hasher,
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

/// One immutable index version.
#[pyclass(frozen, name = "Index", module = "healthcode_matcher._native")]
struct PyIndex {
    inner: Arc<Index>,
}

#[pymethods]
impl PyIndex {
    #[new]
    fn new(secret: &[u8]) -> PyResult<Self> {
        Ok(PyIndex {
            inner: Arc::new(Index::new(secret_of(secret)?)),
        })
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }

    #[getter]
    fn person_count(&self) -> usize {
        self.inner.registry.persons.len()
    }

    #[getter]
    fn phone_count(&self) -> usize {
        self.inner.registry.phones.len()
    }

    #[getter]
    fn card_count(&self) -> usize {
        self.inner.registry.cards.len()
    }

    fn hasher(&self) -> PyHasher {
        PyHasher {
            inner: self.inner.hasher.clone(),
        }
    }

    fn builder(&self) -> PyIndexBuilder {
        PyIndexBuilder {
            inner: Some(self.inner.builder()),
        }
    }

    fn person_id(&self, id_number: &str) -> PyResult<Option<u32>> {
        let k = self.inner.hasher.person_key(id_number).map_err(py_err)?;
        Ok(self.inner.registry.persons.get(k))
    }

    fn person_id_by_key(&self, key: &[u8]) -> PyResult<Option<u32>> {
        Ok(self.inner.registry.persons.get(key_of(key)?))
    }

    fn phone_id(&self, phone: &str) -> PyResult<Option<u32>> {
        let k = self.inner.hasher.phone_key(phone).map_err(py_err)?;
        Ok(self.inner.registry.phones.get(k))
    }

    fn phone_id_by_key(&self, key: &[u8]) -> PyResult<Option<u32>> {
        Ok(self.inner.registry.phones.get(key_of(key)?))
    }

    fn card_holder(&self, card: &str) -> PyResult<Option<u32>> {
        let k = self.inner.hasher.card_key(card).map_err(py_err)?;
        Ok(self.inner.registry.card_holder(k))
    }

    fn card_holder_by_key(&self, key: &[u8]) -> PyResult<Option<u32>> {
        Ok(self.inner.registry.card_holder(key_of(key)?))
    }

    fn holder_of_phone(&self, phone_id: u32) -> PyResult<Option<u32>> {
        if phone_id as usize >= self.inner.registry.phones.len() {
            return Err(InvalidOperation::new_err(format!(
                "no phone with id {phone_id}"
            )));
        }
        Ok(self.inner.registry.phone_holder(phone_id))
    }

    fn phones_of(&self, person_id: u32) -> PyResult<Vec<u32>> {
        self.inner.check_person(person_id).map_err(py_err)?;
        Ok(self.inner.registry.phones_of(person_id))
    }

    fn county_levels(&self) -> std::collections::HashMap<u32, u8> {
        self.inner.county_levels.as_ref().clone()
    }

    fn sources(&self) -> Vec<(String, &'static str, bool)> {
        self.inner
            .sources
            .iter()
            .map(|(n, s)| (n.clone(), s.keyed_by.name(), s.has_county))
            .collect()
    }

    fn source_is_hourly(&self, name: &str) -> PyResult<bool> {
        Ok(self.inner.source(name).map_err(py_err)?.hourly)
    }

    fn source_days(&self, name: &str) -> PyResult<Vec<Option<u32>>> {
        let s = self.inner.source(name).map_err(py_err)?;
        let mut days: Vec<u32> = s.buckets.keys().map(|&(_, d)| d).collect();
        days.sort_unstable();
        days.dedup();
        Ok(days
            .into_iter()
            .map(|d| (d != UNDATED).then_some(d))
            .collect())
    }

    fn source_counties(&self, name: &str) -> PyResult<Vec<u32>> {
        let s = self.inner.source(name).map_err(py_err)?;
        let mut cs: Vec<u32> = s
            .buckets
            .keys()
            .map(|&(c, _)| c)
            .filter(|&c| c != NO_COUNTY)
            .collect();
        cs.sort_unstable();
        cs.dedup();
        Ok(cs)
    }

    /// One day's rows (None: the undated bucket); for a county source one county's, or with
    /// `county=None` the union over counties.
    #[pyo3(signature = (name, day=None, county=None))]
    fn source_bitmap<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        day: Option<u32>,
        county: Option<u32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let s = self.inner.source(name).map_err(py_err)?;
        let day = day_of(day)?;
        let b = crate::bucket::union(
            s.buckets
                .iter()
                .filter(|(&(c, d), _)| d == day && county.is_none_or(|want| want == c))
                .map(|(_, b)| b.as_ref()),
        );
        let mut out = Vec::with_capacity(b.serialized_size());
        b.serialize_into(&mut out)
            .expect("writing to a Vec cannot fail");
        Ok(PyBytes::new(py, &out))
    }

    fn source_len(&self, name: &str) -> PyResult<u64> {
        Ok(self.inner.source(name).map_err(py_err)?.members().len())
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let index = self.inner.clone();
        py.detach(|| snapshot::save(&index, &path)).map_err(py_err)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf, secret: &[u8]) -> PyResult<PyIndex> {
        let secret = secret_of(secret)?;
        let index = py
            .detach(|| snapshot::load(&path, secret))
            .map_err(py_err)?;
        Ok(PyIndex {
            inner: Arc::new(index),
        })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let index = self.inner.clone();
        let out = py.detach(|| snapshot::to_bytes(&index));
        PyBytes::new(py, &out)
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8], secret: &[u8]) -> PyResult<PyIndex> {
        let secret = secret_of(secret)?;
        let index = py
            .detach(|| snapshot::from_bytes(data, secret))
            .map_err(py_err)?;
        Ok(PyIndex {
            inner: Arc::new(index),
        })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The next version, private until `finish`.
#[pyclass(name = "IndexBuilder", module = "healthcode_matcher._native")]
struct PyIndexBuilder {
    inner: Option<Builder>,
}

impl PyIndexBuilder {
    fn b(&mut self) -> PyResult<&mut Builder> {
        self.inner
            .as_mut()
            .ok_or_else(|| InvalidOperation::new_err("this builder was finished"))
    }

    fn is_hourly(&mut self, source: &str) -> PyResult<bool> {
        Ok(self.b()?.peek().source(source).map_err(py_err)?.hourly)
    }

    /// The bucket time of each row: days for a daily source, hours for an hourly one.
    fn row_times(
        &mut self,
        source: &str,
        days: Option<Vec<Option<u32>>>,
        hours: Option<Vec<Option<u32>>>,
    ) -> PyResult<Vec<u32>> {
        let times = match (self.is_hourly(source)?, days, hours) {
            (false, Some(d), None) => d,
            (true, None, Some(h)) => h,
            (hourly, _, _) => return Err(unit_err(source, hourly)),
        };
        times.into_iter().map(day_of).collect()
    }

    fn keyed_by(&mut self, source: &str) -> PyResult<KeyedBy> {
        Ok(self.b()?.peek().source(source).map_err(py_err)?.keyed_by)
    }
}

/// Hash many raw identifiers in parallel; the error names the first bad one.
fn hash_all(
    hasher: &ids::Hasher,
    raws: &[&str],
    keyed_by: KeyedBy,
    place: impl Fn(usize) -> String + Sync,
) -> R<Vec<Key>> {
    raws.par_iter()
        .enumerate()
        .map(|(i, raw)| {
            match keyed_by {
                KeyedBy::Person => hasher.person_key(raw),
                KeyedBy::Phone => hasher.phone_key(raw),
            }
            .map_err(|e| e.at(&place(i)))
        })
        .collect()
}

#[pymethods]
impl PyIndexBuilder {
    fn add_person(&mut self, id_number: &str) -> PyResult<u32> {
        let b = self.b()?;
        let k = b.peek().hasher.person_key(id_number).map_err(py_err)?;
        Ok(b.add_person_key(k))
    }

    fn add_persons<'py>(
        &mut self,
        py: Python<'py>,
        id_numbers: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let raws = lines(id_numbers)?;
        let b = self.b()?;
        let hasher = b.peek().hasher.clone();
        let keys = py
            .detach(|| {
                hash_all(&hasher, &raws, KeyedBy::Person, |i| {
                    format!("line {}", i + 1)
                })
            })
            .map_err(py_err)?;
        let ids: Vec<u32> = py.detach(|| keys.iter().map(|&k| b.add_person_key(k)).collect());
        Ok(PyBytes::new(py, &u32_bytes(&ids)))
    }

    fn add_person_key(&mut self, key: &[u8]) -> PyResult<u32> {
        let k = key_of(key)?;
        Ok(self.b()?.add_person_key(k))
    }

    #[pyo3(signature = (phone, holder=None))]
    fn add_phone(&mut self, phone: &str, holder: Option<u32>) -> PyResult<u32> {
        let b = self.b()?;
        let k = b.peek().hasher.phone_key(phone).map_err(py_err)?;
        b.add_phone_key(k, holder).map_err(py_err)
    }

    #[pyo3(signature = (key, holder=None))]
    fn add_phone_key(&mut self, key: &[u8], holder: Option<u32>) -> PyResult<u32> {
        let k = key_of(key)?;
        self.b()?.add_phone_key(k, holder).map_err(py_err)
    }

    #[pyo3(signature = (phones, holders=None))]
    fn add_phones<'py>(
        &mut self,
        py: Python<'py>,
        phones: &[u8],
        holders: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let raws = lines(phones)?;
        let holders = holders.map(|h| u32s_of(h, "holders")).transpose()?;
        if holders.as_ref().is_some_and(|h| h.len() != raws.len()) {
            return Err(InvalidOperation::new_err("give one holder per phone"));
        }
        let b = self.b()?;
        let persons = b.peek().registry.persons.len();
        if let Some(bad) = holders.iter().flatten().find(|&&h| h as usize >= persons) {
            return Err(InvalidOperation::new_err(format!(
                "no person with id {bad}"
            )));
        }
        let hasher = b.peek().hasher.clone();
        let keys = py
            .detach(|| {
                hash_all(&hasher, &raws, KeyedBy::Phone, |i| {
                    format!("line {}", i + 1)
                })
            })
            .map_err(py_err)?;
        let ids = py.detach(|| {
            keys.iter()
                .enumerate()
                .map(|(i, &k)| b.add_phone_key(k, holders.as_ref().map(|h| h[i])))
                .collect::<R<Vec<u32>>>()
        });
        Ok(PyBytes::new(py, &u32_bytes(&ids.map_err(py_err)?)))
    }

    fn unlink_phone(&mut self, phone: &str) -> PyResult<bool> {
        let b = self.b()?;
        let k = b.peek().hasher.phone_key(phone).map_err(py_err)?;
        Ok(b.unlink_phone_key(k))
    }

    fn unlink_phone_key(&mut self, key: &[u8]) -> PyResult<bool> {
        let k = key_of(key)?;
        Ok(self.b()?.unlink_phone_key(k))
    }

    fn add_card_key(&mut self, key: &[u8], holder: u32) -> PyResult<()> {
        let k = key_of(key)?;
        self.b()?.add_card_key(k, holder).map_err(py_err)
    }

    fn add_card(&mut self, card: &str, holder: u32) -> PyResult<()> {
        let b = self.b()?;
        let k = b.peek().hasher.card_key(card).map_err(py_err)?;
        b.add_card_key(k, holder).map_err(py_err)
    }

    #[pyo3(signature = (name, keyed_by, has_county=false, hourly=false))]
    fn define_source(
        &mut self,
        name: &str,
        keyed_by: &str,
        has_county: bool,
        hourly: bool,
    ) -> PyResult<()> {
        let k = KeyedBy::parse(keyed_by).map_err(py_err)?;
        self.b()?
            .define_source(name, k, has_county, hourly)
            .map_err(py_err)
    }

    #[pyo3(signature = (source, ids, day=None, counties=None, hour=None))]
    fn add_rows(
        &mut self,
        py: Python<'_>,
        source: &str,
        ids: &[u8],
        day: Option<u32>,
        counties: Option<&[u8]>,
        hour: Option<u32>,
    ) -> PyResult<()> {
        let ids = u32s_of(ids, "ids")?;
        let counties = counties.map(|c| u32s_of(c, "counties")).transpose()?;
        let hourly = self.is_hourly(source)?;
        let day = match (hourly, day, hour) {
            (false, d, None) => day_of(d)?,
            (true, None, h) => day_of(h)?,
            (false, _, Some(_)) => return Err(unit_err(source, false)),
            (true, Some(_), _) => return Err(unit_err(source, true)),
        };
        let b = self.b()?;
        py.detach(|| b.add_rows(source, &ids, day, counties.as_deref()))
            .map_err(py_err)
    }

    #[pyo3(signature = (source, identifiers, days=None, counties=None, hours=None))]
    fn add_rows_by_identifier(
        &mut self,
        py: Python<'_>,
        source: &str,
        identifiers: Vec<String>,
        days: Option<Vec<Option<u32>>>,
        counties: Option<Vec<u32>>,
        hours: Option<Vec<Option<u32>>>,
    ) -> PyResult<usize> {
        let keyed_by = self.keyed_by(source)?;
        let days = self.row_times(source, days, hours)?;
        let b = self.b()?;
        let hasher = b.peek().hasher.clone();
        let raws: Vec<&str> = identifiers.iter().map(String::as_str).collect();
        let keys = py
            .detach(|| hash_all(&hasher, &raws, keyed_by, |i| format!("row {i}")))
            .map_err(py_err)?;
        py.detach(|| b.add_rows_by_key(source, &keys, &days, counties.as_deref()))
            .map_err(py_err)?;
        Ok(keys.len())
    }

    #[pyo3(signature = (source, keys, days=None, counties=None, hours=None))]
    fn add_rows_by_key(
        &mut self,
        py: Python<'_>,
        source: &str,
        keys: &[u8],
        days: Option<Vec<Option<u32>>>,
        counties: Option<Vec<u32>>,
        hours: Option<Vec<Option<u32>>>,
    ) -> PyResult<usize> {
        let keys = keys_of(keys)?;
        let days = self.row_times(source, days, hours)?;
        let b = self.b()?;
        py.detach(|| b.add_rows_by_key(source, &keys, &days, counties.as_deref()))
            .map_err(py_err)?;
        Ok(keys.len())
    }

    fn remove_rows(&mut self, source: &str, ids: &[u8]) -> PyResult<()> {
        let ids = u32s_of(ids, "ids")?;
        self.b()?.remove_rows(source, &ids).map_err(py_err)
    }

    fn clear_source(&mut self, name: &str) -> PyResult<()> {
        self.b()?.clear_source(name).map_err(py_err)
    }

    fn set_county_level(&mut self, county: u32, level: u8) -> PyResult<()> {
        self.b()?.set_county_level(county, level).map_err(py_err)
    }

    #[pyo3(signature = (version=None))]
    fn finish(&mut self, version: Option<u64>) -> PyResult<PyIndex> {
        let b = self
            .inner
            .take()
            .ok_or_else(|| InvalidOperation::new_err("already finished"))?;
        let index = match version {
            None => b.finish(),
            Some(v) if v <= b.peek().version => {
                let from = b.peek().version;
                self.inner = Some(b); // nothing was frozen: the builder stays usable
                return Err(InvalidOperation::new_err(format!(
                    "version {v} does not follow version {from}"
                )));
            }
            Some(v) => b.finish_as(v).map_err(py_err)?,
        };
        Ok(PyIndex {
            inner: Arc::new(index),
        })
    }
}

fn plan_err(rule: &str, field: &str, msg: &str) -> PyErr {
    PlanError::new_err(format!("rule {rule:?} ({field}): {msg}"))
}

fn parse_check(rule: &str, field: &str, d: &Bound<'_, PyAny>) -> PyResult<Check> {
    let d = d
        .cast::<PyDict>()
        .map_err(|_| plan_err(rule, field, "a check is a dict"))?;
    for k in d.keys() {
        let k: String = k.extract()?;
        if !matches!(k.as_str(), "source" | "days" | "hours" | "min_level") {
            return Err(plan_err(rule, field, &format!("unknown field {k:?}")));
        }
    }
    let source: String = match d.get_item("source")? {
        Some(s) => s
            .extract()
            .map_err(|_| plan_err(rule, field, "source is a string"))?,
        None => return Err(plan_err(rule, &format!("{field}.source"), "missing")),
    };
    let days: Option<u32> = match d.get_item("days")? {
        Some(v) if !v.is_none() => Some(
            v.extract()
                .map_err(|_| plan_err(rule, &format!("{field}.days"), "a whole number of days"))?,
        ),
        _ => None,
    };
    let hours: Option<u32> =
        match d.get_item("hours")? {
            Some(v) if !v.is_none() => Some(v.extract().map_err(|_| {
                plan_err(rule, &format!("{field}.hours"), "a whole number of hours")
            })?),
            _ => None,
        };
    let min_level: Option<u8> = match d.get_item("min_level")? {
        Some(v) if !v.is_none() => Some(
            v.extract()
                .map_err(|_| plan_err(rule, &format!("{field}.min_level"), "1, 2 or 3"))?,
        ),
        _ => None,
    };
    Ok(Check {
        source,
        days,
        hours,
        min_level,
    })
}

fn parse_rule(i: usize, d: &Bound<'_, PyAny>) -> PyResult<Rule> {
    let at = format!("#{i}");
    let d = d
        .cast::<PyDict>()
        .map_err(|_| plan_err(&at, "rule", "a rule is a dict"))?;
    let id: String = match d.get_item("id")? {
        Some(v) => v.extract().map_err(|_| plan_err(&at, "id", "a string"))?,
        None => return Err(plan_err(&at, "id", "missing")),
    };
    for k in d.keys() {
        let k: String = k.extract()?;
        if !matches!(k.as_str(), "id" | "colour" | "match" | "checks" | "clears") {
            return Err(plan_err(&id, &k, "unknown field"));
        }
    }
    let colour = match d
        .get_item("colour")?
        .map(|v| v.extract::<String>())
        .transpose()
    {
        Ok(Some(c)) if c == "yellow" => plan::YELLOW,
        Ok(Some(c)) if c == "red" => plan::RED,
        _ => return Err(plan_err(&id, "colour", "\"yellow\" or \"red\"")),
    };
    let match_all = match d
        .get_item("match")?
        .map(|v| v.extract::<String>())
        .transpose()
    {
        Ok(None) => false,
        Ok(Some(m)) if m == "any" => false,
        Ok(Some(m)) if m == "all" => true,
        _ => return Err(plan_err(&id, "match", "\"any\" or \"all\"")),
    };
    let list = |field: &str| -> PyResult<Vec<Check>> {
        match d.get_item(field)? {
            None => Ok(Vec::new()),
            Some(v) => {
                let l = v
                    .cast::<PyList>()
                    .map_err(|_| plan_err(&id, field, "a list"))?;
                l.iter()
                    .enumerate()
                    .map(|(j, c)| parse_check(&id, &format!("{field}[{j}]"), &c))
                    .collect()
            }
        }
    };
    Ok(Rule {
        checks: list("checks")?,
        clears: list("clears")?,
        id,
        colour,
        match_all,
    })
}

/// A compiled rule plan.
#[pyclass(frozen, name = "Plan", module = "healthcode_matcher._native")]
struct PyPlan {
    inner: Arc<Plan>,
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

fn ids_of_mask(plan: &Plan, mask: u64) -> Vec<String> {
    plan.rules
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| r.id.clone())
        .collect()
}

/// One person's colour and the rules behind it.
#[pyclass(frozen, name = "Verdict", module = "healthcode_matcher._native")]
struct PyVerdict {
    v: plan::Verdict,
    plan: Arc<Plan>,
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

/// Why one check matched, or what cleared it.
#[pyclass(
    frozen,
    get_all,
    name = "Evidence",
    module = "healthcode_matcher._native"
)]
struct PyEvidence {
    rule_id: String,
    source: String,
    day: Option<u32>,
    hour: Option<u32>,
    phone_id: Option<u32>,
    county: Option<u32>,
    role: &'static str,
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

/// A plan evaluated over an index on one day.
#[pyclass(frozen, name = "Verdicts", module = "healthcode_matcher._native")]
struct PyVerdicts {
    inner: Arc<plan::Verdicts>,
}

impl PyVerdicts {
    fn verdict(&self, v: plan::Verdict) -> PyVerdict {
        PyVerdict {
            v,
            plan: self.inner.plan.clone(),
        }
    }
}

fn evaluate_id_number(v: &plan::Verdicts, id_number: &str) -> PyResult<Option<plan::Verdict>> {
    let k = v.index.hasher.person_key(id_number).map_err(py_err)?;
    match v.index.registry.persons.get(k) {
        None => Ok(None),
        Some(p) => Ok(Some(v.evaluate(p).map_err(py_err)?)),
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
            .map(|e| PyEvidence {
                rule_id: self.inner.plan.rules[e.rule].id.clone(),
                source: e.source,
                day: e.day,
                hour: e.hour,
                phone_id: e.phone,
                county: e.county,
                role: e.role,
            })
            .collect())
    }

    fn colour_counts(&self) -> (u64, u64, u64) {
        let [g, y, r] = self.inner.colour_counts();
        (g, y, r)
    }

    fn rule_counts(&self) -> std::collections::HashMap<String, u64> {
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
    fn transitions<'py>(
        &self,
        py: Python<'py>,
        draft: &PyVerdicts,
        district_source: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (a, b) = (self.inner.clone(), draft.inner.clone());
        let t = py
            .detach(|| a.transitions(&b, district_source))
            .map_err(py_err)?;
        let out = PyDict::new(py);
        out.set_item("colours", t.colours.map(|row| row.to_vec()).to_vec())?;
        out.set_item("rules", t.rules)?;
        let districts = PyDict::new(py);
        for (county, m) in t.districts {
            districts.set_item(county, m.map(|row| row.to_vec()).to_vec())?;
        }
        out.set_item("districts", districts)?;
        Ok(out)
    }

    fn non_green<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let v = self.inner.clone();
        let out = py.detach(|| {
            let b = v.non_green();
            let mut out = Vec::with_capacity(b.serialized_size());
            b.serialize_into(&mut out)
                .expect("writing to a Vec cannot fail");
            out
        });
        PyBytes::new(py, &out)
    }
}

/// The live verdicts of a replica: an atomic pointer, so readers never wait for a swap.
#[pyclass(frozen, name = "Matcher", module = "healthcode_matcher._native")]
struct PyMatcher {
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

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("IdentifierError", py.get_type::<IdentifierError>())?;
    m.add("InvalidIdNumber", py.get_type::<InvalidIdNumber>())?;
    m.add("InvalidPhone", py.get_type::<InvalidPhone>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    m.add("InvalidOperation", py.get_type::<InvalidOperation>())?;
    m.add("SnapshotError", py.get_type::<SnapshotError>())?;
    m.add_function(wrap_pyfunction!(normalise_id_number, m)?)?;
    m.add_function(wrap_pyfunction!(normalise_phone, m)?)?;
    m.add_function(wrap_pyfunction!(synthetic_id_numbers, m)?)?;
    m.add_function(wrap_pyfunction!(synthetic_phones, m)?)?;
    m.add_class::<PyHasher>()?;
    m.add_class::<PyIndex>()?;
    m.add_class::<PyIndexBuilder>()?;
    m.add_class::<PyPlan>()?;
    m.add_class::<PyVerdict>()?;
    m.add_class::<PyEvidence>()?;
    m.add_class::<PyVerdicts>()?;
    m.add_class::<PyMatcher>()?;
    Ok(())
}
