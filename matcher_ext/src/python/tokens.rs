//! `TokenSigner`, `TokenVerifier`, `decode_code_token` and `TokenFormatError`: code tokens
//! (the core is [`crate::tokens`]). The signature and its verification run detached from the
//! GIL.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::tokens::{self, Claims, KEY_BYTES, KEY_ID_BYTES};

create_exception!(
    healthcode_matcher._native,
    TokenFormatError,
    PyValueError,
    "Not a code token; the message says what is wrong."
);

/// Register the exception on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TokenFormatError", m.py().get_type::<TokenFormatError>())?;
    m.add_class::<PyTokenSigner>()?;
    m.add_class::<PyTokenVerifier>()?;
    m.add_function(wrap_pyfunction!(decode_code_token, m)?)?;
    Ok(())
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> PyResult<[u8; N]> {
    <[u8; N]>::try_from(bytes).map_err(|_| {
        PyValueError::new_err(format!("{what} must be {N} bytes, got {}", bytes.len()))
    })
}

/// Signs code tokens with one Ed25519 key.
#[pyclass(frozen, name = "TokenSigner", module = "healthcode_matcher._native")]
pub(crate) struct PyTokenSigner {
    inner: tokens::Signer,
    key_id: [u8; KEY_ID_BYTES],
}

#[pymethods]
impl PyTokenSigner {
    #[new]
    fn new(seed: &[u8], key_id: &[u8]) -> PyResult<Self> {
        let key_id = fixed(key_id, "key_id")?;
        Ok(PyTokenSigner {
            inner: tokens::Signer::new(&fixed(seed, "seed")?, key_id),
            key_id,
        })
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.public_key())
    }

    #[getter]
    fn key_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key_id)
    }

    fn encode(
        &self,
        py: Python<'_>,
        person_key: &[u8],
        issued_at_ms: i64,
        expires_at_ms: i64,
        token_id: &[u8],
    ) -> PyResult<String> {
        let claims = Claims {
            key_id: self.key_id,
            person_key: fixed(person_key, "person_key")?,
            issued_at_ms,
            expires_at_ms,
            token_id: fixed(token_id, "token_id")?,
        };
        py.detach(|| self.inner.encode(&claims))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// Verifies Ed25519 signatures of one public key (`verify_strict`).
#[pyclass(frozen, name = "TokenVerifier", module = "healthcode_matcher._native")]
pub(crate) struct PyTokenVerifier {
    inner: tokens::Verifier,
}

#[pymethods]
impl PyTokenVerifier {
    #[new]
    fn new(public_key: &[u8]) -> PyResult<Self> {
        Ok(PyTokenVerifier {
            inner: tokens::Verifier::new(&fixed::<KEY_BYTES>(public_key, "public_key")?),
        })
    }

    fn verify(&self, py: Python<'_>, signed: &[u8], signature: &[u8]) -> bool {
        py.detach(|| self.inner.verify_signature(signed, signature))
    }
}

/// The parts of an ``HCN1:`` token: (kid, person key, issued at ms, expires at ms, token id,
/// COSE message, Sig_structure, signature).
type DecodedParts<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    i64,
    i64,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

/// The parts of an ``HCN1:`` token, not verified; `TokenFormatError` if it is not one.
#[pyfunction]
pub(crate) fn decode_code_token<'py>(
    py: Python<'py>,
    text: &Bound<'py, PyString>,
) -> PyResult<DecodedParts<'py>> {
    // A str with a lone surrogate is no UTF-8: each one becomes U+FFFD, which is not base45
    // either, and the count of characters stays Python's.
    let text = text.to_string_lossy();
    let token = tokens::decode(&text).map_err(|e| TokenFormatError::new_err(e.to_string()))?;
    let claims = &token.claims;
    Ok((
        PyBytes::new(py, &claims.key_id),
        PyBytes::new(py, &claims.person_key),
        claims.issued_at_ms,
        claims.expires_at_ms,
        PyBytes::new(py, &claims.token_id),
        PyBytes::new(py, &token.cose),
        PyBytes::new(py, &token.signed),
        PyBytes::new(py, &token.signature),
    ))
}
