//! Cards at rest: sealed with the service's card key (ChaCha20-Poly1305,
//! RustCrypto's `chacha20poly1305`), a fresh random nonce per card, and the
//! token as associated data — a sealed card copied under another token does
//! not open. The key comes from config (`card_key`, 32 bytes in base64) and
//! never from a built-in default.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("card_key must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a stored card could not be opened (wrong card key, or the row was tampered with)")]
    Unreadable,
}

/// What a payment method keeps of a card: no CVC.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCard {
    pub number: String,
    pub expiry_month: i32,
    pub expiry_year: i32,
}

impl std::fmt::Debug for StoredCard {
    /// Never the number: only its last four digits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last4 = self.number.get(self.number.len().saturating_sub(4)..).unwrap_or("");
        f.debug_struct("StoredCard")
            .field("number", &format_args!("…{last4}"))
            .field("expiry", &format_args!("{:02}/{}", self.expiry_month, self.expiry_year))
            .finish()
    }
}

pub struct Vault {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([key redacted])")
    }
}

impl Vault {
    pub fn from_base64(key: &str) -> Result<Self, VaultError> {
        let bytes = STANDARD.decode(key.trim()).map_err(|_| VaultError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| VaultError::BadKey)?;
        Ok(Self { cipher: ChaCha20Poly1305::new(&Key::from(key)) })
    }

    /// `card` sealed for `token`: base64 of nonce ‖ ciphertext.
    pub fn seal(&self, token: &str, card: &StoredCard) -> Result<String, VaultError> {
        let plain = serde_json::to_vec(card).map_err(|_| VaultError::Unreadable)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: &plain, aad: token.as_bytes() })
            .map_err(|_| VaultError::Unreadable)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, token: &str, sealed: &str) -> Result<StoredCard, VaultError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| VaultError::Unreadable)?;
        if bytes.len() <= NONCE_LEN {
            return Err(VaultError::Unreadable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Unreadable)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: token.as_bytes() })
            .map_err(|_| VaultError::Unreadable)?;
        serde_json::from_slice(&plain).map_err(|_| VaultError::Unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn card() -> StoredCard {
        StoredCard { number: "4242424242424242".into(), expiry_month: 12, expiry_year: 2040 }
    }

    #[test]
    fn a_sealed_card_opens_only_under_its_token_and_key() {
        let vault = Vault::from_base64(KEY).unwrap();
        let sealed = vault.seal("pm_1", &card()).unwrap();
        assert!(!sealed.contains("4242"), "the number is not readable at rest");
        assert_ne!(sealed, vault.seal("pm_1", &card()).unwrap(), "a fresh nonce each time");
        assert_eq!(vault.open("pm_1", &sealed).unwrap(), card());
        assert_eq!(vault.open("pm_2", &sealed), Err(VaultError::Unreadable), "moved under another token");
        let other = Vault::from_base64("HxwdHhobGBkWFxQVEhMQEQ4PDA0KCwgJBgcEBQIDAAE=").unwrap();
        assert_eq!(other.open("pm_1", &sealed), Err(VaultError::Unreadable), "another key");
        let mut tampered = STANDARD.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(vault.open("pm_1", &STANDARD.encode(tampered)), Err(VaultError::Unreadable));
        assert_eq!(vault.open("pm_1", "not base64!"), Err(VaultError::Unreadable));
        assert_eq!(vault.open("pm_1", "AAAA"), Err(VaultError::Unreadable));
    }

    #[test]
    fn bad_keys_are_refused_and_nothing_secret_is_printed() {
        for bad in ["", "short", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd", "not base64 at all!!"] {
            assert_eq!(Vault::from_base64(bad).unwrap_err(), VaultError::BadKey, "{bad:?}");
        }
        let vault = Vault::from_base64(KEY).unwrap();
        assert_eq!(format!("{vault:?}"), "Vault([key redacted])");
        let shown = format!("{:?}", card());
        assert!(!shown.contains("424242424242") && shown.contains("…4242"), "{shown}");
    }
}
