//! Given a cron expression, when parsed or asked for fire times, then ...

use super::*;

/// A UTC minute as ms since the epoch.
fn at(y: i64, m: u32, d: u32, h: u32, mi: u32) -> u64 {
    utc_ms(y, m, d, h, mi).expect("a valid date")
}

fn cron(text: &str) -> Cron {
    Cron::parse(text).unwrap_or_else(|e| panic!("'{text}' should parse: {e}"))
}

fn error(text: &str) -> String {
    match Cron::parse(text) {
        Ok(c) => panic!("'{text}' should be refused, parsed as {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// The fire times in `[from, to)`, minute by minute through `matches`
/// (independent of the skipping search).
fn brute_force(cron: &Cron, from: u64, to: u64) -> Vec<u64> {
    (from / 60_000..to / 60_000)
        .map(|minute| minute * 60_000)
        .filter(|&t| cron.matches(t))
        .collect()
}

/// What an expression fires on, without its text.
fn bits(c: &Cron) -> (u64, u64, u64, u64, u64, bool, bool) {
    (
        c.minutes,
        c.hours,
        c.days_of_month,
        c.months,
        c.days_of_week,
        c.dom_star,
        c.dow_star,
    )
}

fn same(a: &str, b: &str) {
    assert_eq!(bits(&cron(a)), bits(&cron(b)), "'{a}' and '{b}'");
}

fn fmt(times: &[u64]) -> Vec<String> {
    times.iter().map(|&t| format_utc(t)).collect()
}

// ---------------------------------------------------------------- calendar

#[test]
fn the_calendar_agrees_with_known_timestamps() {
    // From `date -u -d <date> +%s%3N`.
    assert_eq!(at(1970, 1, 1, 0, 0), 0);
    assert_eq!(at(2000, 3, 1, 0, 0), 951_868_800_000);
    assert_eq!(at(2024, 12, 31, 23, 59), 1_735_689_540_000);
    assert_eq!(at(2025, 1, 1, 0, 0), 1_735_689_600_000);
    assert_eq!(at(2025, 3, 1, 0, 0), 1_740_787_200_000);
    assert_eq!(at(2028, 2, 29, 0, 0), 1_835_395_200_000);
    assert_eq!(at(2104, 2, 29, 0, 0), 4_233_686_400_000);
    assert_eq!(utc_ms(2025, 2, 29, 0, 0), None);
    assert_eq!(utc_ms(2100, 2, 29, 0, 0), None);
    assert_eq!(format_utc(at(2028, 2, 29, 7, 5) + 59_999), "2028-02-29T07:05Z");
    // 1970-01-01 was a Thursday, 2025-03-03 a Monday.
    assert_eq!(weekday(0), 4);
    assert_eq!(weekday(days_from_civil(2025, 3, 3)), 1);
    for days in (-800_000..800_000).step_by(997) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

// ---------------------------------------------------------------- parsing

#[test]
fn each_field_form_parses() {
    let start = at(2025, 3, 1, 0, 0);
    let next = |text: &str, n| fmt(&cron(text).upcoming(start, n));
    // `*`: every minute.
    assert_eq!(next("* * * * *", 2), ["2025-03-01T00:01Z", "2025-03-01T00:02Z"]);
    // lists and ranges
    assert_eq!(
        next("5,10-11 3 * * *", 4),
        [
            "2025-03-01T03:05Z",
            "2025-03-01T03:10Z",
            "2025-03-01T03:11Z",
            "2025-03-02T03:05Z"
        ]
    );
    // `*/n` and `a-b/n`
    assert_eq!(
        next("*/20 */12 * * *", 4),
        [
            "2025-03-01T00:20Z",
            "2025-03-01T00:40Z",
            "2025-03-01T12:00Z",
            "2025-03-01T12:20Z"
        ]
    );
    assert_eq!(
        next("10-30/10 1 * * *", 4),
        [
            "2025-03-01T01:10Z",
            "2025-03-01T01:20Z",
            "2025-03-01T01:30Z",
            "2025-03-02T01:10Z"
        ]
    );
    // extra spaces are fine and normalised away
    assert_eq!(cron("  0   2 *  * * ").as_str(), "0 2 * * *");
}

#[test]
fn month_and_weekday_names_are_case_insensitive() {
    same("0 0 1 jan,Jul,DEC *", "0 0 1 1,7,12 *");
    same("0 0 1 mar-May *", "0 0 1 3-5 *");
    same("0 0 * * mon-FRI", "0 0 * * 1-5");
    same("0 0 * * Sun,sat", "0 0 * * 0,6");
}

#[test]
fn zero_and_seven_are_both_sunday() {
    same("0 0 * * 7", "0 0 * * 0");
    same("0 0 * * 5-7", "0 0 * * 0,5,6");
    // 2025-03-02 is a Sunday.
    assert_eq!(
        cron("0 0 * * 7").next_after(at(2025, 3, 1, 0, 0)),
        Some(at(2025, 3, 2, 0, 0))
    );
}

#[test]
fn macros_mean_their_expressions() {
    for (mac, fields) in [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@quarterly", "0 0 1 1,4,7,10 *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ] {
        let parsed = cron(mac);
        assert_eq!(parsed.as_str(), mac);
        let expected = cron(fields);
        let start = at(2025, 2, 17, 13, 7);
        assert_eq!(parsed.upcoming(start, 5), expected.upcoming(start, 5), "{mac}");
    }
    assert_eq!(cron("@Daily").as_str(), "@daily");
}

// ---------------------------------------------------------------- errors

#[test]
fn a_value_out_of_range_names_the_field_the_token_and_the_range() {
    assert_eq!(error("61 * * * *"), "minute field: '61' is outside 0-59");
    assert_eq!(error("0 24 * * *"), "hour field: '24' is outside 0-23");
    assert_eq!(error("0 0 0 * *"), "day-of-month field: '0' is outside 1-31");
    assert_eq!(error("0 0 32 * *"), "day-of-month field: '32' is outside 1-31");
    assert_eq!(
        error("0 0 * 13 *"),
        "month field: '13' is outside 1-12 or JAN-DEC"
    );
    assert_eq!(
        error("0 0 * * 8"),
        "day-of-week field: '8' is outside 0-7 (0 and 7 are Sunday) or SUN-SAT"
    );
    assert_eq!(error("0-60 * * * *"), "minute field: '60' is outside 0-59");
    assert_eq!(
        error("99999999999 * * * *"),
        "minute field: '99999999999' is outside 0-59"
    );
}

#[test]
fn a_token_that_is_not_a_value_is_refused() {
    assert_eq!(
        error("x * * * *"),
        "minute field: 'x' is not a number; allowed: 0-59"
    );
    assert_eq!(error("-5 * * * *"), "minute field: '' is empty; allowed: 0-59");
    assert_eq!(
        error("0 0 * JANUARY *"),
        "month field: 'JANUARY' is neither a number nor a name; allowed: 1-12 or JAN-DEC"
    );
    assert_eq!(
        error("0 0 * * MON-"),
        "day-of-week field: '' is empty; allowed: 0-7 (0 and 7 are Sunday) or SUN-SAT"
    );
    // names belong to their own field
    assert_eq!(
        error("0 0 * MON *"),
        "month field: 'MON' is neither a number nor a name; allowed: 1-12 or JAN-DEC"
    );
    assert_eq!(
        error("0 JAN * * *"),
        "hour field: 'JAN' is not a number; allowed: 0-23"
    );
    assert_eq!(
        error("0 0 ? * *"),
        "day-of-month field: '?' is not a number; allowed: 1-31"
    );
}

#[test]
fn malformed_ranges_steps_and_lists_are_refused() {
    assert!(error("30-10 * * * *").starts_with("minute field: '30-10' is a range that runs backwards"));
    assert!(
        error("0 0 * * FRI-MON").starts_with("day-of-week field: 'FRI-MON' is a range that runs backwards")
    );
    assert_eq!(
        error("*/0 * * * *"),
        "minute field: '*/0' has a step of 0; a step must be 1 or more"
    );
    assert_eq!(
        error("*/61 * * * *"),
        "minute field: '*/61' has the step 61, larger than the field's 60 values (0-59)"
    );
    assert_eq!(
        error("*/x * * * *"),
        "minute field: '*/x' has the step 'x', which is not a number"
    );
    assert_eq!(
        error("*/ * * * *"),
        "minute field: '*/' has the step '', which is not a number"
    );
    assert!(error("*/5/2 * * * *").starts_with("minute field: '*/5/2' has more than one '/'"));
    assert_eq!(
        error("5/10 * * * *"),
        "minute field: '5/10' has a step on a single value; write a range with the step, e.g. '5-59/10', or '*/10'"
    );
    assert!(error("1,,2 * * * *").starts_with("minute field: '1,,2' has an empty list item"));
    assert!(error("1, * * * *").starts_with("minute field: '1,' has an empty list item"));
}

#[test]
fn the_wrong_number_of_fields_an_empty_expression_or_an_unknown_macro_is_refused() {
    assert!(error("0 0 * *").starts_with("'0 0 * *' has 4 field(s); a cron expression has 5"));
    assert!(error("0 0 0 * * *").starts_with("'0 0 0 * * *' has 6 field(s)"));
    assert!(error("   ").starts_with("the cron expression is empty"));
    assert!(error("@reboot").starts_with("unknown macro '@reboot': use @hourly"));
    assert!(error("@fortnightly").starts_with("unknown macro '@fortnightly'"));
    assert!(error("@daily 0").starts_with("unknown macro '@daily 0'"));
    assert_eq!(
        Cron::parse("0 0 * 13 *"),
        Err(CronError::Field {
            field: CronField::Month,
            token: "13".into(),
            problem: "is outside 1-12 or JAN-DEC".into()
        })
    );
}

#[test]
fn expressions_that_can_never_fire_are_refused() {
    for text in [
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30-31 FEB *",
        "0 0 31 2,4 *",
        "0 0 30 2 */2",
    ] {
        let message = error(text);
        assert!(
            message.starts_with(&format!(
                "'{text}' never fires: no day allowed by the day-of-month field"
            )),
            "{message}"
        );
        assert!(matches!(Cron::parse(text), Err(CronError::NeverFires { .. })));
    }
    // Possible somewhere: fine.
    cron("0 0 31 2,3 *");
    cron("0 0 29 2 *");
    // Both restricted: the weekday alone fires it (Mondays in February).
    let mondays = cron("0 0 30 2 MON");
    assert_eq!(
        mondays.next_after(at(2025, 3, 1, 0, 0)),
        Some(at(2026, 2, 2, 0, 0))
    );
}

// ---------------------------------------------------------------- next_after

#[test]
fn next_after_is_strictly_after_and_at_second_zero() {
    let daily = cron("0 2 * * *");
    let two = at(2025, 3, 1, 2, 0);
    assert_eq!(daily.next_after(two - 1), Some(two));
    assert_eq!(daily.next_after(two), Some(at(2025, 3, 2, 2, 0)));
    assert_eq!(daily.next_after(two + 59_999), Some(at(2025, 3, 2, 2, 0)));
    let every_minute = cron("* * * * *");
    assert_eq!(every_minute.next_after(two + 1_234), Some(two + 60_000));
    assert_eq!(every_minute.next_after(0), Some(60_000));
}

#[test]
fn next_after_crosses_month_and_year_boundaries() {
    let last_minute = at(2024, 12, 31, 23, 59);
    assert_eq!(
        cron("0 0 * * *").next_after(last_minute),
        Some(at(2025, 1, 1, 0, 0))
    );
    assert_eq!(
        cron("30 23 31 * *").next_after(at(2025, 1, 31, 23, 30)),
        Some(at(2025, 3, 31, 23, 30))
    );
    assert_eq!(
        cron("0 12 1 * *").next_after(at(2025, 4, 15, 0, 0)),
        Some(at(2025, 5, 1, 12, 0))
    );
    assert_eq!(
        cron("@yearly").next_after(at(2025, 1, 1, 0, 0)),
        Some(at(2026, 1, 1, 0, 0))
    );
    assert_eq!(
        cron("15 10 * 2 *").next_after(at(2025, 2, 28, 10, 15)),
        Some(at(2026, 2, 1, 10, 15))
    );
    // the 31st only in months that have one
    assert_eq!(
        fmt(&cron("0 0 31 * *").upcoming(at(2025, 1, 31, 0, 0), 3)),
        ["2025-03-31T00:00Z", "2025-05-31T00:00Z", "2025-07-31T00:00Z"]
    );
}

#[test]
fn the_leap_day_fires_only_in_leap_years() {
    let leap_day = cron("0 0 29 2 *");
    assert_eq!(
        leap_day.next_after(at(2025, 3, 1, 0, 0)),
        Some(at(2028, 2, 29, 0, 0))
    );
    assert_eq!(
        leap_day.next_after(at(2028, 2, 29, 0, 0)),
        Some(at(2032, 2, 29, 0, 0))
    );
    // 2100 is not a leap year: eight years to the next one.
    assert_eq!(
        leap_day.next_after(at(2096, 3, 1, 0, 0)),
        Some(at(2104, 2, 29, 0, 0))
    );
    assert_eq!(
        leap_day.next_after(at(1999, 3, 1, 0, 0)),
        Some(at(2000, 2, 29, 0, 0))
    );
}

#[test]
fn day_of_month_or_day_of_week_when_both_are_restricted() {
    // 2025-03: Saturday the 1st; Mondays 3, 10, 17, 24, 31.
    let either = cron("0 9 15 * MON");
    assert_eq!(
        fmt(&either.upcoming(at(2025, 3, 1, 0, 0), 6)),
        [
            "2025-03-03T09:00Z",
            "2025-03-10T09:00Z",
            "2025-03-15T09:00Z",
            "2025-03-17T09:00Z",
            "2025-03-24T09:00Z",
            "2025-03-31T09:00Z"
        ]
    );
    // One of them `*`: the other decides alone.
    assert_eq!(
        fmt(&cron("0 9 * * MON").upcoming(at(2025, 3, 1, 0, 0), 2)),
        ["2025-03-03T09:00Z", "2025-03-10T09:00Z"]
    );
    assert_eq!(
        fmt(&cron("0 9 15 * *").upcoming(at(2025, 3, 1, 0, 0), 2)),
        ["2025-03-15T09:00Z", "2025-04-15T09:00Z"]
    );
    // `*/n` counts as `*` (Vixie): both must match, odd days that are Mondays.
    assert_eq!(
        fmt(&cron("0 9 */2 * MON").upcoming(at(2025, 3, 1, 0, 0), 3)),
        ["2025-03-03T09:00Z", "2025-03-17T09:00Z", "2025-03-31T09:00Z"]
    );
}

#[test]
fn quarterly_fires_on_the_first_of_january_april_july_and_october() {
    assert_eq!(
        fmt(&cron("@quarterly").upcoming(at(2025, 2, 10, 8, 0), 5)),
        [
            "2025-04-01T00:00Z",
            "2025-07-01T00:00Z",
            "2025-10-01T00:00Z",
            "2026-01-01T00:00Z",
            "2026-04-01T00:00Z"
        ]
    );
}

#[test]
fn a_rare_expression_is_found_far_ahead_without_scanning_minutes() {
    // New Year's Day on a Monday (`*/31` is only the 1st, and counts as `*`,
    // so both must match): 2018, 2024, 2029, 2035.
    let rare = cron("0 0 */31 1 MON");
    assert_eq!(rare.next_after(at(2024, 1, 2, 0, 0)), Some(at(2029, 1, 1, 0, 0)));
    assert_eq!(
        rare.latest_at_or_before(at(2024, 1, 1, 0, 0) - 1),
        Some(at(2018, 1, 1, 0, 0))
    );
    // Far in the future, still fine; none beyond what u64 ms can hold.
    assert!(cron("@yearly").next_after(at(9999, 6, 1, 0, 0)).is_some());
    assert_eq!(cron("@yearly").next_after(u64::MAX - 1), None);
}

#[test]
fn latest_at_or_before_counts_the_current_minute_and_stops_at_the_epoch() {
    let daily = cron("0 2 * * *");
    let two = at(2025, 3, 1, 2, 0);
    assert_eq!(daily.latest_at_or_before(two), Some(two));
    assert_eq!(daily.latest_at_or_before(two + 59_999), Some(two));
    assert_eq!(daily.latest_at_or_before(two - 1), Some(at(2025, 2, 28, 2, 0)));
    assert_eq!(
        cron("0 0 29 2 *").latest_at_or_before(at(2028, 2, 28, 0, 0)),
        Some(at(2024, 2, 29, 0, 0))
    );
    assert_eq!(
        cron("@quarterly").latest_at_or_before(at(2025, 3, 31, 23, 59)),
        Some(at(2025, 1, 1, 0, 0))
    );
    assert_eq!(daily.latest_at_or_before(60_000), None);
    assert_eq!(cron("* * * * *").latest_at_or_before(0), Some(0));
}

#[test]
fn the_search_agrees_with_a_minute_by_minute_scan() {
    let expressions = [
        "*/7 3-5 * * *",
        "0 0 31 * *",
        "59 23 * * SAT,SUN",
        "15 */6 1,15 * WED",
        "0 0 */3 2 *",
        "5-55/25 1,13 * JAN,MAR-APR,DEC *",
        "0 12 29 2 *",
        "@weekly",
    ];
    let from = at(2027, 11, 20, 17, 33);
    let to = at(2029, 4, 1, 0, 0);
    for text in expressions {
        let c = cron(text);
        let scanned = brute_force(&c, from + 1, to);
        assert!(!scanned.is_empty(), "{text}");
        let mut searched = Vec::new();
        let mut t = from;
        while let Some(next) = c.next_after(t).filter(|&n| n < to) {
            searched.push(next);
            t = next;
        }
        assert_eq!(fmt(&searched), fmt(&scanned), "{text} forwards");
        // backwards from each found time minus a little
        for pair in scanned.windows(2).step_by(7) {
            assert_eq!(
                c.latest_at_or_before(pair[1] - 1),
                Some(pair[0]),
                "{text} backwards"
            );
        }
    }
}
