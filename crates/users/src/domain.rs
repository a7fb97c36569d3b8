//! Account rules, free of transport and SQL: what a valid email, password,
//! name and address are, and how an update applies.
pub use kit_core::error::DomainError;

pub const MIN_PASSWORD_CHARS: usize = 8;
/// argon2 work grows with input; a cap keeps hashing from being a DoS lever.
pub const MAX_PASSWORD_BYTES: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
}

impl Address {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Trims every field; an address must have line1, city, postal code and a
    /// two-letter country code, or be entirely empty.
    pub fn validate(self) -> Result<Self, DomainError> {
        let trim = |s: String| s.trim().to_string();
        let address = Self {
            line1: trim(self.line1),
            line2: trim(self.line2),
            city: trim(self.city),
            region: trim(self.region),
            postal_code: trim(self.postal_code),
            country_code: self.country_code.trim().to_ascii_uppercase(),
        };
        if address.is_empty() {
            return Ok(address);
        }
        for (field, value) in
            [("line1", &address.line1), ("city", &address.city), ("postal_code", &address.postal_code)]
        {
            if value.is_empty() {
                return Err(DomainError::invalid(format!("address.{field} is required")));
            }
        }
        for value in [&address.line1, &address.line2, &address.city, &address.region, &address.postal_code] {
            if value.chars().count() > 200 {
                return Err(DomainError::invalid("address fields must be at most 200 characters"));
            }
        }
        if address.country_code.len() != 2 || !address.country_code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(DomainError::invalid("address.country_code must be a two-letter ISO 3166-1 code"));
        }
        Ok(address)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub address: Address,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Lower-cases and trims; checks the shape `local@domain.tld` without spaces.
pub fn normalize_email(email: &str) -> Result<String, DomainError> {
    let email = email.trim().to_lowercase();
    let bad = || DomainError::invalid("email must look like name@example.com");
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
        return Err(bad());
    }
    Ok(email)
}

/// At least 8 characters with a letter and a digit, at most 128 bytes.
pub fn validate_password(password: &str) -> Result<(), DomainError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(DomainError::invalid(format!("password must be at least {MIN_PASSWORD_CHARS} characters")));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(DomainError::invalid(format!("password must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    if !password.chars().any(char::is_alphabetic) || !password.chars().any(|c| c.is_ascii_digit()) {
        return Err(DomainError::invalid("password must contain a letter and a digit"));
    }
    Ok(())
}

pub fn normalize_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(DomainError::invalid("name must be 1-100 printable characters"));
    }
    Ok(name.to_string())
}

pub fn validate_user_id(id: &str) -> Result<(), DomainError> {
    if id.trim().is_empty() {
        Err(DomainError::invalid("user_id is required"))
    } else if id.len() > 64 {
        Err(DomainError::invalid("user_id must be at most 64 characters"))
    } else {
        Ok(())
    }
}

/// A registration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub email: String,
    pub name: String,
    pub address: Address,
}

pub fn register(email: &str, password: &str, name: &str, address: Address) -> Result<Registration, DomainError> {
    validate_password(password)?;
    Ok(Registration { email: normalize_email(email)?, name: normalize_name(name)?, address: address.validate()? })
}

/// The fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub address: Option<Address>,
    pub active: Option<bool>,
}

impl ProfileChanges {
    pub fn validate(self) -> Result<Self, DomainError> {
        Ok(Self {
            name: self.name.as_deref().map(normalize_name).transpose()?,
            address: self.address.map(Address::validate).transpose()?,
            active: self.active,
        })
    }

    pub fn apply(self, mut user: User, now: i64) -> User {
        if let Some(name) = self.name {
            user.name = name;
        }
        if let Some(address) = self.address {
            user.address = address;
        }
        if let Some(active) = self.active {
            user.active = active;
        }
        user.updated_at = now;
        user
    }
}

/// ValidateUser's rule: the user exists and is active.
pub fn check_active(user: Option<User>, id: &str) -> Result<User, DomainError> {
    match user {
        None => Err(DomainError::NotFound(format!("user {id} not found"))),
        Some(user) if !user.active => Err(DomainError::FailedPrecondition(format!("user {id} is inactive"))),
        Some(user) => Ok(user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@-x.com",
            "ada@x..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn weak_passwords_are_refused() {
        for bad in ["", "short1", "allletters", "12345678", &format!("a1{}", "x".repeat(MAX_PASSWORD_BYTES))] {
            assert!(validate_password(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_password("correct horse 1").is_ok());
    }

    #[test]
    fn addresses_are_all_or_nothing() {
        assert!(Address::default().validate().unwrap().is_empty());
        let partial = Address { city: "Paris".into(), ..Default::default() };
        assert!(partial.validate().is_err());
        let full = Address {
            line1: "1 Rue de Rivoli ".into(),
            city: "Paris".into(),
            postal_code: "75001".into(),
            country_code: "fr".into(),
            ..Default::default()
        };
        let ok = full.clone().validate().unwrap();
        assert_eq!((ok.line1.as_str(), ok.country_code.as_str()), ("1 Rue de Rivoli", "FR"));
        assert!(Address { country_code: "FRA".into(), ..full }.validate().is_err());
    }

    #[test]
    fn updates_change_only_what_is_set() {
        let user = User {
            id: "u".into(),
            email: "a@b.co".into(),
            name: "Ada".into(),
            address: Address::default(),
            active: true,
            created_at: 1,
            updated_at: 1,
        };
        let changed = ProfileChanges { name: Some("Grace".into()), ..Default::default() }.apply(user.clone(), 5);
        assert_eq!((changed.name.as_str(), changed.active, changed.updated_at), ("Grace", true, 5));
        assert!(ProfileChanges { name: Some(" ".into()), ..Default::default() }.validate().is_err());
        assert!(matches!(check_active(None, "x"), Err(DomainError::NotFound(_))));
        let inactive = User { active: false, ..user };
        assert!(matches!(check_active(Some(inactive), "u"), Err(DomainError::FailedPrecondition(_))));
    }

    proptest! {
        #[test]
        fn normalised_emails_are_stable(local in "[a-zA-Z0-9._+]{1,20}", domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let once = normalize_email(&format!("{local}@{domain}")).unwrap();
            prop_assert_eq!(normalize_email(&once).unwrap(), once);
        }
    }
}
