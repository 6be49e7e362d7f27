//! Many persons in one call (R12: an exam's 50,000 candidates, an event's list): each entry is
//! validated, hashed, looked up and coloured, and the answer is one byte per entry, ready for
//! the wire (`EvaluateStreamResponse.colours`), plus the invalid entries with what is wrong.
//!
//! A byte is the proto's `Colour` number ([`wire_colour`]: 1 green, 2 yellow, 3 red),
//! [`NOT_REGISTERED`] for a person the index does not hold (no data is not green), or
//! [`INVALID`] for an entry that failed validation (named in the problems).
//!
//! [`Overrides`] (the support desk's manual colours, issue 10) replace the computed byte of
//! the registered persons they name; without them (`None`) the batch costs what it always did.

use rayon::prelude::*;

use crate::ids::{shanghai_today, Key};
use crate::plan::Verdicts;

/// The byte of a person the index does not hold (the proto's `COLOUR_UNSPECIFIED`).
pub const NOT_REGISTERED: u8 = 0;
/// The byte of an entry that failed validation.
pub const INVALID: u8 = 255;
/// What a blank entry is told (as the per-person edge says it).
pub const ID_NUMBER_REQUIRED: &str = "an ID number is required";

/// Manual colours in force (the support desk's overrides): person key -> the wire byte that
/// replaces the computed one (1 green, 2 yellow, 3 red). They apply to registered persons only:
/// a person the index does not hold stays [`NOT_REGISTERED`].
pub type Overrides = hashbrown::HashMap<Key, u8>;

/// Entries at or above this count are split over the rayon pool.
const PARALLEL_FROM: usize = 4096;
/// Entries per parallel task.
const CHUNK: usize = 2048;

/// The wire byte of a matcher colour (`GREEN` 0, `YELLOW` 1, `RED` 2): the proto's number.
#[inline]
pub fn wire_colour(colour: u8) -> u8 {
    colour + 1
}

/// An invalid entry: its position in the batch and what is wrong (never the number itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryProblem {
    /// 0-based position in the batch.
    pub entry: u32,
    /// What to fix.
    pub message: String,
}

/// The entries of a newline-separated batch: one per line, blank lines included (they are
/// entries too, and get a problem); no text at all is no entry.
pub fn entries(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').collect()
    }
}

impl Verdicts {
    /// The wire byte of a person id from this index's registry, or [`NOT_REGISTERED`].
    #[inline]
    fn wire_byte(&self, person: Option<u32>) -> u8 {
        match person.map(|p| self.evaluate(p)) {
            Some(Ok(v)) => wire_colour(v.colour),
            _ => NOT_REGISTERED,
        }
    }

    /// The wire byte of a person key: its override if it names a registered person, else its
    /// verdict's (or [`NOT_REGISTERED`]).
    #[inline]
    fn key_byte(&self, key: Key, overrides: Option<&Overrides>) -> u8 {
        let person = self.index.registry.persons.get(key);
        if let (Some(_), Some(manual)) = (person, overrides) {
            if let Some(&byte) = manual.get(&key) {
                return byte;
            }
        }
        self.wire_byte(person)
    }

    /// One ID number: its wire byte, or what is wrong with it. Blank is "required"; otherwise
    /// the message is the one `Hasher::person_key` refuses it with (as per-person calls see).
    fn id_number_byte(
        &self,
        raw: &str,
        today: i64,
        overrides: Option<&Overrides>,
    ) -> Result<u8, String> {
        if raw.trim().is_empty() {
            return Err(ID_NUMBER_REQUIRED.to_string());
        }
        let key = self
            .index
            .hasher
            .person_key_on(raw, today)
            .map_err(|e| e.to_string())?;
        Ok(self.key_byte(key, overrides))
    }

    fn id_numbers_from(
        &self,
        first: usize,
        ids: &[&str],
        today: i64,
        overrides: Option<&Overrides>,
    ) -> (Vec<u8>, Vec<EntryProblem>) {
        let mut colours = Vec::with_capacity(ids.len());
        let mut problems = Vec::new();
        for (n, raw) in ids.iter().enumerate() {
            colours.push(match self.id_number_byte(raw, today, overrides) {
                Ok(b) => b,
                Err(message) => {
                    problems.push(EntryProblem {
                        entry: (first + n) as u32,
                        message,
                    });
                    INVALID
                }
            });
        }
        (colours, problems)
    }

    /// Colour a batch of raw ID numbers (as `evaluate_id_number` would, one by one): one wire
    /// byte per entry in order, and the problems of the invalid entries in entry order. Large
    /// batches run in parallel.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use healthcode_matcher::batch::{INVALID, NOT_REGISTERED};
    /// use healthcode_matcher::index::Index;
    /// use healthcode_matcher::plan::{Plan, Verdicts};
    ///
    /// let mut b = Index::new([1; 32]).builder();
    /// b.add_person_key(Index::new([1; 32]).hasher.person_key("11010519491231002X").unwrap());
    /// let index = Arc::new(b.finish());
    /// let plan = Arc::new(Plan::new("empty".into(), vec![]).unwrap());
    /// let v = Verdicts::new(index, plan, 20_000).unwrap();
    /// let (colours, problems) = v.colours_of_id_numbers(&["11010519491231002x", "1", "110105194912310070"]);
    /// assert_eq!(colours, [1, INVALID, NOT_REGISTERED]);
    /// assert_eq!(problems[0].entry, 1);
    /// ```
    pub fn colours_of_id_numbers(&self, ids: &[&str]) -> (Vec<u8>, Vec<EntryProblem>) {
        self.colours_of_id_numbers_with(ids, None)
    }

    /// [`Verdicts::colours_of_id_numbers`], with the manual colours of `overrides` in place of
    /// the computed ones of the registered persons they name.
    pub fn colours_of_id_numbers_with(
        &self,
        ids: &[&str],
        overrides: Option<&Overrides>,
    ) -> (Vec<u8>, Vec<EntryProblem>) {
        // One clock reading for the batch (the birth date must not be after today).
        let today = shanghai_today();
        if ids.len() < PARALLEL_FROM {
            return self.id_numbers_from(0, ids, today, overrides);
        }
        let parts: Vec<(Vec<u8>, Vec<EntryProblem>)> = ids
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, chunk)| self.id_numbers_from(c * CHUNK, chunk, today, overrides))
            .collect();
        let mut colours = Vec::with_capacity(ids.len());
        let mut problems = Vec::new();
        for (c, p) in parts {
            colours.extend_from_slice(&c);
            problems.extend(p);
        }
        (colours, problems)
    }

    /// Colour a batch of person keys: one wire byte per key in order ([`NOT_REGISTERED`] for
    /// a key the index does not hold). Large batches run in parallel.
    pub fn colours_of_keys(&self, keys: &[Key]) -> Vec<u8> {
        self.colours_of_keys_with(keys, None)
    }

    /// [`Verdicts::colours_of_keys`], with the manual colours of `overrides` in place of the
    /// computed ones of the registered persons they name.
    pub fn colours_of_keys_with(&self, keys: &[Key], overrides: Option<&Overrides>) -> Vec<u8> {
        let one = |&k: &Key| self.key_byte(k, overrides);
        if keys.len() >= PARALLEL_FROM {
            keys.par_iter().with_min_len(CHUNK).map(one).collect()
        } else {
            keys.iter().map(one).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{id_check_char, synthetic_id_numbers, Hasher};
    use crate::index::{Index, KeyedBy};
    use crate::plan::{Check, Plan, Rule, RED, YELLOW};

    const SECRET: [u8; 32] = [3; 32];

    /// Persons 0..n registered; person 0 confirmed (red), person 1 a close contact (yellow,
    /// and red-free in the shared plan below), everyone else green.
    fn verdicts(ids: &[String]) -> (Verdicts, Verdicts) {
        let h = Hasher::new(SECRET);
        let mut b = Index::new(SECRET).builder();
        b.define_source("confirmed", KeyedBy::Person, false, false)
            .unwrap();
        b.define_source("close_contact", KeyedBy::Person, false, false)
            .unwrap();
        let persons: Vec<u32> = ids
            .iter()
            .map(|id| b.add_person_key(h.person_key(id).unwrap()))
            .collect();
        b.add_rows("confirmed", &[persons[0]], 100, None).unwrap();
        b.add_rows("close_contact", &[persons[1]], 100, None)
            .unwrap();
        let index = Arc::new(b.finish());
        let rule = |id: &str, colour, source: &str| Rule {
            id: id.into(),
            colour,
            match_all: false,
            checks: vec![Check {
                source: source.into(),
                days: Some(14),
                hours: None,
                min_level: None,
            }],
            clears: vec![],
        };
        let full = Plan::new(
            "full".into(),
            vec![
                rule("confirmed", RED, "confirmed"),
                rule("contact", YELLOW, "close_contact"),
            ],
        )
        .unwrap();
        let shared = Plan::new("shared".into(), vec![rule("confirmed", RED, "confirmed")]).unwrap();
        (
            Verdicts::new(index.clone(), Arc::new(full), 105).unwrap(),
            Verdicts::new(index, Arc::new(shared), 105).unwrap(),
        )
    }

    fn ids(n: u64, seed: u64) -> Vec<String> {
        synthetic_id_numbers(n, seed)
    }

    /// The same number with a wrong check character.
    fn bad_check(id: &str) -> String {
        let want = id_check_char(&id.as_bytes()[..17]);
        let wrong = if want == b'0' { '1' } else { '0' };
        format!("{}{}", &id[..17], wrong)
    }

    #[test]
    fn each_entry_gets_the_byte_its_own_verdict_gives() {
        let people = ids(10, 1);
        let stranger = ids(11, 2).pop().unwrap();
        let (v, shared) = verdicts(&people);
        let bad = bad_check(&people[3]);
        let batch = [
            people[0].as_str(),
            people[1].as_str(),
            people[2].as_str(),
            stranger.as_str(),
            bad.as_str(),
            "  ",
            "12345",
            &people[2].to_lowercase(),
        ];
        let (colours, problems) = v.colours_of_id_numbers(&batch);
        assert_eq!(
            colours,
            [3, 2, 1, NOT_REGISTERED, INVALID, INVALID, INVALID, 1]
        );
        assert_eq!(
            problems.iter().map(|p| p.entry).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert!(problems[0].message.contains("check character"));
        assert_eq!(problems[1].message, ID_NUMBER_REQUIRED);
        assert!(problems[2].message.contains("18 characters"));
        for (raw, &byte) in batch.iter().zip(&colours) {
            let one = match v.index.hasher.person_key(raw) {
                Err(_) => INVALID,
                Ok(k) => match v.index.registry.persons.get(k) {
                    None => NOT_REGISTERED,
                    Some(p) => wire_colour(v.evaluate(p).unwrap().colour),
                },
            };
            assert_eq!(one, byte, "{raw:?}");
        }
        // the shared plan has no close-contact rule: that person is green there
        assert_eq!(shared.colours_of_id_numbers(&batch[..3]).0, [3, 1, 1]);
    }

    #[test]
    fn a_large_batch_in_parallel_equals_one_by_one() {
        let people = ids(9_000, 5);
        let (v, _) = verdicts(&people[..6_000]);
        let mut batch: Vec<String> = people.clone();
        for n in (0..batch.len()).step_by(997) {
            batch[n] = bad_check(&batch[n]);
        }
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let (colours, problems) = v.colours_of_id_numbers(&refs);
        let (seq_c, seq_p) = v.id_numbers_from(0, &refs, crate::ids::shanghai_today(), None);
        assert_eq!((colours.clone(), problems.clone()), (seq_c, seq_p));
        assert_eq!(colours.len(), 9_000);
        assert_eq!(
            problems
                .iter()
                .map(|p| p.entry as usize)
                .collect::<Vec<_>>(),
            (0..9_000).step_by(997).collect::<Vec<_>>()
        );
        assert_eq!(colours[1], 2);
        assert!(colours[6_001..]
            .iter()
            .all(|&c| c == NOT_REGISTERED || c == INVALID));
        // by key: the same bytes for every valid entry
        let keys: Vec<Key> = people
            .iter()
            .map(|id| v.index.hasher.person_key(id).unwrap())
            .collect();
        let by_key = v.colours_of_keys(&keys);
        for (n, (&a, &b)) in colours.iter().zip(&by_key).enumerate() {
            if a != INVALID {
                assert_eq!(a, b, "entry {n}");
            }
        }
        assert_eq!(v.colours_of_keys(&keys[..3]), [3, 2, 1]);
        assert_eq!(v.colours_of_keys(&[7u128]), [NOT_REGISTERED]);
    }

    #[test]
    fn overrides_replace_the_computed_byte_of_registered_persons_only() {
        let people = ids(9_000, 8);
        let stranger = ids(9_001, 9).pop().unwrap();
        let (v, _) = verdicts(&people);
        let key = |id: &str| v.index.hasher.person_key(id).unwrap();
        // person 0 is red, person 2 green: the desk turned them green and red; a stranger's
        // override changes nothing (no data is not a colour)
        let overrides: Overrides = [
            (key(&people[0]), 1u8),
            (key(&people[2]), 3u8),
            (key(&stranger), 1u8),
        ]
        .into_iter()
        .collect();
        let batch = [
            people[0].as_str(),
            people[1].as_str(),
            people[2].as_str(),
            stranger.as_str(),
            "1",
        ];
        let (colours, problems) = v.colours_of_id_numbers_with(&batch, Some(&overrides));
        assert_eq!(colours, [1, 2, 3, NOT_REGISTERED, INVALID]);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            v.colours_of_id_numbers_with(&batch, None).0,
            [3, 2, 1, NOT_REGISTERED, INVALID]
        );
        let keys: Vec<Key> = [&people[0], &people[1], &people[2], &stranger]
            .iter()
            .map(|id| key(id))
            .collect();
        assert_eq!(
            v.colours_of_keys_with(&keys, Some(&overrides)),
            [1, 2, 3, NOT_REGISTERED]
        );
        // in parallel too: every entry as one by one
        let refs: Vec<&str> = people.iter().map(String::as_str).collect();
        let (all, _) = v.colours_of_id_numbers_with(&refs, Some(&overrides));
        let plain = v.colours_of_id_numbers(&refs).0;
        assert_eq!((all[0], all[1], all[2]), (1, 2, 3));
        assert_eq!(all[3..], plain[3..]);
        let all_keys: Vec<Key> = refs.iter().map(|id| key(id)).collect();
        assert_eq!(v.colours_of_keys_with(&all_keys, Some(&overrides)), all);
    }

    #[test]
    fn entries_are_lines_and_blank_lines_count() {
        assert!(entries("").is_empty());
        assert_eq!(entries("a"), ["a"]);
        assert_eq!(entries("a\n\nb"), ["a", "", "b"]);
        assert_eq!(entries("a\r\nb\n"), ["a\r", "b", ""]);
    }
}
