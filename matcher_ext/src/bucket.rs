//! One bucket of a source: the ids of one (county, day).
//!
//! Roaring pays a container (tens of bytes) for every 65,536-id block an id falls in. A bucket of
//! a few hundred ids spread over 25 M phones (one county, one day of roaming) would pay one
//! container per id, about 70 bytes a row, so small buckets are plain sorted vectors (4 bytes a
//! row) and become bitmaps once they grow. On disk and across the API every bucket is the same
//! portable roaring bitmap.

use roaring::RoaringBitmap;

/// Buckets up to this many ids are sorted vectors.
pub const SPARSE_MAX: usize = 4096;

/// The ids of one (county, day).
///
/// ```
/// use healthcode_matcher::bucket::{union, Bucket, SPARSE_MAX};
///
/// let mut small = Bucket::from_sorted(vec![3, 9]);
/// small.insert_sorted(&[1, 9]);
/// assert_eq!(small, Bucket::Sparse(vec![1, 3, 9]));
/// let big = Bucket::from_sorted((0..2 * SPARSE_MAX as u32).collect());
/// assert!(matches!(big, Bucket::Dense(_)));
/// assert_eq!(union([&small, &big].into_iter()).len(), 2 * SPARSE_MAX as u64);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Bucket {
    /// Sorted, distinct ids; at most `SPARSE_MAX`.
    Sparse(Vec<u32>),
    /// More than `SPARSE_MAX` ids.
    Dense(RoaringBitmap),
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::Sparse(Vec::new())
    }
}

impl Bucket {
    /// A bucket of sorted, distinct ids in whichever form fits.
    pub fn from_sorted(ids: Vec<u32>) -> Self {
        if ids.len() <= SPARSE_MAX {
            Bucket::Sparse(ids)
        } else {
            Bucket::Dense(RoaringBitmap::from_sorted_iter(ids).expect("sorted and distinct"))
        }
    }

    /// A bucket holding a bitmap's ids.
    pub fn from_bitmap(b: RoaringBitmap) -> Self {
        if b.len() as usize <= SPARSE_MAX {
            Bucket::Sparse(b.iter().collect())
        } else {
            Bucket::Dense(b)
        }
    }

    /// Whether `id` is in the bucket.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        match self {
            Bucket::Sparse(v) => v.binary_search(&id).is_ok(),
            Bucket::Dense(b) => b.contains(id),
        }
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        match self {
            Bucket::Sparse(v) => v.len() as u64,
            Bucket::Dense(b) => b.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids as a bitmap.
    pub fn to_bitmap(&self) -> RoaringBitmap {
        match self {
            Bucket::Sparse(v) => {
                RoaringBitmap::from_sorted_iter(v.iter().copied()).expect("sorted and distinct")
            }
            Bucket::Dense(b) => b.clone(),
        }
    }

    /// How many of the bucket's ids are in `set`.
    pub fn intersection_len(&self, set: &RoaringBitmap) -> u64 {
        match self {
            Bucket::Sparse(v) => v.iter().filter(|&&id| set.contains(id)).count() as u64,
            Bucket::Dense(b) => b.intersection_len(set),
        }
    }

    /// The bucket's ids that are in `set`, probing from the smaller side.
    ///
    /// ```
    /// use healthcode_matcher::bucket::Bucket;
    /// use roaring::RoaringBitmap;
    ///
    /// let b = Bucket::from_sorted(vec![2, 4, 6, 8]);
    /// let hit = b.intersection(&RoaringBitmap::from_iter([1, 4, 8, 9]));
    /// assert_eq!(hit.iter().collect::<Vec<_>>(), [4, 8]);
    /// ```
    pub fn intersection(&self, set: &RoaringBitmap) -> RoaringBitmap {
        match self {
            Bucket::Sparse(v) if v.len() as u64 <= set.len() => {
                let ids = v.iter().copied().filter(|&id| set.contains(id));
                RoaringBitmap::from_sorted_iter(ids).expect("sorted and distinct")
            }
            Bucket::Sparse(v) => {
                let ids = set.iter().filter(|id| v.binary_search(id).is_ok());
                RoaringBitmap::from_sorted_iter(ids).expect("ascending")
            }
            Bucket::Dense(b) => b & set,
        }
    }

    /// Add sorted, distinct ids.
    pub fn insert_sorted(&mut self, ids: &[u32]) {
        match self {
            Bucket::Dense(b) => {
                b.extend(ids.iter().copied());
            }
            Bucket::Sparse(v) => {
                let mut merged = Vec::with_capacity(v.len() + ids.len());
                let (mut i, mut j) = (0, 0);
                while i < v.len() && j < ids.len() {
                    match v[i].cmp(&ids[j]) {
                        std::cmp::Ordering::Less => {
                            merged.push(v[i]);
                            i += 1;
                        }
                        std::cmp::Ordering::Greater => {
                            merged.push(ids[j]);
                            j += 1;
                        }
                        std::cmp::Ordering::Equal => {
                            merged.push(v[i]);
                            i += 1;
                            j += 1;
                        }
                    }
                }
                merged.extend_from_slice(&v[i..]);
                merged.extend_from_slice(&ids[j..]);
                *self = Bucket::from_sorted(merged);
            }
        }
    }

    /// Remove every id of `gone`.
    pub fn remove_all(&mut self, gone: &RoaringBitmap) {
        match self {
            Bucket::Sparse(v) => v.retain(|&id| !gone.contains(id)),
            Bucket::Dense(b) => {
                *b -= gone;
                if b.len() as usize <= SPARSE_MAX {
                    *self = Bucket::Sparse(b.iter().collect());
                }
            }
        }
    }
}

/// The union of many buckets: sparse ones gathered and sorted once, dense ones or-ed in.
pub fn union<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> RoaringBitmap {
    let mut sparse: Vec<u32> = Vec::new();
    let mut out = RoaringBitmap::new();
    for b in buckets {
        match b {
            Bucket::Sparse(v) => sparse.extend_from_slice(v),
            Bucket::Dense(d) => out |= d,
        }
    }
    if !sparse.is_empty() {
        sparse.sort_unstable();
        sparse.dedup();
        out |= RoaringBitmap::from_sorted_iter(sparse).expect("sorted and distinct");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_bitmap_and_shrinks_back() {
        let mut b = Bucket::from_sorted(vec![5, 9]);
        b.insert_sorted(&[1, 5, 12]);
        assert_eq!(b, Bucket::Sparse(vec![1, 5, 9, 12]));
        let many: Vec<u32> = (100..100 + SPARSE_MAX as u32 * 2).collect();
        b.insert_sorted(&many);
        assert!(matches!(b, Bucket::Dense(_)));
        assert_eq!(b.len(), 4 + many.len() as u64);
        assert!(b.contains(9) && b.contains(150) && !b.contains(99));
        b.remove_all(&RoaringBitmap::from_iter(many.iter().copied()));
        assert_eq!(b, Bucket::Sparse(vec![1, 5, 9, 12]));
    }

    #[test]
    fn union_of_both_forms() {
        let a = Bucket::from_sorted(vec![1, 70_000]);
        let d = Bucket::from_sorted((0..10_000).collect());
        let u = union([&a, &d].into_iter());
        assert_eq!(u.len(), 10_001);
        assert_eq!(a.intersection_len(&u), 2);
        assert_eq!(
            d.intersection_len(&RoaringBitmap::from_iter([3, 20_000])),
            1
        );
    }
}
