//! `IndexBuilder`: the next index version, private to its maker until `finish`.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rayon::prelude::*;

use super::convert::{day_of, key_of, keys_of, lines, u32_bytes, u32s_of, unit_err};
use super::errors::{py_err, InvalidOperation};
use super::index::PyIndex;
use crate::errors::Result;
use crate::ids::{self, Key};
use crate::index::{Builder, KeyedBy};

/// The next version, private until `finish`.
#[pyclass(name = "IndexBuilder", module = "healthcode_matcher._native")]
pub(crate) struct PyIndexBuilder {
    /// `None` once finished.
    inner: Option<Builder>,
}

impl PyIndexBuilder {
    pub(crate) fn new(builder: Builder) -> Self {
        PyIndexBuilder {
            inner: Some(builder),
        }
    }

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
) -> Result<Vec<Key>> {
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
                .collect::<Result<Vec<u32>>>()
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

    fn remove_rows(&mut self, py: Python<'_>, source: &str, ids: &[u8]) -> PyResult<()> {
        let ids = u32s_of(ids, "ids")?;
        let b = self.b()?;
        py.detach(|| b.remove_rows(source, &ids)).map_err(py_err)
    }

    /// Only drops the source's buckets (shared with older versions, usually): no bitmap is
    /// walked, so the GIL is kept.
    fn clear_source(&mut self, name: &str) -> PyResult<()> {
        self.b()?.clear_source(name).map_err(py_err)
    }

    fn set_county_level(&mut self, county: u32, level: u8) -> PyResult<()> {
        self.b()?.set_county_level(county, level).map_err(py_err)
    }

    /// Freeze into the next version, or the caller's `version`; a refused number leaves the
    /// builder usable.
    #[pyo3(signature = (version=None))]
    fn finish(&mut self, version: Option<u64>) -> PyResult<PyIndex> {
        if let Some(v) = version {
            self.b()?.check_version(v).map_err(py_err)?;
        }
        let b = self
            .inner
            .take()
            .ok_or_else(|| InvalidOperation::new_err("already finished"))?;
        let index = match version {
            None => b.finish(),
            Some(v) => b.finish_as(v).map_err(py_err)?,
        };
        Ok(PyIndex::wrap(index))
    }
}
