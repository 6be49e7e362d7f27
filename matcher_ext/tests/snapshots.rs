//! Snapshot files through the public core API: the documented layout, byte by byte where it is
//! not a hash, a file round trip, and refusal of anything damaged.

use healthcode_matcher::index::{Index, KeyedBy};
use healthcode_matcher::snapshot::{from_bytes, load, save, to_bytes};

const SECRET: [u8; 32] = [9; 32];

/// Version 0 with one daily person source and nothing else: every byte but the secret's
/// fingerprint and the checksum is fixed by the layout in `snapshot.rs`.
#[test]
fn the_empty_version_0_has_the_documented_layout() {
    let mut b = Index::new(SECRET).builder();
    b.define_source("confirmed", KeyedBy::Person, false, false)
        .unwrap();
    let bytes = to_bytes(&b.finish_as(0).unwrap());
    let mut body: Vec<u8> = Vec::new();
    body.extend_from_slice(&0u64.to_le_bytes()); // version
    body.extend_from_slice(&healthcode_matcher::ids::Hasher::new(SECRET).fingerprint());
    body.extend_from_slice(&[0; 4]); // persons
    body.extend_from_slice(&[0; 4]); // phones
    body.extend_from_slice(&[0; 4]); // cards
    body.extend_from_slice(&[0; 4]); // county levels
    body.extend_from_slice(&[1, 0, 0, 0]); // one source
    body.extend_from_slice(&[9, 0]); // name length
    body.extend_from_slice(b"confirmed");
    body.extend_from_slice(&[0, 0]); // keyed by person; flags: no county, daily
    body.extend_from_slice(&[0; 4]); // no buckets
    let mut want = b"HCMIDX01".to_vec();
    want.extend_from_slice(&(body.len() as u64).to_le_bytes());
    want.extend_from_slice(&body);
    want.extend_from_slice(blake3::hash(&body).as_bytes());
    assert_eq!(bytes, want);
}

#[test]
fn a_file_round_trip_keeps_everything() {
    let mut b = Index::new(SECRET).builder();
    b.define_source("roaming", KeyedBy::Phone, true, false)
        .unwrap();
    b.define_source("nat", KeyedBy::Person, false, true)
        .unwrap();
    let ps: Vec<u32> = (0..5000u128)
        .map(|k| b.add_person_key(k << 80 | k))
        .collect();
    let phone = b.add_phone_key(7, Some(ps[9])).unwrap();
    b.add_card_key(8, ps[10]).unwrap();
    b.add_rows("roaming", &[phone], 19_000, Some(&[120116]))
        .unwrap();
    b.add_rows("nat", &ps, 19_000 * 24 + 5, None).unwrap();
    b.set_county_level(120116, 3).unwrap();
    let index = b.finish_as(12).unwrap();

    let dir = std::env::temp_dir().join(format!("hcm-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v12.idx");
    save(&index, &path).unwrap();
    let back = load(&path, SECRET).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(back.version, 12);
    assert_eq!(back.registry.persons.len(), 5000);
    assert_eq!(back.registry.phones_of(ps[9]), vec![phone]);
    assert_eq!(back.registry.card_holder(8), Some(ps[10]));
    assert_eq!(back.level(120116), 3);
    let nat = back.source("nat").unwrap();
    assert!(nat.hourly && !nat.has_county);
    assert_eq!(nat.members().len(), 5000);
    assert_eq!(to_bytes(&back), to_bytes(&index), "deterministic");
}

#[test]
fn damaged_or_foreign_snapshots_are_refused() {
    let bytes = to_bytes(&Index::new(SECRET).builder().finish());
    assert!(from_bytes(&bytes, SECRET).is_ok());
    for cut in [0, 8, 16, bytes.len() - 32, bytes.len() - 1] {
        assert!(from_bytes(&bytes[..cut], SECRET).is_err(), "cut at {cut}");
    }
    let mut flipped = bytes.clone();
    flipped[20] ^= 0x40;
    let e = from_bytes(&flipped, SECRET).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    let e = from_bytes(&bytes, [1; 32]).unwrap_err().to_string();
    assert!(e.contains("secret"), "{e}");
    assert!(load(std::path::Path::new("/nonexistent/x.idx"), SECRET).is_err());
}
