//! The health-code matcher.
//!
//! Resident ID numbers and phone numbers are validated at the edge ([`ids`]) and kept only as
//! keyed 128-bit hashes, each mapped to a dense `u32` ([`registry`]). Risk sources are roaring
//! bitmaps of those ids, bucketed by day and county ([`index`]). A rule plan is evaluated over a
//! whole index version at once ([`plan`]), and answered for a batch of many persons in one
//! call ([`batch`]) and carried to the next version by re-evaluating only
//! the persons a change touches ([`incremental`]); a version can be written to and read from a
//! checksummed snapshot ([`snapshot`]). The Python module lives in `python/` (one file per
//! Python type), behind the `python` feature, so `cargo test` needs no interpreter.
#![warn(missing_docs)]

pub mod batch;
mod blocks;
pub mod bucket;
pub mod errors;
pub mod ids;
pub mod incremental;
pub mod index;
pub mod plan;
pub mod registry;
pub mod shared;
pub mod snapshot;
pub mod tokens;

#[cfg(feature = "python")]
mod python;
