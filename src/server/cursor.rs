//! Signed export cursors: `base64url(payload) "." base64url(HMAC-SHA256(payload))`.
//!
//! The payload says where a run stands (its window and the last key served), whom it was
//! issued to (tenant), with which key (`kid`, so keys can rotate) and until when. The
//! signature is checked in constant time before anything in the payload is trusted,
//! except the key id needed to pick the key.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Where an export run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorPayload {
    /// Format version.
    pub v: u32,
    /// The key that signed it.
    pub kid: String,
    pub tenant: String,
    pub since: DateTime<Utc>,
    pub cutoff: DateTime<Utc>,
    /// The last `(updated_at, id)` served.
    pub after: (DateTime<Utc>, i64),
    pub limit: i64,
    /// Expiry.
    pub exp: DateTime<Utc>,
}

/// Why a cursor is refused; each is a 400 whose error type names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("the cursor is malformed: {0}")]
    Malformed(&'static str),
    #[error("the cursor was signed by a key this server does not know")]
    UnknownKey,
    #[error("the cursor's signature does not match its contents (it was modified)")]
    BadSignature,
    #[error("the cursor was issued to another tenant")]
    ForeignTenant,
    #[error("the cursor expired at {0}; start a new run with since")]
    Expired(String),
    #[error("the cursor's {0} is outside the years 0001 to 9999 (UTC); start a new run with since")]
    OutOfRange(&'static str),
}

impl CursorError {
    /// The `type` of the JSON error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "cursor_malformed",
            Self::UnknownKey => "cursor_unknown_key",
            Self::BadSignature => "cursor_invalid_signature",
            Self::ForeignTenant => "cursor_foreign_tenant",
            Self::Expired(_) => "cursor_expired",
            Self::OutOfRange(_) => "invalid_parameter",
        }
    }
}

/// Signs and verifies cursors with the configured keys.
pub struct CursorCodec {
    keys: BTreeMap<String, Secret>,
    signing_key: String,
    tenant: String,
}

impl CursorCodec {
    pub fn new(keys: BTreeMap<String, Secret>, signing_key: String, tenant: String) -> Self {
        assert!(keys.contains_key(&signing_key), "validated by the configuration");
        Self { keys, signing_key, tenant }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn signing_key(&self) -> &str {
        &self.signing_key
    }

    fn mac(&self, kid: &str) -> Option<HmacSha256> {
        let key = self.keys.get(kid)?;
        Some(HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key length"))
    }

    pub fn encode(&self, payload: &CursorPayload) -> String {
        let body = serde_json::to_vec(payload).expect("a cursor serialises");
        let mut mac = self.mac(&payload.kid).expect("signing with a configured key");
        mac.update(&body);
        let signature = mac.finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn decode(&self, cursor: &str, now: DateTime<Utc>) -> Result<CursorPayload, CursorError> {
        let (body, signature) = cursor.split_once('.').ok_or(CursorError::Malformed("expected two parts separated by '.'"))?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| CursorError::Malformed("the payload is not base64url"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| CursorError::Malformed("the signature is not base64url"))?;
        // Only the key id is read before the signature is checked.
        #[derive(Deserialize)]
        struct KeyId {
            kid: String,
        }
        let kid: KeyId = serde_json::from_slice(&body).map_err(|_| CursorError::BadSignature)?;
        let mut mac = self.mac(&kid.kid).ok_or(CursorError::UnknownKey)?;
        mac.update(&body);
        mac.verify_slice(&signature).map_err(|_| CursorError::BadSignature)?;
        let payload: CursorPayload = serde_json::from_slice(&body).map_err(|_| CursorError::Malformed("unsupported payload"))?;
        if payload.v != 1 {
            return Err(CursorError::Malformed("unsupported version"));
        }
        if payload.tenant != self.tenant {
            return Err(CursorError::ForeignTenant);
        }
        if payload.exp <= now {
            return Err(CursorError::Expired(crate::timestamp::format(payload.exp)));
        }
        // Signed does not mean usable: a key's holder (or an older server) may have signed
        // a window PostgreSQL cannot hold or RFC 3339 cannot print.
        for (name, t) in [("since", payload.since), ("cutoff", payload.cutoff), ("after", payload.after.0)] {
            if !crate::timestamp::representable(t) {
                return Err(CursorError::OutOfRange(name));
            }
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn codec(keys: &[(&str, &str)], kid: &str, tenant: &str) -> CursorCodec {
        CursorCodec::new(keys.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect(), kid.into(), tenant.into())
    }

    fn payload(kid: &str, now: DateTime<Utc>) -> CursorPayload {
        CursorPayload { v: 1, kid: kid.into(), tenant: "acme".into(), since: now, cutoff: now, after: (now, 42), limit: 10, exp: now + Duration::hours(1) }
    }

    #[test]
    fn round_trips_and_rotates() {
        let now = Utc::now();
        let old = codec(&[("k1", "first-secret-key-0123456789")], "k1", "acme");
        let cursor = old.encode(&payload("k1", now));
        assert_eq!(old.decode(&cursor, now).unwrap(), payload("k1", now));
        // k2 signs now; k1 is still listed, so k1's cursors verify.
        let rotated = codec(&[("k1", "first-secret-key-0123456789"), ("k2", "second-secret-key-0123456789")], "k2", "acme");
        assert!(rotated.decode(&cursor, now).is_ok());
        // k1 removed: refused as signed by an unknown key.
        let dropped = codec(&[("k2", "second-secret-key-0123456789")], "k2", "acme");
        assert_eq!(dropped.decode(&cursor, now), Err(CursorError::UnknownKey));
    }

    #[test]
    fn refuses_tampering_foreign_tenants_and_expiry() {
        let now = Utc::now();
        let c = codec(&[("k1", "first-secret-key-0123456789")], "k1", "acme");
        let cursor = c.encode(&payload("k1", now));
        let (body, sig) = cursor.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        let pos = raw.iter().position(|&b| b == b'4').unwrap(); // the id 42
        raw[pos] = b'5';
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(c.decode(&forged, now), Err(CursorError::BadSignature));
        let mut sig_raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig_raw[0] ^= 1;
        assert_eq!(c.decode(&format!("{body}.{}", URL_SAFE_NO_PAD.encode(&sig_raw)), now), Err(CursorError::BadSignature));
        assert!(matches!(c.decode("garbage", now), Err(CursorError::Malformed(_))));
        assert!(matches!(c.decode("a!b.c", now), Err(CursorError::Malformed(_))));
        let other = codec(&[("k1", "first-secret-key-0123456789")], "k1", "globex");
        assert_eq!(other.decode(&cursor, now), Err(CursorError::ForeignTenant));
        assert!(matches!(c.decode(&cursor, now + Duration::hours(2)), Err(CursorError::Expired(_))));
    }

    #[test]
    fn refuses_signed_windows_outside_the_representable_years() {
        let now = Utc::now();
        let c = codec(&[("k1", "first-secret-key-0123456789")], "k1", "acme");
        let far = |s: &str| crate::timestamp::parse(s).unwrap();
        let mut p = payload("k1", now);
        p.since = far("-4714-01-01");
        assert_eq!(c.decode(&c.encode(&p), now), Err(CursorError::OutOfRange("since")));
        let mut p = payload("k1", now);
        p.cutoff = far("9999-12-31T23:59:59-14:00");
        assert_eq!(c.decode(&c.encode(&p), now), Err(CursorError::OutOfRange("cutoff")));
        let mut p = payload("k1", now);
        p.after.0 = far("0000-06-01");
        let e = c.decode(&c.encode(&p), now).unwrap_err();
        assert_eq!((e.kind(), e.to_string().contains("after")), ("invalid_parameter", true));
    }
}
