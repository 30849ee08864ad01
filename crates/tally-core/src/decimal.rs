//! `Dec`: the canonical encoding of a non-negative decimal rate (a price or a multiplier).
//!
//! Amounts of money are integers of minor units; rates are decimals that may have more
//! places (a price of 0.0025 USD per 1,000 words). A `Dec` is encoded as `mantissa:u64 ||
//! scale:u8` meaning `mantissa / 10^scale`, in its one normal form: no trailing zeros in
//! the mantissa (zero is `0, 0`). The bounds below keep every product the settlement engine
//! forms inside rust_decimal's 96-bit mantissa, so its arithmetic is exact and the only
//! rounding is the one rule in the settlement engine.

use std::str::FromStr;

use bincode::de::{Decode, Decoder};
use bincode::enc::{Encode, Encoder};
use bincode::error::{DecodeError, EncodeError};
use rust_decimal::Decimal;

/// Most decimal places a rate may have.
pub const DEC_SCALE_MAX: u8 = 9;
/// Largest value of a rate, in whole units of the asset (or as a plain number).
pub const DEC_VALUE_MAX: u64 = 1_000_000;

/// A non-negative decimal in canonical form; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dec {
    mantissa: u64,
    scale: u8,
}

impl Dec {
    pub const ZERO: Dec = Dec { mantissa: 0, scale: 0 };
    pub const ONE: Dec = Dec { mantissa: 1, scale: 0 };

    /// `mantissa / 10^scale`, normalised. Fails past the bounds.
    pub fn new(mut mantissa: u64, mut scale: u8) -> Result<Self, &'static str> {
        while scale > 0 && mantissa.is_multiple_of(10) {
            mantissa /= 10;
            scale -= 1;
        }
        if mantissa == 0 {
            scale = 0;
        }
        let d = Self { mantissa, scale };
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.scale > DEC_SCALE_MAX {
            return Err("a rate has at most 9 decimal places");
        }
        let max = DEC_VALUE_MAX.checked_mul(10u64.pow(u32::from(self.scale))).expect("bounded by 10^15");
        if self.mantissa > max {
            return Err("a rate is at most 1,000,000");
        }
        Ok(())
    }

    fn is_normal(&self) -> bool {
        if self.mantissa == 0 { self.scale == 0 } else { self.scale == 0 || !self.mantissa.is_multiple_of(10) }
    }

    /// Parse a plain decimal such as `0.0025` (no sign, no exponent).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err("a rate is written with digits and at most one '.', e.g. 0.0025");
        }
        let d = Decimal::from_str_exact(text).map_err(|_| "not a decimal number")?;
        Self::from_decimal(d)
    }

    /// The exact value of a decimal, if it is in range.
    pub fn from_decimal(d: Decimal) -> Result<Self, &'static str> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err("a rate cannot be negative");
        }
        let d = d.normalize();
        let mantissa = u64::try_from(d.mantissa()).map_err(|_| "a rate is at most 1,000,000")?;
        let scale = u8::try_from(d.scale()).map_err(|_| "a rate has at most 9 decimal places")?;
        Self::new(mantissa, scale)
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::from_i128_with_scale(i128::from(self.mantissa), u32::from(self.scale))
    }

    pub fn mantissa(self) -> u64 {
        self.mantissa
    }

    pub fn scale(self) -> u8 {
        self.scale
    }

    pub fn is_zero(self) -> bool {
        self.mantissa == 0
    }
}

impl std::fmt::Display for Dec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.to_decimal(), f)
    }
}

impl std::fmt::Debug for Dec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dec({self})")
    }
}

impl serde::Serialize for Dec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Dec {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Encode for Dec {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.mantissa.encode(encoder)?;
        self.scale.encode(encoder)
    }
}

impl<Context> Decode<Context> for Dec {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let d = Self { mantissa: u64::decode(decoder)?, scale: u8::decode(decoder)? };
        if !d.is_normal() {
            return Err(DecodeError::Other("decimal not in normal form (trailing zeros in the mantissa)"));
        }
        d.check().map_err(DecodeError::Other)?;
        Ok(d)
    }
}
bincode::impl_borrow_decode!(Dec);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_exact, encode};

    /// Parsing normalises; each decimal has one encoding and the others are refused.
    #[test]
    fn one_encoding_per_value() {
        let d = Dec::parse("0.00250").unwrap();
        assert_eq!((d.mantissa(), d.scale()), (25, 4));
        assert_eq!(d.to_string(), "0.0025");
        assert_eq!(encode(&d), [25, 0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(decode_exact::<Dec>(&encode(&d)).unwrap(), d);
        assert!(decode_exact::<Dec>(&[250, 0, 0, 0, 0, 0, 0, 0, 5]).is_err(), "trailing zero");
        assert!(decode_exact::<Dec>(&[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err(), "zero with a scale");
        assert!(decode_exact::<Dec>(&[1, 0, 0, 0, 0, 0, 0, 0, 10]).is_err(), "too many places");
        assert_eq!(Dec::parse("0").unwrap(), Dec::ZERO);
        assert_eq!(Dec::parse("1000000").unwrap().to_string(), "1000000");
        for bad in ["1000000.1", "-1", "1e3", "", "0.0000000001", " 1", "1,5"] {
            assert!(Dec::parse(bad).is_err(), "{bad}");
        }
    }
}
