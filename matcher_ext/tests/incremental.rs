//! `Verdicts::update` against a fresh `Verdicts::at`: random populations and random change
//! sequences (registrations, phones linked, moved and unlinked, rows added by id and by key in
//! daily, hourly, county, person- and phone-keyed sources, rows removed, county levels changed,
//! sources cleared), the touched persons worked out as a replica would, and the updates chained
//! version after version (with the builders' change logs, across skipped versions, and from
//! snapshots); plus what `update` refuses.

use std::collections::BTreeSet;
use std::sync::Arc;

use healthcode_matcher::ids::SplitMix;
use healthcode_matcher::incremental::{evaluates_everyone, FULL_EVALUATION_MIN};
use healthcode_matcher::index::{Builder, Index, KeyedBy, UNDATED};
use healthcode_matcher::plan::{Check, Now, Plan, Rule, Verdicts, RED, YELLOW};
use healthcode_matcher::snapshot;

const SECRET: [u8; 32] = [5; 32];
const TODAY: u32 = 19_000;
const COUNTIES: [u32; 6] = [120101, 120102, 120103, 120104, 120105, 120106];

/// (name, keyed by, has county, hourly)
const SOURCES: [(&str, KeyedBy, bool, bool); 8] = [
    ("contact", KeyedBy::Person, false, false),
    ("travel", KeyedBy::Person, true, false),
    ("negative", KeyedBy::Person, false, true),
    ("control", KeyedBy::Person, false, false),
    ("roaming", KeyedBy::Phone, true, false),
    ("scan", KeyedBy::Phone, false, true),
    ("verified", KeyedBy::Phone, false, false),
    ("residence", KeyedBy::Person, true, false),
];

struct Rng(SplitMix);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        (self.0.next_u64() % u64::from(n.max(1))) as u32
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u32) as usize]
    }
}

/// A random bucket time of a source around `now` (some undated, some in the future).
fn time(rng: &mut Rng, hourly: bool, now: Now) -> u32 {
    if rng.chance(10) {
        return UNDATED;
    }
    if hourly {
        now.hour + 3 - rng.below(24 * 20)
    } else {
        now.today + 1 - rng.below(25)
    }
}

/// Random rows in a random source; returns the source and the ids named.
fn add_rows(rng: &mut Rng, b: &mut Builder, now: Now, by_key: &mut u128) -> (usize, Vec<u32>) {
    let s = rng.below(SOURCES.len() as u32) as usize;
    let (name, keyed, has_county, hourly) = SOURCES[s];
    let limit = match keyed {
        KeyedBy::Person => b.peek().registry.persons.len(),
        KeyedBy::Phone => b.peek().registry.phones.len(),
    } as u32;
    let n = 1 + rng.below(12);
    if limit == 0 || rng.chance(15) {
        // by key: some rows name identifiers never seen (registered at first sight)
        let keys: Vec<u128> = (0..n)
            .map(|_| {
                if limit > 0 && rng.chance(50) {
                    let id = rng.below(limit);
                    match keyed {
                        KeyedBy::Person => b.peek().registry.persons.key(id),
                        KeyedBy::Phone => b.peek().registry.phones.key(id),
                    }
                } else {
                    *by_key += 1;
                    *by_key
                }
            })
            .collect();
        let days: Vec<u32> = (0..n).map(|_| time(rng, hourly, now)).collect();
        let counties: Vec<u32> = (0..n).map(|_| rng.pick(&COUNTIES)).collect();
        b.add_rows_by_key(name, &keys, &days, has_county.then_some(&counties[..]))
            .unwrap();
        let table = match keyed {
            KeyedBy::Person => &b.peek().registry.persons,
            KeyedBy::Phone => &b.peek().registry.phones,
        };
        return (s, keys.iter().map(|&k| table.get(k).unwrap()).collect());
    }
    let ids: Vec<u32> = (0..n).map(|_| rng.below(limit)).collect();
    let counties: Vec<u32> = (0..n).map(|_| rng.pick(&COUNTIES)).collect();
    let t = time(rng, hourly, now);
    b.add_rows(name, &ids, t, has_county.then_some(&counties[..]))
        .unwrap();
    (s, ids)
}

struct World {
    rng: Rng,
    now: Now,
    next_key: u128,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(SplitMix(seed));
        let today = TODAY + rng.below(3);
        let now = Now {
            today,
            hour: today * 24 + rng.below(24),
        };
        World {
            rng,
            now,
            next_key: 1 << 64,
        }
    }

    fn base(&mut self, persons: u32) -> Arc<Index> {
        let mut b = Index::new(SECRET).builder();
        for (name, keyed, has_county, hourly) in SOURCES {
            b.define_source(name, keyed, has_county, hourly).unwrap();
        }
        for k in 0..persons {
            b.add_person_key(u128::from(k) + 1);
        }
        for k in 0..persons + persons / 3 {
            let holder = (!self.rng.chance(15)).then(|| self.rng.below(persons));
            b.add_phone_key(u128::from(k) + (1 << 40), holder).unwrap();
        }
        for _ in 0..persons / 2 {
            add_rows(&mut self.rng, &mut b, self.now, &mut self.next_key);
        }
        for c in COUNTIES {
            b.set_county_level(c, self.rng.below(4) as u8).unwrap();
        }
        Arc::new(b.finish())
    }

    /// One random version after `index`, and the persons a replica would list for it.
    fn step(&mut self, index: &Index) -> (Arc<Index>, Vec<u32>) {
        let rng = &mut self.rng;
        let mut b = index.builder();
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        let mut phones_named: Vec<u32> = Vec::new();
        let mut relinked: Vec<u32> = Vec::new();
        let mut counties: Vec<u32> = Vec::new();
        let mut everyone = false;
        for _ in 0..1 + rng.below(6) {
            let persons = b.peek().registry.persons.len() as u32;
            let phones = b.peek().registry.phones.len() as u32;
            match rng.below(20) {
                0..=1 => {
                    for _ in 0..1 + rng.below(5) {
                        self.next_key += 1;
                        b.add_person_key(self.next_key);
                    }
                }
                2..=3 if phones > 0 => {
                    // a phone moves to another holder, or a new one is linked
                    let holder = rng.below(persons);
                    let f = if rng.chance(70) {
                        rng.below(phones)
                    } else {
                        self.next_key += 1;
                        b.add_phone_key(self.next_key, None).unwrap()
                    };
                    let key = b.peek().registry.phones.key(f);
                    b.add_phone_key(key, Some(holder)).unwrap();
                    relinked.push(f);
                }
                4 if phones > 0 => {
                    let f = rng.below(phones);
                    let key = b.peek().registry.phones.key(f);
                    b.unlink_phone_key(key);
                    relinked.push(f);
                }
                5..=12 => {
                    let (s, ids) = add_rows(rng, &mut b, self.now, &mut self.next_key);
                    match SOURCES[s].1 {
                        KeyedBy::Person => touched.extend(ids),
                        KeyedBy::Phone => phones_named.extend(ids),
                    }
                }
                13..=14 => {
                    let s = rng.below(SOURCES.len() as u32) as usize;
                    let (name, keyed, _, _) = SOURCES[s];
                    let limit = if keyed == KeyedBy::Person {
                        persons
                    } else {
                        phones
                    };
                    let ids: Vec<u32> = (0..1 + rng.below(6)).map(|_| rng.below(limit)).collect();
                    b.remove_rows(name, &ids).unwrap();
                    match keyed {
                        KeyedBy::Person => touched.extend(ids),
                        KeyedBy::Phone => phones_named.extend(ids),
                    }
                }
                15..=18 => {
                    let c = rng.pick(&COUNTIES);
                    b.set_county_level(c, rng.below(4) as u8).unwrap();
                    counties.push(c);
                }
                19 if rng.chance(30) => {
                    let (name, _, _, _) = SOURCES[rng.below(SOURCES.len() as u32) as usize];
                    b.clear_source(name).unwrap();
                    everyone = true;
                }
                _ => {}
            }
        }
        let next = Arc::new(b.finish());
        for &f in &relinked {
            if (f as usize) < index.registry.phones.len() {
                touched.extend(index.registry.phone_holder(f));
            }
            touched.extend(next.registry.phone_holder(f));
        }
        touched.extend(next.holders_of_phones(phones_named.into_iter()).unwrap());
        touched.extend(&next.persons_with_rows_in_counties(&counties).unwrap());
        if everyone {
            touched.extend(0..next.registry.persons.len() as u32);
        }
        (next, touched.into_iter().collect())
    }
}

fn check(source: &str, rng: &mut Rng) -> Check {
    let (_, _, has_county, hourly) = SOURCES.iter().find(|s| s.0 == source).copied().unwrap();
    let (days, hours) = match rng.below(4) {
        0 => (None, None),
        1 if hourly => (None, Some(1 + rng.below(24 * 10))),
        _ => (Some(1 + rng.below(20)), None),
    };
    let min_level = (has_county && rng.chance(60)).then(|| 1 + rng.below(3) as u8);
    Check {
        source: source.into(),
        days,
        hours,
        min_level,
    }
}

fn random_plan(rng: &mut Rng) -> Arc<Plan> {
    let rules = (0..1 + rng.below(8))
        .map(|i| {
            let checks = (0..1 + rng.below(3))
                .map(|_| check(rng.pick(&SOURCES).0, rng))
                .collect();
            let clears = (0..rng.below(3))
                .map(|_| check(rng.pick(&["negative", "verified", "scan", "control"]), rng))
                .collect();
            Rule {
                id: format!("r{i}"),
                colour: if rng.chance(50) { RED } else { YELLOW },
                match_all: rng.chance(30),
                checks,
                clears,
            }
        })
        .collect();
    Arc::new(Plan::new("random".into(), rules).unwrap())
}

/// A plan shaped like the real rule set: raising checks with clears by negative tests (hours),
/// county grading, a phone clear.
fn city_plan() -> Arc<Plan> {
    let c = |source: &str, days: Option<u32>, hours: Option<u32>, min_level: Option<u8>| Check {
        source: source.into(),
        days,
        hours,
        min_level,
    };
    let rule = |id: &str, colour, match_all, checks, clears| Rule {
        id: id.into(),
        colour,
        match_all,
        checks,
        clears,
    };
    Arc::new(
        Plan::new(
            "city".into(),
            vec![
                rule(
                    "control",
                    RED,
                    false,
                    vec![c("control", None, None, None)],
                    vec![],
                ),
                rule(
                    "contact",
                    RED,
                    false,
                    vec![c("contact", Some(14), None, None)],
                    vec![c("negative", None, Some(48), None)],
                ),
                rule(
                    "high-risk-travel",
                    RED,
                    false,
                    vec![
                        c("travel", Some(14), None, Some(3)),
                        c("roaming", Some(14), None, Some(3)),
                    ],
                    vec![c("verified", None, None, None)],
                ),
                rule(
                    "medium-risk-travel",
                    YELLOW,
                    false,
                    vec![
                        c("travel", Some(14), None, Some(2)),
                        c("roaming", Some(14), None, Some(2)),
                    ],
                    vec![
                        c("negative", None, Some(72), None),
                        c("verified", None, None, None),
                    ],
                ),
                rule(
                    "scan-and-residence",
                    YELLOW,
                    true,
                    vec![
                        c("scan", None, Some(72), None),
                        c("residence", None, None, Some(1)),
                    ],
                    vec![],
                ),
            ],
        )
        .unwrap(),
    )
}

/// Everything a caller can read of two verdicts is the same.
fn assert_same(got: &Verdicts, want: &Verdicts, context: &str) {
    assert!(Arc::ptr_eq(&got.index, &want.index), "{context}");
    assert_eq!(got.now(), want.now(), "{context}");
    let n = want.index.registry.persons.len() as u32;
    // explanations are worked out on demand from the index and the masks (slowly in a debug
    // build): a sample
    let stride = if n > 400 { 11 } else { 3 };
    for p in 0..n {
        assert_eq!(
            got.evaluate(p).unwrap(),
            want.evaluate(p).unwrap(),
            "{context}: person {p}"
        );
        if p % stride == 0 {
            assert_eq!(
                got.explain(p).unwrap(),
                want.explain(p).unwrap(),
                "{context}: person {p}"
            );
        }
    }
    assert!(got.evaluate(n).is_err(), "{context}");
    let all: Vec<u32> = (0..n).collect();
    assert_eq!(
        got.evaluate_many(&all).unwrap(),
        want.evaluate_many(&all).unwrap()
    );
    assert_eq!(got.colour_counts(), want.colour_counts(), "{context}");
    assert_eq!(got.rule_counts(), want.rule_counts(), "{context}");
    assert_eq!(got.non_green(), want.non_green(), "{context}");
}

#[test]
fn chained_updates_equal_a_fresh_evaluation() {
    for seed in 0..60u64 {
        let mut world = World::new(seed);
        let persons = if seed % 5 == 0 {
            1500
        } else {
            20 + world.rng.below(300)
        };
        let mut index = world.base(persons);
        let plans = [
            city_plan(),
            random_plan(&mut world.rng),
            random_plan(&mut world.rng),
        ];
        let mut current: Vec<Verdicts> = plans
            .iter()
            .map(|p| Verdicts::at(index.clone(), p.clone(), world.now).unwrap())
            .collect();
        // Most versions are applied one by one, with the builder's change log. Some are
        // skipped (the next update spans two versions) or read back from a snapshot (no log,
        // no bucket shared): then the buckets are compared.
        let mut pending: BTreeSet<u32> = BTreeSet::new();
        for step in 0..8 {
            let (next, touched) = world.step(&index);
            pending.extend(touched);
            index = next.clone();
            let next = match step % 4 {
                1 => continue,
                3 if seed % 2 == 0 => {
                    let bytes = snapshot::to_bytes(&next);
                    Arc::new(snapshot::from_bytes(&bytes, SECRET).unwrap())
                }
                _ => next,
            };
            let touched: Vec<u32> = std::mem::take(&mut pending).into_iter().collect();
            for (k, plan) in plans.iter().enumerate() {
                let updated = current[k].update(next.clone(), &touched).unwrap();
                let fresh = Verdicts::at(next.clone(), plan.clone(), world.now).unwrap();
                let context = format!("seed {seed} step {step} plan {k}");
                assert_same(&updated, &fresh, &context);
                current[k] = updated;
            }
        }
    }
}

#[test]
fn an_unchanged_index_and_an_empty_list_change_nothing() {
    let mut world = World::new(7);
    let index = world.base(400);
    let v = Verdicts::at(index.clone(), city_plan(), world.now).unwrap();
    assert_same(&v.update(index.clone(), &[]).unwrap(), &v, "same index");
    let again = index.builder().finish();
    let u = v.update(Arc::new(again), &[1, 2, 3, 399]).unwrap();
    assert_eq!(u.colour_counts(), v.colour_counts());
    assert_eq!(u.non_green(), v.non_green());
}

#[test]
fn stale_foreign_and_shrunk_indexes_are_refused() {
    let mut world = World::new(11);
    let v1 = world.base(100);
    let verdicts = Verdicts::at(v1.clone(), city_plan(), world.now).unwrap();
    let mut b = v1.builder();
    b.add_person_key(1 << 100);
    let v2 = Arc::new(b.finish());
    let later = verdicts.update(v2.clone(), &[]).unwrap();
    let message =
        |r: healthcode_matcher::errors::Result<Verdicts>| r.err().expect("refused").to_string();

    let stale = message(later.update(v1.clone(), &[]));
    assert!(stale.contains("older than version"), "{stale}");

    // the same keys under another secret
    let mut b = Index::new([6; 32]).builder();
    for name in SOURCES {
        b.define_source(name.0, name.1, name.2, name.3).unwrap();
    }
    for k in 0..200u128 {
        b.add_person_key(k + 1);
    }
    let other_secret = Arc::new(b.finish_as(50).unwrap());
    assert!(message(verdicts.update(other_secret, &[])).contains("another secret"));

    // the same secret, the persons registered in another order
    let mut b = Index::new(SECRET).builder();
    for name in SOURCES {
        b.define_source(name.0, name.1, name.2, name.3).unwrap();
    }
    for k in (0..200u128).rev() {
        b.add_person_key(k + 1);
    }
    for k in 0..200u128 {
        b.add_phone_key(k + (1 << 40), None).unwrap();
    }
    let foreign = Arc::new(b.finish_as(50).unwrap());
    let e = message(verdicts.update(foreign, &[]));
    assert!(e.contains("numbers its persons differently"), "{e}");

    // a higher number but fewer persons
    let mut b = Index::new(SECRET).builder();
    for name in SOURCES {
        b.define_source(name.0, name.1, name.2, name.3).unwrap();
    }
    b.add_person_key(1);
    let shrunk = Arc::new(b.finish_as(50).unwrap());
    let e = message(verdicts.update(shrunk, &[]));
    assert!(e.contains("persons, fewer than the"), "{e}");

    let n = v2.registry.persons.len() as u32;
    let e = message(verdicts.update(v2.clone(), &[n]));
    assert!(e.contains(&format!("no person with id {n}")), "{e}");
    assert!(verdicts.update(v2, &[n - 1]).is_ok(), "the new person");
}

/// Past a share of the population (and `FULL_EVALUATION_MIN` persons) `update` evaluates
/// everyone; the answer is the same.
#[test]
fn a_long_list_is_evaluated_in_full_with_the_same_result() {
    let mut world = World::new(3);
    let persons = FULL_EVALUATION_MIN as u32 + 4_000;
    let index = world.base(persons);
    let v = Verdicts::at(index.clone(), city_plan(), world.now).unwrap();
    let (next, _) = world.step(&index);
    let everyone: Vec<u32> = (0..next.registry.persons.len() as u32).collect();
    assert!(evaluates_everyone(
        everyone.len() as u64,
        everyone.len() as u64
    ));
    assert!(!evaluates_everyone(FULL_EVALUATION_MIN, 1 << 40));
    assert!(!evaluates_everyone(1 << 20, 1 << 30), "under a 128th");
    let all = v.update(next.clone(), &everyone).unwrap();
    assert_same(
        &all,
        &Verdicts::at(next, city_plan(), world.now).unwrap(),
        "everyone",
    );
}
