//! Webhook authentication: an HMAC-SHA256 signature over a timestamp and
//! the raw body, in the convention Stripe made familiar:
//!
//! ```text
//! X-Intune-Attest-Signature: t=1732622400,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! `v1` is the hex HMAC-SHA256, keyed with a signing secret, of
//! `"{t}.{raw body}"`. A signature is accepted when `t` is within 300 s of
//! now and any `v1` matches any current secret (so secrets rotate without
//! refusing callers). Comparison is constant-time, and nothing is parsed
//! before the signature holds.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header carrying the signature (lower case, as HTTP/2 and Lambda
/// function URLs deliver it).
pub const SIGNATURE_HEADER: &str = "x-intune-attest-signature";
/// How far `t` may be from now, in seconds.
pub const TOLERANCE_SECS: u64 = 300;
/// The largest signature header read.
const MAX_HEADER_LEN: usize = 1024;

/// Why a signature was refused. Callers are told only "unauthorised"; the
/// reason goes to the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("no signature")]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is too far from now.
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` matches any secret.
    #[error("signature does not match")]
    Mismatch,
    /// The same signature was used before.
    #[error("signature already used")]
    Replayed,
}

/// A verified signature: its timestamp and the matching `v1`, which a
/// replay cache can remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed timestamp.
    pub timestamp: u64,
    /// The matching signature, hex.
    pub signature: String,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &SecretString, t: u64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut m = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()).unwrap_or_else(|_| unreachable!());
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Computes the header value for `body` at time `t` (for callers and tests).
pub fn sign(secret: &SecretString, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Checks a signature header against the raw body.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: u64,
) -> Result<Verified, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match k {
            "t" if t.is_none() => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            "t" => return Err(SignatureError::Malformed),
            "v1" => v1.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() || v1.len() > 8 {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    for candidate in v1 {
        let Ok(bytes) = hex::decode(candidate) else {
            continue;
        };
        for secret in secrets {
            if mac(secret, t, body).verify_slice(&bytes).is_ok() {
                return Ok(Verified {
                    timestamp: t,
                    signature: candidate.to_ascii_lowercase(),
                });
            }
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn a_fresh_signature_from_any_current_secret_passes() {
        let body = br#"{"managed_device_ids": []}"#;
        let header = sign(&s("old"), 1000, body);
        let ok = verify(Some(&header), body, &[s("new"), s("old")], 1100).unwrap();
        assert_eq!(ok.timestamp, 1000);
        // Several v1 values (the caller rotating): any match passes.
        let two = format!(
            "{},v1={}",
            sign(&s("x"), 1000, body),
            &header[header.find("v1=").unwrap() + 3..]
        );
        assert!(verify(Some(&two), body, &[s("old")], 1000).is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        let body = b"{}";
        let good = sign(&s("k"), 1000, body);
        let secrets = [s("k")];
        assert_eq!(verify(None, body, &secrets, 1000), Err(SignatureError::Missing));
        assert_eq!(
            verify(Some("garbage"), body, &secrets, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=abc,v1=00"), body, &secrets, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=1000"), body, &secrets, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some(&format!("t=1,{good}")), body, &secrets, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify(Some(&good), body, &secrets, 1301), Err(SignatureError::Stale));
        assert_eq!(verify(Some(&good), body, &secrets, 699), Err(SignatureError::Stale));
        assert_eq!(
            verify(Some(&good), b"{ }", &secrets, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, &[s("other")], 1000),
            Err(SignatureError::Mismatch)
        );
        let long = format!("{good},{}", "v1=00,".repeat(300));
        assert_eq!(
            verify(Some(&long), body, &secrets, 1000),
            Err(SignatureError::Malformed)
        );
        // Signed for another timestamp.
        let moved = good.replacen("t=1000", "t=1001", 1);
        assert_eq!(
            verify(Some(&moved), body, &secrets, 1000),
            Err(SignatureError::Mismatch)
        );
    }
}
