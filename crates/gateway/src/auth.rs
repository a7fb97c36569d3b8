//! Who is calling: the client (by API key, else anonymous by IP) for rate
//! limits, and the signed-in user (by bearer token) for access and ownership.
use std::collections::BTreeMap;
use std::net::IpAddr;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use kit::token::TokenSigner;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Who the key belongs to; rate limits and quotas are per client.
    pub client: String,
    pub tier: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client: String,
    pub tier: String,
    pub admin: bool,
}

pub const ANONYMOUS_TIER: &str = "anonymous";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown API key")]
    UnknownKey,
    #[error("invalid bearer token: {0}")]
    BadToken(String),
    #[error("malformed Authorization header; expected `Bearer <token>`")]
    BadScheme,
}

/// The client behind a request: its API key's owner, or the anonymous tier
/// keyed by IP address.
pub fn identify(headers: &HeaderMap, peer: IpAddr, keys: &BTreeMap<String, ApiKey>) -> Result<Caller, AuthError> {
    match headers.get("x-api-key") {
        Some(value) => {
            let key = value.to_str().map_err(|_| AuthError::UnknownKey)?;
            let found = keys.get(key).ok_or(AuthError::UnknownKey)?;
            Ok(Caller { client: found.client.clone(), tier: found.tier.clone(), admin: found.admin })
        }
        None => Ok(Caller { client: format!("ip:{peer}"), tier: ANONYMOUS_TIER.to_string(), admin: false }),
    }
}

/// The signed-in user's id, if the request carries a bearer token.
pub fn user_id(headers: &HeaderMap, signer: &TokenSigner, now_secs: i64) -> Result<Option<String>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| AuthError::BadScheme)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::BadScheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::BadScheme);
    }
    let claims = signer.verify(token.trim(), now_secs).map_err(|e| AuthError::BadToken(e.to_string()))?;
    Ok(Some(claims.sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn api_keys_and_anonymous_callers() {
        let keys: BTreeMap<String, ApiKey> =
            [("k1".to_string(), ApiKey { client: "acme".into(), tier: "free".into(), admin: false })].into();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(identify(&headers(&[("x-api-key", "k1")]), ip, &keys).unwrap().client, "acme");
        assert_eq!(
            identify(&headers(&[]), ip, &keys).unwrap(),
            Caller { client: "ip:10.0.0.1".into(), tier: "anonymous".into(), admin: false }
        );
        assert_eq!(identify(&headers(&[("x-api-key", "nope")]), ip, &keys), Err(AuthError::UnknownKey));
    }

    #[test]
    fn bearer_tokens() {
        let signer = TokenSigner::new(&[7u8; 32]).unwrap();
        let (token, _) = signer.issue("u1", "a@b.co", 100, 60);
        assert_eq!(
            user_id(&headers(&[("authorization", &format!("Bearer {token}"))]), &signer, 120).unwrap(),
            Some("u1".into())
        );
        assert_eq!(user_id(&headers(&[]), &signer, 120).unwrap(), None);
        assert!(matches!(
            user_id(&headers(&[("authorization", &format!("Bearer {token}"))]), &signer, 200),
            Err(AuthError::BadToken(_))
        ));
        assert_eq!(user_id(&headers(&[("authorization", "Basic abc")]), &signer, 120), Err(AuthError::BadScheme));
        assert_eq!(user_id(&headers(&[("authorization", "Bearer")]), &signer, 120), Err(AuthError::BadScheme));
    }
}
