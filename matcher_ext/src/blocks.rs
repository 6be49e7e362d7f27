//! Per-person verdicts in blocks of 512 consecutive person ids.
//!
//! A block holds one bit per person that is not plain green (some rule fired or was cleared)
//! and, in id order, the (fired, cleared) masks of those persons; a block with no such person
//! is not stored at all. Lookup is a bit test and at most eight popcounts. Blocks are shared
//! (`Arc`) between successive verdicts, so an update copies only the blocks of the persons it
//! re-evaluated, plus the block directory (one pointer per 512 persons).

use std::sync::Arc;

use roaring::RoaringBitmap;

/// Person ids per block.
pub(crate) const BLOCK_BITS: u32 = 9;
const WORDS: usize = 1 << (BLOCK_BITS - 6);

/// (fired, cleared) masks of one person.
pub(crate) type Masks = (u64, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    words: [u64; WORDS],
    masks: Box<[Masks]>,
}

impl Block {
    /// The masks of `id` (an id of this block), (0, 0) if it has none.
    #[inline]
    fn get(&self, id: u32) -> Masks {
        let w = (id as usize >> 6) & (WORDS - 1);
        let bit = 1u64 << (id & 63);
        let word = self.words[w];
        if word & bit == 0 {
            return (0, 0);
        }
        let before: u32 = self.words[..w].iter().map(|x| x.count_ones()).sum();
        self.masks[(before + (word & (bit - 1)).count_ones()) as usize]
    }
}

/// Every person's masks, by block.
///
/// Persons past the last block, or in a block that is not stored, are green with empty masks.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    blocks: Vec<Option<Arc<Block>>>,
}

impl Blocks {
    /// Build from per-rule (fired, cleared) person sets over `universe` persons: bit `i` of a
    /// person's masks is rule `i`.
    pub(crate) fn from_rule_sets(
        universe: u32,
        per_rule: &[(RoaringBitmap, RoaringBitmap)],
    ) -> Self {
        let n_blocks = universe.div_ceil(1 << BLOCK_BITS) as usize;
        let mut words = vec![[0u64; WORDS]; n_blocks];
        let mut set = |id: u32| {
            if id < universe {
                let b = (id >> BLOCK_BITS) as usize;
                words[b][(id as usize >> 6) & (WORDS - 1)] |= 1 << (id & 63);
            }
        };
        for (f, c) in per_rule {
            f.iter().for_each(&mut set);
            c.iter().for_each(&mut set);
        }
        let mut masks: Vec<Vec<Masks>> = words
            .iter()
            .map(|w| vec![(0, 0); w.iter().map(|x| x.count_ones() as usize).sum()])
            .collect();
        let local_rank = |w: &[u64; WORDS], id: u32| {
            let i = (id as usize >> 6) & (WORDS - 1);
            let before: u32 = w[..i].iter().map(|x| x.count_ones()).sum();
            (before + (w[i] & ((1u64 << (id & 63)) - 1)).count_ones()) as usize
        };
        for (bit, (f, c)) in per_rule.iter().enumerate() {
            for (set, fired) in [(f, true), (c, false)] {
                for id in set.iter().take_while(|&id| id < universe) {
                    let b = (id >> BLOCK_BITS) as usize;
                    let slot = &mut masks[b][local_rank(&words[b], id)];
                    if fired {
                        slot.0 |= 1 << bit;
                    } else {
                        slot.1 |= 1 << bit;
                    }
                }
            }
        }
        let blocks = words
            .into_iter()
            .zip(masks)
            .map(|(words, masks)| {
                (!masks.is_empty()).then(|| {
                    Arc::new(Block {
                        words,
                        masks: masks.into_boxed_slice(),
                    })
                })
            })
            .collect();
        Blocks { blocks }
    }

    /// The masks of a person, (0, 0) if none fired or was cleared.
    #[inline]
    pub(crate) fn get(&self, person: u32) -> Masks {
        match self.blocks.get((person >> BLOCK_BITS) as usize) {
            Some(Some(b)) => b.get(person),
            _ => (0, 0),
        }
    }

    /// Number of 64-person words covered.
    pub(crate) fn word_count(&self) -> usize {
        self.blocks.len() * WORDS
    }

    /// Word `w` of the "has masks" bits (0 past the end).
    #[inline]
    pub(crate) fn word(&self, w: usize) -> u64 {
        match self.blocks.get(w / WORDS) {
            Some(Some(b)) => b.words[w % WORDS],
            _ => 0,
        }
    }

    /// Persons with masks, in id order, with their masks.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, Masks)> + '_ {
        self.blocks.iter().enumerate().flat_map(|(k, b)| {
            b.iter().flat_map(move |b| {
                let base = (k as u32) << BLOCK_BITS;
                let mut at = 0usize;
                b.words
                    .iter()
                    .enumerate()
                    .flat_map(move |(w, &word)| {
                        let mut bits = word;
                        std::iter::from_fn(move || {
                            (bits != 0).then(|| {
                                let id = base | ((w as u32) << 6) | bits.trailing_zeros();
                                bits &= bits - 1;
                                id
                            })
                        })
                    })
                    .map(move |id| {
                        at += 1;
                        (id, b.masks[at - 1])
                    })
            })
        })
    }

    /// These masks over `universe` persons (at least as many as now), with the masks of
    /// `persons` (ascending, distinct, each below `universe`) replaced by `masks`. Blocks
    /// without a listed person are shared with `self`.
    pub(crate) fn with_changes(&self, universe: u32, persons: &[u32], masks: &[Masks]) -> Self {
        debug_assert_eq!(persons.len(), masks.len());
        debug_assert!(persons.windows(2).all(|w| w[0] < w[1]));
        let n_blocks = universe.div_ceil(1 << BLOCK_BITS) as usize;
        let mut blocks = self.blocks.clone();
        debug_assert!(n_blocks >= blocks.len());
        blocks.resize(n_blocks, None);
        let mut i = 0;
        while i < persons.len() {
            let k = (persons[i] >> BLOCK_BITS) as usize;
            let end = i + persons[i..]
                .iter()
                .take_while(|&&p| (p >> BLOCK_BITS) as usize == k)
                .count();
            let old = blocks[k].as_deref();
            let (ids, new) = (&persons[i..end], &masks[i..end]);
            // most re-evaluated persons keep their masks: then the block is kept as it is
            let same = ids
                .iter()
                .zip(new)
                .all(|(&p, &m)| old.map_or((0, 0), |b| b.get(p)) == m);
            if !same {
                blocks[k] = rebuild(old, k as u32, ids, new);
            }
            i = end;
        }
        Blocks { blocks }
    }
}

/// Block `k` with the masks of `persons` (its own, ascending) replaced.
fn rebuild(old: Option<&Block>, k: u32, persons: &[u32], masks: &[Masks]) -> Option<Arc<Block>> {
    let mut words = old.map_or([0; WORDS], |b| b.words);
    for (&p, &m) in persons.iter().zip(masks) {
        let (w, bit) = ((p as usize >> 6) & (WORDS - 1), 1u64 << (p & 63));
        if m == (0, 0) {
            words[w] &= !bit;
        } else {
            words[w] |= bit;
        }
    }
    let count: u32 = words.iter().map(|x| x.count_ones()).sum();
    if count == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count as usize);
    let base = k << BLOCK_BITS;
    let (old_words, old_masks) = old.map_or((&[0; WORDS], &[][..]), |b| (&b.words, &b.masks[..]));
    let mut next = 0; // the first listed person not yet passed
    let mut at_old = 0; // the masks of the first old person not yet passed
    for w in 0..WORDS {
        let (mut bits, mut was) = (words[w], old_words[w]);
        while bits != 0 {
            let bit = bits & bits.wrapping_neg();
            let id = base | ((w as u32) << 6) | bit.trailing_zeros();
            bits ^= bit;
            // old persons before this one: skip their masks
            at_old += (was & (bit - 1)).count_ones() as usize;
            was &= !(bit | (bit - 1));
            let had = old_words[w] & bit != 0;
            while next < persons.len() && persons[next] < id {
                next += 1;
            }
            out.push(if persons.get(next) == Some(&id) {
                masks[next]
            } else {
                old_masks[at_old]
            });
            at_old += usize::from(had);
        }
        at_old += was.count_ones() as usize;
    }
    Some(Arc::new(Block {
        words,
        masks: out.into_boxed_slice(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(b: &Blocks, universe: u32) -> Vec<Masks> {
        (0..universe).map(|p| b.get(p)).collect()
    }

    #[test]
    fn build_lookup_and_change_agree_with_a_plain_vector() {
        let universe = 5000;
        let fired: RoaringBitmap = (0..universe).filter(|p| p % 7 == 0).collect();
        let cleared: RoaringBitmap = (0..universe).filter(|p| p % 11 == 0).collect();
        let other: RoaringBitmap = (600..1200).collect();
        let per_rule = vec![
            (fired.clone(), cleared.clone()),
            (other.clone(), RoaringBitmap::new()),
        ];
        let b = Blocks::from_rule_sets(universe, &per_rule);
        let mut want: Vec<Masks> = (0..universe)
            .map(|p| {
                let f = u64::from(fired.contains(p)) | u64::from(other.contains(p)) << 1;
                (f, u64::from(cleared.contains(p)))
            })
            .collect();
        assert_eq!(dense(&b, universe), want);
        let listed: Vec<(u32, Masks)> = b.iter().collect();
        let expected: Vec<(u32, Masks)> = (0..universe)
            .filter(|&p| want[p as usize] != (0, 0))
            .map(|p| (p, want[p as usize]))
            .collect();
        assert_eq!(listed, expected);
        let word0 = (0..64)
            .filter(|&p| want[p] != (0, 0))
            .fold(0u64, |w, p| w | 1 << p);
        assert_eq!((b.word(0), b.word(10_000)), (word0, 0));

        // change a few, clear some, grow the universe; untouched blocks stay shared
        let grown = 6000;
        let persons = [0, 7, 8, 700, 4999, 5001, 5999];
        let masks = [(0, 0), (0, 0), (4, 0), (0, 8), (1, 1), (2, 0), (0, 0)];
        let c = b.with_changes(grown, &persons, &masks);
        want.resize(grown as usize, (0, 0));
        for (&p, &m) in persons.iter().zip(&masks) {
            want[p as usize] = m;
        }
        assert_eq!(dense(&c, grown), want);
        assert!(Arc::ptr_eq(
            b.blocks[3].as_ref().unwrap(),
            c.blocks[3].as_ref().unwrap()
        ));
        assert_eq!(
            dense(&b, universe)[7],
            (1, 0),
            "the old blocks are unchanged"
        );
        // re-evaluated persons whose masks stay: the block is shared
        let kept = b.with_changes(universe, &[7, 8], &[b.get(7), b.get(8)]);
        assert!(Arc::ptr_eq(
            b.blocks[0].as_ref().unwrap(),
            kept.blocks[0].as_ref().unwrap()
        ));
        // emptying a block drops it
        let ids: Vec<u32> = (0..512).collect();
        let none = vec![(0, 0); 512];
        assert!(c.with_changes(grown, &ids, &none).blocks[0].is_none());
    }
}
