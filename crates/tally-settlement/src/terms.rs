//! The human-readable contract terms document (JSON) and its conversion to the canonical
//! [`ContractTerms`] that the collective signs. `specs/settlement.md` ("Terms document")
//! defines every field. Money is written in whole units of the asset as a decimal string
//! (`"12.50"`), rates likewise; both are converted exactly or refused.

use rust_decimal::Decimal;
use serde::Deserialize;
use tally_core::codec::{List, Text};
use tally_core::decimal::Dec;
use tally_core::entry::Usage;
use tally_core::kinds::{
    AMOUNT_MAX, ChargeBasis, ContractTerms, Distribution, Licence, MatchKind, Rate, RateRule, TierLevel, UrlPattern,
};

/// Why a terms document was refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("terms document: {field}: {reason}")]
pub struct TermsError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl std::fmt::Display) -> TermsError {
    TermsError { field: field.to_string(), reason: reason.to_string() }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    lab: u64,
    name: String,
    scope: Vec<String>,
    start_ms: u64,
    end_ms: u64,
    licence: LicenceDoc,
    basis: String,
    rate: RateDoc,
    #[serde(default)]
    tier_multipliers: Option<MultipliersDoc>,
    #[serde(default)]
    rate_table: Vec<RuleDoc>,
    #[serde(default)]
    free_paths: Vec<PatternDoc>,
    #[serde(default)]
    spend_cap: Option<String>,
    #[serde(default)]
    credit_limit: Option<String>,
    fee_bps: u16,
    distribution: DistributionDoc,
    #[serde(default)]
    unregistered_words: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum LicenceDoc {
    Transactional,
    Blanket { fee: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateDoc {
    #[serde(default)]
    per_article: Option<String>,
    #[serde(default)]
    per_kwords: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipliersDoc {
    premium: String,
    standard: String,
    commodity: String,
}

/// A URL pattern in a document: `{"exact": url}` or `{"prefix": url}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternDoc {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl PatternDoc {
    /// The canonical pattern; `field` names it in the error.
    pub fn to_pattern(&self, field: &str) -> Result<UrlPattern, TermsError> {
        pattern(field, self.exact.as_ref(), self.prefix.as_ref())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    per_article: Option<String>,
    #[serde(default)]
    per_kwords: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum DistributionDoc {
    PerUsage,
    Tiered(Vec<TierDoc>),
    Hybrid { base_bps: u16 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierDoc {
    min_articles: u32,
    share_bps: u16,
}

/// An amount written in whole asset units (`"12.50"`) as minor units at `scale`. More
/// decimal places than the asset has are refused, not rounded.
pub fn parse_amount(text: &str, scale: u8) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{text:?} is not an amount like \"12.50\""));
    }
    let d = Decimal::from_str_exact(text).map_err(|e| format!("{text:?}: {e}"))?.normalize();
    if d.scale() > u32::from(scale) {
        return Err(format!("{text:?} has more than {scale} decimal places"));
    }
    let minor = d.mantissa().checked_mul(10i128.pow(u32::from(scale) - d.scale()));
    match minor.and_then(|m| u64::try_from(m).ok()) {
        Some(m) if m <= AMOUNT_MAX => Ok(m),
        _ => Err(format!("{text:?} is over the largest amount")),
    }
}

/// Minor units at `scale` written in whole units, e.g. `12500000` at 6 → `"12.5"`... always
/// with exactly `scale` places: `"12.500000"`.
pub fn format_amount(minor: i128, scale: u8) -> String {
    display_amount(minor, scale).to_string()
}

/// What [`format_amount`] writes, without making a `String` of it.
pub fn display_amount(minor: i128, scale: u8) -> impl std::fmt::Display {
    Decimal::from_i128_with_scale(minor, u32::from(scale))
}

fn dec(field: &str, text: Option<&String>) -> Result<Dec, TermsError> {
    match text {
        None => Ok(Dec::ZERO),
        Some(t) => Dec::parse(t).map_err(|e| err(field, e)),
    }
}

fn pattern(field: &str, exact: Option<&String>, prefix: Option<&String>) -> Result<UrlPattern, TermsError> {
    let (kind, url) = match (exact, prefix) {
        (Some(u), None) => (MatchKind::Exact, u),
        (None, Some(u)) => (MatchKind::Prefix, u),
        _ => return Err(err(field, "give exactly one of \"exact\" or \"prefix\"")),
    };
    let p = UrlPattern { kind, url: Text::new(url.as_str()).map_err(|e| err(field, e))? };
    p.validate("pattern").map_err(|e| err(field, e))?;
    Ok(p)
}

/// Parse a terms document for a ledger whose asset has `scale` decimal places.
pub fn parse_terms(json: &str, scale: u8) -> Result<ContractTerms, TermsError> {
    let d: Document = serde_json::from_str(json).map_err(|e| err("document", e))?;
    let mut scope = Vec::new();
    for s in &d.scope {
        scope.push(Usage::parse(s).ok_or_else(|| err("scope", format!("unknown use {s:?}")))?);
    }
    scope.sort();
    let amount = |field: &str, text: &Option<String>| match text {
        None => Ok(0),
        Some(t) => parse_amount(t, scale).map_err(|e| err(field, e)),
    };
    let licence = match &d.licence {
        LicenceDoc::Transactional => Licence::Transactional,
        LicenceDoc::Blanket { fee } => Licence::Blanket { fee: amount("licence.blanket.fee", &Some(fee.clone()))? },
    };
    let basis = ChargeBasis::parse(&d.basis).ok_or_else(|| err("basis", "every-fetch or once-per-article"))?;
    let tier_multipliers = match &d.tier_multipliers {
        None => [Dec::ONE; 3],
        Some(m) => [
            dec("tier_multipliers.premium", Some(&m.premium))?,
            dec("tier_multipliers.standard", Some(&m.standard))?,
            dec("tier_multipliers.commodity", Some(&m.commodity))?,
        ],
    };
    let mut rules = Vec::new();
    for (i, r) in d.rate_table.iter().enumerate() {
        let field = format!("rate_table[{i}]");
        rules.push(RateRule {
            pattern: pattern(&field, r.exact.as_ref(), r.prefix.as_ref())?,
            rate: Rate {
                per_article: dec(&field, r.per_article.as_ref())?,
                per_kwords: dec(&field, r.per_kwords.as_ref())?,
            },
        });
    }
    let mut free = Vec::new();
    for (i, p) in d.free_paths.iter().enumerate() {
        free.push(p.to_pattern(&format!("free_paths[{i}]"))?);
    }
    let distribution = match &d.distribution {
        DistributionDoc::PerUsage => Distribution::PerUsage,
        DistributionDoc::Hybrid { base_bps } => Distribution::Hybrid { base_bps: *base_bps },
        DistributionDoc::Tiered(levels) => Distribution::Tiered {
            levels: List::new(
                levels.iter().map(|l| TierLevel { min_articles: l.min_articles, share_bps: l.share_bps }).collect(),
            )
            .map_err(|e| err("distribution.tiered", e))?,
        },
    };
    let terms = ContractTerms {
        lab: d.lab,
        name: Text::new(d.name.as_str()).map_err(|e| err("name", e))?,
        scope: List::new(scope).map_err(|e| err("scope", e))?,
        start_ms: d.start_ms,
        end_ms: d.end_ms,
        licence,
        basis,
        rate: Rate {
            per_article: dec("rate.per_article", d.rate.per_article.as_ref())?,
            per_kwords: dec("rate.per_kwords", d.rate.per_kwords.as_ref())?,
        },
        tier_multipliers,
        rate_table: List::new(rules).map_err(|e| err("rate_table", e))?,
        free_paths: List::new(free).map_err(|e| err("free_paths", e))?,
        spend_cap: amount("spend_cap", &d.spend_cap)?,
        credit_limit: amount("credit_limit", &d.credit_limit)?,
        fee_bps: d.fee_bps,
        distribution,
        unregistered_words: d.unregistered_words,
    };
    // The same field rules the entry decoder applies.
    tally_core::kinds::check_terms(&terms).map_err(|e| err("terms", e))?;
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Amounts convert exactly or are refused.
    #[test]
    fn amounts_are_exact() {
        assert_eq!(parse_amount("12.5", 6), Ok(12_500_000));
        assert_eq!(parse_amount("0.000001", 6), Ok(1));
        assert!(parse_amount("0.0000001", 6).is_err());
        assert!(parse_amount("-1", 6).is_err());
        assert!(parse_amount("1e3", 6).is_err());
        assert!(parse_amount("1000000000000000", 6).is_err());
        assert_eq!(format_amount(12_500_000, 6), "12.500000");
    }

    /// A document with a typo in a field name is refused, naming the field.
    #[test]
    fn unknown_fields_are_refused() {
        let e = parse_terms(r#"{"lab": 1, "nmae": "x"}"#, 6).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }
}
