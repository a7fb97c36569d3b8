//! Catalog and inventory rules, free of transport and SQL.
use std::collections::BTreeMap;

pub const MAX_ITEMS_PER_RESERVATION: usize = 100;
pub const MAX_QUANTITY_PER_ITEM: i64 = 10_000;
pub const MAX_ORDER_ID_LEN: usize = 128;
pub const MAX_STOCK: i64 = 1_000_000_000;
pub const MAX_QUERY_LEN: usize = 200;

pub use kit_core::error::DomainError;

fn invalid(message: impl Into<String>) -> DomainError {
    DomainError::Invalid(message.into())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dimensions {
    pub length_mm: i64,
    pub width_mm: i64,
    pub height_mm: i64,
}

/// A catalog entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_minor: i64,
    pub currency_code: String,
    pub image_url: String,
    pub weight_grams: i64,
    pub dimensions: Dimensions,
    pub stock: i64,
    pub reserved: i64,
    pub sold: i64,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Product {
    pub fn available(&self) -> i64 {
        self.stock - self.reserved
    }
}

/// A product to add to the catalog, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_minor: i64,
    pub currency_code: String,
    pub image_url: String,
    pub weight_grams: i64,
    pub dimensions: Dimensions,
    pub stock: i64,
}

impl NewProduct {
    /// Normalises (trims, upper-cases the SKU and currency, lower-cases the
    /// category) and checks every field.
    pub fn validate(mut self) -> Result<Self, DomainError> {
        self.sku = self.sku.trim().to_ascii_uppercase();
        self.name = self.name.trim().to_string();
        self.category = self.category.trim().to_ascii_lowercase();
        self.currency_code = self.currency_code.trim().to_ascii_uppercase();
        if self.sku.is_empty()
            || self.sku.len() > 64
            || !self.sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("sku must be 1-64 characters of A-Z, 0-9 and '-'"));
        }
        if self.name.is_empty() || self.name.chars().count() > 200 {
            return Err(invalid("name must be 1-200 characters"));
        }
        if self.description.chars().count() > 5_000 {
            return Err(invalid("description must be at most 5000 characters"));
        }
        if self.category.is_empty()
            || self.category.len() > 64
            || !self.category.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("category must be 1-64 characters of a-z, 0-9 and '-'"));
        }
        validate_currency(&self.currency_code)?;
        if self.price_minor < 0 {
            return Err(invalid("price must not be negative"));
        }
        if self.image_url.len() > 2_048 {
            return Err(invalid("image_url must be at most 2048 characters"));
        }
        let d = &self.dimensions;
        if self.weight_grams < 0 || d.length_mm < 0 || d.width_mm < 0 || d.height_mm < 0 {
            return Err(invalid("weight and dimensions must not be negative"));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(invalid(format!("stock must be between 0 and {MAX_STOCK}")));
        }
        Ok(self)
    }
}

pub fn validate_currency(code: &str) -> Result<(), DomainError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid("currency_code must be a 3-letter ISO 4217 code"))
    }
}

pub fn validate_id(field: &str, id: &str) -> Result<(), DomainError> {
    if id.trim().is_empty() {
        Err(invalid(format!("{field} is required")))
    } else if id.len() > MAX_ORDER_ID_LEN {
        Err(invalid(format!("{field} must be at most {MAX_ORDER_ID_LEN} characters")))
    } else {
        Ok(())
    }
}

/// Items of a reservation or availability check: duplicates of one product are
/// merged, and the list is ordered by product id so that concurrent
/// transactions lock rows in the same order (no deadlocks on PostgreSQL).
pub fn normalize_items(items: &[(String, i64)]) -> Result<Vec<(String, i64)>, DomainError> {
    if items.is_empty() {
        return Err(invalid("items must not be empty"));
    }
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for (product_id, quantity) in items {
        validate_id("items.product_id", product_id)?;
        if !(1..=MAX_QUANTITY_PER_ITEM).contains(quantity) {
            return Err(invalid(format!("quantity must be between 1 and {MAX_QUANTITY_PER_ITEM}, got {quantity}")));
        }
        let total = merged.entry(product_id.clone()).or_default();
        *total += quantity;
        if *total > MAX_QUANTITY_PER_ITEM {
            return Err(invalid(format!("quantity for {product_id} exceeds {MAX_QUANTITY_PER_ITEM}")));
        }
    }
    if merged.len() > MAX_ITEMS_PER_RESERVATION {
        return Err(invalid(format!("at most {MAX_ITEMS_PER_RESERVATION} distinct products per request")));
    }
    Ok(merged.into_iter().collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Active,
    Committed,
    Released,
    Expired,
    /// A committed sale put back (its order was cancelled after payment).
    Restocked,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
            Self::Restocked => "RESTOCKED",
        }
    }

    /// The state a reservation finishing in this one comes from.
    pub fn comes_from(self) -> Self {
        match self {
            Self::Restocked => Self::Committed,
            _ => Self::Active,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ACTIVE" => Some(Self::Active),
            "COMMITTED" => Some(Self::Committed),
            "RELEASED" => Some(Self::Released),
            "EXPIRED" => Some(Self::Expired),
            "RESTOCKED" => Some(Self::Restocked),
            _ => None,
        }
    }

    /// How finishing a reservation in this state moves a product's counters:
    /// (stock delta, reserved delta, sold delta) per reserved unit.
    pub fn stock_effect(self) -> (i64, i64, i64) {
        match self {
            Self::Active => (0, 1, 0),
            Self::Committed => (-1, -1, 1),
            Self::Released | Self::Expired => (0, -1, 0),
            // From COMMITTED: the units come back to stock and leave sold.
            Self::Restocked => (1, 0, -1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: String,
    pub state: ReservationState,
    pub items: Vec<(String, i64)>,
    pub expires_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a repeated ReserveInventory for an existing reservation means.
pub fn replay_reservation(existing: &Reservation, requested: &[(String, i64)]) -> Result<(), DomainError> {
    match existing.state {
        ReservationState::Released | ReservationState::Expired => Err(DomainError::FailedPrecondition(format!(
            "reservation for order {} was already {}",
            existing.order_id,
            existing.state.as_str().to_ascii_lowercase()
        ))),
        _ if existing.items != requested => Err(DomainError::AlreadyExists(format!(
            "order {} already holds a reservation with different items",
            existing.order_id
        ))),
        _ => Ok(()),
    }
}

/// The state an order's reservation may move to from `from`, or why not.
pub fn check_finish(order_id: &str, from: ReservationState, to: ReservationState) -> Result<(), DomainError> {
    use ReservationState::*;
    match (from, to) {
        (Active, Committed | Released | Expired) | (Committed, Restocked) => Ok(()),
        _ => Err(DomainError::FailedPrecondition(format!(
            "reservation for order {order_id} is {} and cannot become {}",
            from.as_str().to_ascii_lowercase(),
            to.as_str().to_ascii_lowercase()
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Name,
    PriceAsc,
    PriceDesc,
    Newest,
}

/// Search filters, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchFilter {
    pub query: String,
    pub category: String,
    pub min_price_minor: Option<i64>,
    pub max_price_minor: Option<i64>,
    pub in_stock_only: bool,
    pub sort: Sort,
}

impl SearchFilter {
    pub fn validate(mut self) -> Result<Self, DomainError> {
        self.query = self.query.trim().to_string();
        self.category = self.category.trim().to_ascii_lowercase();
        if self.query.chars().count() > MAX_QUERY_LEN {
            return Err(invalid(format!("query must be at most {MAX_QUERY_LEN} characters")));
        }
        if self.category.len() > 64 {
            return Err(invalid("category must be at most 64 characters"));
        }
        if self.min_price_minor.is_some_and(|p| p < 0) || self.max_price_minor.is_some_and(|p| p < 0) {
            return Err(invalid("prices must not be negative"));
        }
        if let (Some(min), Some(max)) = (self.min_price_minor, self.max_price_minor)
            && min > max
        {
            return Err(invalid("min_price_minor must not exceed max_price_minor"));
        }
        Ok(self)
    }

    /// Identifies the filter for page tokens.
    pub fn fingerprint(&self) -> u64 {
        kit_core::pagination::fingerprint(&[
            &self.query,
            &self.category,
            &format!("{:?}", self.min_price_minor),
            &format!("{:?}", self.max_price_minor),
            &self.in_stock_only.to_string(),
            &format!("{:?}", self.sort),
        ])
    }
}

/// A `LIKE` pattern matching `text` anywhere, with `%`, `_` and `\` escaped
/// (used with `ESCAPE '\'`).
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> NewProduct {
        NewProduct {
            sku: " ab-1 ".into(),
            name: " Lamp ".into(),
            description: String::new(),
            category: "Home".into(),
            price_minor: 1999,
            currency_code: "usd".into(),
            image_url: String::new(),
            weight_grams: 100,
            dimensions: Dimensions { length_mm: 1, width_mm: 2, height_mm: 3 },
            stock: 5,
        }
    }

    #[test]
    fn new_products_are_normalised() {
        let p = sample().validate().unwrap();
        assert_eq!(
            (p.sku.as_str(), p.name.as_str(), p.category.as_str(), p.currency_code.as_str()),
            ("AB-1", "Lamp", "home", "USD")
        );
    }

    #[test]
    fn bad_products_are_refused() {
        let cases: [fn(&mut NewProduct); 9] = [
            |p| p.sku = "".into(),
            |p| p.sku = "has space".into(),
            |p| p.name = "  ".into(),
            |p| p.category = "".into(),
            |p| p.currency_code = "DOLLARS".into(),
            |p| p.price_minor = -1,
            |p| p.stock = -1,
            |p| p.stock = MAX_STOCK + 1,
            |p| p.dimensions.width_mm = -1,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut p = sample();
            mutate(&mut p);
            assert!(matches!(p.validate(), Err(DomainError::Invalid(_))), "case {i}");
        }
    }

    #[test]
    fn items_are_merged_sorted_and_bounded() {
        let items = vec![("b".to_string(), 2), ("a".to_string(), 1), ("b".to_string(), 3)];
        assert_eq!(normalize_items(&items).unwrap(), vec![("a".to_string(), 1), ("b".to_string(), 5)]);
        assert!(normalize_items(&[]).is_err());
        assert!(normalize_items(&[("a".into(), 0)]).is_err());
        assert!(normalize_items(&[("a".into(), -3)]).is_err());
        assert!(normalize_items(&[("".into(), 1)]).is_err());
        assert!(normalize_items(&[("a".into(), MAX_QUANTITY_PER_ITEM), ("a".into(), 1)]).is_err());
        let many: Vec<_> = (0..=MAX_ITEMS_PER_RESERVATION).map(|i| (format!("p{i}"), 1)).collect();
        assert!(normalize_items(&many).is_err());
    }

    #[test]
    fn replays_and_transitions() {
        let r = Reservation {
            order_id: "o".into(),
            state: ReservationState::Active,
            items: vec![("a".into(), 1)],
            expires_at: 0,
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(replay_reservation(&r, &[("a".into(), 1)]), Ok(()));
        assert!(matches!(replay_reservation(&r, &[("a".into(), 2)]), Err(DomainError::AlreadyExists(_))));
        let released = Reservation { state: ReservationState::Released, ..r };
        assert!(matches!(replay_reservation(&released, &[("a".into(), 1)]), Err(DomainError::FailedPrecondition(_))));
        use ReservationState::*;
        for to in [Committed, Released, Expired] {
            assert!(check_finish("o", Active, to).is_ok());
            for from in [Committed, Released, Expired] {
                assert!(check_finish("o", from, to).is_err(), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn search_filters_are_checked() {
        assert!(
            SearchFilter { min_price_minor: Some(10), max_price_minor: Some(5), ..Default::default() }
                .validate()
                .is_err()
        );
        assert!(SearchFilter { min_price_minor: Some(-1), ..Default::default() }.validate().is_err());
        assert!(SearchFilter { query: "x".repeat(MAX_QUERY_LEN + 1), ..Default::default() }.validate().is_err());
        let a = SearchFilter { query: "lamp".into(), ..Default::default() };
        let b = SearchFilter { query: "lamps".into(), ..Default::default() };
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_Off\\"), "%50\\%\\_off\\\\%");
    }

    proptest! {
        #[test]
        fn merged_quantities_add_up(items in proptest::collection::vec(("[a-d]", 1i64..100), 1..20)) {
            let items: Vec<(String, i64)> = items;
            let merged = normalize_items(&items).unwrap();
            let before: i64 = items.iter().map(|(_, q)| q).sum();
            let after: i64 = merged.iter().map(|(_, q)| q).sum();
            prop_assert_eq!(before, after);
            prop_assert!(merged.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
}
