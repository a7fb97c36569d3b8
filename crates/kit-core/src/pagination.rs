//! AIP-158 style pagination: `page_size` 0 means the default, larger than the
//! maximum is clamped, negative is an error; `page_token` is opaque to clients
//! and bound to the query it came from.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    #[error("page_size must not be negative")]
    NegativeSize,
    #[error("page_token is invalid or belongs to a different query")]
    BadToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: i64,
    pub limit: i64,
}

/// Resolves a request's page. `query_fingerprint` identifies the filters, so a
/// token from one search is refused for another.
pub fn resolve(page_size: i32, page_token: &str, query_fingerprint: u64) -> Result<Page, PageError> {
    let limit = match i64::from(page_size) {
        n if n < 0 => return Err(PageError::NegativeSize),
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let offset = if page_token.is_empty() { 0 } else { decode(page_token, query_fingerprint)? };
    Ok(Page { offset, limit })
}

/// The token for the page after `page`, if more rows remain.
pub fn next_token(page: Page, total: i64, query_fingerprint: u64) -> String {
    let next = page.offset + page.limit;
    if next >= total { String::new() } else { B64.encode(format!("v1:{next}:{query_fingerprint:x}")) }
}

fn decode(token: &str, query_fingerprint: u64) -> Result<i64, PageError> {
    let raw = B64.decode(token).map_err(|_| PageError::BadToken)?;
    let text = String::from_utf8(raw).map_err(|_| PageError::BadToken)?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(offset), Some(fp), None) if fp == format!("{query_fingerprint:x}") => {
            offset.parse::<i64>().ok().filter(|o| *o >= 0).ok_or(PageError::BadToken)
        }
        _ => Err(PageError::BadToken),
    }
}

/// A stable fingerprint of a query's filters (FNV-1a; stable across processes,
/// unlike the std hasher, so tokens survive a restart or another replica).
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_clamp_and_refuse_negative() {
        assert_eq!(resolve(0, "", 1).unwrap().limit, DEFAULT_PAGE_SIZE);
        assert_eq!(resolve(1_000_000, "", 1).unwrap().limit, MAX_PAGE_SIZE);
        assert_eq!(resolve(i32::MAX, "", 1).unwrap().limit, MAX_PAGE_SIZE);
        assert_eq!(resolve(-1, "", 1), Err(PageError::NegativeSize));
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_the_query() {
        let fp = fingerprint(&["shoes", "sports"]);
        let first = resolve(10, "", fp).unwrap();
        let token = next_token(first, 25, fp);
        assert_eq!(resolve(10, &token, fp).unwrap().offset, 10);
        assert_eq!(resolve(10, &token, fingerprint(&["hats"])), Err(PageError::BadToken));
        assert_eq!(next_token(Page { offset: 20, limit: 10 }, 25, fp), "");
        for garbage in ["!!!", "djE6LTE6MA", "abc", "djE6eDox"] {
            assert_eq!(resolve(10, garbage, fp), Err(PageError::BadToken), "{garbage}");
        }
    }
}
