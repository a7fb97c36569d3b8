//! User access tokens: compact HS256 JWTs (RFC 7519) signed with a secret shared
//! by Users (which issues them) and the gateway (which checks them).
//!
//! Written here on hmac + sha2 rather than with `jsonwebtoken`: that crate's
//! only pure-Rust backend also compiles RSA and ECDSA stacks we never use.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const ISSUER: &str = "shopfast-users";
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub email: String,
    pub iss: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Not valid before, seconds since the epoch (optional, RFC 7519 §4.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// How far a token's `nbf` or `iat` may be ahead of our clock: clocks of
/// different machines disagree by a little, never by minutes.
pub const CLOCK_SKEW_SECS: i64 = 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issuer is not shopfast-users")]
    Issuer,
    #[error("token secret must be at least 32 bytes")]
    WeakSecret,
    #[error(
        "no token_secret configured: set one of at least 32 random bytes, the same for users and the gateway \
         (SHOPFAST_USERS__TOKEN_SECRET, SHOPFAST_GATEWAY__TOKEN_SECRET); `shopfast up` makes one per data directory"
    )]
    NoSecret,
}

/// The signer for a configured secret. There is no built-in one: a process
/// without a secret refuses to start rather than sign with a known key.
pub fn signer_from_config(secret: Option<&crate::config::Secret>) -> Result<TokenSigner, TokenError> {
    TokenSigner::new(secret.ok_or(TokenError::NoSecret)?.expose().as_bytes())
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: <redacted> }")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < 32 {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self { key: secret.to_vec() })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    pub fn issue(&self, user_id: &str, email: &str, now_secs: i64, ttl_secs: i64) -> (String, Claims) {
        let claims = Claims {
            sub: user_id.to_string(),
            email: email.to_string(),
            iss: ISSUER.to_string(),
            iat: now_secs,
            exp: now_secs + ttl_secs,
            nbf: None,
        };
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        (format!("{signing_input}.{signature}"), claims)
    }

    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json: serde_json::Value =
            serde_json::from_slice(&B64.decode(header).map_err(|_| TokenError::Malformed)?)
                .map_err(|_| TokenError::Malformed)?;
        if header_json.get("alg").and_then(|v| v.as_str()) != Some("HS256") {
            return Err(TokenError::Algorithm);
        }
        let signature = B64.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        // Not valid yet, or issued in the future (beyond the clock skew).
        let starts = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if starts > now_secs + CLOCK_SKEW_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn round_trip_and_expiry() {
        let (token, claims) = signer().issue("u1", "a@b.co", 1_000, 60);
        assert_eq!(signer().verify(&token, 1_059).unwrap(), claims);
        assert_eq!(signer().verify(&token, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let (token, _) = signer().issue("u1", "a@b.co", 1_000, 60);
        let other = TokenSigner::new(b"another-secret-another-secret-xx").unwrap();
        assert_eq!(other.verify(&token, 1_001), Err(TokenError::Signature));

        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload =
            B64.encode(br#"{"sub":"admin","email":"x","iss":"shopfast-users","iat":0,"exp":9999999999}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(signer().verify(&forged, 1_001), Err(TokenError::Signature));

        let none_alg = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(signer().verify(&none_alg, 1_001), Err(TokenError::Algorithm));

        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(signer().verify(garbage, 1_001).is_err(), "{garbage:?} accepted");
        }
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        assert_eq!(TokenSigner::new(b"short").unwrap_err(), TokenError::WeakSecret);
        assert_eq!(signer_from_config(None).unwrap_err(), TokenError::NoSecret);
        let secret = crate::config::Secret::new("0123456789abcdef0123456789abcdef");
        assert!(signer_from_config(Some(&secret)).is_ok());
    }

    /// A token signed with our key whose claims are `claims`.
    fn signed(claims: &serde_json::Value) -> String {
        let input = format!("{}.{}", B64.encode(HEADER), B64.encode(claims.to_string()));
        let mut mac = signer().mac();
        mac.update(input.as_bytes());
        format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_beyond_a_small_clock_skew() {
        let claims = |iat: i64, nbf: Option<i64>| {
            let mut c = serde_json::json!({ "sub": "u1", "email": "a@b.co", "iss": ISSUER, "iat": iat, "exp": 10_000 });
            if let Some(nbf) = nbf {
                c["nbf"] = nbf.into();
            }
            signed(&c)
        };
        let now = 1_000;
        assert!(signer().verify(&claims(now, None), now).is_ok());
        assert!(signer().verify(&claims(now + CLOCK_SKEW_SECS, None), now).is_ok(), "within the skew");
        assert_eq!(signer().verify(&claims(now + 3_600, None), now), Err(TokenError::NotYetValid), "iat in the future");
        assert_eq!(signer().verify(&claims(now, Some(now + 600)), now), Err(TokenError::NotYetValid), "nbf ahead");
        assert!(signer().verify(&claims(now, Some(now + 600)), now + 600).is_ok(), "valid once nbf passed");
        assert!(signer().verify(&claims(now - 10, Some(now - 5)), now).is_ok());
    }
}
