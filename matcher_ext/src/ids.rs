//! Identifiers at the edge: resident ID numbers (GB 11643), mainland mobile numbers and transit
//! cards are validated, normalised and turned into keyed 128-bit hashes. Nothing past this module
//! ever sees a raw number.

use crate::errors::MatcherError;

/// A 128-bit keyed hash of a normalised identifier: what the registry stores.
pub type Key = u128;

/// Which kind of identifier a key was derived from; part of the hashed input, so a phone number
/// and an ID number with the same digits never share a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A resident ID number.
    Person,
    /// A mobile phone number.
    Phone,
    /// A real-name transit card number.
    Card,
}

impl Domain {
    fn prefix(self) -> &'static [u8] {
        match self {
            Domain::Person => b"person:",
            Domain::Phone => b"phone:",
            Domain::Card => b"card:",
        }
    }
}

/// Keyed BLAKE3 with a 32-byte deployment secret.
///
/// ```
/// use healthcode_matcher::ids::{Domain, Hasher};
/// let h = Hasher::new([7u8; 32]);
/// assert_ne!(h.key(Domain::Person, "1"), h.key(Domain::Phone, "1"));
/// ```
#[derive(Clone)]
pub struct Hasher {
    secret: [u8; 32],
}

impl Hasher {
    /// A hasher for one deployment secret.
    pub fn new(secret: [u8; 32]) -> Self {
        Hasher { secret }
    }

    /// The secret (needed to check that a snapshot was made with the same one).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The key of an already-normalised identifier: the first 16 bytes of
    /// `blake3_keyed(secret, prefix || identifier)`, read little-endian.
    pub fn key(&self, domain: Domain, normalised: &str) -> Key {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        h.update(domain.prefix());
        h.update(normalised.as_bytes());
        let out = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out.as_bytes()[..16]);
        u128::from_le_bytes(first)
    }

    /// A short fingerprint of the secret, stored in snapshots so a wrong secret is refused.
    pub fn fingerprint(&self) -> [u8; 16] {
        let out = blake3::keyed_hash(&self.secret, b"healthcode snapshot fingerprint");
        let mut f = [0u8; 16];
        f.copy_from_slice(&out.as_bytes()[..16]);
        f
    }

    /// Validate, normalise and hash an ID number.
    pub fn person_key(&self, raw: &str) -> Result<Key, MatcherError> {
        Ok(self.key(Domain::Person, &normalise_id_number(raw)?))
    }

    /// [`Hasher::person_key`] with today's day number given (see [`normalise_id_number_on`]).
    pub fn person_key_on(&self, raw: &str, today: i64) -> Result<Key, MatcherError> {
        Ok(self.key(Domain::Person, &normalise_id_number_on(raw, today)?))
    }

    /// Validate, normalise and hash a phone number.
    pub fn phone_key(&self, raw: &str) -> Result<Key, MatcherError> {
        Ok(self.key(Domain::Phone, &normalise_phone(raw)?))
    }

    /// Normalise and hash a transit card number.
    pub fn card_key(&self, raw: &str) -> Result<Key, MatcherError> {
        Ok(self.key(Domain::Card, &normalise_card(raw)?))
    }
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: &[u8; 11] = b"10X98765432";

/// The GB 11643 check character of the first 17 digits.
pub fn id_check_char(first17: &[u8]) -> u8 {
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK_CHARS[(sum % 11) as usize]
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_real_date(year: i64, month: u32, day: u32) -> bool {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    day >= 1 && day <= days_in
}

/// Today's day number in Asia/Shanghai (UTC+8, no daylight saving since 1991).
pub fn shanghai_today() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (secs + 8 * 3600).div_euclid(86_400)
}

fn bad_id(msg: impl Into<String>) -> MatcherError {
    MatcherError::InvalidIdNumber(msg.into())
}

/// Validate a resident ID number and return it normalised (trimmed, upper-case `X`).
///
/// Checks the length (18), that the first 17 characters are digits, the GB 11643 check
/// character, and that the birth date (characters 7-14) is a real date between 1900-01-01 and
/// today. The region code is deliberately not checked: a new county code missing from a
/// lookup table must not refuse a real resident. Messages never repeat the number.
///
/// ```
/// use healthcode_matcher::ids::normalise_id_number;
/// assert_eq!(normalise_id_number(" 11010519491231002x").unwrap(), "11010519491231002X");
/// assert!(normalise_id_number("110105194912310021").is_err());
/// ```
pub fn normalise_id_number(raw: &str) -> Result<String, MatcherError> {
    normalise_id_number_on(raw, shanghai_today())
}

/// [`normalise_id_number`] with today's day number given (days since 1970-01-01 in
/// Asia/Shanghai), so that a batch reads the clock once.
pub fn normalise_id_number_on(raw: &str, today: i64) -> Result<String, MatcherError> {
    let s = raw.trim().to_ascii_uppercase();
    let b = s.as_bytes();
    if b.len() != 18 {
        return Err(bad_id(format!(
            "an ID number has 18 characters, this one has {}",
            s.chars().count()
        )));
    }
    if !b[..17].iter().all(u8::is_ascii_digit) {
        return Err(bad_id(
            "the first 17 characters of an ID number must be digits",
        ));
    }
    let last = b[17];
    if !(last.is_ascii_digit() || last == b'X') {
        return Err(bad_id(
            "the last character of an ID number must be a digit or X",
        ));
    }
    let want = id_check_char(&b[..17]);
    if want != last {
        return Err(bad_id(format!(
            "the check character (18th) does not match the first 17 digits: it should be {}",
            want as char
        )));
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (i64::from(num(6..10)), num(10..12), num(12..14));
    if !is_real_date(year, month, day) {
        return Err(bad_id(
            "the birth date (characters 7-14) is not a real calendar date",
        ));
    }
    if year < 1900 || days_from_civil(year, month, day) > today {
        return Err(bad_id(
            "the birth date (characters 7-14) must be between 1900 and today",
        ));
    }
    Ok(s)
}

/// Validate a mainland mobile number and return its 11 digits.
///
/// Spaces, dashes and a leading `+86`, `0086` or `86` country code are accepted; the number
/// itself is 11 digits, starting `1` and a second digit 3-9.
///
/// ```
/// use healthcode_matcher::ids::normalise_phone;
/// assert_eq!(normalise_phone("+86 138-0013-8000").unwrap(), "13800138000");
/// assert!(normalise_phone("12800138000").is_err());
/// ```
pub fn normalise_phone(raw: &str) -> Result<String, MatcherError> {
    let mut s: String = raw
        .trim()
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .collect();
    if let Some(rest) = s.strip_prefix('+') {
        s = rest.to_string();
        if !s.starts_with("86") {
            return Err(MatcherError::InvalidPhone(
                "only mainland numbers (+86) are accepted".into(),
            ));
        }
    }
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(MatcherError::InvalidPhone(
            "a phone number may hold only digits, spaces, dashes and a leading +86".into(),
        ));
    }
    if s.len() == 15 && s.starts_with("0086") {
        s.drain(..4);
    } else if s.len() == 13 && s.starts_with("86") {
        s.drain(..2);
    }
    let b = s.as_bytes();
    if b.len() != 11 {
        return Err(MatcherError::InvalidPhone(format!(
            "a mobile number has 11 digits, this one has {}",
            b.len()
        )));
    }
    if b[0] != b'1' || !(b'3'..=b'9').contains(&b[1]) {
        return Err(MatcherError::InvalidPhone(
            "a mainland mobile number starts with 13 to 19".into(),
        ));
    }
    Ok(s)
}

/// Normalise a transit card number: trimmed, non-empty, at most 64 printable ASCII characters.
pub fn normalise_card(raw: &str) -> Result<String, MatcherError> {
    let s = raw.trim();
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(MatcherError::InvalidCard(
            "a card number is 1 to 64 printable ASCII characters".into(),
        ));
    }
    Ok(s.to_ascii_uppercase())
}

/// A small deterministic generator (splitmix64) so synthetic populations need no dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

// Real county codes of Tianjin and Beijing, each valid for every birth year generated (python-stdnum
// agrees), so synthetic numbers look like residents'.
const REGIONS: [u32; 16] = [
    120101, 120102, 120103, 120104, 120105, 120106, 120110, 120111, 120112, 120113, 110101, 110102,
    110105, 110106, 110107, 110108,
];
const BIRTH_FIRST_DAY: i64 = -14_610; // 1930-01-01
const BIRTH_DAYS: u64 = 32_000; // about 87 years of birth dates

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `count` distinct valid ID numbers, a permutation of (region, birth date, sequence) chosen by
/// `seed`. Distinct for counts up to 512,000,000.
pub fn synthetic_id_numbers(count: u64, seed: u64) -> Vec<String> {
    let space = REGIONS.len() as u64 * BIRTH_DAYS * 1000;
    assert!(count <= space, "at most {space} synthetic ID numbers");
    let offset = SplitMix(seed).next_u64() % space;
    // an odd multiplier coprime with `space` (= 2^11 * 5^6 * ...) makes i -> i*A+o a bijection
    const A: u64 = 2_654_435_761; // prime, and not a factor of `space`
    (0..count)
        .map(|i| {
            let j = (i as u128 * A as u128 + offset as u128) % space as u128;
            let j = j as u64;
            let seq = j % 1000;
            let birth = BIRTH_FIRST_DAY + ((j / 1000) % BIRTH_DAYS) as i64;
            let region = REGIONS[(j / 1000 / BIRTH_DAYS) as usize];
            let (y, m, d) = civil_from_days(birth);
            let mut s = format!("{region:06}{y:04}{m:02}{d:02}{seq:03}");
            let check = id_check_char(s.as_bytes());
            s.push(check as char);
            s
        })
        .collect()
}

/// `count` distinct valid mobile numbers chosen by `seed` (up to 7,000,000,000).
pub fn synthetic_phones(count: u64, seed: u64) -> Vec<String> {
    let space: u64 = 7_000_000_000; // second digit 3-9, then 9 digits
    assert!(count <= space, "at most {space} synthetic phones");
    let offset = SplitMix(seed ^ 0x5157).next_u64() % space;
    const A: u64 = 2_654_435_761;
    (0..count)
        .map(|i| {
            let j = ((i as u128 * A as u128 + offset as u128) % space as u128) as u64;
            format!("1{}{:09}", 3 + j / 1_000_000_000, j % 1_000_000_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_char_of_the_standard_example() {
        // GB 11643-1999 appendix example
        assert_eq!(id_check_char(b"11010519491231002"), b'X');
        assert!(normalise_id_number("11010519491231002X").is_ok());
    }

    #[test]
    fn refuses_what_is_wrong_and_says_so() {
        let e = normalise_id_number("11010519491231002")
            .unwrap_err()
            .to_string();
        assert!(e.contains("18 characters"), "{e}");
        let e = normalise_id_number("110105194912310021")
            .unwrap_err()
            .to_string();
        assert!(e.contains("should be X"), "{e}");
        let mut bad = String::from("11010519490231001");
        bad.push(id_check_char(bad.as_bytes()) as char);
        let e = normalise_id_number(&bad).unwrap_err().to_string();
        assert!(e.contains("not a real calendar date"), "{e}");
        assert!(!e.contains("1949"), "messages never repeat the number");
    }

    #[test]
    fn future_birth_dates_are_refused() {
        let mut s = String::from("12010120990101001");
        s.push(id_check_char(s.as_bytes()) as char);
        assert!(normalise_id_number(&s).is_err());
    }

    #[test]
    fn phones() {
        assert_eq!(normalise_phone("0086 13912345678").unwrap(), "13912345678");
        assert_eq!(normalise_phone("8613912345678").unwrap(), "13912345678");
        assert!(normalise_phone("+1 4155550100").is_err());
        assert!(normalise_phone("1391234567").is_err());
        assert!(normalise_phone("23912345678").is_err());
    }

    #[test]
    fn synthetic_numbers_are_valid_and_distinct() {
        let ids = synthetic_id_numbers(20_000, 3);
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|s| normalise_id_number(s).is_ok()));
        let phones = synthetic_phones(20_000, 3);
        let set: std::collections::HashSet<_> = phones.iter().collect();
        assert_eq!(set.len(), phones.len());
        assert!(phones.iter().all(|s| normalise_phone(s).is_ok()));
    }

    #[test]
    fn civil_round_trip() {
        for z in [-25_567i64, -1, 0, 1, 11_016, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
