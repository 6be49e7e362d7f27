//! Code tokens: what the QR code on a holder's screen carries (`services/display/tokens.py`
//! has the format's full description).
//!
//! A token is `HCN1:` + base45 (RFC 9285) of a COSE_Sign1 message (RFC 9052, CBOR tag 18):
//!
//! ```text
//! protected header   {1 (alg): -8 (EdDSA), 4 (kid): 8-byte key id}
//! unprotected header {}
//! payload            {2 (sub): 16-byte person key, 6 (iat): f64 seconds,
//!                     4 (exp): f64 seconds, 7 (cti): 16-byte token id}
//! signature          Ed25519 over the Sig_structure ["Signature1", protected, h'', payload]
//! ```
//!
//! [`Signer::encode`] writes exactly the bytes the Python reference (`cwt`, `cbor2`, `base45`)
//! wrote, so a token's text does not change with the implementation. The structure is fixed,
//! so the encoder writes its CBOR by hand: eleven fixed heads around five fields. The decoder
//! ([`decode`]) reads any well-formed CBOR, so that a malformed token is refused with the
//! same message as before, for the same reason, in the same order of checks; the parts outside
//! the signature (the tag, the array, the unprotected header, anything after the message) must
//! be exactly as encoded, so nothing in a token varies without breaking its signature.
//!
//! ```
//! use healthcode_matcher::tokens::{decode, Claims, Signer, Verifier};
//!
//! let signer = Signer::new(&[7; 32], [1; 8]);
//! let claims = Claims {
//!     key_id: [1; 8],
//!     person_key: [2; 16],
//!     issued_at_ms: 1_700_000_000_123,
//!     expires_at_ms: 1_700_000_060_123,
//!     token_id: [3; 16],
//! };
//! let text = signer.encode(&claims).unwrap();
//! assert!(text.starts_with("HCN1:"));
//! let token = decode(&text).unwrap();
//! assert_eq!(token.claims, claims);
//! assert!(Verifier::new(&signer.public_key()).verify(&token));
//! assert!(!Verifier::new(&Signer::new(&[8; 32], [1; 8]).public_key()).verify(&token));
//! ```

use std::borrow::Cow;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

/// What every code token's text starts with.
pub const PREFIX: &str = "HCN1:";
/// Bytes of a signing key's id (the first bytes of SHA-256 of its public key).
pub const KEY_ID_BYTES: usize = 8;
/// Bytes of an Ed25519 seed (the private key) and of a public key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a person key and of a token id.
pub const ID_BYTES: usize = 16;
/// A token is about 218 characters; anything much longer is refused before it is decoded.
pub const MAX_TOKEN_CHARS: usize = 400;

const SIGNATURE_BYTES: usize = 64;
// CBOR pieces of our one encoding (RFC 8949): heads and the labels of COSE and CWT.
const TAG_COSE_SIGN1: u8 = 0xd2; // tag 18
const ARRAY_4: u8 = 0x84;
const MAP_0: u8 = 0xa0;
const MAP_2: u8 = 0xa2;
const MAP_4: u8 = 0xa4;
const FLOAT_64: u8 = 0xfb;
const ALG_EDDSA: [u8; 2] = [0x01, 0x27]; // 1 (alg): -8 (EdDSA)
const LABEL_KID: u8 = 0x04;
const LABEL_SUB: u8 = 0x02;
const LABEL_IAT: u8 = 0x06;
const LABEL_EXP: u8 = 0x04;
const LABEL_CTI: u8 = 0x07;
const SIGNATURE1: &[u8] = b"Signature1";
// A NumericDate must be below 2**40 seconds (as the Python decoder had it).
const MAX_SECONDS: f64 = (1u64 << 40) as f64;
// Milliseconds whose division by 1000 in f64 is Python's `ms / 1000` (exact operands).
const MAX_EXACT_MS: i64 = 1 << 53;

/// What a token says: the signing key's id, the holder, its validity and its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The id of the key that signed it (the COSE kid).
    pub key_id: [u8; KEY_ID_BYTES],
    /// The holder's 16-byte keyed hash of their ID number (sub).
    pub person_key: [u8; ID_BYTES],
    /// Issued at, milliseconds since the epoch (iat, sent as seconds).
    pub issued_at_ms: i64,
    /// Expires at, milliseconds since the epoch (exp, sent as seconds).
    pub expires_at_ms: i64,
    /// 16 random bytes (cti): a token is valid for one scan.
    pub token_id: [u8; ID_BYTES],
}

/// A token taken apart, not yet verified: nothing in it is to be trusted before
/// [`Verifier::verify`] with the key its kid names says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedToken {
    /// What the token says.
    pub claims: Claims,
    /// The whole COSE_Sign1 message (what a stock COSE library verifies).
    pub cose: Vec<u8>,
    /// The COSE Sig_structure: the bytes the signature is over.
    pub signed: Vec<u8>,
    /// The signature, as the message carries it (64 bytes in a genuine token).
    pub signature: Vec<u8>,
}

/// Why a text is not a code token. Each message is the one the Python decoder gave.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// No `HCN1:` prefix.
    #[error("a code token starts with 'HCN1:'")]
    Prefix,
    /// More than [`MAX_TOKEN_CHARS`] characters after the prefix.
    #[error("the code token is too long")]
    TooLong,
    /// Not base45.
    #[error("the code token is not base45")]
    NotBase45,
    /// Not CBOR, or not the arrays and strings of a COSE message.
    #[error("the code token is not a COSE message")]
    NotCose,
    /// Not tag 18, or anything outside the signature that we would not have written.
    #[error("a code token is one COSE_Sign1 message, encoded as we encode it")]
    NotOurEncoding,
    /// The protected header does not say EdDSA.
    #[error("a code token is signed with EdDSA")]
    NotEdDsa,
    /// No 8-byte kid in the protected header.
    #[error("a code token names its signing key by a 8-byte kid")]
    NoKeyId,
    /// The payload is not a map.
    #[error("a code token's payload is a CWT claims set")]
    NotClaims,
    /// sub is not 16 bytes.
    #[error("a code token's sub is a 16-byte person key")]
    PersonKey,
    /// cti is not 16 bytes.
    #[error("a code token's cti is a 16-byte token id")]
    TokenId,
    /// iat or exp is not a number of seconds in range.
    #[error("a code token's iat and exp are times in seconds")]
    Times,
}

/// A claim that cannot be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A time whose seconds would not be exact (beyond 2**53 ms).
    #[error("a token's times must be within ±2**53 ms, got {0}")]
    TimeOutOfRange(i64),
}

/// Signs tokens with one Ed25519 key. Built once per key: deriving the public key from the
/// seed costs as much as a signature.
pub struct Signer {
    key: SigningKey,
    key_id: [u8; KEY_ID_BYTES],
}

impl Signer {
    /// The signer of the Ed25519 key with this 32-byte seed, whose tokens carry `key_id`.
    pub fn new(seed: &[u8; KEY_BYTES], key_id: [u8; KEY_ID_BYTES]) -> Self {
        Signer {
            key: SigningKey::from_bytes(seed),
            key_id,
        }
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; KEY_BYTES] {
        self.key.verifying_key().to_bytes()
    }

    /// The token text of `claims`, signed. Its kid is this signer's (`claims.key_id` is
    /// ignored: a token names the key that signed it).
    pub fn encode(&self, claims: &Claims) -> Result<String, EncodeError> {
        let protected = protected_header(&self.key_id);
        let payload = claims_payload(claims)?;
        let signature = self.key.sign(&sig_structure(&protected, &payload));
        let mut message = Vec::with_capacity(4 + 1 + protected.len() + 2 + payload.len() + 66);
        message.push(TAG_COSE_SIGN1);
        message.push(ARRAY_4);
        put_bytes(&mut message, &protected);
        message.push(MAP_0);
        put_bytes(&mut message, &payload);
        put_bytes(&mut message, &signature.to_bytes());
        let mut text = String::with_capacity(PREFIX.len() + message.len() / 2 * 3 + 2);
        text.push_str(PREFIX);
        base45::encode_into(&message, &mut text);
        Ok(text)
    }
}

/// The token text of `claims`, signed with the key of `seed` and carrying `key_id`. A
/// caller that signs many tokens keeps a [`Signer`].
pub fn encode(
    seed: &[u8; KEY_BYTES],
    key_id: [u8; KEY_ID_BYTES],
    claims: &Claims,
) -> Result<String, EncodeError> {
    Signer::new(seed, key_id).encode(claims)
}

/// Verifies Ed25519 signatures of one public key.
///
/// `verify_strict`: besides the signature equation (cofactorless, as libsodium's), it refuses
/// a public key or a signature `R` of small order and a non-canonical `S`, the checks
/// libsodium (PyNaCl, which verified tokens before) makes; with them no two different
/// signatures of one message verify, and no weak key verifies everything.
pub struct Verifier {
    key: Option<VerifyingKey>,
}

impl Verifier {
    /// The verifier of a raw 32-byte public key; one that is not a curve point verifies nothing.
    pub fn new(public_key: &[u8; KEY_BYTES]) -> Self {
        Verifier {
            key: VerifyingKey::from_bytes(public_key).ok(),
        }
    }

    /// Whether `signature` is this key's over `signed`.
    pub fn verify_signature(&self, signed: &[u8], signature: &[u8]) -> bool {
        let (Some(key), Ok(bytes)) = (&self.key, <[u8; SIGNATURE_BYTES]>::try_from(signature))
        else {
            return false;
        };
        key.verify_strict(signed, &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// Whether the token's signature is this key's.
    pub fn verify(&self, token: &DecodedToken) -> bool {
        self.verify_signature(&token.signed, &token.signature)
    }
}

/// Whether `token` is signed by the key `public_key`. A caller that verifies many tokens
/// keeps a [`Verifier`].
pub fn verify(public_key: &[u8; KEY_BYTES], token: &DecodedToken) -> bool {
    Verifier::new(public_key).verify(token)
}

fn protected_header(key_id: &[u8; KEY_ID_BYTES]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + KEY_ID_BYTES + 1);
    out.push(MAP_2);
    out.extend_from_slice(&ALG_EDDSA);
    out.push(LABEL_KID);
    put_bytes(&mut out, key_id);
    out
}

fn claims_payload(claims: &Claims) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(MAP_4);
    out.push(LABEL_SUB);
    put_bytes(&mut out, &claims.person_key);
    out.push(LABEL_IAT);
    put_seconds(&mut out, claims.issued_at_ms)?;
    out.push(LABEL_EXP);
    put_seconds(&mut out, claims.expires_at_ms)?;
    out.push(LABEL_CTI);
    put_bytes(&mut out, &claims.token_id);
    Ok(out)
}

/// A NumericDate as the reference wrote it: Python's `ms / 1000` as a CBOR float64.
fn put_seconds(out: &mut Vec<u8>, ms: i64) -> Result<(), EncodeError> {
    if !(-MAX_EXACT_MS < ms && ms < MAX_EXACT_MS) {
        return Err(EncodeError::TimeOutOfRange(ms));
    }
    // Both operands are exact in f64 and IEEE division rounds correctly, as Python's int / int.
    let seconds = ms as f64 / 1000.0;
    out.push(FLOAT_64);
    out.extend_from_slice(&seconds.to_be_bytes());
    Ok(())
}

/// ["Signature1", protected, h'' (no external data), payload] (RFC 9052, section 4.4).
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + protected.len() + payload.len() + 6);
    out.push(ARRAY_4);
    put_head(&mut out, 3, SIGNATURE1.len() as u64);
    out.extend_from_slice(SIGNATURE1);
    put_bytes(&mut out, protected);
    put_bytes(&mut out, b"");
    put_bytes(&mut out, payload);
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A CBOR head in its shortest form (as cbor2 writes it).
fn put_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    match arg {
        0..=23 => out.push(major | arg as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

/// The parts of a token's text (after any surrounding line ends, which the caller drops), or
/// why it is not one. The checks are the Python decoder's, in its order, so a malformed token
/// gets the same message.
pub fn decode(text: &str) -> Result<DecodedToken, Malformed> {
    let digits = text.strip_prefix(PREFIX).ok_or(Malformed::Prefix)?;
    // Characters, not bytes, as Python counted them.
    if digits.len() > MAX_TOKEN_CHARS && digits.chars().count() > MAX_TOKEN_CHARS {
        return Err(Malformed::TooLong);
    }
    let raw = base45::decode(digits).ok_or(Malformed::NotBase45)?;
    let (message, _) = cbor::read(&raw).ok_or(Malformed::NotCose)?;
    let cbor::Value::Tag(18, content) = message else {
        return Err(Malformed::NotOurEncoding);
    };
    let parts = cose_sign1(&content).ok_or(Malformed::NotCose)?;
    // cbor2 read the first item of each and ignored what follows it.
    let (protected, _) = cbor::read(parts.protected).ok_or(Malformed::NotCose)?;
    let payload = match parts.payload {
        Some(bytes) => Some(cbor::read(bytes).ok_or(Malformed::NotCose)?.0),
        None => None,
    };
    // One encoding of the parts outside the signature: what we write around the signed ones.
    if !parts.unprotected_is_empty || outer_encoding(&parts) != raw {
        return Err(Malformed::NotOurEncoding);
    }
    if !protected.get(1).is_some_and(|alg| alg.equals_int(-8)) {
        return Err(Malformed::NotEdDsa);
    }
    let key_id = protected
        .get(4)
        .and_then(|kid| kid.fixed_bytes::<KEY_ID_BYTES>())
        .ok_or(Malformed::NoKeyId)?;
    let claims = match payload {
        Some(map @ cbor::Value::Map(_)) => map,
        _ => return Err(Malformed::NotClaims),
    };
    let person_key = claims
        .get(2)
        .and_then(|sub| sub.fixed_bytes::<ID_BYTES>())
        .ok_or(Malformed::PersonKey)?;
    let token_id = claims
        .get(7)
        .and_then(|cti| cti.fixed_bytes::<ID_BYTES>())
        .ok_or(Malformed::TokenId)?;
    let issued_at_ms = claims.get(6).and_then(time_ms);
    let expires_at_ms = claims.get(4).and_then(time_ms);
    let (Some(issued_at_ms), Some(expires_at_ms)) = (issued_at_ms, expires_at_ms) else {
        return Err(Malformed::Times);
    };
    let payload_bytes = parts.payload.unwrap_or_default(); // Some: the claims are a map
    Ok(DecodedToken {
        claims: Claims {
            key_id,
            person_key,
            issued_at_ms,
            expires_at_ms,
            token_id,
        },
        signed: sig_structure(parts.protected, payload_bytes),
        signature: parts.signature.to_vec(),
        cose: raw,
    })
}

/// A CWT NumericDate (seconds, integer or floating point) in milliseconds.
fn time_ms(value: &cbor::Value<'_>) -> Option<i64> {
    match *value {
        cbor::Value::Int(seconds) if (0..1 << 40).contains(&seconds) => Some(seconds as i64 * 1000),
        cbor::Value::Float(seconds)
            if seconds.is_finite() && (0.0..MAX_SECONDS).contains(&seconds) =>
        {
            // Python's round(): to the nearest, ties to even.
            Some((seconds * 1000.0).round_ties_even() as i64)
        }
        _ => None,
    }
}

/// The four fields of a COSE_Sign1 array, as the `cwt` library checked them.
struct Sign1<'a> {
    protected: &'a [u8],
    unprotected_is_empty: bool,
    payload: Option<&'a [u8]>,
    signature: &'a [u8],
}

fn cose_sign1<'a>(content: &'a cbor::Value<'a>) -> Option<Sign1<'a>> {
    let cbor::Value::Array(fields) = content else {
        return None;
    };
    let (protected, unprotected, payload) = cose_fields(fields)?;
    let [_, _, _, cbor::Value::Bytes(signature)] = fields.as_slice() else {
        return None;
    };
    Some(Sign1 {
        protected,
        unprotected_is_empty: unprotected.is_empty(),
        payload,
        signature,
    })
}

type CoseFields<'a> = (
    &'a [u8],
    &'a [(cbor::Value<'a>, cbor::Value<'a>)],
    Option<&'a [u8]>,
);

/// protected (bytes), unprotected (a map) and payload (bytes or null) of a COSE array, and
/// the countersignatures in the unprotected header well formed (cwt's checks).
fn cose_fields<'a>(fields: &'a [cbor::Value<'a>]) -> Option<CoseFields<'a>> {
    let [cbor::Value::Bytes(protected), cbor::Value::Map(unprotected), payload, ..] = fields else {
        return None;
    };
    let payload = match payload {
        cbor::Value::Bytes(bytes) => Some(&bytes[..]),
        cbor::Value::Null => None,
        _ => return None,
    };
    let countersignatures = unprotected
        .iter()
        .rev()
        .find(|(key, _)| key.equals_int(11))
        .map(|(_, value)| value);
    if let Some(countersignatures) = countersignatures {
        let cbor::Value::Array(items) = countersignatures else {
            return None;
        };
        match items.first()? {
            cbor::Value::Bytes(_) => {
                cose_fields(items)?;
            }
            cbor::Value::Array(_) => {
                for item in items {
                    let cbor::Value::Array(inner) = item else {
                        return None;
                    };
                    cose_fields(inner)?;
                }
            }
            _ => return None,
        }
    }
    Some((protected, unprotected, payload))
}

/// How we encode a message with these parts (cbor2's shortest form).
fn outer_encoding(parts: &Sign1<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(TAG_COSE_SIGN1);
    out.push(ARRAY_4);
    put_bytes(&mut out, parts.protected);
    out.push(MAP_0);
    match parts.payload {
        Some(payload) => put_bytes(&mut out, payload),
        None => out.push(0xf6),
    }
    put_bytes(&mut out, parts.signature);
    out
}

/// Base45 (RFC 9285): two bytes as three characters, a last odd byte as two.
pub mod base45 {
    const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

    /// The base45 text of `bytes`, appended to `out`.
    pub fn encode_into(bytes: &[u8], out: &mut String) {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            let mut n = u32::from(pair[0]) << 8 | u32::from(pair[1]);
            for _ in 0..3 {
                out.push(char::from(ALPHABET[(n % 45) as usize]));
                n /= 45;
            }
        }
        if let [last] = chunks.remainder() {
            out.push(char::from(ALPHABET[usize::from(*last % 45)]));
            out.push(char::from(ALPHABET[usize::from(*last / 45)]));
        }
    }

    /// The base45 text of `bytes`.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() / 2 * 3 + 2);
        encode_into(bytes, &mut out);
        out
    }

    fn digit(c: u8) -> Option<u32> {
        ALPHABET.iter().position(|&a| a == c).map(|d| d as u32)
    }

    /// The bytes of a base45 text; None for a character outside the alphabet, a length of
    /// 3n + 1, or a group whose value does not fit its bytes.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if text.len() % 3 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 3 * 2 + 1);
        for group in text.chunks(3) {
            let mut n = 0u32;
            for &c in group.iter().rev() {
                n = n * 45 + digit(c)?;
            }
            if group.len() == 3 {
                out.extend_from_slice(&u16::try_from(n).ok()?.to_be_bytes());
            } else {
                out.push(u8::try_from(n).ok()?);
            }
        }
        Some(out)
    }
}

/// A reader of any well-formed CBOR item (RFC 8949), as `cbor2.loads` read it: what the
/// decoder needs to give a malformed token the message it had before. Inputs are at most a
/// few hundred bytes, so nesting is bounded by the input's length.
mod cbor {
    use super::Cow;

    /// One decoded item. Byte strings borrow from the input unless they came in chunks.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value<'a> {
        /// An integer (major types 0 and 1, and bignums of up to 15 bytes).
        Int(i128),
        /// A bignum too large for `Int`: an integer, but never one we look for.
        BigInt,
        Bytes(Cow<'a, [u8]>),
        Text(Cow<'a, str>),
        Array(Vec<Value<'a>>),
        Map(Vec<(Value<'a>, Value<'a>)>),
        Tag(u64, Box<Value<'a>>),
        Float(f64),
        Bool(bool),
        Null,
        /// undefined, a simple value or a lone break: none of them is anything we look for.
        Other,
        /// The break code, which ends an indefinite-length item.
        Break,
    }

    impl<'a> Value<'a> {
        /// The value of key `label` in a map, as a Python dict of it answers `get(label)`:
        /// the last of equal keys, where 1, 1.0 and True are equal keys.
        pub fn get(&self, label: i128) -> Option<&Value<'a>> {
            let Value::Map(entries) = self else {
                return None;
            };
            entries
                .iter()
                .rev()
                .find(|(key, _)| key.equals_int(label))
                .map(|(_, value)| value)
        }

        /// Whether Python's `value == n` held for the decoded value.
        pub fn equals_int(&self, n: i128) -> bool {
            match *self {
                Value::Int(i) => i == n,
                Value::Float(f) => f == n as f64 && (f as i128) == n,
                Value::Bool(b) => i128::from(b) == n,
                _ => false,
            }
        }

        /// A byte string of exactly `N` bytes.
        pub fn fixed_bytes<const N: usize>(&self) -> Option<[u8; N]> {
            match self {
                Value::Bytes(bytes) => <[u8; N]>::try_from(&bytes[..]).ok(),
                _ => None,
            }
        }
    }

    /// The first item of `data` and how many bytes it took; None if it is not well formed.
    pub fn read(data: &[u8]) -> Option<(Value<'_>, usize)> {
        let mut reader = Reader { data, at: 0 };
        let value = reader.item()?;
        Some((value, reader.at))
    }

    struct Reader<'a> {
        data: &'a [u8],
        at: usize,
    }

    enum Arg {
        Value(u64),
        Indefinite,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&end| end <= self.data.len())?;
            let bytes = &self.data[self.at..end];
            self.at = end;
            Some(bytes)
        }

        fn uint(&mut self, n: usize) -> Option<u64> {
            Some(
                self.take(n)?
                    .iter()
                    .fold(0u64, |acc, &b| acc << 8 | u64::from(b)),
            )
        }

        fn head(&mut self) -> Option<(u8, u8, Arg)> {
            let initial = *self.take(1)?.first()?;
            let (major, info) = (initial >> 5, initial & 0x1f);
            let arg = match info {
                0..=23 => Arg::Value(u64::from(info)),
                24 => Arg::Value(self.uint(1)?),
                25 => Arg::Value(self.uint(2)?),
                26 => Arg::Value(self.uint(4)?),
                27 => Arg::Value(self.uint(8)?),
                31 => Arg::Indefinite,
                _ => return None,
            };
            Some((major, info, arg))
        }

        fn length(&self, n: u64) -> Option<usize> {
            // Every item takes a byte at least: a count beyond the input is malformed.
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= self.data.len() - self.at)
        }

        fn item(&mut self) -> Option<Value<'a>> {
            let (major, info, arg) = self.head()?;
            match (major, arg) {
                (0, Arg::Value(n)) => Some(Value::Int(i128::from(n))),
                (1, Arg::Value(n)) => Some(Value::Int(-1 - i128::from(n))),
                (2, Arg::Value(n)) => {
                    let n = self.length(n)?;
                    Some(Value::Bytes(Cow::Borrowed(self.take(n)?)))
                }
                (3, Arg::Value(n)) => {
                    let n = self.length(n)?;
                    let text = std::str::from_utf8(self.take(n)?).ok()?;
                    Some(Value::Text(Cow::Borrowed(text)))
                }
                (2, Arg::Indefinite) => {
                    let mut joined = Vec::new();
                    loop {
                        match self.item()? {
                            Value::Break => break,
                            Value::Bytes(chunk) => joined.extend_from_slice(&chunk),
                            _ => return None,
                        }
                    }
                    Some(Value::Bytes(Cow::Owned(joined)))
                }
                (3, Arg::Indefinite) => {
                    let mut joined = String::new();
                    loop {
                        match self.item()? {
                            Value::Break => break,
                            Value::Text(chunk) => joined.push_str(&chunk),
                            _ => return None,
                        }
                    }
                    Some(Value::Text(Cow::Owned(joined)))
                }
                (4, arg) => {
                    let mut items = Vec::new();
                    match arg {
                        Arg::Value(n) => {
                            for _ in 0..self.length(n)? {
                                items.push(self.item()?);
                            }
                        }
                        Arg::Indefinite => loop {
                            match self.item()? {
                                Value::Break => break,
                                item => items.push(item),
                            }
                        },
                    }
                    Some(Value::Array(items))
                }
                (5, arg) => {
                    let mut entries = Vec::new();
                    match arg {
                        Arg::Value(n) => {
                            for _ in 0..self.length(n)? {
                                entries.push((self.item()?, self.item()?));
                            }
                        }
                        Arg::Indefinite => loop {
                            let key = self.item()?;
                            if key == Value::Break {
                                break;
                            }
                            entries.push((key, self.item()?));
                        },
                    }
                    Some(Value::Map(entries))
                }
                (6, Arg::Value(tag)) => self.tagged(tag),
                (7, Arg::Indefinite) => Some(Value::Break),
                (7, Arg::Value(n)) => Some(match info {
                    20 => Value::Bool(false),
                    21 => Value::Bool(true),
                    22 => Value::Null,
                    25 => Value::Float(half(n as u16)),
                    26 => Value::Float(f64::from(f32::from_bits(n as u32))),
                    27 => Value::Float(f64::from_bits(n)),
                    _ => Value::Other,
                }),
                _ => None,
            }
        }

        /// A tagged item, with what cbor2 made of the semantic tags it knows: the value itself
        /// for some, a number for bignums, an error where the content does not fit the tag.
        fn tagged(&mut self, tag: u64) -> Option<Value<'a>> {
            let content = self.item()?;
            let fits = match (tag, &content) {
                // Bignums: cbor2 made an int of them.
                (2 | 3, Value::Bytes(bytes)) => {
                    let digits = bytes.iter().skip_while(|&&b| b == 0).count();
                    if digits > 15 {
                        return Some(Value::BigInt);
                    }
                    let n = bytes.iter().fold(0i128, |acc, &b| acc << 8 | i128::from(b));
                    return Some(Value::Int(if tag == 2 { n } else { -1 - n }));
                }
                // A shareable value, a string-reference namespace, self-described CBOR.
                (28 | 256 | 55799, _) => return Some(content),
                // String and shared references outside of what defines them.
                (25 | 29, _) => false,
                (0, Value::Text(text)) => iso_datetime(text),
                (1, Value::Int(s)) => (-62_135_596_800..253_402_300_800).contains(s),
                (1, Value::Float(s)) => (-62_135_596_800.0..253_402_300_800.0).contains(s),
                (1, Value::Bool(_)) => true,
                (4 | 5, Value::Array(parts)) => {
                    matches!(parts.as_slice(), [Value::Int(_), Value::Int(_)])
                }
                (30, Value::Array(parts)) => match parts.as_slice() {
                    [] | [Value::Int(_)] => true,
                    [Value::Int(_), Value::Int(denominator)] => *denominator != 0,
                    _ => false,
                },
                (35, Value::Text(_) | Value::Bytes(_)) => true,
                (36, Value::Text(_) | Value::Null) => true,
                (37, Value::Bytes(bytes)) => bytes.len() == 16,
                (100, Value::Int(days)) => (-719_162..=2_932_896).contains(days),
                (100, Value::Bool(_)) => true,
                (258, Value::Array(_)) => true,
                (260, Value::Bytes(bytes)) => matches!(bytes.len(), 4 | 6 | 16),
                (261, Value::Map(entries)) => matches!(
                    entries.as_slice(),
                    [(Value::Bytes(address), Value::Int(_))] if matches!(address.len(), 4 | 16)
                ),
                (1004, Value::Text(text)) => iso_date(text.as_bytes()),
                (0..=5 | 30 | 35..=37 | 100 | 258 | 260 | 261 | 1004, _) => false,
                _ => true,
            };
            fits.then(|| Value::Tag(tag, Box::new(content)))
        }
    }

    /// YYYY-MM-DD with a real month and day.
    fn iso_date(text: &[u8]) -> bool {
        let number = |digits: &[u8]| {
            digits.iter().try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
        };
        let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *text else {
            return false;
        };
        let (Some(year), Some(month), Some(day)) = (
            number(&[y0, y1, y2, y3]),
            number(&[m0, m1]),
            number(&[d0, d1]),
        ) else {
            return false;
        };
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        year >= 1 && (1..=12).contains(&month) && day >= 1 && day <= days[month as usize - 1]
    }

    /// An RFC 3339 date and time as cbor2 read it: YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM).
    fn iso_datetime(text: &str) -> bool {
        let text = text.as_bytes();
        if text.len() < 20 || !iso_date(&text[..10]) || text[10] != b'T' {
            return false;
        }
        let two = |at: usize, below: u8| {
            text.get(at..at + 2).is_some_and(|d| {
                d.iter().all(u8::is_ascii_digit) && (d[0] - b'0') * 10 + (d[1] - b'0') < below
            })
        };
        if !(two(11, 24) && text[13] == b':' && two(14, 60) && text[16] == b':' && two(17, 60)) {
            return false;
        }
        let mut rest = &text[19..];
        if let [b'.', fraction @ ..] = rest {
            let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            rest = &fraction[digits..];
        }
        match rest {
            [b'Z'] => true,
            [b'+' | b'-', h0, h1, b':', m0, m1] => {
                let zone = [*h0, *h1, *m0, *m1];
                zone.iter().all(u8::is_ascii_digit)
                    && (h0 - b'0') * 10 + (h1 - b'0') < 24
                    && (m0 - b'0') * 10 + (m1 - b'0') < 60
            }
            _ => false,
        }
    }

    /// An IEEE 754 half-precision float.
    fn half(bits: u16) -> f64 {
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let exponent = i32::from((bits >> 10) & 0x1f);
        let mantissa = f64::from(bits & 0x3ff);
        sign * match exponent {
            0 => mantissa * 2f64.powi(-24),
            31 if mantissa == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            _ => (1024.0 + mantissa) * 2f64.powi(exponent - 25),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [1; 32];
    const KID: [u8; 8] = *b"kidkidki";

    fn claims() -> Claims {
        Claims {
            key_id: KID,
            person_key: *b"person-key-16byt",
            issued_at_ms: 1_608_000_000_123,
            expires_at_ms: 1_608_000_060_123,
            token_id: *b"token-id-16bytes",
        }
    }

    fn message(text: &str) -> Vec<u8> {
        base45::decode(text.strip_prefix(PREFIX).unwrap()).unwrap()
    }

    fn text(message: &[u8]) -> String {
        format!("{PREFIX}{}", base45::encode(message))
    }

    #[test]
    fn base45_matches_rfc_9285_examples() {
        assert_eq!(base45::encode(b"AB"), "BB8");
        assert_eq!(base45::encode(b"Hello!!"), "%69 VD92EX0");
        assert_eq!(base45::encode(b"base-45"), "UJCLQE7W581");
        assert_eq!(base45::decode("QED8WEX0").unwrap(), b"ietf!");
        assert_eq!(base45::decode("FGW").unwrap(), [0xff, 0xff]);
        assert_eq!(base45::decode("GGW"), None); // 65536 does not fit two bytes
        assert_eq!(base45::decode("U6"), None); // 255 + 1 does not fit a byte
        assert_eq!(base45::decode("A"), None);
        assert_eq!(base45::decode("abc"), None);
        assert_eq!(base45::decode("").unwrap(), b"");
    }

    /// The text the Python reference (cwt, cbor2, base45, PyNaCl) wrote for `claims()` signed
    /// with the key of seed [1; 32] (key id 34750f98bd59fcfc).
    const REFERENCE_TEXT: &str = "HCN1:RRQT 9P60GO0JS6W/18.N9:V8CK-C77D0I9E4LE-3EHX5C$C4W5H*6.FFW*0PE8T4VF8G.9SFS0PE8T4VU3I.9SR-0HWE/PDZ-DPED4W5H*6.FF6$C27BOEJBIACAEZXFDY7GNVCPV+.462J3HG++I$C9CEN 8EY33/RTY0NDC7EVTHN124J9PDTXSJC01KB*V70W0IX50+H%/DRDNN3I";
    const REFERENCE_KID: [u8; 8] = [0x34, 0x75, 0x0f, 0x98, 0xbd, 0x59, 0xfc, 0xfc];

    #[test]
    fn the_text_is_the_python_references_byte_for_byte() {
        let signer = Signer::new(&SEED, REFERENCE_KID);
        let claims = Claims {
            key_id: REFERENCE_KID,
            ..claims()
        };
        assert_eq!(signer.encode(&claims).unwrap(), REFERENCE_TEXT);
        let token = decode(REFERENCE_TEXT).unwrap();
        assert_eq!(token.claims, claims);
        assert!(Verifier::new(&signer.public_key()).verify(&token));
    }

    #[test]
    fn a_token_has_the_fixed_layout_of_142_bytes() {
        let text = Signer::new(&SEED, KID).encode(&claims()).unwrap();
        let raw = message(&text);
        assert_eq!(raw.len(), 142);
        assert_eq!(text.len(), PREFIX.len() + 213);
        // tag 18, array of 4, a 13-byte protected header {1: -8, 4: kid}, {}
        assert_eq!(raw[..5], [0xd2, 0x84, 0x4d, 0xa2, 0x01]);
        assert_eq!(raw[5..8], [0x27, 0x04, 0x48]);
        assert_eq!(raw[8..16], KID);
        assert_eq!(raw[16], 0xa0);
        // a 57-byte payload {2: sub, 6: iat, 4: exp, 7: cti}
        assert_eq!(raw[17..22], [0x58, 0x39, 0xa4, 0x02, 0x50]);
        assert_eq!(raw[38..40], [0x06, 0xfb]);
        assert_eq!(raw[40..48], 1_608_000_000.123f64.to_be_bytes());
        // a 64-byte signature
        assert_eq!(raw[76..78], [0x58, 0x40]);
    }

    #[test]
    fn a_token_decodes_to_its_claims_and_verifies_with_its_key_only() {
        let signer = Signer::new(&SEED, KID);
        let token = decode(&signer.encode(&claims()).unwrap()).unwrap();
        assert_eq!(token.claims, claims());
        assert!(verify(&signer.public_key(), &token));
        assert!(!verify(&Signer::new(&[2; 32], KID).public_key(), &token));
        assert!(!Verifier::new(&[0; 32]).verify(&token)); // a small-order key
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let signer = Signer::new(&SEED, KID);
        let verifier = Verifier::new(&signer.public_key());
        let raw = message(&signer.encode(&claims()).unwrap());
        for bit in 0..raw.len() * 8 {
            let mut altered = raw.clone();
            altered[bit / 8] ^= 1 << (bit % 8);
            if let Ok(token) = decode(&text(&altered)) {
                assert!(!verifier.verify(&token), "bit {bit}");
            }
        }
    }

    #[test]
    fn anything_outside_the_signature_must_be_as_we_encode_it() {
        let raw = message(&Signer::new(&SEED, KID).encode(&claims()).unwrap());
        let mut trailing = raw.clone();
        trailing.push(0);
        let mut unprotected = raw.clone();
        unprotected.splice(16..17, [0xa1, 0x18, 0x63, 0x40]); // {99: h''}
        let mut long_head = raw.clone();
        long_head.splice(2..3, [0x58, 0x0d]); // the protected header's length in two bytes
        for altered in [trailing, unprotected, long_head] {
            assert_eq!(decode(&text(&altered)), Err(Malformed::NotOurEncoding));
        }
    }

    #[test]
    fn malformed_texts_get_the_python_decoders_messages() {
        assert_eq!(decode("HC1:ABC"), Err(Malformed::Prefix));
        assert_eq!(
            decode(&format!("{PREFIX}{}", "A".repeat(402))),
            Err(Malformed::TooLong)
        );
        // 201 two-byte characters: 402 bytes but not too long, and not base45
        assert_eq!(
            decode(&format!("{PREFIX}{}", "é".repeat(201))),
            Err(Malformed::NotBase45)
        );
        assert_eq!(decode(&text(&[0xff, 0xff])), Err(Malformed::NotOurEncoding)); // a lone break
        assert_eq!(decode(&text(&[0x1c])), Err(Malformed::NotCose));
        assert_eq!(
            decode(&text(&[0x83, 1, 2, 3])),
            Err(Malformed::NotOurEncoding)
        );
        assert_eq!(decode(&text(&[0xd2, 0x01])), Err(Malformed::NotCose));
        // a COSE_Sign1 with an empty protected header
        let empty = [0xd2, 0x84, 0x40, 0xa0, 0x41, 0xa0, 0x40];
        assert_eq!(decode(&text(&empty)), Err(Malformed::NotCose));
        let no_kid = [0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa0, 0x41, 0xa0, 0x40];
        assert_eq!(decode(&text(&no_kid)), Err(Malformed::NoKeyId));
        let es256 = [0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26, 0xa0, 0x41, 0xa0, 0x40];
        assert_eq!(decode(&text(&es256)), Err(Malformed::NotEdDsa));
    }

    #[test]
    fn times_are_exact_to_the_millisecond_and_in_range() {
        let signer = Signer::new(&SEED, KID);
        for ms in [0, 1, 999, 1_000, 1_608_000_000_001, 1_099_511_627_775_999] {
            let claims = Claims {
                issued_at_ms: ms,
                expires_at_ms: ms,
                ..claims()
            };
            let token = decode(&signer.encode(&claims).unwrap()).unwrap();
            assert_eq!(token.claims.issued_at_ms, ms);
        }
        let negative = Claims {
            issued_at_ms: -1,
            ..claims()
        };
        assert_eq!(
            decode(&signer.encode(&negative).unwrap()),
            Err(Malformed::Times)
        );
        let far = Claims {
            expires_at_ms: 1 << 53,
            ..claims()
        };
        assert_eq!(
            signer.encode(&far),
            Err(EncodeError::TimeOutOfRange(1 << 53))
        );
    }
}
