//! Cron expressions: the standard five fields (minute hour day-of-month
//! month day-of-week) and the usual macros, evaluated in UTC.
//!
//! A field is `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those. Months may be written JAN-DEC and
//! weekdays SUN-SAT (any case); 0 and 7 are both Sunday. Day-of-month and
//! day-of-week combine as in Vixie cron: when one of them starts with `*`
//! (`*` or `*/n`) a day must match both; when both are restricted a day
//! matches if EITHER matches (`0 0 1,15 * MON`: the 1st, the 15th and
//! every Monday).
//!
//! Parsing rejects expressions that can never fire (`0 0 30 2 *`), so a
//! parsed [`Cron`] fires within every 400 years (the Gregorian calendar
//! repeats every 400 years). [`Cron::next_after`] skips by field (a month,
//! a day, an hour at a time), never minute by minute over long spans.

use std::fmt;
use std::str::FromStr;

/// How far [`Cron::next_after`] and [`Cron::latest_at_or_before`] look
/// (in years) before giving up. One Gregorian cycle: a parsed expression
/// always fires within it, so `None` means only "beyond what u64
/// milliseconds since the epoch can represent" (or before the epoch).
pub const SEARCH_YEARS_MAX: i64 = 400;

const MS_PER_MINUTE: u64 = 60_000;
const MINUTES_PER_DAY: u64 = 1440;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "the cron expression is empty: write 5 fields (minute hour day-of-month month day-of-week), \
         e.g. '0 2 * * *', or a macro such as @daily"
    )]
    Empty,
    #[error(
        "'{expression}' has {count} field(s); a cron expression has 5: \
         minute hour day-of-month month day-of-week (e.g. '0 2 * * *')"
    )]
    FieldCount { expression: String, count: usize },
    #[error(
        "unknown macro '{0}': use @hourly, @daily (or @midnight), @weekly, @monthly, @quarterly, \
         @yearly or @annually"
    )]
    UnknownMacro(String),
    /// `token` is the offending part of the field; `problem` completes
    /// the sentence "'<token>' ...".
    #[error("{field} field: '{token}' {problem}")]
    Field {
        field: CronField,
        token: String,
        problem: String,
    },
    #[error("'{expression}' never fires: {reason}")]
    NeverFires { expression: String, reason: String },
}

/// A parsed cron expression. Its text is normalised ([`Cron::as_str`]:
/// single spaces, lower-case macros) and takes part in equality: `0 0 * * 7`
/// and `0 0 * * 0` fire alike but are not equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days_of_month: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, 0 = Sunday.
    days_of_week: u64,
    dom_star: bool,
    dow_star: bool,
}

struct FieldSpec {
    field: CronField,
    min: u32,
    max: u32,
    /// The top of `*` (day-of-week: 6, although 7 is accepted as Sunday).
    star_max: u32,
    /// Names for `names_base`, `names_base + 1`, ...
    names: &'static [&'static str],
    names_base: u32,
    allowed: &'static str,
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        field: CronField::Minute,
        min: 0,
        max: 59,
        star_max: 59,
        names: &[],
        names_base: 0,
        allowed: "0-59",
    },
    FieldSpec {
        field: CronField::Hour,
        min: 0,
        max: 23,
        star_max: 23,
        names: &[],
        names_base: 0,
        allowed: "0-23",
    },
    FieldSpec {
        field: CronField::DayOfMonth,
        min: 1,
        max: 31,
        star_max: 31,
        names: &[],
        names_base: 0,
        allowed: "1-31",
    },
    FieldSpec {
        field: CronField::Month,
        min: 1,
        max: 12,
        star_max: 12,
        names: &MONTH_NAMES,
        names_base: 1,
        allowed: "1-12 or JAN-DEC",
    },
    FieldSpec {
        field: CronField::DayOfWeek,
        min: 0,
        max: 7,
        star_max: 6,
        names: &WEEKDAY_NAMES,
        names_base: 0,
        allowed: "0-7 (0 and 7 are Sunday) or SUN-SAT",
    },
];

const MACROS: [(&str, &str); 9] = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@quarterly", "0 0 1 1,4,7,10 *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@reboot", ""),
];

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let trimmed = expression.trim();
        if trimmed.is_empty() {
            return Err(CronError::Empty);
        }
        if trimmed.starts_with('@') {
            let lower = trimmed.to_ascii_lowercase();
            return match MACROS.iter().find(|(name, _)| *name == lower) {
                Some((name, fields)) if !fields.is_empty() => {
                    let mut cron = Cron::parse_fields(fields)?;
                    cron.text = (*name).to_owned();
                    Ok(cron)
                }
                _ => Err(CronError::UnknownMacro(trimmed.to_owned())),
            };
        }
        Cron::parse_fields(trimmed)
    }

    fn parse_fields(text: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount {
                expression: text.to_owned(),
                count: fields.len(),
            });
        }
        let (minutes, _) = parse_field(&FIELDS[0], fields[0])?;
        let (hours, _) = parse_field(&FIELDS[1], fields[1])?;
        let (days_of_month, dom_star) = parse_field(&FIELDS[2], fields[2])?;
        let (months, _) = parse_field(&FIELDS[3], fields[3])?;
        let (days_of_week, dow_star) = parse_field(&FIELDS[4], fields[4])?;
        let cron = Cron {
            text: fields.join(" "),
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_star,
            dow_star,
        };
        // Both restricted: every month has every weekday, so it fires. One
        // starts with `*`: a day must match both, and every date that
        // exists falls on every weekday within 400 years, so it fires iff
        // some allowed day exists in some allowed month.
        if cron.dom_star || cron.dow_star {
            let possible = (1..=12u32)
                .filter(|&m| has(months, m))
                .any(|m| (1..=max_days_in_month(m)).any(|d| has(days_of_month, d)));
            if !possible {
                return Err(CronError::NeverFires {
                    expression: cron.text.clone(),
                    reason: format!(
                        "no day allowed by the day-of-month field '{}' exists in the months allowed by \
                         the month field '{}' (February has at most 29 days; April, June, September \
                         and November have 30)",
                        fields[2], fields[3]
                    ),
                });
            }
        }
        Ok(cron)
    }

    /// The normalised text: fields separated by single spaces, or the
    /// lower-case macro.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the expression fires at this minute (seconds are ignored).
    pub fn matches(&self, t_ms: u64) -> bool {
        let minute = t_ms / MS_PER_MINUTE;
        let days = (minute / MINUTES_PER_DAY) as i64;
        let (y, m, d) = civil_from_days(days);
        let of_day = (minute % MINUTES_PER_DAY) as u32;
        has(self.months, m)
            && self.day_matches(y, m, d)
            && has(self.hours, of_day / 60)
            && has(self.minutes, of_day % 60)
    }

    fn day_matches(&self, y: i64, m: u32, d: u32) -> bool {
        let dom = has(self.days_of_month, d);
        let dow = has(self.days_of_week, weekday(days_from_civil(y, m, d)));
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first fire time strictly after `t_ms` (ms since the epoch, UTC),
    /// at second 0; `None` past [`SEARCH_YEARS_MAX`] years or when the
    /// result does not fit u64.
    pub fn next_after(&self, t_ms: u64) -> Option<u64> {
        let start = t_ms / MS_PER_MINUTE + 1;
        let (mut y, mut m, mut d) = civil_from_days((start / MINUTES_PER_DAY) as i64);
        let of_day = (start % MINUTES_PER_DAY) as u32;
        let (mut h, mut mi) = (of_day / 60, of_day % 60);
        let last_year = y + SEARCH_YEARS_MAX;
        loop {
            if y > last_year {
                return None;
            }
            if !has(self.months, m) {
                match next_set(self.months, m + 1) {
                    Some(next) => m = next,
                    None => {
                        y += 1;
                        m = next_set(self.months, 1)?;
                    }
                }
                (d, h, mi) = (1, 0, 0);
                continue;
            }
            if d > days_in_month(y, m) {
                if m == 12 {
                    (y, m) = (y + 1, 1);
                } else {
                    m += 1;
                }
                (d, h, mi) = (1, 0, 0);
                continue;
            }
            if !self.day_matches(y, m, d) {
                (d, h, mi) = (d + 1, 0, 0);
                continue;
            }
            match next_set(self.hours, h) {
                None => {
                    (d, h, mi) = (d + 1, 0, 0);
                    continue;
                }
                Some(next) if next != h => (h, mi) = (next, 0),
                Some(_) => {}
            }
            match next_set(self.minutes, mi) {
                None => {
                    (h, mi) = (h + 1, 0);
                    continue;
                }
                Some(next) => mi = next,
            }
            return to_ms(y, m, d, h, mi);
        }
    }

    /// The latest fire time at or before `t_ms` (the minute containing
    /// `t_ms` counts); `None` before the epoch or past
    /// [`SEARCH_YEARS_MAX`] years back.
    pub fn latest_at_or_before(&self, t_ms: u64) -> Option<u64> {
        let start = t_ms / MS_PER_MINUTE;
        let (mut y, mut m, mut d) = civil_from_days((start / MINUTES_PER_DAY) as i64);
        let of_day = (start % MINUTES_PER_DAY) as u32;
        let (mut h, mut mi) = (of_day / 60, of_day % 60);
        let first_year = (y - SEARCH_YEARS_MAX).max(1970);
        // The day before (y, m, d), at its last minute.
        let day_before = |y: i64, m: u32, d: u32| -> (i64, u32, u32) {
            if d > 1 {
                (y, m, d - 1)
            } else if m > 1 {
                (y, m - 1, days_in_month(y, m - 1))
            } else {
                (y - 1, 12, 31)
            }
        };
        loop {
            if y < first_year {
                return None;
            }
            if !has(self.months, m) {
                match prev_set(self.months, m - 1) {
                    Some(prev) => m = prev,
                    None => {
                        y -= 1;
                        m = prev_set(self.months, 12)?;
                    }
                }
                (d, h, mi) = (days_in_month(y, m), 23, 59);
                continue;
            }
            if !self.day_matches(y, m, d) {
                (y, m, d) = day_before(y, m, d);
                (h, mi) = (23, 59);
                continue;
            }
            match prev_set(self.hours, h) {
                None => {
                    (y, m, d) = day_before(y, m, d);
                    (h, mi) = (23, 59);
                    continue;
                }
                Some(prev) if prev != h => (h, mi) = (prev, 59),
                Some(_) => {}
            }
            match prev_set(self.minutes, mi) {
                None => {
                    if h == 0 {
                        (y, m, d) = day_before(y, m, d);
                        h = 23;
                    } else {
                        h -= 1;
                    }
                    mi = 59;
                    continue;
                }
                Some(prev) => mi = prev,
            }
            return to_ms(y, m, d, h, mi);
        }
    }

    /// The next `n` fire times after `after_ms`, in order (fewer only when
    /// [`Cron::next_after`] runs out).
    pub fn upcoming(&self, after_ms: u64, n: usize) -> Vec<u64> {
        let mut times = Vec::with_capacity(n.min(1024));
        let mut t = after_ms;
        while times.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    times.push(next);
                    t = next;
                }
                None => break,
            }
        }
        times
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Cron, CronError> {
        Cron::parse(s)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------- parsing

/// A field's bit set and whether it starts with `*` (for the
/// day-of-month / day-of-week rule).
fn parse_field(spec: &FieldSpec, text: &str) -> Result<(u64, bool), CronError> {
    let error = |token: &str, problem: String| CronError::Field {
        field: spec.field,
        token: token.to_owned(),
        problem,
    };
    let mut mask = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(error(
                text,
                "has an empty list item; separate values with single commas, e.g. '1,15'".into(),
            ));
        }
        let (range, step) = match item.split_once('/') {
            None => (item, None),
            Some((range, step)) => {
                if step.contains('/') {
                    return Err(error(
                        item,
                        "has more than one '/'; write e.g. '*/15' or '0-30/5'".into(),
                    ));
                }
                (range, Some(parse_step(spec, item, step)?))
            }
        };
        let (low, high) = if range == "*" {
            (spec.min, spec.star_max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (low, high) = (parse_value(spec, a)?, parse_value(spec, b)?);
            if low > high {
                return Err(error(
                    range,
                    "is a range that runs backwards; put the smaller value first (ranges do not wrap \
                     around: write e.g. '22-23,0-2')"
                        .into(),
                ));
            }
            (low, high)
        } else {
            let value = parse_value(spec, range)?;
            if step.is_some() {
                return Err(error(
                    item,
                    format!(
                        "has a step on a single value; write a range with the step, e.g. '{range}-{}/{}', \
                         or '*/{}'",
                        spec.max,
                        step.unwrap_or(1),
                        step.unwrap_or(1)
                    ),
                ));
            }
            (value, value)
        };
        let step = step.unwrap_or(1);
        let mut value = low;
        while value <= high {
            mask |= 1 << value;
            value += step;
        }
    }
    if spec.field == CronField::DayOfWeek && has(mask, 7) {
        mask = (mask & !(1 << 7)) | 1;
    }
    Ok((mask, text.starts_with('*')))
}

fn parse_step(spec: &FieldSpec, item: &str, step: &str) -> Result<u32, CronError> {
    let error = |problem: String| CronError::Field {
        field: spec.field,
        token: item.to_owned(),
        problem,
    };
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(format!("has the step '{step}', which is not a number")));
    }
    let span = spec.star_max - spec.min + 1;
    match step.parse::<u32>() {
        Ok(0) => Err(error("has a step of 0; a step must be 1 or more".into())),
        Ok(n) if n <= span => Ok(n),
        _ => Err(error(format!(
            "has the step {step}, larger than the field's {span} values ({})",
            spec.allowed
        ))),
    }
}

fn parse_value(spec: &FieldSpec, token: &str) -> Result<u32, CronError> {
    let error = |problem: String| CronError::Field {
        field: spec.field,
        token: token.to_owned(),
        problem,
    };
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(value) if (spec.min..=spec.max).contains(&value) => Ok(value),
            _ => Err(error(format!("is outside {}", spec.allowed))),
        };
    }
    if let Some(i) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        return Ok(spec.names_base + i as u32);
    }
    let what = if token.is_empty() {
        "is empty".to_owned()
    } else if spec.names.is_empty() {
        "is not a number".to_owned()
    } else {
        "is neither a number nor a name".to_owned()
    };
    Err(error(format!("{what}; allowed: {}", spec.allowed)))
}

// ---------------------------------------------------------------- bits

fn has(mask: u64, bit: u32) -> bool {
    bit < 64 && mask & (1 << bit) != 0
}

/// The lowest set bit at or above `from`.
fn next_set(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// The highest set bit at or below `upto` (< 64).
fn prev_set(mask: u64, upto: u32) -> Option<u32> {
    let below = mask & (u64::MAX >> (63 - upto.min(63)));
    (below != 0).then(|| 63 - below.leading_zeros())
}

// ---------------------------------------------------------------- calendar

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn max_days_in_month(m: u32) -> u32 {
    days_in_month(2000, m)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// 0 = Sunday.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

fn to_ms(y: i64, m: u32, d: u32, h: u32, mi: u32) -> Option<u64> {
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    days.checked_mul(MINUTES_PER_DAY)?
        .checked_add(u64::from(h * 60 + mi))?
        .checked_mul(MS_PER_MINUTE)
}

/// Milliseconds since the epoch of a UTC date and time; `None` before the
/// epoch or for a date that does not exist.
#[cfg(test)]
pub(crate) fn utc_ms(y: i64, m: u32, d: u32, h: u32, mi: u32) -> Option<u64> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || h > 23 || mi > 59 {
        return None;
    }
    to_ms(y, m, d, h, mi)
}

/// `2025-03-01T02:00Z`: for messages people read.
pub(crate) fn format_utc(t_ms: u64) -> String {
    let minute = t_ms / MS_PER_MINUTE;
    let (y, m, d) = civil_from_days((minute / MINUTES_PER_DAY) as i64);
    let of_day = minute % MINUTES_PER_DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}Z", of_day / 60, of_day % 60)
}

#[cfg(test)]
mod tests;
