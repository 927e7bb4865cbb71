//! Identifiers as PostgreSQL reads them: how an agent writes a name into
//! SQL (`quote_ident`) and what name PostgreSQL stores for one it parsed
//! (`fold_ident`). Every agent uses these, so that the schema, query and
//! backup agents cannot disagree about what a name means.

/// `name` double-quoted, with its own double quotes doubled: PostgreSQL
/// reads it back exactly, whatever its case, spaces or keywords.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `name` as SQL text for people to read: bare when PostgreSQL reads it
/// back unchanged (lower case, digits, `_`, `$`, not a key word that must
/// be quoted), double-quoted otherwise.
pub fn quote_ident_if_needed(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !KEYWORDS_TO_QUOTE.contains(&name);
    if plain { name.to_owned() } else { quote_ident(name) }
}

/// PostgreSQL's reserved key words (and those only allowed as function or
/// type names): an identifier spelled like one must be quoted.
const KEYWORDS_TO_QUOTE: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// The name PostgreSQL stores for an identifier written as `value`:
/// quoted ones as they are, unquoted ones lower-cased.
///
/// ASCII-only lower-casing, because that is what PostgreSQL's
/// `downcase_identifier` (src/backend/parser/scansup.c) does in a
/// multi-byte encoding such as UTF-8: it folds `A`-`Z` only and leaves
/// every byte of a multi-byte character alone (`tolower()` applies only to
/// high-bit bytes of single-byte encodings). Unicode lower-casing would
/// turn `"É"` into `é`, a name PostgreSQL never stores for `É`.
/// Truncation to NAMEDATALEN (63 bytes), which PostgreSQL also does, is
/// not done here.
pub fn fold_ident(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_doubles_inner_quotes() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("Order Items"), "\"Order Items\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn fold_ident_lowercases_unquoted_ascii_only() {
        assert_eq!(fold_ident("Orders", false), "orders");
        // ASCII letters fold; É (two bytes in UTF-8) stays as it is.
        assert_eq!(fold_ident("ÉTÉ_Table", false), "ÉtÉ_table");
        assert_eq!(fold_ident("İd", false), "İd");
    }

    #[test]
    fn quote_ident_if_needed_quotes_only_what_must_be() {
        assert_eq!(quote_ident_if_needed("orders_2"), "orders_2");
        assert_eq!(quote_ident_if_needed("Orders"), "\"Orders\"");
        assert_eq!(quote_ident_if_needed("user"), "\"user\"");
        assert_eq!(quote_ident_if_needed("left"), "\"left\"");
        assert_eq!(quote_ident_if_needed("2x"), "\"2x\"");
        assert_eq!(quote_ident_if_needed(""), "\"\"");
    }

    #[test]
    fn fold_ident_keeps_quoted_names() {
        assert_eq!(fold_ident("Orders", true), "Orders");
        assert_eq!(fold_ident("ÉTÉ", true), "ÉTÉ");
    }
}
