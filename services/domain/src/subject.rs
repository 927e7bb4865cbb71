//! NATS subject tokens from names that may contain anything.
//!
//! A token never carries `.` (it would split into two tokens), `*` or `>`
//! (wildcards) or whitespace. Letters, digits, `_` and `-` are kept; every
//! other byte becomes `~XX` (hex), `~` included, so the encoding is
//! injective. A token longer than [`TOKEN_BYTES_MAX`] keeps a readable
//! prefix and ends in `~h` plus a 64-bit FNV-1a hash of the whole name.

/// Longest token this module produces, in bytes.
pub const TOKEN_BYTES_MAX: usize = 64;
const PREFIX_BYTES: usize = TOKEN_BYTES_MAX - 18;

/// The subject token for `name`.
pub fn token(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("~{byte:02X}"));
        }
    }
    if encoded.is_empty() {
        return "~".to_owned(); // an empty name still needs a token
    }
    if encoded.len() <= TOKEN_BYTES_MAX {
        return encoded;
    }
    let mut cut = PREFIX_BYTES;
    while !encoded.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~h{:016x}", &encoded[..cut], fnv1a64(name.as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(token("UserCreated"), "UserCreated");
        assert_eq!(token("order-42_a"), "order-42_a");
    }

    #[test]
    fn separators_wildcards_and_spaces_are_escaped() {
        assert_eq!(token("a.b"), "a~2Eb");
        assert_eq!(token("*"), "~2A");
        assert_eq!(token(">"), "~3E");
        assert_eq!(token("a b\tc"), "a~20b~09c");
        assert_eq!(token("~"), "~7E");
        for hostile in ["a.b", "*", ">", "x y", "dots.and.*.>", "é"] {
            let t = token(hostile);
            assert!(!t.contains(['.', '*', '>', ' ', '\t']), "{hostile} -> {t}");
        }
    }

    #[test]
    fn encoding_is_injective_on_tricky_pairs() {
        assert_ne!(token("a.b"), token("a~2Eb"));
        assert_ne!(token(""), token("~"));
    }

    #[test]
    fn long_names_are_bounded_and_distinct() {
        let a = "x".repeat(1024);
        let b = format!("{}y", "x".repeat(1023));
        assert!(token(&a).len() <= TOKEN_BYTES_MAX);
        assert_ne!(token(&a), token(&b));
        assert_eq!(token(&a), token(&a));
    }

    #[test]
    fn unicode_is_escaped_byte_by_byte() {
        assert_eq!(token("é"), "~C3~A9");
        assert_eq!(token("🦀"), "~F0~9F~A6~80");
        assert_ne!(token("é"), token("e"));
    }

    /// Given names whose encoding is exactly the maximum, or one byte
    /// more, then the first is kept whole and the second is hashed.
    #[test]
    fn the_length_limit_holds_at_its_edge() {
        let at_max = "x".repeat(TOKEN_BYTES_MAX);
        assert_eq!(token(&at_max), at_max);
        let over = "x".repeat(TOKEN_BYTES_MAX + 1);
        let hashed = token(&over);
        assert_eq!(hashed.len(), TOKEN_BYTES_MAX);
        assert!(hashed.starts_with(&"x".repeat(PREFIX_BYTES)), "{hashed}");
        assert!(hashed[PREFIX_BYTES..].starts_with("~h"), "{hashed}");
        // 21 escaped bytes = 63 encoded bytes, 22 = 66: hashed.
        assert_eq!(token(&".".repeat(21)).len(), 63);
        assert_eq!(token(&".".repeat(22)).len(), TOKEN_BYTES_MAX);
    }

    #[test]
    fn long_unicode_names_stay_bounded_and_safe() {
        for name in ["é".repeat(100), "🦀".repeat(100), ".*> ".repeat(100)] {
            let t = token(&name);
            assert!(t.len() <= TOKEN_BYTES_MAX, "{t}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-~".contains(&b)),
                "{t}"
            );
        }
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
