//! Keys shared between processes: a read-only, memory-mapped file of one id table's keys.
//!
//! The keys are most of an index's memory (43 M keys at 18 M people: about 1 GiB of the
//! 1.3 GiB). Every display worker of a machine holds the same ones, because ids are given in
//! the order keys are first seen and every replica follows the same stream. So the keys of ids
//! `0..n` are written once to a file that every worker maps: the kernel keeps one copy in its
//! page cache, however many workers read it. What a worker learns after the file was written
//! stays in its own memory ([`crate::registry::IdTable`] keeps it beside the file).
//!
//! The layout, little-endian, every section aligned for its type:
//!
//! | offset | what |
//! |---|---|
//! | 0 | magic `HCKEYS02` |
//! | 8 | `n`, the number of keys (u64) |
//! | 16 | `bits`: keys are grouped in `2^bits` buckets by their top bits (u64) |
//! | 24 | reserved, 0 |
//! | 32 | BLAKE3 of every byte from offset 64 on |
//! | 64 | the keys by id: `[u128; n]` |
//! | 64 + 16 n | where each bucket starts in the next section: `[u32; 2^bits + 1]` |
//! | then | the ids, bucket by bucket: `[u32; n]` |
//!
//! Keys are keyed BLAKE3 hashes, uniform over u128, so with about four keys a bucket a look-up
//! reads one directory entry and compares a few keys: as few memory reads as the in-process
//! hash table, in about as many bytes a key (20 and a bit, against the table's 21 or so).
//! Opening checks the checksum over the whole file, so a torn or altered file is refused,
//! never half-believed: a key missing from a damaged file would read as a person never
//! registered.

use std::io::{Seek, Write};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::errors::{MatcherError, Result};
use crate::ids::Key;
use crate::index::Index;
use crate::registry::IdTable;

const MAGIC: &[u8; 8] = b"HCKEYS02";
const HEADER: usize = 64;
/// Keys a bucket holds on average, about.
const PER_BUCKET: usize = 4;
const MAX_BITS: u32 = 30;

fn refused(path: &Path, why: impl std::fmt::Display) -> MatcherError {
    MatcherError::Snapshot(format!("shared keys {}: {why}", path.display()))
}

/// Bucket bits for `n` keys: about PER_BUCKET keys a bucket.
fn bits_for(n: usize) -> u32 {
    (n / PER_BUCKET)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .min(MAX_BITS)
}

#[inline]
fn bucket(key: Key, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (key >> (128 - bits)) as usize
    }
}

fn file_len(n: usize, bits: u32) -> usize {
    HEADER + 16 * n + 4 * ((1usize << bits) + 1) + 4 * n
}

/// One id table's keys, mapped read-only from a file that other processes map too.
pub struct SharedKeys {
    map: Mmap,
    n: usize,
    bits: u32,
}

impl std::fmt::Debug for SharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeys").field("n", &self.n).finish()
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("shared key files are mapped as little-endian integers");

impl SharedKeys {
    /// Write `keys` (listed by id) to `path` atomically: a file beside it renamed over it, so a
    /// reader maps either the old file or the whole new one. Refuses a key listed twice.
    pub fn write(path: &Path, keys: &[Key]) -> Result<()> {
        let n = keys.len();
        if n > u32::MAX as usize {
            return Err(refused(path, format!("{n} keys: more than ids can number")));
        }
        let bits = bits_for(n);
        // The ids grouped by bucket (a counting sort), each bucket's in ascending key order so
        // the file is the same whoever writes it.
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for &k in keys {
            starts[bucket(k, bits) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let mut ids = vec![0u32; n];
        let mut next = starts.clone();
        for (id, &k) in keys.iter().enumerate() {
            let b = bucket(k, bits);
            ids[next[b] as usize] = id as u32;
            next[b] += 1;
        }
        drop(next);
        let ranges: Vec<(usize, usize)> = starts
            .windows(2)
            .map(|w| (w[0] as usize, w[1] as usize))
            .collect();
        let mut rest: &mut [u32] = &mut ids;
        let mut groups = Vec::with_capacity(ranges.len());
        for &(a, b) in &ranges {
            let (group, tail) = rest.split_at_mut(b - a);
            groups.push(group);
            rest = tail;
        }
        let twice = groups
            .par_iter_mut()
            .map(|group| {
                group.sort_unstable_by_key(|&id| keys[id as usize]);
                group
                    .windows(2)
                    .find(|w| keys[w[0] as usize] == keys[w[1] as usize])
                    .map(|w| (w[0], w[1]))
            })
            .find_any(|twice| twice.is_some())
            .flatten();
        if let Some((a, b)) = twice {
            return Err(refused(path, format!("ids {a} and {b} share a key")));
        }

        let io = |e: std::io::Error| refused(path, format!("cannot write: {e}"));
        // One temporary name per process: two workers writing at once do not share one.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        // The sections are streamed through the checksum; the header, which holds it, last.
        f.write_all(&[0u8; HEADER]).map_err(io)?;
        let mut checksum = blake3::Hasher::new();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut f);
        let mut put = |bytes: &[u8]| -> std::io::Result<()> {
            checksum.update(bytes);
            out.write_all(bytes)
        };
        for &k in keys {
            put(&k.to_le_bytes()).map_err(io)?;
        }
        for &start in &starts {
            put(&start.to_le_bytes()).map_err(io)?;
        }
        for &id in &ids {
            put(&id.to_le_bytes()).map_err(io)?;
        }
        out.flush().map_err(io)?;
        drop(out);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        header[16..24].copy_from_slice(&u64::from(bits).to_le_bytes());
        header[32..64].copy_from_slice(checksum.finalize().as_bytes());
        f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&header).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Map `path` and check it whole (magic, size, checksum).
    pub fn open(path: &Path) -> Result<SharedKeys> {
        let f = std::fs::File::open(path).map_err(|e| refused(path, e))?;
        // SAFETY: the file is only ever replaced by a rename, never written in place, so the
        // mapped bytes do not change under us (the project's writers; see `write`).
        let map = unsafe { Mmap::map(&f) }.map_err(|e| refused(path, e))?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(refused(path, "not a shared key file"));
        }
        let word = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
        let (n, bits) = (word(8) as usize, word(16));
        if n > u32::MAX as usize || bits > u64::from(MAX_BITS) {
            return Err(refused(
                path,
                format!("a header of {n} keys in 2^{bits} buckets"),
            ));
        }
        let bits = bits as u32;
        if map.len() != file_len(n, bits) {
            return Err(refused(
                path,
                format!("{} bytes for {n} keys: truncated", map.len()),
            ));
        }
        let mut checksum = blake3::Hasher::new();
        checksum.update_rayon(&map[HEADER..]);
        if checksum.finalize().as_bytes() != &map[32..64] {
            return Err(refused(path, "checksum mismatch: the file is damaged"));
        }
        let shared = SharedKeys { map, n, bits };
        // The checksum says the writer wrote it; this says the directory stays in bounds.
        let starts = shared.starts();
        if starts[0] != 0
            || starts[starts.len() - 1] as usize != n
            || starts.windows(2).any(|w| w[0] > w[1])
            || shared.ids().iter().any(|&id| id as usize >= n)
        {
            return Err(refused(path, "an inconsistent bucket directory"));
        }
        Ok(shared)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when the file holds no key.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn section<T>(&self, offset: usize, len: usize) -> &[T] {
        let bytes = &self.map[offset..offset + len * std::mem::size_of::<T>()];
        // SAFETY: `open` checked the file's length; the map is page-aligned and every section's
        // offset a multiple of its type's size (64, then 64 + 16 n, then a multiple of 4), and
        // any bit pattern is a valid u128 or u32.
        let (head, items, tail) = unsafe { bytes.align_to::<T>() };
        assert!(
            head.is_empty() && tail.is_empty(),
            "a shared key section is misaligned"
        );
        items
    }

    /// The keys by id.
    pub fn by_id(&self) -> &[Key] {
        self.section(HEADER, self.n)
    }

    fn starts(&self) -> &[u32] {
        self.section(HEADER + 16 * self.n, (1 << self.bits) + 1)
    }

    fn ids(&self) -> &[u32] {
        self.section(HEADER + 16 * self.n + 4 * ((1 << self.bits) + 1), self.n)
    }

    /// The key of `id` (panics past the end, like a slice).
    #[inline]
    pub fn key(&self, id: u32) -> Key {
        self.by_id()[id as usize]
    }

    /// The id of `key`, if the file holds it.
    pub fn find(&self, key: Key) -> Option<u32> {
        let b = bucket(key, self.bits);
        let starts = self.starts();
        let (from, to) = (starts[b] as usize, starts[b + 1] as usize);
        let by_id = self.by_id();
        self.ids()[from..to]
            .iter()
            .copied()
            .find(|&id| by_id[id as usize] == key)
    }
}

/// What [`share`] did with one id table's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// Read from the file there, which listed this table's first keys.
    Mapped,
    /// The file was missing, damaged or another registry's: written anew, then read from it.
    Written,
    /// Kept in this process's memory; the reason (the file could not be written).
    Kept(String),
}

/// `index` with its person and phone keys read from the files `persons.keys` and
/// `phones.keys` in `dir` (written there first when missing, damaged, another registry's, or
/// holding under nine tenths of this table's keys), and
/// what was done for each table. Nothing else of the index changes, not even its identity:
/// the same keys are now read from another place.
pub fn share(index: &Index, dir: &Path) -> (Index, [(&'static str, Shared); 2]) {
    let mut out = index.clone();
    let persons = share_table(&mut out.registry.persons, &dir.join("persons.keys"));
    let phones = share_table(&mut out.registry.phones, &dir.join("phones.keys"));
    (out, [("persons", persons), ("phones", phones)])
}

fn share_table(table: &mut IdTable, path: &Path) -> Shared {
    if let Ok(file) = SharedKeys::open(path) {
        // A file written when the registry was much smaller (before an import) would leave
        // most keys in this process: write a whole one instead (checked first, so the keys
        // it lacks are not gathered in the process for nothing).
        if file.len().min(table.len()) * 10 >= table.len() * 9 {
            if let Some(mapped) = table.with_shared(Arc::new(file)) {
                *table = mapped;
                return Shared::Mapped;
            }
        }
    }
    let keys: Vec<Key> = table.keys().collect();
    let written = SharedKeys::write(path, &keys).and_then(|()| SharedKeys::open(path));
    drop(keys);
    match written {
        Ok(file) => match table.with_shared(Arc::new(file)) {
            Some(mapped) => {
                *table = mapped;
                Shared::Written
            }
            // Another process wrote another registry's keys between our write and our open.
            None => Shared::Kept("the file was replaced by another registry's keys".into()),
        },
        Err(e) => Shared::Kept(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot;

    fn keys(n: usize, seed: u64) -> Vec<Key> {
        (0..n as u64)
            .map(|i| {
                let h = blake3::hash(&(seed ^ i.wrapping_mul(0x9E37_79B9)).to_le_bytes());
                u128::from_le_bytes(h.as_bytes()[..16].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn every_key_is_found_at_its_id_and_no_other_is() {
        let dir = std::env::temp_dir().join(format!("hc-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("persons.keys");
        let written = keys(50_000, 1);
        SharedKeys::write(&path, &written).unwrap();
        let shared = SharedKeys::open(&path).unwrap();
        assert_eq!(shared.len(), written.len());
        for (id, &k) in written.iter().enumerate() {
            assert_eq!(shared.find(k), Some(id as u32));
            assert_eq!(shared.key(id as u32), k);
        }
        for k in keys(5_000, 2) {
            assert_eq!(shared.find(k), None);
        }
        // Extreme keys fall at the ends of the guess range without overrunning it.
        assert_eq!(shared.find(0), None);
        assert_eq!(shared.find(u128::MAX), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_or_truncated_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("hc-shared-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phones.keys");
        SharedKeys::write(&path, &keys(1_000, 3)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = SharedKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let e = SharedKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(
            &path,
            b"something else entirely, long enough for a header.......",
        )
        .unwrap();
        let e = SharedKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("not a shared key file"), "{e}");
        assert!(
            SharedKeys::write(&path, &[5, 9, 5]).is_err(),
            "a key twice is refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shared_index_is_the_same_index_and_grows_in_the_process() {
        let dir = std::env::temp_dir().join(format!("hc-share-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (people, phones) = (keys(20_000, 4), keys(30_000, 5));
        let mut b = Index::new([7; 32]).builder();
        for &k in &people {
            b.add_person_key(k);
        }
        for (i, &k) in phones.iter().enumerate() {
            b.add_phone_key(k, Some((i % people.len()) as u32)).unwrap();
        }
        let index = b.finish();

        // The first worker writes the files; the second maps them.
        let (first, did) = share(&index, &dir);
        assert_eq!(
            did,
            [("persons", Shared::Written), ("phones", Shared::Written)]
        );
        let (second, did) = share(&index, &dir);
        assert_eq!(
            did,
            [("persons", Shared::Mapped), ("phones", Shared::Mapped)]
        );
        for shared in [&first, &second] {
            assert_eq!(shared.registry.persons.shared_len(), people.len());
            // Byte for byte the same snapshot: every key, id and link is where it was.
            assert_eq!(snapshot::to_bytes(shared), snapshot::to_bytes(&index));
        }

        // The next version registers new people in the process, after the shared ids.
        let newcomers = keys(100, 6);
        let mut next = second.builder();
        let mut plain = index.builder();
        for &k in newcomers.iter().chain(&people[..10]) {
            assert_eq!(next.add_person_key(k), plain.add_person_key(k));
        }
        let (next, plain) = (next.finish(), plain.finish());
        assert_eq!(snapshot::to_bytes(&next), snapshot::to_bytes(&plain));
        assert_eq!(next.registry.persons.get(newcomers[99]), Some(20_099));

        // A worker that is behind (fewer people) maps the longer file's first ids only.
        let mut behind = Index::new([7; 32]).builder();
        for &k in &people[..500] {
            behind.add_person_key(k);
        }
        let (behind, did) = share(&behind.finish(), &dir);
        assert_eq!(did[0], ("persons", Shared::Mapped));
        assert_eq!(behind.registry.persons.shared_len(), 500);
        assert_eq!(behind.registry.persons.get(people[499]), Some(499));
        assert_eq!(behind.registry.persons.get(people[500]), None);

        // A file far smaller than the table (written before an import) is written anew.
        let (_, did) = share(&second, &dir);
        assert_eq!(did[0], ("persons", Shared::Mapped), "the whole table: kept");
        let mut grown = second.builder();
        for k in keys(5_000, 8) {
            grown.add_person_key(k);
        }
        let grown = grown.finish();
        let (regrown, did) = share(&grown, &dir);
        assert_eq!(
            did[0],
            ("persons", Shared::Written),
            "20,000 of 25,000 in the file"
        );
        assert_eq!(regrown.registry.persons.shared_len(), 25_000);
        assert_eq!(snapshot::to_bytes(&regrown), snapshot::to_bytes(&grown));

        // Another deployment's keys are not believed: the file is written anew.
        let mut other = Index::new([7; 32]).builder();
        other.add_person_key(keys(1, 7)[0]);
        let (_, did) = share(&other.finish(), &dir);
        assert_eq!(did[0], ("persons", Shared::Written));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_table_writes_and_finds_nothing() {
        let path = std::env::temp_dir().join(format!("hc-shared-empty-{}", std::process::id()));
        SharedKeys::write(&path, &[]).unwrap();
        let shared = SharedKeys::open(&path).unwrap();
        assert!(shared.is_empty());
        assert_eq!(shared.find(42), None);
        std::fs::remove_file(&path).unwrap();
    }
}
