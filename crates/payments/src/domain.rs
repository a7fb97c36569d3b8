//! Payment rules, free of SQL and gRPC: the state machine, card checks (Luhn,
//! expiry, CVC), the test cards that select a processor behaviour, money and
//! refund arithmetic.
use kit_core::error::DomainError;

/// PENDING → AUTHORIZED → PROCESSING → COMPLETED, any of the first three →
/// FAILED; COMPLETED → REFUNDING → REFUNDED (all refunded) or back to
/// COMPLETED (part refunded, more may follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Authorized,
    Processing,
    Completed,
    Failed,
    Refunding,
    Refunded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Authorized => "AUTHORIZED",
            Status::Processing => "PROCESSING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Refunding => "REFUNDING",
            Status::Refunded => "REFUNDED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Status::Pending,
            Status::Authorized,
            Status::Processing,
            Status::Completed,
            Status::Failed,
            Status::Refunding,
            Status::Refunded,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// A call is (or was, until a crash) working on it.
    pub fn in_flight(self) -> bool {
        matches!(self, Status::Pending | Status::Authorized | Status::Processing | Status::Refunding)
    }

    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Authorized)
                | (Authorized, Processing)
                | (Processing, Completed)
                | (Pending | Authorized | Processing, Failed)
                | (Completed, Refunding)
                | (Refunding, Refunded | Completed)
        )
    }
}

/// Refuses a transition the state machine does not have.
pub fn check_transition(from: Status, to: Status) -> Result<(), DomainError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(DomainError::FailedPrecondition(format!("a {} payment cannot become {}", from.as_str(), to.as_str())))
    }
}

/// Why a card was declined: permanent, a retry with the same card fails again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    InsufficientFunds,
    ExpiredCard,
    CardDeclined,
}

impl Decline {
    pub fn code(self) -> &'static str {
        match self {
            Decline::InsufficientFunds => "insufficient_funds",
            Decline::ExpiredCard => "expired_card",
            Decline::CardDeclined => "card_declined",
        }
    }
}

/// What the simulated processor does for a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Approve,
    Decline(Decline),
    /// The processor does not answer in time (retryable).
    Timeout,
    /// The processor fails this time (retryable).
    Transient,
    /// Approves after a delay.
    Slow,
}

/// Test cards (Stripe's numbers where Stripe has one); any other valid card approves.
pub const TEST_CARDS: &[(&str, Behaviour)] = &[
    ("4242424242424242", Behaviour::Approve),
    ("4000000000009995", Behaviour::Decline(Decline::InsufficientFunds)),
    ("4000000000000069", Behaviour::Decline(Decline::ExpiredCard)),
    ("4000000000000002", Behaviour::Decline(Decline::CardDeclined)),
    ("4000000000000119", Behaviour::Transient),
    ("4000000000000127", Behaviour::Timeout),
    ("4000000000000077", Behaviour::Slow),
];

pub fn behaviour_of(number: &str) -> Behaviour {
    TEST_CARDS.iter().find(|(n, _)| *n == number).map_or(Behaviour::Approve, |(_, b)| *b)
}

/// A card as the processor may keep it: never the number, never the CVC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSummary {
    pub brand: &'static str,
    pub last4: String,
    /// The expiry date has passed.
    pub expired: bool,
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn brand(number: &str) -> &'static str {
    let two: u32 = number.get(..2).and_then(|p| p.parse().ok()).unwrap_or(0);
    match (number.as_bytes().first(), two) {
        (Some(b'4'), _) => "visa",
        (_, 51..=55) => "mastercard",
        (_, 34 | 37) => "amex",
        _ => "unknown",
    }
}

/// Checks a card's shape; `today` is (year, month). Expiry in the past is not
/// an error here (the processor declines it), a malformed one is.
pub fn check_card(
    number: &str,
    month: i32,
    year: i32,
    cvc: &str,
    today: (i32, u32),
) -> Result<CardSummary, DomainError> {
    let summary = check_stored_card(number, month, year, today)?;
    if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::invalid("cvc must be 3 or 4 digits"));
    }
    Ok(summary)
}

/// A card without its CVC (as a payment method keeps it: the CVC was
/// checked when it was tokenized and is never stored).
pub fn check_stored_card(number: &str, month: i32, year: i32, today: (i32, u32)) -> Result<CardSummary, DomainError> {
    let number: String = number.chars().filter(|c| !c.is_whitespace()).collect();
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::invalid("card number must be 12 to 19 digits"));
    }
    let digits: Vec<u8> = number.bytes().map(|b| b - b'0').collect();
    if !luhn(&digits) {
        return Err(DomainError::invalid("card number fails the Luhn check"));
    }
    if !(1..=12).contains(&month) {
        return Err(DomainError::invalid("expiry_month must be 1 to 12"));
    }
    if !(2000..=2100).contains(&year) {
        return Err(DomainError::invalid("expiry_year must be a four-digit year"));
    }
    let expired = (year, month as u32) < today;
    Ok(CardSummary { brand: brand(&number), last4: number[number.len() - 4..].to_string(), expired })
}

/// An amount to charge: positive, at most 10^12 minor units, ISO currency code.
pub fn check_amount(minor_units: i64, currency: &str) -> Result<(), DomainError> {
    if minor_units <= 0 {
        return Err(DomainError::invalid("amount must be positive"));
    }
    if minor_units > 1_000_000_000_000 {
        return Err(DomainError::invalid("amount is too large"));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(DomainError::invalid("currency_code must be three upper-case letters, e.g. USD"));
    }
    Ok(())
}

/// What a refund takes: the requested amount, or all that remains.
pub fn refund_amount(paid: i64, refunded: i64, requested: Option<i64>) -> Result<i64, DomainError> {
    let remaining = paid - refunded;
    match requested {
        None if remaining > 0 => Ok(remaining),
        None => Err(DomainError::FailedPrecondition("nothing left to refund".into())),
        Some(n) if n <= 0 => Err(DomainError::invalid("refund amount must be positive")),
        Some(n) if n > remaining => {
            Err(DomainError::FailedPrecondition(format!("only {remaining} minor units remain to refund")))
        }
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_only_its_edges() {
        use Status::*;
        let all = [Pending, Authorized, Processing, Completed, Failed, Refunding, Refunded];
        let allowed = [
            (Pending, Authorized),
            (Authorized, Processing),
            (Processing, Completed),
            (Pending, Failed),
            (Authorized, Failed),
            (Processing, Failed),
            (Completed, Refunding),
            (Refunding, Refunded),
            (Refunding, Completed),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
            assert_eq!(Status::parse(from.as_str()), Some(from));
        }
        assert!(check_transition(Refunded, Completed).is_err());
        assert_eq!(Status::parse("NOPE"), None);
    }

    #[test]
    fn cards_are_checked_and_summarised() {
        let today = (2026, 11);
        let visa = check_card("4242 4242 4242 4242", 12, 2030, "123", today).unwrap();
        assert_eq!(visa, CardSummary { brand: "visa", last4: "4242".into(), expired: false });
        assert_eq!(check_card("5555555555554444", 1, 2030, "1234", today).unwrap().brand, "mastercard");
        assert_eq!(check_card("378282246310005", 1, 2030, "1234", today).unwrap().brand, "amex");
        assert!(check_card("4242424242424242", 10, 2026, "123", today).unwrap().expired);
        assert!(!check_card("4242424242424242", 11, 2026, "123", today).unwrap().expired, "valid through its month");
        for (number, month, year, cvc) in [
            ("4242424242424241", 1, 2030, "123"),
            ("42424242", 1, 2030, "123"),
            ("4242x24242424242", 1, 2030, "123"),
            ("4242424242424242", 13, 2030, "123"),
            ("4242424242424242", 0, 2030, "123"),
            ("4242424242424242", 1, 30, "123"),
            ("4242424242424242", 1, 2030, "12"),
            ("4242424242424242", 1, 2030, "12a"),
        ] {
            assert!(
                matches!(check_card(number, month, year, cvc, today), Err(DomainError::Invalid(_))),
                "{number} {month}/{year} {cvc}"
            );
        }
    }

    #[test]
    fn test_cards_select_behaviours() {
        assert_eq!(behaviour_of("4000000000009995"), Behaviour::Decline(Decline::InsufficientFunds));
        assert_eq!(behaviour_of("4000000000000127"), Behaviour::Timeout);
        assert_eq!(behaviour_of("5555555555554444"), Behaviour::Approve);
        for (number, _) in TEST_CARDS {
            assert!(check_card(number, 1, 2030, "123", (2026, 1)).is_ok(), "{number} is a valid card");
        }
    }

    #[test]
    fn amounts_and_refunds() {
        assert!(check_amount(100, "USD").is_ok());
        assert!(check_amount(0, "USD").is_err());
        assert!(check_amount(-5, "USD").is_err());
        assert!(check_amount(100, "usd").is_err());
        assert!(check_amount(100, "US").is_err());
        assert_eq!(refund_amount(1000, 0, None).unwrap(), 1000);
        assert_eq!(refund_amount(1000, 400, None).unwrap(), 600);
        assert_eq!(refund_amount(1000, 400, Some(600)).unwrap(), 600);
        assert!(matches!(refund_amount(1000, 400, Some(601)), Err(DomainError::FailedPrecondition(_))));
        assert!(matches!(refund_amount(1000, 1000, None), Err(DomainError::FailedPrecondition(_))));
        assert!(matches!(refund_amount(1000, 0, Some(0)), Err(DomainError::Invalid(_))));
    }
}
