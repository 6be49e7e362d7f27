//! The one error type of the core. The Python layer maps each variant to a typed exception.

use thiserror::Error;

/// Everything the matcher can refuse, with a message that says what to fix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MatcherError {
    /// A resident ID number failed GB 11643 validation.
    #[error("invalid ID number: {0}")]
    InvalidIdNumber(String),
    /// Not a mainland mobile number.
    #[error("invalid phone number: {0}")]
    InvalidPhone(String),
    /// Not a usable transit card number.
    #[error("invalid card number: {0}")]
    InvalidCard(String),
    /// A rule plan is malformed.
    #[error("{0}")]
    Plan(String),
    /// An operation names something that does not exist or does not fit.
    #[error("{0}")]
    Invalid(String),
    /// A snapshot could not be read; nothing was loaded.
    #[error("snapshot refused: {0}")]
    Snapshot(String),
}

impl MatcherError {
    /// Prefix the message with where the problem is (a row, a line, a rule).
    pub fn at(self, place: &str) -> Self {
        use MatcherError::*;
        match self {
            InvalidIdNumber(m) => InvalidIdNumber(format!("{place}: {m}")),
            InvalidPhone(m) => InvalidPhone(format!("{place}: {m}")),
            InvalidCard(m) => InvalidCard(format!("{place}: {m}")),
            Plan(m) => Plan(format!("{place}: {m}")),
            Invalid(m) => Invalid(format!("{place}: {m}")),
            Snapshot(m) => Snapshot(format!("{place}: {m}")),
        }
    }
}

/// Shorthand for results of the core.
pub type Result<T> = std::result::Result<T, MatcherError>;
