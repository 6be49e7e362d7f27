//! Python inputs to core values and back: secrets, 16-byte keys, little-endian u32 arrays,
//! newline-separated identifiers, day and hour numbers, portable roaring bytes. Each refusal is
//! an `InvalidOperation` (or a plain `ValueError` for a secret) that says what to give instead.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use roaring::RoaringBitmap;

use super::errors::InvalidOperation;
use crate::ids::Key;
use crate::index::UNDATED;

/// A 32-byte deployment secret.
pub(crate) fn secret_of(secret: &[u8]) -> PyResult<[u8; 32]> {
    secret
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("the secret is 32 bytes, not {}", secret.len())))
}

/// One 16-byte keyed hash, as `Hasher.person_key` returns it.
pub(crate) fn key_of(raw: &[u8]) -> PyResult<Key> {
    let k: [u8; 16] = raw
        .try_into()
        .map_err(|_| InvalidOperation::new_err(format!("a key is 16 bytes, not {}", raw.len())))?;
    Ok(u128::from_le_bytes(k))
}

/// Concatenated 16-byte keys.
pub(crate) fn keys_of(raw: &[u8]) -> PyResult<Vec<Key>> {
    if !raw.len().is_multiple_of(16) {
        return Err(InvalidOperation::new_err(
            "keys are concatenated 16-byte values",
        ));
    }
    Ok(raw
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16")))
        .collect())
}

/// Little-endian u32 values (`what` names them in the error).
pub(crate) fn u32s_of(raw: &[u8], what: &str) -> PyResult<Vec<u32>> {
    if !raw.len().is_multiple_of(4) {
        return Err(InvalidOperation::new_err(format!(
            "{what} are little-endian u32 values"
        )));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect())
}

/// u32 values as little-endian bytes.
pub(crate) fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A bitmap's ids, ascending, as little-endian u32 bytes.
pub(crate) fn bitmap_u32_bytes(b: &RoaringBitmap) -> Vec<u8> {
    b.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The non-blank lines of UTF-8 text.
pub(crate) fn lines(raw: &[u8]) -> PyResult<Vec<&str>> {
    let text = std::str::from_utf8(raw).map_err(|_| InvalidOperation::new_err("not UTF-8"))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).collect())
}

/// A bucket time from Python: a day or hour number, or `None` for undated rows.
pub(crate) fn day_of(day: Option<u32>) -> PyResult<u32> {
    match day {
        Some(UNDATED) => Err(InvalidOperation::new_err("day 4294967295 is reserved")),
        Some(d) => Ok(d),
        None => Ok(UNDATED),
    }
}

/// Days were given for an hourly source, or hours for a daily one.
pub(crate) fn unit_err(source: &str, hourly: bool) -> PyErr {
    InvalidOperation::new_err(if hourly {
        format!("source {source:?} is hourly: give hours (hour numbers), not days")
    } else {
        format!("source {source:?} is daily: give days, not hours")
    })
}

/// A bitmap in the portable roaring format (what pyroaring and CRoaring read).
pub(crate) fn bitmap_bytes(b: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}
