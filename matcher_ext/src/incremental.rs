//! Verdicts carried from one index version to the next, re-evaluating only the persons a change
//! can touch ([`Verdicts::update`]).
//!
//! Two things move forward. The window union of every check (kept by [`Verdicts`]) is carried
//! exactly, from the buckets that differ between the two versions and nothing else: the
//! builder's change log names them when the new version was built from the old one itself;
//! otherwise the versions are compared, and as they share unchanged buckets (`Arc`) a bucket
//! that is the same pointer in both holds the same rows. The per-person masks are then
//! recomputed for the listed persons and every new one, by the same rule code as a full
//! evaluation, over the unions restricted to those persons; every other person's masks are
//! carried over with the blocks they sit in.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::blocks::Masks;
use crate::bucket::{self, Bucket};
use crate::errors::{MatcherError, Result};
use crate::index::{BucketKey, Index, KeyedBy, Source};
use crate::plan::{all_rule_sets, in_window, level_ok, Check, Now, Verdicts};
use crate::registry::IdTable;

/// [`Verdicts::update`] evaluates the whole population instead when more than this share of
/// it (one person in `FULL_EVALUATION_SHARE`) and more than [`FULL_EVALUATION_MIN`] persons are
/// to be re-evaluated: past that point a full evaluation is about as cheap (measured at 18 M
/// persons: about 2 us a listed person against 0.3 s for everyone), and gives the same verdicts.
pub const FULL_EVALUATION_SHARE: u64 = 128;
/// See [`FULL_EVALUATION_SHARE`]: below this many persons `update` never evaluates everyone.
pub const FULL_EVALUATION_MIN: u64 = 1 << 14;

/// Whether [`Verdicts::update`] evaluates everyone for `listed` persons (new ones included) of
/// `population`.
pub fn evaluates_everyone(listed: u64, population: u64) -> bool {
    listed > FULL_EVALUATION_MIN && listed * FULL_EVALUATION_SHARE > population
}

impl Verdicts {
    /// The verdicts of `index`, a later version built from `self.index` (through builders, so
    /// person and phone ids are stable and new persons come after the old ones), at the same
    /// plan, day and hour. Only `persons` and every person new in `index` are re-evaluated;
    /// everyone else keeps their verdict.
    ///
    /// The contract: when `persons` holds every person whose inputs changed between the two
    /// versions (a row of theirs or of a phone they hold, a phone linked to or from them, the
    /// level of a county they have a row in), the result is the same as
    /// `Verdicts::at(index, plan, self.now())` for every person: colours, masks, explanations,
    /// colour and rule counts.
    ///
    /// Cost: only the buckets that changed are read (those the builder's change log names,
    /// or, when `index` was not built from `self.index` itself, those found by comparing the
    /// two versions' bucket lists, a pointer comparison each); every check's union is carried
    /// with what they gained and lost; the listed persons are evaluated over the unions
    /// restricted to them; a block of 512 persons is copied where a listed person's masks
    /// changed, and everything else is shared with `self`. Rows that left a check's window
    /// (removed, or a county's level lowered) also probe the window's buckets for those ids.
    /// A long list is evaluated in full instead ([`evaluates_everyone`]), and so is a version
    /// that shares few buckets with `self.index` and was not built from it (one read from a
    /// snapshot).
    ///
    /// Refused: an index keyed with another secret, an older version, fewer persons or phones,
    /// or another registry (sampled keys differ), and unknown person ids.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use healthcode_matcher::index::{Index, KeyedBy};
    /// use healthcode_matcher::plan::{Check, Plan, Rule, Verdicts, GREEN, RED};
    ///
    /// let mut b = Index::new([7; 32]).builder();
    /// b.define_source("close_contact", KeyedBy::Person, false, false)?;
    /// let (ann, bo) = (b.add_person_key(1), b.add_person_key(2));
    /// b.add_rows("close_contact", &[ann], 100, None)?;
    /// let v1 = Arc::new(b.finish());
    /// let check = Check { source: "close_contact".into(), days: Some(14), hours: None, min_level: None };
    /// let rule = Rule { id: "cc".into(), colour: RED, match_all: false, checks: vec![check], clears: vec![] };
    /// let plan = Arc::new(Plan::new("p".into(), vec![rule])?);
    /// let before = Verdicts::new(v1.clone(), plan.clone(), 101)?;
    ///
    /// // the next version: bo becomes a close contact, cy registers
    /// let mut b = v1.builder();
    /// b.add_rows("close_contact", &[bo], 101, None)?;
    /// let cy = b.add_person_key(3);
    /// let v2 = Arc::new(b.finish());
    /// let after = before.update(v2.clone(), &[bo])?; // cy is new: evaluated anyway
    /// assert_eq!([ann, bo, cy].map(|p| after.evaluate(p).unwrap().colour), [RED, RED, GREEN]);
    /// assert_eq!(after.colour_counts(), Verdicts::new(v2, plan, 101)?.colour_counts());
    /// assert!(after.update(v1, &[]).is_err(), "an older version is refused");
    /// # Ok::<(), healthcode_matcher::errors::MatcherError>(())
    /// ```
    pub fn update(&self, index: Arc<Index>, persons: &[u32]) -> Result<Verdicts> {
        check_successor(&self.index, &index)?;
        self.plan.bind_check(&index)?;
        let (old_n, new_n) = (
            self.index.registry.persons.len() as u32,
            index.registry.persons.len() as u32,
        );
        if let Some(bad) = persons.iter().find(|&&p| p >= new_n) {
            return Err(MatcherError::Invalid(format!("no person with id {bad}")));
        }
        let mut listed: RoaringBitmap = persons.iter().copied().collect();
        listed.insert_range(old_n..new_n);
        let now = self.now();
        if evaluates_everyone(listed.len(), u64::from(new_n)) {
            return Verdicts::at(index, self.plan.clone(), now);
        }

        let change = Change::between(&self.index, &index, now, &self.slots.checks);
        if change.wholesale {
            return Verdicts::at(index, self.plan.clone(), now);
        }
        let unions: Vec<Arc<RoaringBitmap>> = self
            .slots
            .checks
            .par_iter()
            .zip(&self.unions)
            .map(|(c, u)| change.carry(c, u))
            .collect();
        let mut phones: Vec<u32> = listed
            .iter()
            .flat_map(|p| index.registry.phones_of(p))
            .collect();
        phones.sort_unstable();
        let phones = RoaringBitmap::from_sorted_iter(phones).expect("sorted");
        // each union restricted to the listed persons (or their phones): the rules over these
        // give the listed persons' verdicts, and no one else's
        let restricted: Vec<Arc<RoaringBitmap>> = self
            .slots
            .checks
            .par_iter()
            .zip(&unions)
            .map(|(c, u)| {
                Arc::new(match index.sources[&c.source].keyed_by {
                    KeyedBy::Person => u.as_ref() & &listed,
                    KeyedBy::Phone => u.as_ref() & &phones,
                })
            })
            .collect();
        let per_rule = all_rule_sets(&index, &self.plan, &self.slots, &restricted);

        let listed: Vec<u32> = listed.iter().collect();
        let mut masks: Vec<Masks> = vec![(0, 0); listed.len()];
        let at = |p: u32| {
            listed
                .binary_search(&p)
                .expect("only listed persons are evaluated")
        };
        for (bit, (fired, cleared)) in per_rule.iter().enumerate() {
            fired.iter().for_each(|p| masks[at(p)].0 |= 1 << bit);
            cleared.iter().for_each(|p| masks[at(p)].1 |= 1 << bit);
        }
        let mut colour_counts = self.colour_counts;
        let mut rule_counts = self.rule_counts.clone();
        let mut count = |fired: u64, add: bool| {
            let colour = &mut colour_counts[self.plan.colour_of(fired) as usize];
            *colour = if add { *colour + 1 } else { *colour - 1 };
            let mut bits = fired;
            while bits != 0 {
                let n = &mut rule_counts[bits.trailing_zeros() as usize];
                *n = if add { *n + 1 } else { *n - 1 };
                bits &= bits - 1;
            }
        };
        for (&p, &(fired, _)) in listed.iter().zip(&masks) {
            if p < old_n {
                count(self.blocks.get(p).0, false);
            }
            count(fired, true);
        }
        let blocks = self.blocks.with_changes(new_n, &listed, &masks);
        Ok(Verdicts {
            index,
            plan: self.plan.clone(),
            today: self.today,
            hour: self.hour,
            slots: self.slots.clone(),
            unions,
            blocks,
            rule_counts,
            colour_counts,
        })
    }
}

/// Refuse what cannot be a later version of `old`'s lineage, as far as a cheap look tells.
fn check_successor(old: &Index, new: &Index) -> Result<()> {
    let refuse = |why: String| Err(MatcherError::Invalid(why));
    if old.hasher.secret() != new.hasher.secret() {
        return refuse("the index is keyed with another secret".into());
    }
    if new.version < old.version {
        return refuse(format!(
            "index version {} is older than version {} of these verdicts",
            new.version, old.version
        ));
    }
    let (o, n) = (&old.registry, &new.registry);
    for (what, a, b) in [
        ("persons", &o.persons, &n.persons),
        ("phones", &o.phones, &n.phones),
    ] {
        if b.len() < a.len() {
            return refuse(format!(
                "the index has {} {what}, fewer than the {} of these verdicts: not a later version",
                b.len(),
                a.len()
            ));
        }
        if !same_ids(a, b) {
            return refuse(format!(
                "the index numbers its {what} differently: not a later version of these verdicts'"
            ));
        }
    }
    Ok(())
}

/// Whether `new` gives about 64 sampled ids of `old` (first and last included) the same keys.
fn same_ids(old: &IdTable, new: &IdTable) -> bool {
    let n = old.len();
    if n == 0 {
        return true;
    }
    let step = (n / 64).max(1);
    (0..n)
        .step_by(step)
        .chain([n - 1])
        .all(|i| old.key(i as u32) == new.key(i as u32))
}

/// The rows a replaced bucket gained and lost.
struct Diff {
    came: RoaringBitmap,
    gone: RoaringBitmap,
}

/// What differs between two versions, as far as the plan's sources can tell.
struct Change<'a> {
    old: &'a Index,
    new: &'a Index,
    now: Now,
    /// Counties whose level differs.
    regraded: Vec<u32>,
    /// Per changed source read by the plan: keys of buckets added, dropped or replaced.
    changed: HashMap<&'a str, Vec<BucketKey>>,
    /// Per source and key of a replaced bucket (in both versions, another `Arc`): its rows
    /// gained and lost, worked out once for every check reading it.
    diffs: HashMap<(&'a str, BucketKey), Diff>,
    /// No change log applied and most buckets differ (a version read from a snapshot, say):
    /// carrying would cost more than evaluating everyone.
    wholesale: bool,
}

impl<'a> Change<'a> {
    fn between(old: &'a Index, new: &'a Index, now: Now, checks: &'a [Check]) -> Self {
        let mut regraded: Vec<u32> = Vec::new();
        if !Arc::ptr_eq(&old.county_levels, &new.county_levels) {
            let (a, b) = (&old.county_levels, &new.county_levels);
            regraded.extend(
                a.keys()
                    .chain(b.keys())
                    .filter(|&&c| old.level(c) != new.level(c)),
            );
            regraded.sort_unstable();
            regraded.dedup();
        }
        let mut names: Vec<&str> = checks.iter().map(|c| c.source.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // the builder's log when `new` was built from `old` itself; else compare the buckets
        let log = new.changes.as_ref().filter(|log| log.from == old.id);
        let changed: HashMap<&str, Vec<BucketKey>> = names
            .into_par_iter()
            .filter_map(|name| {
                let (a, b) = (&old.sources[name], &new.sources[name]);
                (!Arc::ptr_eq(a, b)).then(|| {
                    let keys = match log {
                        Some(log) => log.buckets.get(name).cloned().unwrap_or_default(),
                        None => changed_buckets(a, b),
                    };
                    (name, keys)
                })
            })
            .collect();
        let total: usize = changed.keys().map(|&n| new.sources[n].buckets.len()).sum();
        let differing: usize = changed.values().map(Vec::len).sum();
        let wholesale = log.is_none() && differing * 4 > total;
        if wholesale {
            return Change {
                old,
                new,
                now,
                regraded,
                changed,
                diffs: HashMap::new(),
                wholesale,
            };
        }
        let replaced: Vec<(&str, BucketKey)> = changed
            .iter()
            .flat_map(|(&name, keys)| keys.iter().map(move |&k| (name, k)))
            .filter(|&(name, k)| {
                old.sources[name].buckets.contains_key(&k)
                    && new.sources[name].buckets.contains_key(&k)
            })
            .collect();
        let diffs = replaced
            .into_par_iter()
            .map(|(name, k)| {
                let (a, b) = (
                    &old.sources[name].buckets[&k],
                    &new.sources[name].buckets[&k],
                );
                ((name, k), diff(a, b))
            })
            .collect();
        Change {
            old,
            new,
            now,
            regraded,
            changed,
            diffs,
            wholesale,
        }
    }

    /// The window union of check `c` in the new version, from its union in the old one.
    fn carry(&self, c: &Check, union: &Arc<RoaringBitmap>) -> Arc<RoaringBitmap> {
        let (old, new, now) = (self.old, self.new, self.now);
        let (so, sn) = (&old.sources[&c.source], &new.sources[&c.source]);
        let regraded: Vec<u32> = self
            .regraded
            .iter()
            .copied()
            .filter(|&county| level_ok(old, c, county) != level_ok(new, c, county))
            .collect();
        let changed = self.changed.get(c.source.as_str());
        if changed.is_none() && regraded.is_empty() {
            return union.clone();
        }
        let in_old =
            |&(county, t): &BucketKey| in_window(t, so.hourly, c, now) && level_ok(old, c, county);
        let in_new =
            |&(county, t): &BucketKey| in_window(t, sn.hourly, c, now) && level_ok(new, c, county);
        let mut keys: Vec<BucketKey> = changed.cloned().unwrap_or_default();
        for &county in &regraded {
            for s in [so, sn] {
                keys.extend(
                    s.buckets
                        .range((county, 0)..=(county, u32::MAX))
                        .map(|(k, _)| *k),
                );
            }
        }
        keys.sort_unstable();
        keys.dedup();
        // rows that entered the window (whole buckets, or what a replaced bucket gained) and
        // rows that left it
        let (mut entered, mut left): (Vec<&Bucket>, Vec<&Bucket>) = (Vec::new(), Vec::new());
        let (mut came, mut gone) = (RoaringBitmap::new(), RoaringBitmap::new());
        for k in &keys {
            let was = so.buckets.get(k).filter(|_| in_old(k));
            let is = sn.buckets.get(k).filter(|_| in_new(k));
            match (was, is) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (Some(a), Some(b)) => match self.diffs.get(&(c.source.as_str(), *k)) {
                    Some(d) => {
                        came |= &d.came;
                        gone |= &d.gone;
                    }
                    None => {
                        let d = diff(a, b);
                        came |= d.came;
                        gone |= d.gone;
                    }
                },
                _ => {
                    left.extend(was.map(|b| b.as_ref()));
                    entered.extend(is.map(|b| b.as_ref()));
                }
            }
        }
        came |= bucket::union(entered.into_iter());
        gone |= bucket::union(left.into_iter());
        let lost = gone - &came;
        if lost.is_empty() && came.is_subset(union) {
            return union.clone();
        }
        let mut out = if lost.is_empty() {
            union.as_ref().clone()
        } else {
            union.as_ref() - &lost
        };
        out |= came;
        if !lost.is_empty() {
            // a row that left the window may have a twin in a bucket still in it
            out |= still_in(sn, lost, in_new);
        }
        Arc::new(out)
    }
}

/// The rows `new` has that `old` has not, and those it lost.
fn diff(old: &Bucket, new: &Bucket) -> Diff {
    match (old, new) {
        (Bucket::Sparse(a), Bucket::Sparse(b)) => {
            let (mut came, mut gone) = (Vec::new(), Vec::new());
            let (mut i, mut j) = (0, 0);
            while i < a.len() || j < b.len() {
                match (a.get(i), b.get(j)) {
                    (Some(x), Some(y)) if x == y => {
                        i += 1;
                        j += 1;
                    }
                    (Some(x), Some(y)) if x < y => {
                        gone.push(*x);
                        i += 1;
                    }
                    (Some(x), None) => {
                        gone.push(*x);
                        i += 1;
                    }
                    (_, Some(y)) => {
                        came.push(*y);
                        j += 1;
                    }
                    (None, None) => unreachable!("the loop stops first"),
                }
            }
            let sorted = |v: Vec<u32>| RoaringBitmap::from_sorted_iter(v).expect("sorted");
            Diff {
                came: sorted(came),
                gone: sorted(gone),
            }
        }
        _ => {
            fn bitmap(b: &Bucket) -> std::borrow::Cow<'_, RoaringBitmap> {
                match b {
                    Bucket::Dense(d) => std::borrow::Cow::Borrowed(d),
                    Bucket::Sparse(_) => std::borrow::Cow::Owned(b.to_bitmap()),
                }
            }
            let (a, b) = (bitmap(old), bitmap(new));
            Diff {
                came: b.as_ref() - a.as_ref(),
                gone: a.as_ref() - b.as_ref(),
            }
        }
    }
}

/// Keys whose bucket differs between two versions of a source (added, dropped or replaced).
fn changed_buckets(old: &Source, new: &Source) -> Vec<BucketKey> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.buckets.iter().peekable(), new.buckets.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(&(ka, _)), None) => {
                out.push(*ka);
                a.next();
            }
            (None, Some(&(kb, _))) => {
                out.push(*kb);
                b.next();
            }
            (Some(&(ka, va)), Some(&(kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push(*ka);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(*kb);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) {
                        out.push(*ka);
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

/// The ids of `lost` found in a bucket of the source that is in the window (`kept`).
fn still_in(
    source: &Source,
    mut lost: RoaringBitmap,
    kept: impl Fn(&BucketKey) -> bool,
) -> RoaringBitmap {
    let mut found = RoaringBitmap::new();
    for (k, b) in &source.buckets {
        if !kept(k) {
            continue;
        }
        let hit = b.intersection(&lost);
        if !hit.is_empty() {
            lost -= &hit;
            found |= hit;
            if lost.is_empty() {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SplitMix;
    use crate::index::{KeyedBy, UNDATED};
    use crate::plan::{Plan, Rule, RED};

    /// The carried window unions are exactly the fresh ones, over every id (unheld phones too,
    /// which no person's verdict shows until the phone is linked), whatever changed.
    #[test]
    fn carried_unions_equal_fresh_ones() {
        let mut rng = SplitMix(99);
        let mut below = |n: u64| rng.next_u64() % n;
        let counties = [11, 12, 13];
        let checks: Vec<Check> = [
            ("p", Some(5), None, None),
            ("p", None, None, None),
            ("c", Some(10), None, Some(2)),
            ("c", None, None, Some(1)),
            ("f", Some(3), None, Some(3)),
            ("h", None, Some(30), None),
        ]
        .into_iter()
        .map(|(s, days, hours, min_level)| Check {
            source: s.into(),
            days,
            hours,
            min_level,
        })
        .collect();
        let rules = checks
            .iter()
            .enumerate()
            .map(|(i, c)| Rule {
                id: format!("r{i}"),
                colour: RED,
                match_all: false,
                checks: vec![c.clone()],
                clears: vec![],
            })
            .collect();
        let plan = Arc::new(Plan::new("t".into(), rules).unwrap());
        let now = Now::end_of(50);
        let mut b = Index::new([1; 32]).builder();
        b.define_source("p", KeyedBy::Person, false, false).unwrap();
        b.define_source("c", KeyedBy::Person, true, false).unwrap();
        b.define_source("f", KeyedBy::Phone, true, false).unwrap();
        b.define_source("h", KeyedBy::Phone, false, true).unwrap();
        for k in 0..40 {
            b.add_person_key(k);
            b.add_phone_key(k, None).unwrap();
        }
        let mut index = Arc::new(b.finish());
        let mut v = Verdicts::at(index.clone(), plan.clone(), now).unwrap();
        for step in 0..300 {
            let mut b = index.builder();
            for _ in 0..1 + below(4) {
                let ids: Vec<u32> = (0..1 + below(4)).map(|_| below(40) as u32).collect();
                let cs: Vec<u32> = ids.iter().map(|_| counties[below(3) as usize]).collect();
                let day = if below(5) == 0 {
                    UNDATED
                } else {
                    40 + below(12) as u32
                };
                match below(9) {
                    0 => b.add_rows("p", &ids, day, None).unwrap(),
                    1 => b.add_rows("c", &ids, day, Some(&cs)).unwrap(),
                    2 => b.add_rows("f", &ids, day, Some(&cs)).unwrap(),
                    3 => b
                        .add_rows("h", &ids, 50 * 24 - below(40) as u32, None)
                        .unwrap(),
                    4 | 5 => b
                        .remove_rows(["p", "c", "f", "h"][below(4) as usize], &ids)
                        .unwrap(),
                    6 | 7 => b
                        .set_county_level(counties[below(3) as usize], below(4) as u8)
                        .unwrap(),
                    _ if below(4) == 0 => b
                        .clear_source(["p", "c", "f", "h"][below(4) as usize])
                        .unwrap(),
                    _ => {}
                }
            }
            let next = Arc::new(b.finish());
            let fresh = Verdicts::at(next.clone(), plan.clone(), now).unwrap();
            // with the builder's log, and without it (the buckets compared instead)
            let mut unlogged = next.as_ref().clone();
            unlogged.changes = None;
            for new in [next.as_ref(), &unlogged] {
                let change = Change::between(&index, new, now, &v.slots.checks);
                for (slot, c) in v.slots.checks.iter().enumerate() {
                    let got = change.carry(c, &v.unions[slot]);
                    let want = &fresh.unions[slot];
                    assert_eq!(got.as_ref(), want.as_ref(), "step {step}, {c:?}");
                }
            }
            let everyone: Vec<u32> = (0..40).collect();
            v = v.update(next.clone(), &everyone).unwrap();
            for (slot, (got, want)) in v.unions.iter().zip(&fresh.unions).enumerate() {
                assert_eq!(got, want, "step {step}, {:?}", v.slots.checks[slot]);
            }
            index = next;
        }
    }
}
