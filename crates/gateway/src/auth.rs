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

/// API key → who holds it. The keys are secrets: `Debug` says how many,
/// never which, and `redacted` is how one is named in a message.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeys(pub BTreeMap<String, ApiKey>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys, redacted)", self.0.len())
    }
}

/// A key as a message may show it: its first four characters.
pub fn redacted(key: &str) -> String {
    format!("{}…", key.chars().take(4).collect::<String>())
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
/// keyed by IP address (the client's, see [`TrustedProxies::client_ip`]).
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

/// Proxies whose word on the client's address is taken (`trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// From config: addresses (`10.0.0.7`) or networks (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let nets = entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("trusted_proxies: {entry:?} is not an IP address or network"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy;
    /// then the nearest address in `X-Forwarded-For` (or `Forwarded: for=`)
    /// that is not a trusted proxy — walking from the right, as each proxy
    /// appends what it saw, so a client cannot choose its own address by
    /// sending the header itself.
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else { return peer };
            for hop in text.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    // An entry we cannot read: trust nothing to its left.
                    Err(_) => hops.clear(),
                }
            }
        }
        if hops.is_empty() {
            hops = forwarded_for(headers);
        }
        hops.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(peer)
    }
}

/// The `for=` addresses of `Forwarded` headers (RFC 7239), in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(text) = value.to_str() else { return Vec::new() };
        for element in text.split(',') {
            for pair in element.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else { continue };
                if !name.trim().eq_ignore_ascii_case("for") {
                    continue;
                }
                // `for="[2001:db8::1]:4711"`, `for=192.0.2.43`, `for=192.0.2.43:80`.
                let value = value.trim().trim_matches('"');
                let host = match value.strip_prefix('[') {
                    Some(rest) => rest.split(']').next().unwrap_or(""),
                    None => value.split(':').next().unwrap_or(""),
                };
                match host.parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => hops.clear(),
                }
            }
        }
    }
    hops
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
    fn the_client_address_comes_from_trusted_proxies_only() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = |v: &str| headers(&[("x-forwarded-for", v)]);
        // A stranger's header is ignored: it could name anyone.
        assert_eq!(proxies.client_ip(&xff("198.51.100.1"), stranger), stranger);
        // Through a trusted proxy: the nearest untrusted hop, from the right.
        assert_eq!(proxies.client_ip(&xff("198.51.100.1"), proxy), "198.51.100.1".parse::<IpAddr>().unwrap());
        let spoofed = xff("6.6.6.6, 198.51.100.1, 10.9.9.9");
        assert_eq!(proxies.client_ip(&spoofed, proxy), "198.51.100.1".parse::<IpAddr>().unwrap());
        // Garbage or nothing: the proxy's own address.
        assert_eq!(proxies.client_ip(&xff("not an address"), proxy), proxy);
        assert_eq!(proxies.client_ip(&headers(&[]), proxy), proxy);
        let forwarded = headers(&[("forwarded", r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.5"#)]);
        assert_eq!(proxies.client_ip(&forwarded, proxy), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert!(TrustedProxies::parse(&["10.0.0.0/99".into()]).is_err());
        assert!(TrustedProxies::parse(&["somewhere".into()]).is_err());
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
