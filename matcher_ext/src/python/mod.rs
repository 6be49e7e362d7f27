//! The `_native` Python module: thin wrappers over the core, one file per Python type (as
//! tokenizers' bindings are laid out). Inputs are converted first ([`convert`], the
//! `FromPyObject` rule structs in [`plan`]), then the Rust work runs detached from the GIL
//! (`py.detach`) in every call that walks a bitmap or many rows. Errors cross as typed
//! exceptions, all subclasses of `ValueError` ([`errors`]).
//!
//! | file | Python |
//! |---|---|
//! | `errors.rs` | `IdentifierError`, `InvalidIdNumber`, `InvalidPhone`, `PlanError`, `InvalidOperation`, `SnapshotError` |
//! | `functions.rs` | `normalise_id_number`, `normalise_phone`, `synthetic_id_numbers`, `synthetic_phones` |
//! | `hasher.rs` | `Hasher` |
//! | `index.rs` | `Index` |
//! | `builder.rs` | `IndexBuilder` |
//! | `plan.rs` | `Plan` (and the rule dicts it reads) |
//! | `verdicts.rs` | `Verdicts` |
//! | `verdict.rs` | `Verdict` |
//! | `evidence.rs` | `Evidence` |
//! | `transitions.rs` | `Transitions` |
//! | `matcher.rs` | `Matcher` |
//! | `tokens.rs` | `TokenSigner`, `TokenVerifier`, `decode_code_token`, `TokenFormatError` |

use pyo3::prelude::*;

mod builder;
mod convert;
mod errors;
mod evidence;
mod functions;
mod hasher;
mod index;
mod matcher;
mod plan;
mod tokens;
mod transitions;
mod verdict;
mod verdicts;

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(functions::normalise_id_number, m)?)?;
    m.add_function(wrap_pyfunction!(functions::normalise_phone, m)?)?;
    m.add_function(wrap_pyfunction!(functions::synthetic_id_numbers, m)?)?;
    m.add_function(wrap_pyfunction!(functions::synthetic_phones, m)?)?;
    m.add_class::<hasher::PyHasher>()?;
    m.add_class::<index::PyIndex>()?;
    m.add_class::<builder::PyIndexBuilder>()?;
    m.add_class::<plan::PyPlan>()?;
    m.add_class::<verdict::PyVerdict>()?;
    m.add_class::<evidence::PyEvidence>()?;
    m.add_class::<verdicts::PyVerdicts>()?;
    m.add_class::<transitions::PyTransitions>()?;
    m.add_class::<matcher::PyMatcher>()?;
    tokens::register(m)?;
    Ok(())
}
