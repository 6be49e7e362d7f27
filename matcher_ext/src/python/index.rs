//! `Index`: one immutable index version, shared by reference with every `Verdicts` over it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::builder::PyIndexBuilder;
use super::convert::{
    bitmap_bytes, bitmap_u32_bytes, day_of, key_of, keys_of, secret_of, u32_bytes, u32s_of,
};
use super::errors::{py_err, InvalidOperation};
use super::hasher::PyHasher;
use crate::bucket;
use crate::index::{Index, NO_COUNTY, UNDATED};
use crate::shared;
use crate::snapshot;

/// One immutable index version.
#[pyclass(frozen, name = "Index", module = "healthcode_matcher._native")]
pub(crate) struct PyIndex {
    pub(crate) inner: Arc<Index>,
}

impl PyIndex {
    pub(crate) fn wrap(index: Index) -> Self {
        PyIndex {
            inner: Arc::new(index),
        }
    }
}

#[pymethods]
impl PyIndex {
    #[new]
    fn new(secret: &[u8]) -> PyResult<Self> {
        Ok(PyIndex::wrap(Index::new(secret_of(secret)?)))
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
        PyIndexBuilder::new(self.inner.builder())
    }

    fn person_id(&self, id_number: &str) -> PyResult<Option<u32>> {
        let k = self.inner.hasher.person_key(id_number).map_err(py_err)?;
        Ok(self.inner.registry.persons.get(k))
    }

    fn person_id_by_key(&self, key: &[u8]) -> PyResult<Option<u32>> {
        Ok(self.inner.registry.persons.get(key_of(key)?))
    }

    /// The person key (16 bytes, as `Hasher.person_key` gives it) behind a dense person id, or
    /// None past the registry: the way back from an id the index answers (a card's holder, a
    /// phone's holder) to the key the services speak.
    fn person_key<'py>(&self, py: Python<'py>, person_id: u32) -> Option<Bound<'py, PyBytes>> {
        let persons = &self.inner.registry.persons;
        ((person_id as usize) < persons.len())
            .then(|| PyBytes::new(py, &persons.key(person_id).to_le_bytes()))
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

    /// Holders of the phones (LE u32 ids; `u32::MAX` and unheld phones skipped), as sorted,
    /// distinct LE u32 person ids. The GIL is released.
    fn holders_of_phones<'py>(
        &self,
        py: Python<'py>,
        phone_ids: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let phones = u32s_of(phone_ids, "phone ids")?;
        let index = self.inner.clone();
        let holders = py
            .detach(|| index.holders_of_phones(phones.into_iter()))
            .map_err(py_err)?;
        Ok(PyBytes::new(py, &bitmap_u32_bytes(&holders)))
    }

    /// Persons with a row in one of `counties` (directly or through a phone they hold), in any
    /// county-keyed source: sorted, distinct LE u32 ids. The GIL is released.
    fn persons_with_rows_in_counties<'py>(
        &self,
        py: Python<'py>,
        counties: Vec<u32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let index = self.inner.clone();
        let persons = py
            .detach(|| index.persons_with_rows_in_counties(&counties))
            .map_err(py_err)?;
        Ok(PyBytes::new(py, &bitmap_u32_bytes(&persons)))
    }

    /// The person id of each 16-byte key (concatenated), `u32::MAX` for an unknown one, as LE
    /// u32. The GIL is released.
    fn person_ids_by_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let keys = keys_of(keys)?;
        let index = self.inner.clone();
        let ids = py.detach(|| u32_bytes(&index.registry.persons.get_many(&keys)));
        Ok(PyBytes::new(py, &ids))
    }

    /// The phone id of each 16-byte key (concatenated), `u32::MAX` for an unknown one, as LE
    /// u32. The GIL is released.
    fn phone_ids_by_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let keys = keys_of(keys)?;
        let index = self.inner.clone();
        let ids = py.detach(|| u32_bytes(&index.registry.phones.get_many(&keys)));
        Ok(PyBytes::new(py, &ids))
    }

    fn phones_of(&self, person_id: u32) -> PyResult<Vec<u32>> {
        self.inner.check_person(person_id).map_err(py_err)?;
        Ok(self.inner.registry.phones_of(person_id))
    }

    fn county_levels(&self) -> HashMap<u32, u8> {
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
        let s = self.inner.source(name).map_err(py_err)?.clone();
        let day = day_of(day)?;
        let out = py.detach(|| {
            let b = bucket::union(
                s.buckets
                    .iter()
                    .filter(|(&(c, d), _)| d == day && county.is_none_or(|want| want == c))
                    .map(|(_, b)| b.as_ref()),
            );
            bitmap_bytes(&b)
        });
        Ok(PyBytes::new(py, &out))
    }

    fn source_len(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        let s = self.inner.source(name).map_err(py_err)?.clone();
        Ok(py.detach(|| s.members().len()))
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let index = self.inner.clone();
        py.detach(|| snapshot::save(&index, &path)).map_err(py_err)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf, secret: &[u8]) -> PyResult<PyIndex> {
        let secret = secret_of(secret)?;
        let index = py
            .detach(|| snapshot::load(&path, secret))
            .map_err(py_err)?;
        Ok(PyIndex::wrap(index))
    }

    /// This index with its person and phone keys read from files in `directory` that every
    /// worker of the machine maps (written first if missing or another registry's), and what
    /// was done for each table: "mapped", "written" or "kept: <why>".
    fn share_keys(&self, py: Python<'_>, directory: PathBuf) -> (PyIndex, HashMap<String, String>) {
        let index = self.inner.clone();
        let (shared, done) = py.detach(|| shared::share(&index, &directory));
        let done = done
            .into_iter()
            .map(|(table, what)| {
                let what = match what {
                    shared::Shared::Mapped => "mapped".to_string(),
                    shared::Shared::Written => "written".to_string(),
                    shared::Shared::Kept(why) => format!("kept: {why}"),
                };
                (table.to_string(), what)
            })
            .collect();
        (PyIndex::wrap(shared), done)
    }

    #[getter]
    fn shared_person_count(&self) -> usize {
        self.inner.registry.persons.shared_len()
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
        Ok(PyIndex::wrap(index))
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
