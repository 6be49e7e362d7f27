//! Snapshot files: one index version, so a replica restarts from disk instead of a rebuild.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "HCMIDX01" | body length u64 | body | BLAKE3(body) 32 bytes
//! body: version u64 | secret fingerprint [16]
//!       persons: n u32, n x key u128
//!       phones:  n u32, n x key u128, n x holder u32 (u32::MAX = none)
//!       cards:   n u32, n x key u128, n x holder u32
//!       counties: n u32, n x (county u32, level u8)
//!       sources: n u32, n x (name len u16, name, keyed_by u8 (0 person, 1 phone),
//!                flags u8 (bit 0 has_county, bit 1 hourly),
//!                buckets u32, buckets x (county u32, day u32, bytes u32, portable roaring bitmap))
//! ```
//!
//! Bitmaps are in the portable roaring format, the same bytes pyroaring and CRoaring read and
//! write. Reading checks the length and checksum before parsing, then every count against what
//! is left, so a truncated or corrupt file is refused and nothing half-read is ever used.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::bucket::Bucket;
use crate::errors::{MatcherError, Result};
use crate::ids::{Hasher, Key};
use crate::index::{Index, KeyedBy, Source};
use crate::registry::Registry;

const MAGIC: &[u8; 8] = b"HCMIDX01";

fn err(msg: impl Into<String>) -> MatcherError {
    MatcherError::Snapshot(msg.into())
}

/// BLAKE3 of a snapshot body, hashed on every core (a city's snapshot is about 1 GB).
fn checksum(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_rayon(body);
    h.finalize()
}

/// Serialise an index version.
pub fn to_bytes(index: &Index) -> Vec<u8> {
    let r = &index.registry;
    let mut body = Vec::with_capacity(16 * (r.persons.len() + r.phones.len()) * 5 / 4 + 4096);
    body.extend_from_slice(&index.version.to_le_bytes());
    body.extend_from_slice(&index.hasher.fingerprint());
    let put_keys = |body: &mut Vec<u8>, n: usize, keys: &mut dyn Iterator<Item = Key>| {
        body.extend_from_slice(&(n as u32).to_le_bytes());
        for k in keys {
            body.extend_from_slice(&k.to_le_bytes());
        }
    };
    put_keys(&mut body, r.persons.len(), &mut r.persons.keys());
    put_keys(&mut body, r.phones.len(), &mut r.phones.keys());
    for h in r.phone_holders() {
        body.extend_from_slice(&h.to_le_bytes());
    }
    put_keys(&mut body, r.cards.len(), &mut r.cards.keys());
    for h in r.card_holders() {
        body.extend_from_slice(&h.to_le_bytes());
    }
    let mut levels: Vec<(u32, u8)> = index.county_levels.iter().map(|(&c, &l)| (c, l)).collect();
    levels.sort_unstable();
    body.extend_from_slice(&(levels.len() as u32).to_le_bytes());
    for (c, l) in levels {
        body.extend_from_slice(&c.to_le_bytes());
        body.push(l);
    }
    body.extend_from_slice(&(index.sources.len() as u32).to_le_bytes());
    for (name, s) in &index.sources {
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.push(match s.keyed_by {
            KeyedBy::Person => 0,
            KeyedBy::Phone => 1,
        });
        body.push(u8::from(s.has_county) | (u8::from(s.hourly) << 1));
        body.extend_from_slice(&(s.buckets.len() as u32).to_le_bytes());
        for (&(county, day), b) in &s.buckets {
            body.extend_from_slice(&county.to_le_bytes());
            body.extend_from_slice(&day.to_le_bytes());
            let b = b.to_bitmap();
            body.extend_from_slice(&(b.serialized_size() as u32).to_le_bytes());
            b.serialize_into(&mut body)
                .expect("writing to a Vec cannot fail");
        }
    }
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(checksum(&body).as_bytes());
    out
}

/// Write a snapshot file atomically (a temporary file renamed over the target).
pub fn save(index: &Index, path: &std::path::Path) -> Result<()> {
    let bytes = to_bytes(index);
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| err(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Read a snapshot file.
pub fn load(path: &std::path::Path, secret: [u8; 32]) -> Result<Index> {
    let bytes =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(&bytes, secret)
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(err(format!("truncated while reading {what}")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items of `size` bytes, checked against what is left before allocating.
    fn count(&mut self, size: usize, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(size) > self.buf.len() {
            return Err(err(format!("{what}: count {n} exceeds the file")));
        }
        Ok(n)
    }
    fn keys(&mut self, n: usize, what: &str) -> Result<Vec<Key>> {
        let raw = self.take(n * 16, what)?;
        Ok(raw
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16")))
            .collect())
    }
    fn u32s(&mut self, n: usize, what: &str) -> Result<Vec<u32>> {
        let raw = self.take(n * 4, what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
}

/// Parse a snapshot held in memory. Every count is checked against what is left, and the
/// checksum and the secret's fingerprint before anything is built.
///
/// ```
/// use healthcode_matcher::index::{Index, KeyedBy};
/// use healthcode_matcher::snapshot::{from_bytes, to_bytes};
///
/// let mut b = Index::new([7; 32]).builder();
/// b.define_source("confirmed", KeyedBy::Person, false, false)?;
/// let p = b.add_person_key(1);
/// b.add_rows("confirmed", &[p], 19_000, None)?;
/// let bytes = to_bytes(&b.finish_as(3)?);
/// let back = from_bytes(&bytes, [7; 32])?;
/// assert_eq!((back.version, back.registry.persons.len()), (3, 1));
/// assert!(!back.is_root(), "a stored version is never the root");
/// assert!(from_bytes(&bytes, [8; 32]).is_err(), "another deployment's secret");
/// assert!(from_bytes(&bytes[..bytes.len() - 1], [7; 32]).is_err(), "truncated");
/// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
/// ```
pub fn from_bytes(bytes: &[u8], secret: [u8; 32]) -> Result<Index> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(err("not a health-code index snapshot (bad magic)"));
    }
    let body_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    if bytes.len() != 16usize.saturating_add(body_len).saturating_add(32) {
        return Err(err(format!(
            "length mismatch: header says {} body bytes, file holds {}",
            body_len,
            bytes.len().saturating_sub(48)
        )));
    }
    let body = &bytes[16..16 + body_len];
    if checksum(body).as_bytes() != &bytes[16 + body_len..] {
        return Err(err("checksum mismatch: the file is corrupt"));
    }
    let hasher = Hasher::new(secret);
    let mut c = Cursor { buf: body };
    let version = c.u64("version")?;
    if c.take(16, "fingerprint")? != hasher.fingerprint() {
        return Err(err("made with another deployment secret"));
    }
    let n = c.count(16, "persons")?;
    let persons = c.keys(n, "person keys")?;
    let n = c.count(20, "phones")?;
    let phones = c.keys(n, "phone keys")?;
    let holders = c.u32s(n, "phone holders")?;
    let n = c.count(20, "cards")?;
    let cards = c.keys(n, "card keys")?;
    let card_holders = c.u32s(n, "card holders")?;
    let n = c.count(5, "county levels")?;
    let mut county_levels = HashMap::with_capacity(n);
    for _ in 0..n {
        let county = c.u32("county")?;
        let level = c.u8("county level")?;
        if level > 3 {
            return Err(err(format!("county level {level} out of range")));
        }
        county_levels.insert(county, level);
    }
    let n_persons = persons.len() as u64;
    let n_phones = phones.len() as u64;
    let registry =
        Registry::from_parts(persons, phones, holders, cards, card_holders).map_err(err)?;
    let n = c.count(8, "sources")?;
    let mut sources = BTreeMap::new();
    for _ in 0..n {
        let len = c.u16("source name length")? as usize;
        let name = std::str::from_utf8(c.take(len, "source name")?)
            .map_err(|_| err("a source name is not UTF-8"))?
            .to_string();
        let keyed_by = match c.u8("keyed_by")? {
            0 => KeyedBy::Person,
            1 => KeyedBy::Phone,
            k => return Err(err(format!("source {name:?}: keyed_by {k} unknown"))),
        };
        let flags = c.u8("source flags")?;
        if flags > 3 {
            return Err(err(format!("source {name:?}: unknown flags {flags:#x}")));
        }
        let (has_county, hourly) = (flags & 1 != 0, flags & 2 != 0);
        let limit = if keyed_by == KeyedBy::Person {
            n_persons
        } else {
            n_phones
        };
        let nb = c.count(12, "buckets")?;
        let mut buckets = BTreeMap::new();
        for _ in 0..nb {
            let county = c.u32("bucket county")?;
            let day = c.u32("bucket day")?;
            let size = c.u32("bucket size")? as usize;
            let raw = c.take(size, "bucket bitmap")?;
            // checked decoding: validates container headers, ordering and sizes
            let b = RoaringBitmap::deserialize_from(raw)
                .map_err(|e| err(format!("source {name:?}: bad bitmap: {e}")))?;
            if b.max().is_some_and(|m| u64::from(m) >= limit) {
                return Err(err(format!("source {name:?}: an id is not registered")));
            }
            buckets.insert((county, day), Arc::new(Bucket::from_bitmap(b)));
        }
        sources.insert(
            name,
            Arc::new(Source {
                keyed_by,
                has_county,
                hourly,
                buckets,
            }),
        );
    }
    if !c.buf.is_empty() {
        return Err(err("trailing bytes after the last source"));
    }
    Ok(Index::restored(
        version,
        hasher,
        registry,
        sources,
        county_levels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::UNDATED;

    fn sample() -> Index {
        let mut b = Index::new([5; 32]).builder();
        b.define_source("confirmed", KeyedBy::Person, false, false)
            .unwrap();
        b.define_source("telecom_roaming", KeyedBy::Phone, true, false)
            .unwrap();
        let ps: Vec<u32> = (0..1000u128)
            .map(|k| b.add_person_key(((k * 0x9E37_79B9) << 70) | k))
            .collect();
        let f = b.add_phone_key(77, Some(ps[3])).unwrap();
        b.add_card_key(5, ps[4]).unwrap();
        b.add_rows("confirmed", &ps[..500], 19_000, None).unwrap();
        b.add_rows("confirmed", &ps[600..610], UNDATED, None)
            .unwrap();
        b.add_rows("telecom_roaming", &[f], 19_001, Some(&[120116]))
            .unwrap();
        b.set_county_level(120116, 3).unwrap();
        b.finish()
    }

    #[test]
    fn round_trip() {
        let a = sample();
        let bytes = to_bytes(&a);
        let b = from_bytes(&bytes, [5; 32]).unwrap();
        assert_eq!(b.version, a.version);
        assert_eq!(b.registry.persons.len(), 1000);
        assert_eq!(b.registry.phones_of(3), vec![0]);
        assert_eq!(b.registry.card_holder(5), Some(4));
        assert_eq!(b.source("confirmed").unwrap().members().len(), 510);
        assert_eq!(b.level(120116), 3);
        assert_eq!(to_bytes(&b), bytes, "serialisation is deterministic");
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_refused() {
        let bytes = to_bytes(&sample());
        for cut in [0, 7, 16, bytes.len() / 2, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..cut], [5; 32]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert!(from_bytes(&flipped, [5; 32])
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(from_bytes(&bytes, [6; 32])
            .unwrap_err()
            .to_string()
            .contains("secret"));
        assert!(from_bytes(b"PK\x03\x04 a zip file", [5; 32]).is_err());
    }

    /// The portable format against fixed bytes from the Roaring format spec: cookie 12346
    /// (no run containers), one container (key 0, cardinality 3), offsets, then the values.
    #[test]
    fn portable_format_golden_bytes() {
        let b = RoaringBitmap::from_iter([1u32, 2, 3]);
        let mut out = Vec::new();
        b.serialize_into(&mut out).unwrap();
        let want: Vec<u8> = vec![
            0x3A, 0x30, 0, 0, // cookie 12346
            1, 0, 0, 0, // one container
            0, 0, 2, 0, // key 0, cardinality - 1 = 2
            16, 0, 0, 0, // offset of the container
            1, 0, 2, 0, 3, 0, // the values as u16
        ];
        assert_eq!(out, want);
        assert_eq!(RoaringBitmap::deserialize_from(&want[..]).unwrap(), b);
    }
}
