//! Index versions through the public core API: numbering (version 0 is the empty index),
//! isolation between versions, and what a builder refuses.

use std::sync::Arc;

use healthcode_matcher::errors::MatcherError;
use healthcode_matcher::index::{Index, KeyedBy, UNDATED};
use healthcode_matcher::snapshot;

const SECRET: [u8; 32] = [3; 32];

#[test]
fn the_root_can_be_published_as_version_0_with_its_sources_defined() {
    let root = Index::new(SECRET);
    assert!(root.is_root() && root.version == 0);
    let mut b = root.builder();
    b.define_source("confirmed", KeyedBy::Person, false, false)
        .unwrap();
    b.define_source("roaming", KeyedBy::Phone, true, false)
        .unwrap();
    b.check_version(0).unwrap();
    let v0 = b.finish_as(0).unwrap();
    assert_eq!(v0.version, 0);
    assert!(!v0.is_root(), "once published, 0 is taken");
    assert_eq!(v0.sources.len(), 2);
    assert_eq!(v0.registry.persons.len(), 0);

    // From the published version 0, the next number is 1 (or any higher), never 0 again.
    let mut b = v0.builder();
    let e = b.check_version(0).unwrap_err();
    assert_eq!(
        e,
        MatcherError::Invalid("version 0 does not follow version 0".into())
    );
    assert!(v0.builder().finish_as(0).is_err());
    let p = b.add_person_key(1);
    b.add_rows("confirmed", &[p], UNDATED, None).unwrap();
    let v1 = b.finish();
    assert_eq!(v1.version, 1);
    assert_eq!(v0.source("confirmed").unwrap().members().len(), 0);
    assert_eq!(v1.source("confirmed").unwrap().members().len(), 1);
}

#[test]
fn the_root_still_finishes_as_1_by_default_and_any_higher_number_on_request() {
    assert_eq!(Index::new(SECRET).builder().finish().version, 1);
    assert_eq!(
        Index::new(SECRET).builder().finish_as(42).unwrap().version,
        42
    );
    let v5 = Index::new(SECRET).builder().finish_as(5).unwrap();
    for taken in [0, 4, 5] {
        assert!(v5.builder().finish_as(taken).is_err(), "version {taken}");
    }
    assert_eq!(v5.builder().finish_as(6).unwrap().version, 6);
    assert_eq!(v5.builder().finish().version, 6);
}

#[test]
fn a_version_0_read_back_from_a_snapshot_is_not_the_root() {
    let mut b = Index::new(SECRET).builder();
    b.define_source("confirmed", KeyedBy::Person, false, false)
        .unwrap();
    let v0 = b.finish_as(0).unwrap();
    let back = snapshot::from_bytes(&snapshot::to_bytes(&v0), SECRET).unwrap();
    assert_eq!(back.version, 0);
    assert!(!back.is_root());
    assert!(back.builder().check_version(0).is_err());
    // even the untouched root, once stored, is a published version 0
    let stored_root = snapshot::to_bytes(&Index::new(SECRET));
    assert!(!snapshot::from_bytes(&stored_root, SECRET)
        .unwrap()
        .is_root());
}

#[test]
fn a_builder_changes_nothing_that_readers_hold() {
    let mut b = Index::new(SECRET).builder();
    b.define_source("home_quarantine", KeyedBy::Person, false, false)
        .unwrap();
    let ids: Vec<u32> = (0..100u128).map(|k| b.add_person_key(k << 64)).collect();
    b.add_rows("home_quarantine", &ids, UNDATED, None).unwrap();
    let v1 = Arc::new(b.finish());
    let mut b = v1.builder();
    b.remove_rows("home_quarantine", &ids[..60]).unwrap();
    b.set_county_level(120101, 2).unwrap();
    let extra = b.add_person_key(1 << 100);
    let v2 = b.finish();
    assert_eq!(v1.source("home_quarantine").unwrap().members().len(), 100);
    assert_eq!(v2.source("home_quarantine").unwrap().members().len(), 40);
    assert_eq!((v1.level(120101), v2.level(120101)), (0, 2));
    assert_eq!(v1.registry.persons.get(1 << 100), None);
    assert_eq!(v2.registry.persons.get(1 << 100), Some(extra));
}

#[test]
fn bad_input_is_refused_with_what_to_fix() {
    let mut b = Index::new(SECRET).builder();
    b.define_source("travel", KeyedBy::Person, true, false)
        .unwrap();
    let p = b.add_person_key(1);
    let msg = |r: Result<(), MatcherError>| r.unwrap_err().to_string();
    assert!(msg(b.add_rows("travel", &[p], 5, None)).contains("give one county per row"));
    assert!(msg(b.add_rows("travel", &[p], 5, Some(&[0]))).contains("county code 0"));
    assert!(msg(b.add_rows("travel", &[7], 5, Some(&[120101]))).contains("id 7"));
    assert!(msg(b.add_rows("nope", &[p], 5, None)).contains("unknown source"));
    assert!(msg(b.define_source("travel", KeyedBy::Phone, true, false)).contains("already"));
    assert!(msg(b.set_county_level(120101, 4)).contains("0 to 3"));
    assert!(b.add_phone_key(9, Some(99)).is_err(), "no person 99");
    assert!(b.peek().source("travel").unwrap().buckets.is_empty());
}
