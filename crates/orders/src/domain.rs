//! Order rules, free of SQL and gRPC: the state machine, line items, and
//! pricing — all money in integer minor units of one currency.
use kit_core::error::DomainError;
use serde::{Deserialize, Serialize};

/// CREATED → RESERVED → PAID → SHIPPED → DELIVERED → RETURNED; an order not
/// yet shipped may be CANCELLED. A PAID one goes through CANCELLING: the
/// status change is the decision (it races fulfilment's PAID → SHIPPED, and
/// exactly one wins), the refund and the restock follow it, then CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Reserved,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Returned,
    /// Cancelled after payment; the refund and the restock are under way.
    Cancelling,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Created,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Returned,
        OrderStatus::Cancelling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Reserved => "RESERVED",
            OrderStatus::Paid => "PAID",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Returned => "RETURNED",
            OrderStatus::Cancelling => "CANCELLING",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Created, Reserved)
                | (Reserved, Paid)
                | (Paid, Shipped)
                | (Shipped, Delivered)
                | (Delivered, Returned)
                | (Created | Reserved, Cancelled)
                | (Paid, Cancelling)
                | (Cancelling, Cancelled)
        )
    }

    /// No further change will happen on its own.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Returned)
    }
}

pub fn check_transition(from: OrderStatus, to: OrderStatus) -> Result<(), DomainError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(DomainError::FailedPrecondition(format!("a {} order cannot become {}", from.as_str(), to.as_str())))
    }
}

/// What cancelling an order in a status takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// Nothing was taken yet: straight to CANCELLED (a saga still running
    /// finds it so and undoes its own steps).
    Now,
    /// Paid: to CANCELLING now, then the money back and the units back to
    /// stock, then CANCELLED.
    RefundAndRestock,
    /// Already on its way (a repeated cancel): finish what is left.
    Finish,
}

/// The decision to cancel an order in `status`, or why it cannot be.
pub fn cancellation(status: OrderStatus) -> Result<Cancellation, DomainError> {
    match status {
        OrderStatus::Created | OrderStatus::Reserved => Ok(Cancellation::Now),
        OrderStatus::Paid => Ok(Cancellation::RefundAndRestock),
        OrderStatus::Cancelling => Ok(Cancellation::Finish),
        other => Err(DomainError::FailedPrecondition(format!("a {} order cannot be cancelled", other.as_str()))),
    }
}

/// The longest reason a cancellation records.
pub const MAX_CANCEL_REASON: usize = 500;

/// The reason a cancellation records: the customer's, or the default.
pub fn cancel_reason(given: &str) -> Result<String, DomainError> {
    if given.len() > MAX_CANCEL_REASON {
        return Err(DomainError::invalid(format!("reason is at most {MAX_CANCEL_REASON} characters")));
    }
    Ok(if given.is_empty() { "cancelled by the customer".to_string() } else { given.to_string() })
}

/// A cancel for an order that is not recorded yet: while the saga placing it
/// still runs, come back once it is placed; otherwise there is no such order.
pub fn cancel_unrecorded(order_id: &str, still_placing: bool) -> DomainError {
    if still_placing {
        DomainError::FailedPrecondition(format!("order {order_id} is still being placed; cancel it once it is placed"))
    } else {
        DomainError::NotFound(format!("no order {order_id}"))
    }
}

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i64 = 100;

/// What the customer asked for: (product id, quantity) lines, checked and
/// merged (the same product twice becomes one line), in product-id order.
pub fn check_items(items: &[(String, i64)]) -> Result<Vec<(String, i64)>, DomainError> {
    if items.is_empty() {
        return Err(DomainError::invalid("an order needs at least one item"));
    }
    let mut merged: std::collections::BTreeMap<&str, i64> = Default::default();
    for (index, (product_id, quantity)) in items.iter().enumerate() {
        if product_id.trim().is_empty() || product_id.len() > 100 {
            return Err(DomainError::invalid(format!("items[{index}].product_id is required")));
        }
        if !(1..=MAX_QUANTITY).contains(quantity) {
            return Err(DomainError::invalid(format!("items[{index}].quantity must be 1 to {MAX_QUANTITY}")));
        }
        let total = merged.entry(product_id.as_str()).or_default();
        *total += quantity;
        if *total > MAX_QUANTITY {
            return Err(DomainError::invalid(format!("at most {MAX_QUANTITY} of one product per order")));
        }
    }
    if merged.len() > MAX_LINES {
        return Err(DomainError::invalid(format!("at most {MAX_LINES} different products per order")));
    }
    Ok(merged.into_iter().map(|(id, q)| (id.to_string(), q)).collect())
}

/// A line with its price snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub currency_code: String,
}

/// How orders are priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// Tax in basis points of the subtotal (825 = 8.25 %), rounded half up.
    pub tax_basis_points: i64,
    pub shipping_minor: i64,
    /// Subtotals at or above this ship free.
    pub free_shipping_from_minor: i64,
}

impl Default for Pricing {
    fn default() -> Self {
        Self { tax_basis_points: 825, shipping_minor: 599, free_shipping_from_minor: 5_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub subtotal: i64,
    pub tax: i64,
    pub shipping: i64,
    pub total: i64,
}

impl Pricing {
    /// Totals of `lines`, all in `currency`.
    pub fn totals(&self, lines: &[Line], currency: &str) -> Result<Totals, DomainError> {
        let overflow = || DomainError::invalid("order total is too large");
        let mut subtotal: i64 = 0;
        for line in lines {
            if line.currency_code != currency {
                return Err(DomainError::FailedPrecondition(format!(
                    "{} is priced in {}, the order is in {currency}",
                    line.product_id, line.currency_code
                )));
            }
            let amount = line.unit_price_minor.checked_mul(line.quantity).ok_or_else(overflow)?;
            subtotal = subtotal.checked_add(amount).ok_or_else(overflow)?;
        }
        // Half up: (s · bp + 5000) / 10000, in i128 so it cannot overflow.
        let tax = ((i128::from(subtotal) * i128::from(self.tax_basis_points) + 5_000) / 10_000) as i64;
        let shipping = if subtotal >= self.free_shipping_from_minor { 0 } else { self.shipping_minor };
        let total = subtotal.checked_add(tax).and_then(|t| t.checked_add(shipping)).ok_or_else(overflow)?;
        Ok(Totals { subtotal, tax, shipping, total })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cancellation_records_a_bounded_reason_and_waits_for_placing() {
        assert_eq!(cancel_reason("").unwrap(), "cancelled by the customer");
        assert_eq!(cancel_reason("changed my mind").unwrap(), "changed my mind");
        assert!(matches!(cancel_reason(&"x".repeat(501)), Err(DomainError::Invalid(_))));
        assert!(matches!(cancel_unrecorded("o1", true), DomainError::FailedPrecondition(_)));
        assert!(matches!(cancel_unrecorded("o1", false), DomainError::NotFound(_)));
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_state_machine_allows_only_its_edges() {
        use OrderStatus::*;
        let allowed = [
            (Created, Reserved),
            (Reserved, Paid),
            (Paid, Shipped),
            (Shipped, Delivered),
            (Delivered, Returned),
            (Created, Cancelled),
            (Reserved, Cancelled),
            (Paid, Cancelling),
            (Cancelling, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
            assert_eq!(OrderStatus::parse(from.as_str()), Some(from));
        }
        assert!(matches!(check_transition(Shipped, Cancelled), Err(DomainError::FailedPrecondition(_))));
        assert!(matches!(check_transition(Paid, Cancelled), Err(DomainError::FailedPrecondition(_))), "via CANCELLING");
    }

    #[test]
    fn a_cancellation_is_decided_by_the_status() {
        use OrderStatus::*;
        assert_eq!(cancellation(Created), Ok(Cancellation::Now));
        assert_eq!(cancellation(Reserved), Ok(Cancellation::Now));
        assert_eq!(cancellation(Paid), Ok(Cancellation::RefundAndRestock));
        assert_eq!(cancellation(Cancelling), Ok(Cancellation::Finish));
        for status in [Shipped, Delivered, Cancelled, Returned] {
            assert!(matches!(cancellation(status), Err(DomainError::FailedPrecondition(_))), "{status:?}");
        }
    }

    #[test]
    fn items_are_checked_and_merged() {
        let items = vec![("b".to_string(), 2), ("a".to_string(), 1), ("b".to_string(), 3)];
        assert_eq!(check_items(&items).unwrap(), vec![("a".to_string(), 1), ("b".to_string(), 5)]);
        for bad in [
            vec![],
            vec![("".to_string(), 1)],
            vec![("a".to_string(), 0)],
            vec![("a".to_string(), -1)],
            vec![("a".to_string(), 101)],
            vec![("a".to_string(), 60), ("a".to_string(), 60)],
            (0..51).map(|i| (format!("p{i}"), 1)).collect(),
        ] {
            assert!(matches!(check_items(&bad), Err(DomainError::Invalid(_))), "{bad:?}");
        }
    }

    fn line(price: i64, quantity: i64, currency: &str) -> Line {
        Line {
            product_id: "p".into(),
            sku: "S".into(),
            name: "n".into(),
            quantity,
            unit_price_minor: price,
            currency_code: currency.into(),
        }
    }

    #[test]
    fn totals_round_tax_half_up_and_ship_free_above_the_threshold() {
        let pricing = Pricing::default();
        // 2 × 1,999 = 3,998; tax 8.25 % = 329.835 → 330; shipping 599.
        let t = pricing.totals(&[line(1_999, 2, "USD")], "USD").unwrap();
        assert_eq!(t, Totals { subtotal: 3_998, tax: 330, shipping: 599, total: 4_927 });
        let free = pricing.totals(&[line(2_500, 2, "USD")], "USD").unwrap();
        assert_eq!((free.shipping, free.total), (0, 5_000 + 413));
        assert!(matches!(pricing.totals(&[line(1, 1, "EUR")], "USD"), Err(DomainError::FailedPrecondition(_))));
        assert!(pricing.totals(&[line(i64::MAX, 2, "USD")], "USD").is_err());
    }

    proptest! {
        #[test]
        fn totals_add_up(lines in proptest::collection::vec((1i64..1_000_000, 1i64..100), 1..20)) {
            let lines: Vec<Line> = lines.into_iter().map(|(p, q)| line(p, q, "USD")).collect();
            let t = Pricing::default().totals(&lines, "USD").unwrap();
            prop_assert_eq!(t.subtotal, lines.iter().map(|l| l.unit_price_minor * l.quantity).sum::<i64>());
            prop_assert_eq!(t.total, t.subtotal + t.tax + t.shipping);
            // Half up: tax · 10^4 lies in (s · bp − 5000, s · bp + 5000].
            prop_assert!(t.tax * 10_000 > t.subtotal * 825 - 5_000 && t.tax * 10_000 <= t.subtotal * 825 + 5_000);
        }
    }
}
