//! Numbers as the messages print them.

use agents::sql::quote_ident_if_needed;

/// `schema.table` (or `table`) as SQL text, each part quoted as needed.
pub(super) fn quote_relation(relation: &str) -> String {
    relation
        .split('.')
        .map(quote_ident_if_needed)
        .collect::<Vec<_>>()
        .join(".")
}

/// A count with thousands separators: `1234567` → `1,234,567`.
pub(super) fn format_count(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs().round());
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value.round() < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// A share as a percentage with the precision small shares need: `0.1%`.
pub(super) fn format_percent(share: f64) -> String {
    if !share.is_finite() {
        return "all".to_owned();
    }
    let percent = share * 100.0;
    if percent > 0.0 && percent < 0.01 {
        return "<0.01%".to_owned();
    }
    let text = if (99.0..100.0).contains(&percent) {
        // Rounded, 99.96 % would read as all of it.
        format!("{:.1}", (percent * 10.0).floor() / 10.0)
    } else if percent >= 10.0 {
        format!("{percent:.0}")
    } else if percent >= 1.0 {
        format!("{percent:.1}")
    } else {
        format!("{percent:.2}")
    };
    let trimmed = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{trimmed}%")
}

pub(super) fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format_count(ratio)
    } else {
        format!("{ratio:.1}")
    }
}

pub(super) fn format_kb(kb: f64) -> String {
    if kb >= 1024.0 * 1024.0 {
        format!("{:.1} GB", kb / (1024.0 * 1024.0))
    } else if kb >= 1024.0 {
        format!("{:.1} MB", kb / 1024.0)
    } else {
        format!("{} kB", format_count(kb))
    }
}

/// A work_mem setting of at least `needed_kb`: the next power of two in MB,
/// a round figure people recognise as a setting.
pub(super) fn suggested_work_mem(needed_kb: f64) -> String {
    let needed_mb = (needed_kb / 1024.0).max(1.0);
    let mut setting_mb: f64 = 1.0;
    // 2^30 MB is far beyond any machine; the bound keeps the loop finite on
    // absurd input.
    while setting_mb < needed_mb && setting_mb < 1_073_741_824.0 {
        setting_mb *= 2.0;
    }
    if setting_mb >= 1024.0 {
        format!("{:.0}GB", setting_mb / 1024.0)
    } else {
        format!("{setting_mb:.0}MB")
    }
}
