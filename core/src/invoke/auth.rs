//! Lease secrets and the proof a connection gives of one.
//!
//! Every lease has a random 256-bit [`LeaseSecret`] that only its owner is told (in
//! AcquireLease's answer). Its executor serves a connection only after the connection proves the
//! secret: the executor sends a fresh random nonce (CHALLENGE), the client answers
//! [`proof`]`(secret, nonce)` = HMAC-SHA256(secret, `b"harvest-invoke-v1"` || nonce) (AUTH), and
//! the executor checks it with [`verify`] in constant time. The secret itself never crosses the
//! executor's wire, and a proof seen on the wire is worth nothing on another connection (another
//! nonce).

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in a lease secret, a nonce and a proof.
pub const SECRET_BYTES: usize = 32;
/// Bytes in a CHALLENGE's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes in an AUTH's proof (an HMAC-SHA256 tag).
pub const PROOF_BYTES: usize = 32;
/// What the HMAC covers before the nonce: the protocol and its version, so a tag made for
/// anything else with the same key never passes.
pub const PROOF_CONTEXT: &[u8] = b"harvest-invoke-v1";

/// A lease secret that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a lease secret is exactly {SECRET_BYTES} bytes, not {0}")]
    Length(usize),
    #[error(
        "a lease secret in hex is exactly {} hex digits (0-9, a-f), not {len} characters{}",
        SECRET_BYTES * 2,
        if *.bad_digit { " with a non-hex character" } else { "" }
    )]
    Hex { len: usize, bad_digit: bool },
    #[error("the system's random number generator failed")]
    Random,
}

/// The environment variable harvestd hands an executor its lease secret in (64 hex digits,
/// [`LeaseSecret::to_hex`]); the executor removes it from its environment at start.
pub const SECRET_ENV: &str = "HARVEST_LEASE_SECRET";

/// A lease's secret: 32 random bytes. Its `Debug` never prints it; equality is constant time.
#[derive(Clone)]
pub struct LeaseSecret([u8; SECRET_BYTES]);

impl LeaseSecret {
    /// A fresh secret from the system's CSPRNG.
    pub fn random() -> Result<Self, SecretError> {
        let mut b = [0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| SecretError::Random)?;
        Ok(Self(b))
    }

    /// The secret in `bytes`, which must be exactly [`SECRET_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| SecretError::Length(bytes.len()))
    }

    /// The secret from 64 hex digits (either case; [`to_hex`](Self::to_hex) writes lowercase).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.as_bytes();
        let bad = |bad_digit| SecretError::Hex {
            len: text.len(),
            bad_digit,
        };
        if text.len() != SECRET_BYTES * 2 {
            return Err(bad(!text.iter().all(u8::is_ascii_hexdigit)));
        }
        let mut b = [0u8; SECRET_BYTES];
        for (out, pair) in b.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_digit(pair[0]).ok_or_else(|| bad(true))?;
            let lo = hex_digit(pair[1]).ok_or_else(|| bad(true))?;
            *out = hi << 4 | lo;
        }
        Ok(Self(b))
    }

    /// The secret as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(SECRET_BYTES * 2);
        for b in self.0 {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for LeaseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseSecret(<redacted>)")
    }
}

impl PartialEq for LeaseSecret {
    fn eq(&self, other: &Self) -> bool {
        // Constant time: fold every byte's difference, never return early.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for LeaseSecret {}

/// A fresh random nonce for a CHALLENGE.
pub fn nonce() -> Result<[u8; NONCE_BYTES], SecretError> {
    let mut n = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| SecretError::Random)?;
    Ok(n)
}

/// The proof of `secret` for `nonce`: HMAC-SHA256(secret, [`PROOF_CONTEXT`] || nonce).
pub fn proof(secret: &LeaseSecret, nonce: &[u8; NONCE_BYTES]) -> [u8; PROOF_BYTES] {
    let mut ctx = hmac::Context::with_key(&secret.key());
    ctx.update(PROOF_CONTEXT);
    ctx.update(nonce);
    ctx.sign()
        .as_ref()
        .try_into()
        .expect("HMAC-SHA256 tags are 32 bytes")
}

/// Whether `proof` proves `secret` for `nonce` (compared in constant time).
pub fn verify(secret: &LeaseSecret, nonce: &[u8; NONCE_BYTES], proof: &[u8; PROOF_BYTES]) -> bool {
    let mut msg = [0u8; PROOF_CONTEXT.len() + NONCE_BYTES];
    msg[..PROOF_CONTEXT.len()].copy_from_slice(PROOF_CONTEXT);
    msg[PROOF_CONTEXT.len()..].copy_from_slice(nonce);
    hmac::verify(&secret.key(), &msg, proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_bad_text_is_refused_with_the_rule() {
        let s = LeaseSecret::random().unwrap();
        let hex = s.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_eq!(LeaseSecret::from_hex(&hex).unwrap(), s);
        assert_eq!(LeaseSecret::from_hex(&hex.to_uppercase()).unwrap(), s);
        let short = LeaseSecret::from_hex("abcd").unwrap_err();
        assert!(short.to_string().contains("64 hex digits"), "{short}");
        let mut bad = hex.clone();
        bad.replace_range(10..11, "g");
        assert_eq!(
            LeaseSecret::from_hex(&bad),
            Err(SecretError::Hex {
                len: 64,
                bad_digit: true
            })
        );
        // Non-ASCII text of 64 bytes is refused, not split inside a character.
        assert!(LeaseSecret::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn bytes_must_be_exactly_32() {
        assert_eq!(
            LeaseSecret::from_bytes(&[1; 31]),
            Err(SecretError::Length(31))
        );
        assert_eq!(
            LeaseSecret::from_bytes(&[1; 33]),
            Err(SecretError::Length(33))
        );
        assert_eq!(
            LeaseSecret::from_bytes(&[7; 32]).unwrap().as_bytes(),
            &[7; 32]
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = LeaseSecret::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert!(shown.contains("LeaseSecret(<redacted>)"));
    }

    #[test]
    fn proofs_verify_only_for_their_secret_and_nonce() {
        let a = LeaseSecret::random().unwrap();
        let b = LeaseSecret::random().unwrap();
        assert_ne!(a, b, "two random secrets");
        let n1 = nonce().unwrap();
        let n2 = nonce().unwrap();
        assert_ne!(n1, n2, "two random nonces");
        let p = proof(&a, &n1);
        assert!(verify(&a, &n1, &p));
        assert!(!verify(&b, &n1, &p), "another lease's secret");
        assert!(!verify(&a, &n2, &p), "a proof replayed for another nonce");
        let mut flipped = p;
        flipped[31] ^= 1;
        assert!(!verify(&a, &n1, &flipped));
        // The proof is HMAC-SHA256 over the context and the nonce, nothing else.
        let tag = hmac::sign(&a.key(), &[PROOF_CONTEXT, &n1[..]].concat());
        assert_eq!(tag.as_ref(), &p[..]);
    }
}
