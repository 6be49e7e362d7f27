//! One index version: the registry, the sources as (county, day) buckets of ids, and county
//! risk levels. Versions are immutable; the next one is built aside from a cheap clone.
//!
//! Numbering: [`Index::new`] is the *root*, version 0 with nothing in it. A [`Builder`] started
//! from any version finishes as the next number, or as a number the caller chooses
//! ([`Builder::finish_as`]) above the one it started from. The root alone may also be finished
//! as version 0 itself, so a publisher can define its sources on the empty index and publish
//! that as version 0: no other version ever had that number.
//!
//! A finished version also remembers which buckets its builder touched, relative to the version
//! it started from, so that verdicts are carried to it reading only those
//! ([`crate::plan::Verdicts::update`]).
//!
//! ```
//! use healthcode_matcher::index::{Index, KeyedBy, UNDATED};
//!
//! let root = Index::new([7; 32]);
//! let mut b = root.builder();
//! b.define_source("confirmed", KeyedBy::Person, false, false)?;
//! let v0 = b.finish_as(0)?; // the empty index, its sources defined
//! assert_eq!((v0.version, v0.sources.len()), (0, 1));
//!
//! let mut b = v0.builder();
//! let p = b.add_person_key(42);
//! b.add_rows("confirmed", &[p], UNDATED, None)?;
//! assert!(b.check_version(0).is_err()); // 0 is taken now
//! let v1 = b.finish();
//! assert_eq!(v1.version, 1);
//! assert_eq!(v0.source("confirmed")?.members().len(), 0, "v0 never sees v1's rows");
//! # Ok::<(), healthcode_matcher::errors::MatcherError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::bucket::{self, Bucket};
use crate::errors::{MatcherError, Result};
use crate::ids::{Hasher, Key};
use crate::registry::Registry;

/// The day of an undated row ("currently on the list"): in every window.
pub const UNDATED: u32 = u32::MAX;
/// The county of a row in a source without counties.
pub const NO_COUNTY: u32 = 0;
/// County risk levels.
pub const LEVEL_HIGH: u8 = 3;

/// What a source's rows are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedBy {
    /// Resident ID numbers: rows are person ids.
    Person,
    /// Phone numbers: rows are phone ids, reaching persons through their links.
    Phone,
}

impl KeyedBy {
    /// Parse "person" or "phone".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "person" => Ok(KeyedBy::Person),
            "phone" => Ok(KeyedBy::Phone),
            _ => Err(MatcherError::Invalid(format!(
                "keyed_by must be \"person\" or \"phone\", not {s:?}"
            ))),
        }
    }

    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            KeyedBy::Person => "person",
            KeyedBy::Phone => "phone",
        }
    }
}

/// A bucket: the rows of one (county, time), the time a day, or an hour for an hourly source.
pub type BucketKey = (u32, u32);

/// A named source: buckets of ids by (county, day).
#[derive(Clone)]
pub struct Source {
    /// How rows are keyed.
    pub keyed_by: KeyedBy,
    /// Whether rows carry a county.
    pub has_county: bool,
    /// Whether buckets are hours (for windows in hours) rather than days.
    pub hourly: bool,
    /// The rows, by (county, day). Buckets are shared between versions until changed.
    pub buckets: BTreeMap<BucketKey, Arc<Bucket>>,
}

impl Source {
    /// Distinct ids over all buckets.
    pub fn members(&self) -> RoaringBitmap {
        bucket::union(self.buckets.values().map(|b| b.as_ref()))
    }
}

/// One immutable index version.
///
/// ```
/// use healthcode_matcher::index::{Index, KeyedBy};
///
/// let v0 = Index::new([7; 32]);
/// let mut b = v0.builder();
/// b.define_source("travel", KeyedBy::Person, true, false)?;
/// let p = b.add_person_key(1);
/// b.add_rows("travel", &[p], 19_000, Some(&[120101]))?;
/// b.set_county_level(120101, 3)?;
/// let v1 = b.finish();
/// assert_eq!(v1.version, 1);
/// assert_eq!(v1.level(120101), 3);
/// assert!(v1.check_person(p).is_ok() && v0.check_person(p).is_err());
/// assert!(v1.source("nope").is_err());
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
#[derive(Clone)]
pub struct Index {
    /// The version number: 0 for the root, then the builder's choice (one more by default).
    pub version: u64,
    /// The deployment's keyed hash.
    pub hasher: Hasher,
    /// Persons, phones, cards and their links.
    pub registry: Registry,
    /// The sources by name.
    pub sources: BTreeMap<String, Arc<Source>>,
    /// County code -> risk level (0 none, 1 low, 2 medium, 3 high).
    pub county_levels: Arc<HashMap<u32, u8>>,
    /// True only for the index [`Index::new`] made: no builder finished it, no snapshot held it.
    root: bool,
    /// This version's identity in this process (clones share it), which a change log names.
    pub(crate) id: u64,
    /// What the builder that made this version changed in the one it started from (`None`
    /// for the root and for a version read from a snapshot).
    pub(crate) changes: Option<Arc<Changes>>,
}

/// The bucket keys a builder touched, by source, relative to the version it started from:
/// every bucket added, replaced or dropped is listed (one listed may have ended unchanged).
/// It lets [`crate::plan::Verdicts::update`] read only the buckets that changed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// The identity of the version built from.
    pub(crate) from: u64,
    /// Source name -> touched keys, ascending.
    pub(crate) buckets: BTreeMap<String, Vec<BucketKey>>,
}

/// A fresh identity for a version.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("version", &self.version)
            .field("persons", &self.registry.persons.len())
            .field("phones", &self.registry.phones.len())
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Index {
    /// The root: an empty version 0 keyed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        Index {
            version: 0,
            hasher: Hasher::new(secret),
            registry: Registry::default(),
            sources: BTreeMap::new(),
            county_levels: Arc::new(HashMap::new()),
            root: true,
            id: next_id(),
            changes: None,
        }
    }

    /// A version read back from storage (a snapshot): never the root, whatever its number.
    pub(crate) fn restored(
        version: u64,
        hasher: Hasher,
        registry: Registry,
        sources: BTreeMap<String, Arc<Source>>,
        county_levels: HashMap<u32, u8>,
    ) -> Self {
        Index {
            version,
            hasher,
            registry,
            sources,
            county_levels: Arc::new(county_levels),
            root: false,
            id: next_id(),
            changes: None,
        }
    }

    /// Whether this is the root made by [`Index::new`], which a builder may finish as version 0.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The next version, to change aside.
    pub fn builder(&self) -> Builder {
        Builder {
            next: self.clone(),
            from_root: self.root,
            from: self.id,
            touched: BTreeMap::new(),
        }
    }

    /// A source by name, or a clear error.
    pub fn source(&self, name: &str) -> Result<&Arc<Source>> {
        self.sources
            .get(name)
            .ok_or_else(|| MatcherError::Invalid(format!("unknown source {name:?}")))
    }

    /// The level of a county (0 when never set).
    pub fn level(&self, county: u32) -> u8 {
        self.county_levels.get(&county).copied().unwrap_or(0)
    }

    /// Persons with a row in one of `counties`, in any county-keyed source and on any day or
    /// hour, directly (person-keyed sources) or through a phone they hold now (phone-keyed
    /// ones): whom a change of those counties' levels can touch. County 0 is refused.
    ///
    /// ```
    /// use healthcode_matcher::index::{Index, KeyedBy, UNDATED};
    ///
    /// let mut b = Index::new([7; 32]).builder();
    /// b.define_source("travel", KeyedBy::Person, true, false)?;
    /// b.define_source("roaming", KeyedBy::Phone, true, false)?;
    /// let (ann, bo, cy) = (b.add_person_key(1), b.add_person_key(2), b.add_person_key(3));
    /// let sim = b.add_phone_key(10, Some(cy))?;
    /// b.add_rows("travel", &[ann, bo], 19_000, Some(&[120101, 120102]))?;
    /// b.add_rows("roaming", &[sim], UNDATED, Some(&[120101]))?;
    /// let v = b.finish();
    /// let touched = v.persons_with_rows_in_counties(&[120101])?;
    /// assert_eq!(touched.iter().collect::<Vec<_>>(), [ann, cy]);
    /// assert!(v.persons_with_rows_in_counties(&[0]).is_err());
    /// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
    /// ```
    pub fn persons_with_rows_in_counties(&self, counties: &[u32]) -> Result<RoaringBitmap> {
        if counties.contains(&NO_COUNTY) {
            return Err(MatcherError::Invalid("county code 0 is reserved".into()));
        }
        let of = |keyed_by: KeyedBy| {
            bucket::union(
                self.sources
                    .values()
                    .filter(|s| s.has_county && s.keyed_by == keyed_by)
                    .flat_map(|s| {
                        counties
                            .iter()
                            .flat_map(|&c| s.buckets.range((c, 0)..=(c, u32::MAX)))
                            .map(|(_, b)| b.as_ref())
                    }),
            )
        };
        let mut persons = of(KeyedBy::Person);
        persons |= self.holders_of_phones(of(KeyedBy::Phone).iter())?;
        Ok(persons)
    }

    /// The holders of phones (unheld phones, and `u32::MAX` for "no phone", are skipped), as a
    /// set. An id past the last phone is refused.
    ///
    /// ```
    /// use healthcode_matcher::index::Index;
    ///
    /// let mut b = Index::new([7; 32]).builder();
    /// let ann = b.add_person_key(1);
    /// let (one, two) = (b.add_phone_key(10, Some(ann))?, b.add_phone_key(11, Some(ann))?);
    /// let spare = b.add_phone_key(12, None)?;
    /// let v = b.finish();
    /// let holders = v.holders_of_phones([one, two, spare, u32::MAX].into_iter())?;
    /// assert_eq!(holders.iter().collect::<Vec<_>>(), [ann]);
    /// assert!(v.holders_of_phones([spare + 1].into_iter()).is_err());
    /// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
    /// ```
    pub fn holders_of_phones(&self, phones: impl Iterator<Item = u32>) -> Result<RoaringBitmap> {
        let limit = self.registry.phones.len();
        let mut holders = Vec::new();
        for f in phones.filter(|&f| f != crate::registry::NONE) {
            if f as usize >= limit {
                return Err(MatcherError::Invalid(format!("no phone with id {f}")));
            }
            holders.extend(self.registry.phone_holder(f));
        }
        holders.sort_unstable();
        holders.dedup();
        Ok(RoaringBitmap::from_sorted_iter(holders).expect("sorted and distinct"))
    }

    /// Check that a person id exists.
    pub fn check_person(&self, id: u32) -> Result<()> {
        if (id as usize) < self.registry.persons.len() {
            Ok(())
        } else {
            Err(MatcherError::Invalid(format!("no person with id {id}")))
        }
    }
}

/// A private, mutable next version.
///
/// ```
/// use healthcode_matcher::index::{Index, KeyedBy};
///
/// let v1 = Index::new([7; 32]).builder().finish();
/// let mut b = v1.builder();
/// b.define_source("roaming", KeyedBy::Phone, true, false)?;
/// let holder = b.add_person_key(1);
/// let phone = b.add_phone_key(2, Some(holder))?;
/// b.add_rows("roaming", &[phone], 19_000, Some(&[120116]))?;
/// assert!(b.add_rows("roaming", &[phone], 19_000, None).is_err(), "a county per row");
/// assert!(b.check_version(1).is_err(), "numbers only go up");
/// let v7 = b.finish_as(7)?;
/// assert_eq!(v7.version, 7);
/// assert_eq!(v7.registry.phones_of(holder), vec![phone]);
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
pub struct Builder {
    next: Index,
    from_root: bool,
    /// The identity of the version started from.
    from: u64,
    /// Bucket keys touched so far, by source.
    touched: BTreeMap<String, BTreeSet<BucketKey>>,
}

impl Builder {
    /// The version as built so far (read-only).
    pub fn peek(&self) -> &Index {
        &self.next
    }

    /// Freeze into the next numbered version.
    pub fn finish(mut self) -> Index {
        self.next.version += 1;
        self.seal()
    }

    /// The version as built, with its identity and change log.
    fn seal(mut self) -> Index {
        self.next.root = false;
        self.next.id = next_id();
        let buckets = std::mem::take(&mut self.touched)
            .into_iter()
            .map(|(name, keys)| (name, keys.into_iter().collect()))
            .collect();
        self.next.changes = Some(Arc::new(Changes {
            from: self.from,
            buckets,
        }));
        self.next
    }

    /// Whether [`Builder::finish_as`] would accept `version`: above the version this builder
    /// started from, or 0 when it started from the root (no version had that number yet).
    pub fn check_version(&self, version: u64) -> Result<()> {
        let from = self.next.version;
        if version > from || (version == 0 && self.from_root) {
            Ok(())
        } else {
            Err(MatcherError::Invalid(format!(
                "version {version} does not follow version {from}"
            )))
        }
    }

    /// Freeze under a version number chosen by the caller (the risk index's own, durable
    /// numbering); see [`Builder::check_version`].
    pub fn finish_as(mut self, version: u64) -> Result<Index> {
        self.check_version(version)?;
        self.next.version = version;
        Ok(self.seal())
    }

    /// Register (or find) a person by key.
    pub fn add_person_key(&mut self, key: Key) -> u32 {
        self.next.registry.intern_person(key)
    }

    /// Register (or find) a phone by key, linking it to `holder` if given.
    pub fn add_phone_key(&mut self, key: Key, holder: Option<u32>) -> Result<u32> {
        if let Some(h) = holder {
            self.next.check_person(h)?;
        }
        let id = self.next.registry.intern_phone(key);
        if let Some(h) = holder {
            self.next.registry.link_phone(id, h);
        }
        Ok(id)
    }

    /// Remove a phone's link to its holder.
    pub fn unlink_phone_key(&mut self, key: Key) -> bool {
        match self.next.registry.phones.get(key) {
            Some(id) => self.next.registry.unlink_phone(id),
            None => false,
        }
    }

    /// Link a transit card to a person.
    pub fn add_card_key(&mut self, key: Key, holder: u32) -> Result<()> {
        self.next.check_person(holder)?;
        self.next.registry.link_card(key, holder);
        Ok(())
    }

    /// Declare a source. Declaring it again with the same traits is a no-op.
    pub fn define_source(
        &mut self,
        name: &str,
        keyed_by: KeyedBy,
        has_county: bool,
        hourly: bool,
    ) -> Result<()> {
        if name.is_empty() || name.len() > 64 {
            return Err(MatcherError::Invalid(
                "a source name is 1 to 64 characters".into(),
            ));
        }
        if let Some(s) = self.next.sources.get(name) {
            if s.keyed_by != keyed_by || s.has_county != has_county || s.hourly != hourly {
                return Err(MatcherError::Invalid(format!(
                    "source {name:?} is already defined as keyed by {} with has_county={} \
                     and hourly={}",
                    s.keyed_by.name(),
                    s.has_county,
                    s.hourly
                )));
            }
            return Ok(());
        }
        let s = Source {
            keyed_by,
            has_county,
            hourly,
            buckets: BTreeMap::new(),
        };
        self.next.sources.insert(name.to_string(), Arc::new(s));
        Ok(())
    }

    /// A source to change, and the set its touched bucket keys go in.
    fn source_mut(&mut self, name: &str) -> Result<(&mut Source, &mut BTreeSet<BucketKey>)> {
        let source = self
            .next
            .sources
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| MatcherError::Invalid(format!("unknown source {name:?}")))?;
        Ok((source, self.touched.entry(name.to_string()).or_default()))
    }

    /// Add rows of dense ids. `day` is `UNDATED` for "currently listed"; `counties` gives one
    /// county per id for a county source and must be `None` otherwise.
    pub fn add_rows(
        &mut self,
        name: &str,
        ids: &[u32],
        day: u32,
        counties: Option<&[u32]>,
    ) -> Result<()> {
        let limit = {
            let s = self.next.source(name)?;
            check_counties(name, s, ids.len(), counties)?;
            match s.keyed_by {
                KeyedBy::Person => self.next.registry.persons.len(),
                KeyedBy::Phone => self.next.registry.phones.len(),
            }
        };
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= limit) {
            return Err(MatcherError::Invalid(format!(
                "id {bad} is not registered in source {name:?}'s registry"
            )));
        }
        let (source, touched) = self.source_mut(name)?;
        match counties {
            None => insert_bucket(source, touched, (NO_COUNTY, day), ids.iter().copied()),
            Some(cs) => {
                let mut by_county: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for (&id, &c) in ids.iter().zip(cs) {
                    by_county.entry(c).or_default().push(id);
                }
                for (c, v) in by_county {
                    insert_bucket(source, touched, (c, day), v.into_iter());
                }
            }
        }
        Ok(())
    }

    /// Add rows by key, registering unseen persons or phones at first sight. One day per row.
    pub fn add_rows_by_key(
        &mut self,
        name: &str,
        keys: &[Key],
        days: &[u32],
        counties: Option<&[u32]>,
    ) -> Result<()> {
        let keyed_by = {
            let s = self.next.source(name)?;
            check_counties(name, s, keys.len(), counties)?;
            s.keyed_by
        };
        if days.len() != keys.len() {
            return Err(MatcherError::Invalid(format!(
                "{} rows but {} days: give one day per row",
                keys.len(),
                days.len()
            )));
        }
        let ids: Vec<u32> = keys
            .iter()
            .map(|&k| match keyed_by {
                KeyedBy::Person => self.next.registry.intern_person(k),
                KeyedBy::Phone => self.next.registry.intern_phone(k),
            })
            .collect();
        // group rows by (county, day) so each bucket is touched once
        let mut groups: BTreeMap<BucketKey, Vec<u32>> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let c = counties.map_or(NO_COUNTY, |cs| cs[i]);
            groups.entry((c, days[i])).or_default().push(id);
        }
        let (source, touched) = self.source_mut(name)?;
        for (bucket, v) in groups {
            insert_bucket(source, touched, bucket, v.into_iter());
        }
        Ok(())
    }

    /// Remove ids from every bucket of a source.
    pub fn remove_rows(&mut self, name: &str, ids: &[u32]) -> Result<()> {
        let gone = RoaringBitmap::from_iter(ids.iter().copied());
        let (source, touched) = self.source_mut(name)?;
        source.buckets.retain(|k, b| {
            if b.intersection_len(&gone) > 0 {
                Arc::make_mut(b).remove_all(&gone);
                touched.insert(*k);
            }
            if b.is_empty() {
                touched.insert(*k);
            }
            !b.is_empty()
        });
        Ok(())
    }

    /// Drop every row of a source.
    pub fn clear_source(&mut self, name: &str) -> Result<()> {
        let (source, touched) = self.source_mut(name)?;
        touched.extend(source.buckets.keys());
        source.buckets.clear();
        Ok(())
    }

    /// Set a county's risk level (0 none .. 3 high). Verdicts change through the unions they
    /// take, not by rewriting anyone's rows.
    pub fn set_county_level(&mut self, county: u32, level: u8) -> Result<()> {
        if level > LEVEL_HIGH {
            return Err(MatcherError::Invalid(format!(
                "a county level is 0 to 3, not {level}"
            )));
        }
        if county == NO_COUNTY {
            return Err(MatcherError::Invalid("county code 0 is reserved".into()));
        }
        Arc::make_mut(&mut self.next.county_levels).insert(county, level);
        Ok(())
    }
}

fn check_counties(name: &str, s: &Source, rows: usize, counties: Option<&[u32]>) -> Result<()> {
    match (s.has_county, counties) {
        (true, None) => Err(MatcherError::Invalid(format!(
            "source {name:?} holds counties: give one county per row"
        ))),
        (false, Some(_)) => Err(MatcherError::Invalid(format!(
            "source {name:?} holds no counties: do not give any"
        ))),
        (true, Some(cs)) if cs.len() != rows => Err(MatcherError::Invalid(format!(
            "{rows} rows but {} counties: give one county per row",
            cs.len()
        ))),
        (true, Some(cs)) if cs.contains(&NO_COUNTY) => {
            Err(MatcherError::Invalid("county code 0 is reserved".into()))
        }
        _ => Ok(()),
    }
}

fn insert_bucket(
    source: &mut Source,
    touched: &mut BTreeSet<BucketKey>,
    key: BucketKey,
    ids: impl Iterator<Item = u32>,
) {
    touched.insert(key);
    let mut ids: Vec<u32> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    match source.buckets.get_mut(&key) {
        Some(b) => Arc::make_mut(b).insert_sorted(&ids),
        None => {
            source
                .buckets
                .insert(key, Arc::new(Bucket::from_sorted(ids)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_do_not_see_each_other() {
        let v0 = Index::new([1; 32]);
        let mut b = v0.builder();
        b.define_source("confirmed", KeyedBy::Person, false, false)
            .unwrap();
        let p = b.add_person_key(42);
        b.add_rows("confirmed", &[p], 100, None).unwrap();
        let v1 = b.finish();
        let mut b = v1.builder();
        b.add_rows("confirmed", &[p], 101, None).unwrap();
        let v2 = b.finish();
        assert_eq!(v1.source("confirmed").unwrap().buckets.len(), 1);
        assert_eq!(v2.source("confirmed").unwrap().buckets.len(), 2);
        assert_eq!((v0.version, v1.version, v2.version), (0, 1, 2));
        assert!(v0.sources.is_empty());
    }

    #[test]
    fn bad_rows_change_nothing() {
        let mut b = Index::new([1; 32]).builder();
        b.define_source("travel", KeyedBy::Person, true, false)
            .unwrap();
        let p = b.add_person_key(1);
        assert!(b.add_rows("travel", &[p], 5, None).is_err());
        assert!(b
            .add_rows("travel", &[p, 99], 5, Some(&[120101, 120102]))
            .is_err());
        assert!(b.add_rows("nope", &[p], 5, None).is_err());
        assert!(b
            .define_source("travel", KeyedBy::Phone, true, false)
            .is_err());
        assert!(b.peek().source("travel").unwrap().buckets.is_empty());
    }

    #[test]
    fn remove_rows_empties_buckets() {
        let mut b = Index::new([1; 32]).builder();
        b.define_source("home_quarantine", KeyedBy::Person, false, false)
            .unwrap();
        let ids: Vec<u32> = (0..10).map(|k| b.add_person_key(k)).collect();
        b.add_rows("home_quarantine", &ids, UNDATED, None).unwrap();
        b.remove_rows("home_quarantine", &ids[..5]).unwrap();
        assert_eq!(
            b.peek().source("home_quarantine").unwrap().members().len(),
            5
        );
        b.remove_rows("home_quarantine", &ids[5..]).unwrap();
        assert!(b
            .peek()
            .source("home_quarantine")
            .unwrap()
            .buckets
            .is_empty());
    }
}
