//! Identifiers as PostgreSQL reads them: how an agent writes a name into
//! SQL (`quote_ident`) and what name PostgreSQL stores for one it parsed
//! (`fold_ident`). Every agent uses these, so that the schema, query and
//! backup agents cannot disagree about what a name means.

/// `name` double-quoted, with its own double quotes doubled: PostgreSQL
/// reads it back exactly, whatever its case, spaces or keywords.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

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
    fn fold_ident_keeps_quoted_names() {
        assert_eq!(fold_ident("Orders", true), "Orders");
        assert_eq!(fold_ident("ÉTÉ", true), "ÉTÉ");
    }
}
