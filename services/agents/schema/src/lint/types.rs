//! Whether `ALTER COLUMN ... TYPE` rewrites the table (PostgreSQL 15).
//!
//! The docs: a rewrite is not needed when the USING clause does not change
//! the column's contents and the old type is binary coercible to the new
//! one; in addition, length or precision increases handled by the types'
//! support functions skip it. Recognised as not rewriting (nor scanning):
//! - the same type under another spelling (`int` → `integer`);
//! - `varchar(n)` → `varchar(m)` with `m ≥ n`, → unconstrained `varchar`, → `text`;
//!   `text` → unconstrained `varchar`;
//! - `numeric(p,s)` → `numeric(q,s)` with `q ≥ p`, → unconstrained `numeric`;
//! - `varbit(n)` → `varbit(m)` with `m ≥ n`, → unconstrained `varbit`;
//! - `timestamp[tz](p)` → the same with a precision not lower; `cidr` → `inet`.
//!
//! Everything else is taken as a rewrite, also `timestamp` → `timestamptz`
//! (free only when the session TimeZone is UTC) and any type whose current
//! spelling the facts do not give.

use sqlparser::ast::{CharacterLength, DataType, ExactNumberInfo, Expr, TimezoneInfo};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// The outcome for one type change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypeChange {
    /// Catalog-only change; the reason, for messages.
    NoRewrite(&'static str),
    /// The table and its indexes are rewritten; the reason.
    Rewrite(String),
}

/// Parses a type as `format_type()` prints it; `None` when it does not parse.
pub(crate) fn parse_type_name(text: &str) -> Option<DataType> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).ok()?;
    let data_type = parser.parse_data_type().ok()?;
    (parser.peek_token_ref().token == Token::EOF).then_some(data_type)
}

/// Classifies `ALTER COLUMN column TYPE new [USING using]` of a column whose type is `old`.
pub(crate) fn classify(
    old: Option<&DataType>,
    new: &DataType,
    using: Option<&Expr>,
    column: &str,
) -> TypeChange {
    let Some(old) = old else {
        return TypeChange::Rewrite(
            "the column's current type is not in the catalog facts, so a rewrite is assumed".to_owned(),
        );
    };
    if let Some(using) = using
        && !is_plain_column(using, column, new)
    {
        return TypeChange::Rewrite(format!("USING {using} computes new values for every row"));
    }
    let (from, to) = (Canonical::of(old), Canonical::of(new));
    if from == to {
        return TypeChange::NoRewrite("the type is unchanged");
    }
    use Canonical::*;
    let free = match (&from, &to) {
        (Varchar(Some(n)), Varchar(Some(m))) => {
            if m >= n {
                Some("a varchar length increase only changes the catalog")
            } else {
                None
            }
        }
        (Varchar(_), Varchar(None) | Text) | (Text, Varchar(None)) => {
            Some("varchar and text are binary coercible without a length limit")
        }
        (Numeric(Some((p, s))), Numeric(Some((q, t)))) => {
            if q >= p && s == t {
                Some("a numeric precision increase with the same scale only changes the catalog")
            } else {
                None
            }
        }
        (Numeric(_), Numeric(None)) => {
            Some("dropping a numeric's precision and scale only changes the catalog")
        }
        (VarBit(Some(n)), VarBit(Some(m))) => {
            if m >= n {
                Some("a varbit length increase only changes the catalog")
            } else {
                None
            }
        }
        (VarBit(_), VarBit(None)) => Some("dropping a varbit's length limit only changes the catalog"),
        (
            Timestamp { tz, precision: p },
            Timestamp {
                tz: tz2,
                precision: q,
            },
        ) if tz == tz2 => {
            // An absent precision is the maximum, 6.
            if q.unwrap_or(6) >= p.unwrap_or(6) {
                Some("a timestamp precision increase only changes the catalog")
            } else {
                None
            }
        }
        (Cidr, Inet) => Some("cidr is binary coercible to inet"),
        _ => None,
    };
    match free {
        Some(reason) => TypeChange::NoRewrite(reason),
        None => {
            let extra = match (&from, &to) {
                (Timestamp { tz: false, .. }, Timestamp { tz: true, .. }) => {
                    " (timestamp to timestamptz is free only when the session TimeZone is UTC)"
                }
                _ => "",
            };
            TypeChange::Rewrite(format!("{old} to {new} is not binary coercible{extra}"))
        }
    }
}

/// `USING col` or `USING col::new_type`: values unchanged.
fn is_plain_column(expr: &Expr, column: &str, new: &DataType) -> bool {
    match expr {
        Expr::Nested(inner) => is_plain_column(inner, column, new),
        Expr::Identifier(ident) => super::analyze::fold(ident) == column,
        Expr::Cast { expr, data_type, .. } => {
            Canonical::of(data_type) == Canonical::of(new) && is_plain_column(expr, column, new)
        }
        _ => false,
    }
}

/// A type reduced to what matters for the rewrite decision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Canonical {
    Varchar(Option<u64>),
    Text,
    Numeric(Option<(u64, i64)>),
    VarBit(Option<u64>),
    Timestamp { tz: bool, precision: Option<u64> },
    Cidr,
    Inet,
    Other(String),
}

impl Canonical {
    fn of(data_type: &DataType) -> Canonical {
        match data_type {
            DataType::CharacterVarying(length) | DataType::Varchar(length) => {
                Canonical::Varchar(match length {
                    Some(CharacterLength::IntegerLength { length, .. }) => Some(*length),
                    Some(CharacterLength::Max) | None => None,
                })
            }
            DataType::Text => Canonical::Text,
            DataType::Numeric(info) | DataType::Decimal(info) => Canonical::Numeric(match info {
                ExactNumberInfo::None => None,
                ExactNumberInfo::Precision(p) => Some((*p, 0)),
                ExactNumberInfo::PrecisionAndScale(p, s) => Some((*p, *s)),
            }),
            DataType::BitVarying(length) | DataType::VarBit(length) => Canonical::VarBit(*length),
            DataType::Timestamp(precision, tz) => Canonical::Timestamp {
                tz: matches!(tz, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz),
                precision: *precision,
            },
            DataType::Int(None) | DataType::Integer(None) | DataType::Int4(None) => {
                Canonical::other("integer")
            }
            DataType::SmallInt(None) | DataType::Int2(None) => Canonical::other("smallint"),
            DataType::BigInt(None) | DataType::Int8(None) => Canonical::other("bigint"),
            DataType::Bool | DataType::Boolean => Canonical::other("boolean"),
            DataType::Real | DataType::Float4 => Canonical::other("real"),
            DataType::DoublePrecision | DataType::Float8 => Canonical::other("double precision"),
            DataType::Custom(name, modifiers) if modifiers.is_empty() => {
                let last = name
                    .0
                    .last()
                    .and_then(|part| part.as_ident())
                    .map(super::analyze::fold);
                match last.as_deref() {
                    Some("cidr") => Canonical::Cidr,
                    Some("inet") => Canonical::Inet,
                    Some("varchar") => Canonical::Varchar(None),
                    Some("bpchar") => Canonical::other("character"),
                    Some("timestamptz") => Canonical::Timestamp {
                        tz: true,
                        precision: None,
                    },
                    _ => Canonical::Other(data_type.to_string().to_lowercase()),
                }
            }
            _ => Canonical::Other(data_type.to_string().to_lowercase()),
        }
    }

    fn other(name: &str) -> Canonical {
        Canonical::Other(name.to_owned())
    }
}
