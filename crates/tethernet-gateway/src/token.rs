//! Login tokens: `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims part))`.
//!
//! Claims: `{"user": "...", "exp": <unix seconds>, "rooms": ["lobby", ...]}`; a room `*`
//! allows every room. Minted by `tethernet-gateway token` from the configured secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted (a token is parsed before it is trusted).
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub user: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Rooms the user may join and post to; `*` for all.
    pub rooms: Vec<String>,
}

impl Claims {
    /// Whether the token allows `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| r == "*" || r == room)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, or signed with another secret.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Result<Signer, String> {
        if secret.len() < 16 {
            return Err("the token secret must be at least 16 bytes".into());
        }
        Ok(Signer {
            secret: secret.to_vec(),
        })
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key size");
        mac.update(data);
        mac
    }

    /// Mints a token.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let tag = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// Checks a token's signature and expiry against `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        // Constant-time comparison.
        self.mac(body.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Invalid)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            user: "ada".into(),
            exp,
            rooms: vec!["lobby".into()],
        }
    }

    #[test]
    fn round_trip_expiry_and_forgery() {
        let signer = Signer::new(b"0123456789abcdef0123").unwrap();
        let token = signer.sign(&claims(1_000));
        assert_eq!(signer.verify(&token, 999).unwrap(), claims(1_000));
        assert_eq!(signer.verify(&token, 1_000), Err(TokenError::Expired));
        let other = Signer::new(b"another secret of 16+ bytes").unwrap();
        assert_eq!(other.verify(&token, 0), Err(TokenError::Invalid));
        // A changed claim with the old signature.
        let (_, tag) = token.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(i64::MAX)).unwrap());
        assert_eq!(
            signer.verify(&format!("{forged_body}.{tag}"), 0),
            Err(TokenError::Invalid)
        );
        for junk in ["", ".", "a.b", "no-dot", &"x".repeat(5000)] {
            assert_eq!(signer.verify(junk, 0), Err(TokenError::Invalid), "{junk}");
        }
        assert!(Signer::new(b"short").is_err());
    }

    #[test]
    fn rooms() {
        assert!(claims(0).allows("lobby"));
        assert!(!claims(0).allows("dev"));
        let any = Claims {
            rooms: vec!["*".into()],
            ..claims(0)
        };
        assert!(any.allows("dev"));
    }
}
