//! The exceptions of `_native`, all subclasses of `ValueError`, and the one mapping from the
//! core's [`MatcherError`] to them.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::MatcherError;

create_exception!(
    healthcode_matcher._native,
    IdentifierError,
    PyValueError,
    "An identifier is not valid."
);
create_exception!(
    healthcode_matcher._native,
    InvalidIdNumber,
    IdentifierError,
    "A resident ID number is not valid."
);
create_exception!(
    healthcode_matcher._native,
    InvalidPhone,
    IdentifierError,
    "Not a mainland mobile number."
);
create_exception!(
    healthcode_matcher._native,
    PlanError,
    PyValueError,
    "A rule plan is malformed."
);
create_exception!(
    healthcode_matcher._native,
    InvalidOperation,
    PyValueError,
    "An operation does not fit the index."
);
create_exception!(
    healthcode_matcher._native,
    SnapshotError,
    PyValueError,
    "A snapshot could not be read."
);

/// The typed exception of a core error, with its message.
pub(crate) fn py_err(e: MatcherError) -> PyErr {
    let msg = e.to_string();
    match e {
        MatcherError::InvalidIdNumber(_) => InvalidIdNumber::new_err(msg),
        MatcherError::InvalidPhone(_) => InvalidPhone::new_err(msg),
        MatcherError::InvalidCard(_) => IdentifierError::new_err(msg),
        MatcherError::Plan(_) => PlanError::new_err(msg),
        MatcherError::Invalid(_) => InvalidOperation::new_err(msg),
        MatcherError::Snapshot(_) => SnapshotError::new_err(msg),
    }
}

/// Register the exceptions on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("IdentifierError", py.get_type::<IdentifierError>())?;
    m.add("InvalidIdNumber", py.get_type::<InvalidIdNumber>())?;
    m.add("InvalidPhone", py.get_type::<InvalidPhone>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    m.add("InvalidOperation", py.get_type::<InvalidOperation>())?;
    m.add("SnapshotError", py.get_type::<SnapshotError>())?;
    Ok(())
}
