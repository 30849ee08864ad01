//! Accounts, postings and the one rounding rule.
//!
//! Money is an integer count of the asset's minor units. Rates are decimals
//! ([`tally_core::decimal::Dec`]) multiplied exactly with rust_decimal. Every conversion
//! from an exact product to minor units, and every proportional share, goes through this
//! module and **truncates toward zero**. Whatever truncation leaves over goes to an account
//! the settlement spec names for that split, so every split sums to its total exactly.

use bincode::{Decode, Encode};
use rust_decimal::{Decimal, RoundingStrategy};

/// A ledger account. Balances are signed: positive means the account holds money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum Account {
    /// Everything outside the ledger: deposits come from here, confirmed payouts go here.
    World,
    /// A lab's prepaid funds; may go below zero down to its contract's credit limit.
    Escrow(u64),
    /// What the collective owes a publisher as canonical owner of content.
    Payable(u64),
    /// What the collective owes a publisher as syndication partner.
    Partner(u64),
    /// The net position with a federated collective: positive means we owe them.
    Clearing(u64),
    /// The collective's fee income.
    Fee,
    /// Royalties for content nobody had registered, held until claimed.
    Unclaimed,
    /// A blanket contract's fee not yet distributed (by the contract's sequence number).
    Pool(u64),
    /// Payouts created at a period close and not yet confirmed or failed.
    InFlight,
}

impl Account {
    /// A stable text form, e.g. `escrow:7`, used in APIs and reports (also its `Display`).
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// Parse [`Account::label`] back.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, id) = match text.split_once(':') {
            Some((n, i)) => (n, Some(i.parse::<u64>().ok()?)),
            None => (text, None),
        };
        Some(match (name, id) {
            ("world", None) => Account::World,
            ("escrow", Some(i)) => Account::Escrow(i),
            ("payable", Some(i)) => Account::Payable(i),
            ("partner", Some(i)) => Account::Partner(i),
            ("clearing", Some(i)) => Account::Clearing(i),
            ("fee", None) => Account::Fee,
            ("unclaimed", None) => Account::Unclaimed,
            ("pool", Some(i)) => Account::Pool(i),
            ("in-flight", None) => Account::InFlight,
            _ => return None,
        })
    }

    /// The participant an account belongs to, if any.
    pub fn party(&self) -> Option<u64> {
        match self {
            Account::Escrow(id) | Account::Payable(id) | Account::Partner(id) | Account::Clearing(id) => Some(*id),
            _ => None,
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::World => f.write_str("world"),
            Account::Escrow(id) => write!(f, "escrow:{id}"),
            Account::Payable(id) => write!(f, "payable:{id}"),
            Account::Partner(id) => write!(f, "partner:{id}"),
            Account::Clearing(id) => write!(f, "clearing:{id}"),
            Account::Fee => f.write_str("fee"),
            Account::Unclaimed => f.write_str("unclaimed"),
            Account::Pool(seq) => write!(f, "pool:{seq}"),
            Account::InFlight => f.write_str("in-flight"),
        }
    }
}

/// One side of a movement. The postings of one entry always sum to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Posting {
    pub account: Account,
    pub amount: i128,
}

/// Convert an exact decimal amount (in whole asset units) to minor units at `scale`,
/// truncating toward zero. `None` if it does not fit in a u64.
pub fn to_units(amount: Decimal, scale: u8) -> Option<u64> {
    let minor = amount.checked_mul(Decimal::from_i128_with_scale(10i128.checked_pow(u32::from(scale))?, 0))?;
    let truncated = minor.round_dp_with_strategy(0, RoundingStrategy::ToZero);
    u64::try_from(truncated.mantissa().checked_div(10i128.checked_pow(truncated.scale())?)?).ok()
}

/// `amount * numerator / denominator`, truncated toward zero. `denominator` must be > 0
/// and `numerator <= denominator`, so the share never exceeds the amount.
pub fn share(amount: u64, numerator: u64, denominator: u64) -> u64 {
    assert!(denominator > 0 && numerator <= denominator, "a share is a fraction of at most one");
    let s = u128::from(amount) * u128::from(numerator) / u128::from(denominator);
    u64::try_from(s).expect("a share of a u64 fits a u64")
}

/// [`share`] for a value in basis points.
pub fn share_bps(amount: u64, bps: u16) -> u64 {
    share(amount, u64::from(bps), u64::from(tally_core::kinds::BPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncation, never rounding up, at the asset's scale.
    #[test]
    fn the_rounding_rule_truncates() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        assert_eq!(to_units(d("0.0123459"), 6), Some(12345));
        assert_eq!(to_units(d("0.0000009"), 6), Some(0));
        assert_eq!(to_units(d("2.5"), 0), Some(2));
        assert_eq!(to_units(d("1"), 18), Some(1_000_000_000_000_000_000));
        assert_eq!(to_units(d("100"), 18), None);
        assert_eq!(share(10, 1, 3), 3);
        assert_eq!(share_bps(999, 1500), 149);
        assert_eq!(share(u64::MAX, 1, 1), u64::MAX);
    }

    /// Labels round-trip.
    #[test]
    fn labels_parse_back() {
        for a in [Account::World, Account::Escrow(7), Account::Pool(3), Account::InFlight, Account::Clearing(9)] {
            assert_eq!(Account::parse(&a.label()), Some(a));
        }
        assert_eq!(Account::parse("escrow"), None);
        assert_eq!(Account::parse("fee:1"), None);
    }
}
