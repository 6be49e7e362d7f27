//! The registry: keyed hashes -> dense u32 ids (persons, phones and cards apart), assigned at
//! first sight, plus phone -> holder and card -> holder links.
//!
//! Every structure is made of `Arc`-shared pieces (64 Ki-element chunks, 1024 hash shards), so
//! the next index version is a cheap clone that copies only the pieces it changes. That is what
//! lets a new version be built aside while readers keep using the old one.

use std::sync::Arc;

use hashbrown::HashTable;
use rayon::prelude::*;

use crate::ids::Key;
use crate::shared::SharedKeys;

/// "No id": a phone without holder, a person without phones.
pub const NONE: u32 = u32::MAX;

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;

/// An append-mostly vector of copyable values in shared chunks (a persistent vector).
#[derive(Clone, Default)]
pub struct ChunkedVec<T: Copy> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T: Copy + Send + Sync> ChunkedVec<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element at `i` (panics past the end, like a slice).
    #[inline]
    pub fn get(&self, i: u32) -> T {
        self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    /// Replace the element at `i`, copying its chunk if another version shares it.
    pub fn set(&mut self, i: u32, v: T) {
        Arc::make_mut(&mut self.chunks[(i >> CHUNK_BITS) as usize])[i as usize & (CHUNK - 1)] = v;
    }

    /// Append one element.
    pub fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk was just ensured");
        Arc::make_mut(last).push(v);
        self.len += 1;
    }

    /// Build from a plain vector.
    pub fn from_vec(v: Vec<T>) -> Self {
        let len = v.len();
        let chunks = v.chunks(CHUNK).map(|c| Arc::new(c.to_vec())).collect();
        ChunkedVec { chunks, len }
    }

    /// Every element in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().copied())
    }
}

const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

#[inline]
fn shard_of(key: Key) -> usize {
    (key >> (128 - SHARD_BITS)) as usize
}

#[inline]
fn table_hash(key: Key) -> u64 {
    // keys are already uniform (keyed BLAKE3); the low 64 bits are a perfect hash input
    key as u64
}

/// Keys -> dense ids. Keys are kept in full (128 bits) and compared in full, so two different
/// identifiers never share an id.
///
/// ```
/// use healthcode_matcher::registry::IdTable;
///
/// let mut t = IdTable::default();
/// assert_eq!(t.intern(7 << 100), (0, true));
/// assert_eq!(t.intern(7 << 100), (0, false));
/// assert_eq!(t.get(7), None, "the same low bits, another key");
/// let again = IdTable::from_keys(t.keys().collect()).unwrap();
/// assert_eq!(again.get(7 << 100), Some(0));
/// assert!(IdTable::from_keys(vec![1, 2, 1]).is_err(), "a key listed twice is refused");
/// ```
#[derive(Clone)]
pub struct IdTable {
    /// Ids `0..base_len` may live in a file other processes map too ([`IdTable::with_shared`]);
    /// `keys` and `shards` then hold only the ids from `base_len` on.
    base: Option<Arc<SharedKeys>>,
    base_len: u32,
    keys: ChunkedVec<Key>,
    shards: Vec<Arc<HashTable<u32>>>,
}

impl Default for IdTable {
    fn default() -> Self {
        // every shard starts as the same empty table; the first insert gives a shard its own copy
        let empty = Arc::new(HashTable::new());
        IdTable {
            base: None,
            base_len: 0,
            keys: ChunkedVec::default(),
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
        }
    }
}

impl IdTable {
    /// Number of ids assigned.
    pub fn len(&self) -> usize {
        self.base_len as usize + self.keys.len()
    }

    /// True when no id was assigned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the ids are read from a shared file (0 when none is).
    pub fn shared_len(&self) -> usize {
        self.base_len as usize
    }

    fn base_keys(&self) -> &[Key] {
        match &self.base {
            Some(b) => &b.by_id()[..self.base_len as usize],
            None => &[],
        }
    }

    /// The key behind an id.
    #[inline]
    pub fn key(&self, id: u32) -> Key {
        if id < self.base_len {
            self.base_keys()[id as usize]
        } else {
            self.keys.get(id - self.base_len)
        }
    }

    /// Every key, by id.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.base_keys().iter().copied().chain(self.keys.iter())
    }

    /// The id of a key, if assigned.
    #[inline]
    pub fn get(&self, key: Key) -> Option<u32> {
        let (keys, from) = (&self.keys, self.base_len);
        if let Some(&id) =
            self.shards[shard_of(key)].find(table_hash(key), |&id| keys.get(id - from) == key)
        {
            return Some(id);
        }
        // A shared file may hold more ids than this version has: those are not ours yet.
        let base = self.base.as_ref()?;
        base.find(key).filter(|&id| id < from)
    }

    /// The id of a key, assigning the next one at first sight. Returns (id, newly assigned).
    pub fn intern(&mut self, key: Key) -> (u32, bool) {
        if let Some(id) = self.get(key) {
            return (id, false);
        }
        let id = u32::try_from(self.len())
            .ok()
            .filter(|&i| i != NONE)
            .expect("registry full");
        self.keys.push(key);
        let (keys, from) = (&self.keys, self.base_len);
        Arc::make_mut(&mut self.shards[shard_of(key)])
            .insert_unique(table_hash(key), id, |&i| table_hash(keys.get(i - from)));
        (id, true)
    }

    /// The same table with the ids a shared file holds read from it, or None if the file does
    /// not list this table's first keys in its order (another deployment's, or from before a
    /// rebuild). The file may hold fewer ids than the table (the rest stay in this process) or
    /// more (those are not this version's yet and are not looked at).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use healthcode_matcher::registry::IdTable;
    /// use healthcode_matcher::shared::SharedKeys;
    ///
    /// let path = std::env::temp_dir().join(format!("doc-ids-{}.keys", std::process::id()));
    /// SharedKeys::write(&path, &[1 << 120, 2 << 120, 3 << 120]).unwrap();
    /// let shared = Arc::new(SharedKeys::open(&path).unwrap());
    /// let mut t = IdTable::default();
    /// t.intern(1 << 120);
    /// t.intern(2 << 120);
    /// let mut mapped = t.with_shared(shared.clone()).unwrap();
    /// assert_eq!((mapped.shared_len(), mapped.get(2 << 120)), (2, Some(1)));
    /// assert_eq!(mapped.get(3 << 120), None, "in the file, but not in this version yet");
    /// assert_eq!(mapped.intern(9), (2, true), "the next id stays in the process");
    /// t.intern(7);
    /// assert!(t.with_shared(shared).is_none(), "id 2 is another key in the file");
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn with_shared(&self, base: Arc<SharedKeys>) -> Option<IdTable> {
        let n = base.len().min(self.len());
        let same = base.by_id()[..n]
            .par_chunks(1 << 16)
            .enumerate()
            .all(|(c, chunk)| {
                let first = (c << 16) as u32;
                chunk.iter().zip(first..).all(|(&k, id)| self.key(id) == k)
            });
        if !same {
            return None;
        }
        let mut table = IdTable {
            base: Some(base),
            base_len: n as u32,
            ..IdTable::default()
        };
        for id in n as u32..self.len() as u32 {
            table.intern(self.key(id));
        }
        Some(table)
    }

    /// The id of each key, [`NONE`] for a key never assigned (in parallel for a large batch).
    ///
    /// ```
    /// use healthcode_matcher::registry::{IdTable, NONE};
    ///
    /// let mut t = IdTable::default();
    /// t.intern(5);
    /// t.intern(9);
    /// assert_eq!(t.get_many(&[9, 7, 5]), [1, NONE, 0]);
    /// ```
    pub fn get_many(&self, keys: &[Key]) -> Vec<u32> {
        let one = |&k: &Key| self.get(k).unwrap_or(NONE);
        if keys.len() >= 1 << 14 {
            keys.par_iter().map(one).collect()
        } else {
            keys.iter().map(one).collect()
        }
    }

    /// Rebuild from keys listed by id (a snapshot). Fails on a duplicate key.
    pub fn from_keys(keys: Vec<Key>) -> Result<Self, usize> {
        // Group (table hash, id) by shard in one sequential pass over the keys, so building a
        // shard's table reads its own small list, not the whole key array at random (a cache
        // miss per key at 43 M keys); full keys are read only to confirm a tag match.
        let mut by_shard: Vec<Vec<(u64, u32)>> = vec![Vec::new(); SHARDS];
        for (id, &k) in keys.iter().enumerate() {
            by_shard[shard_of(k)].push((table_hash(k), id as u32));
        }
        let shards: Vec<Result<Arc<HashTable<u32>>, usize>> = by_shard
            .into_par_iter()
            .map(|entries| {
                let mut t = HashTable::with_capacity(entries.len());
                for (hash, id) in entries {
                    match t.entry(
                        hash,
                        |&i: &u32| keys[i as usize] == keys[id as usize],
                        |&i: &u32| table_hash(keys[i as usize]),
                    ) {
                        hashbrown::hash_table::Entry::Occupied(_) => return Err(id as usize),
                        hashbrown::hash_table::Entry::Vacant(v) => {
                            v.insert(id);
                        }
                    }
                }
                Ok(Arc::new(t))
            })
            .collect();
        let shards = shards.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(IdTable {
            base: None,
            base_len: 0,
            keys: ChunkedVec::from_vec(keys),
            shards,
        })
    }
}

/// Persons, phones and cards, with the links between them.
///
/// ```
/// use healthcode_matcher::registry::Registry;
///
/// let mut r = Registry::default();
/// let (ann, bo) = (r.intern_person(0xA), r.intern_person(0xB));
/// assert_eq!((ann, bo), (0, 1), "dense ids at first sight");
/// assert_eq!(r.intern_person(0xA), ann, "and the same id ever after");
/// let sim = r.intern_phone(0xA); // phones are their own id space
/// r.link_phone(sim, ann);
/// let before = r.clone(); // a cheap copy: the next version changes aside
/// r.link_phone(sim, bo);
/// assert_eq!((r.phones_of(ann), r.phones_of(bo)), (vec![], vec![sim]));
/// assert_eq!(before.phone_holder(sim), Some(ann));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    /// Resident ID number keys.
    pub persons: IdTable,
    /// Phone number keys.
    pub phones: IdTable,
    /// Transit card keys.
    pub cards: IdTable,
    /// Head of each person's list of phones (`NONE` if none).
    first_phone: ChunkedVec<u32>,
    /// Holder of each phone (`NONE` if unlinked).
    phone_holder: ChunkedVec<u32>,
    /// Next phone of the same holder (an intrusive list: 4 bytes a phone, no Vec per person).
    next_phone: ChunkedVec<u32>,
    /// Holder of each card.
    card_holder: ChunkedVec<u32>,
}

impl Registry {
    /// Find or assign a person id.
    pub fn intern_person(&mut self, key: Key) -> u32 {
        let (id, new) = self.persons.intern(key);
        if new {
            self.first_phone.push(NONE);
        }
        id
    }

    /// Find or assign a phone id.
    pub fn intern_phone(&mut self, key: Key) -> u32 {
        let (id, new) = self.phones.intern(key);
        if new {
            self.phone_holder.push(NONE);
            self.next_phone.push(NONE);
        }
        id
    }

    /// Find or assign a card id, linked to `holder`.
    pub fn link_card(&mut self, key: Key, holder: u32) {
        let (id, new) = self.cards.intern(key);
        if new {
            self.card_holder.push(holder);
        } else {
            self.card_holder.set(id, holder);
        }
    }

    /// The holder of a card.
    pub fn card_holder(&self, key: Key) -> Option<u32> {
        self.cards.get(key).map(|id| self.card_holder.get(id))
    }

    /// The holder of a phone, if linked.
    #[inline]
    pub fn phone_holder(&self, phone: u32) -> Option<u32> {
        Some(self.phone_holder.get(phone)).filter(|&h| h != NONE)
    }

    /// Link a phone to a person, moving it from any earlier holder.
    pub fn link_phone(&mut self, phone: u32, holder: u32) {
        if self.phone_holder.get(phone) == holder {
            return;
        }
        self.unlink_phone(phone);
        self.next_phone.set(phone, self.first_phone.get(holder));
        self.first_phone.set(holder, phone);
        self.phone_holder.set(phone, holder);
    }

    /// Remove a phone's link; true if it had one.
    pub fn unlink_phone(&mut self, phone: u32) -> bool {
        let holder = self.phone_holder.get(phone);
        if holder == NONE {
            return false;
        }
        let next = self.next_phone.get(phone);
        if self.first_phone.get(holder) == phone {
            self.first_phone.set(holder, next);
        } else {
            let mut at = self.first_phone.get(holder);
            while at != NONE {
                let after = self.next_phone.get(at);
                if after == phone {
                    self.next_phone.set(at, next);
                    break;
                }
                at = after;
            }
        }
        self.next_phone.set(phone, NONE);
        self.phone_holder.set(phone, NONE);
        true
    }

    /// The phones linked to a person, in ascending id order.
    pub fn phones_of(&self, person: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.first_phone.get(person);
        while at != NONE {
            out.push(at);
            at = self.next_phone.get(at);
        }
        out.sort_unstable();
        out
    }

    /// Every phone's holder, by phone id (for snapshots).
    pub fn phone_holders(&self) -> impl Iterator<Item = u32> + '_ {
        self.phone_holder.iter()
    }

    /// Every card's holder, by card id (for snapshots).
    pub fn card_holders(&self) -> impl Iterator<Item = u32> + '_ {
        self.card_holder.iter()
    }

    /// Rebuild from snapshot parts. Errors name what is inconsistent.
    pub fn from_parts(
        persons: Vec<Key>,
        phones: Vec<Key>,
        holders: Vec<u32>,
        cards: Vec<Key>,
        card_holders: Vec<u32>,
    ) -> Result<Self, String> {
        let n_persons = persons.len();
        let n_phones = phones.len();
        // the two tables are independent: build them side by side (each is parallel inside,
        // but its grouping pass is not)
        let (persons, phones) = rayon::join(
            || IdTable::from_keys(persons),
            || IdTable::from_keys(phones),
        );
        let persons = persons.map_err(|i| format!("person {i} is listed twice"))?;
        let phones = phones.map_err(|i| format!("phone {i} is listed twice"))?;
        let cards = IdTable::from_keys(cards).map_err(|i| format!("card {i} is listed twice"))?;
        if holders.len() != n_phones || card_holders.len() != cards.len() {
            return Err("holder lists do not match the key lists".into());
        }
        let mut first = vec![NONE; n_persons];
        let mut next = vec![NONE; n_phones];
        for (phone, &h) in holders.iter().enumerate().rev() {
            if h == NONE {
                continue;
            }
            let slot = first
                .get_mut(h as usize)
                .ok_or("a phone's holder is not a person")?;
            next[phone] = *slot;
            *slot = phone as u32;
        }
        if card_holders.iter().any(|&h| h as usize >= n_persons) {
            return Err("a card's holder is not a person".into());
        }
        Ok(Registry {
            persons,
            phones,
            cards,
            first_phone: ChunkedVec::from_vec(first),
            phone_holder: ChunkedVec::from_vec(holders),
            next_phone: ChunkedVec::from_vec(next),
            card_holder: ChunkedVec::from_vec(card_holders),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_versions_are_independent() {
        let mut r = Registry::default();
        let a = r.intern_person((1 << 120) | 5);
        let b = r.intern_person(2);
        assert_eq!((a, b), (0, 1));
        assert_eq!(r.intern_person(2), 1);
        let old = r.clone();
        let c = r.intern_person(3);
        assert_eq!(c, 2);
        assert_eq!(
            old.persons.get(3),
            None,
            "the older version does not see later ids"
        );
        assert_eq!(r.persons.get(3), Some(2));
    }

    #[test]
    fn phones_move_between_holders() {
        let mut r = Registry::default();
        let (p, q) = (r.intern_person(10), r.intern_person(11));
        let f: Vec<u32> = (0..4).map(|k| r.intern_phone(100 + k)).collect();
        for &x in &f {
            r.link_phone(x, p);
        }
        assert_eq!(r.phones_of(p), f);
        r.link_phone(f[2], q);
        assert_eq!(r.phones_of(p), vec![f[0], f[1], f[3]]);
        assert_eq!(r.phones_of(q), vec![f[2]]);
        assert!(r.unlink_phone(f[0]));
        assert!(!r.unlink_phone(f[0]));
        assert_eq!(r.phone_holder(f[0]), None);
        assert_eq!(r.phones_of(p), vec![f[1], f[3]]);
    }

    #[test]
    fn rebuild_from_keys_refuses_duplicates() {
        assert!(IdTable::from_keys(vec![1, 2, 1]).is_err());
        let t =
            IdTable::from_keys((0..100_000u128).map(|i| ((i * 7919) << 64) | i).collect()).unwrap();
        assert_eq!(t.get(((5 * 7919) << 64) | 5), Some(5));
    }
}
