//! argon2id password hashing (RFC 9106 defaults: 19 MiB, 2 passes). Hashing is
//! deliberately slow, so it runs on the blocking pool, never on a runtime worker.
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub async fn hash(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await?
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches `stored`. With `stored = None` (unknown email) it
/// verifies against a dummy hash anyway, so both paths take the same time and
/// a caller cannot learn which emails have accounts.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = match stored {
            Some(phc) => phc,
            None => dummy_hash()?.to_string(),
        };
        let Ok(parsed) = PasswordHash::new(&phc) else { return Ok(false) };
        let matches = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(known && matches)
    })
    .await?
}

fn dummy_hash() -> Result<&'static str, PasswordError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let hash = hash_now("not a real password 0")?;
    Ok(DUMMY.get_or_init(|| hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let a = hash("secret pass 1".into()).await.unwrap();
        let b = hash("secret pass 1".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify("secret pass 1".into(), Some(a.clone())).await.unwrap());
        assert!(!verify("secret pass 2".into(), Some(a)).await.unwrap());
        assert!(!verify("not a real password 0".into(), None).await.unwrap(), "the dummy never matches");
        assert!(!verify("x".into(), Some("garbage".into())).await.unwrap());
    }
}
