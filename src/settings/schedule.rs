//! GC schedules: cron expressions evaluated in UTC, whatever the daemon's time zone.
//!
//! Accepted: the standard 5-field crontab form (minute hour day-of-month month
//! day-of-week), the 6- and 7-field forms with seconds first (and a year last), and
//! @hourly, @daily, @weekly, @monthly (@yearly too). Day-of-week numbers follow crontab
//! in every form: 0 or 7 is Sunday; names (MON-FRI) work everywhere.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("schedule {expr:?}: {why}")]
pub struct ScheduleError {
    pub expr: String,
    pub why: String,
}

#[derive(Clone)]
pub struct Schedule {
    expr: String,
    inner: cron::Schedule,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.expr)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Rewrites crontab day-of-week numbers (0-7, Sunday 0 or 7) as names, expanding ranges
/// and steps into lists, since the cron crate numbers days 1-7 from Sunday.
fn day_of_week_names(field: &str) -> Result<String, String> {
    if !field.bytes().any(|b| b.is_ascii_digit()) {
        return Ok(field.to_string());
    }
    let mut days: Vec<usize> = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<usize>()
                    .map_err(|_| format!("bad step in day of week {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in day of week {part:?}"));
        }
        let num = |s: &str| -> Result<usize, String> {
            match s.parse::<usize>() {
                Ok(n) if n <= 7 => Ok(n),
                _ => DAYS
                    .iter()
                    .position(|d| d.eq_ignore_ascii_case(s))
                    .ok_or_else(|| format!("day of week {s:?} is not 0-7 or a day name")),
            }
        };
        let (lo, hi) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None if step > 1 => (num(r)?, 6),
                None => (num(r)?, num(r)?),
            },
        };
        if lo > hi {
            return Err(format!("day-of-week range {range:?} runs backwards"));
        }
        days.extend((lo..=hi).step_by(step));
    }
    let mut names: Vec<&str> = days.iter().map(|d| DAYS[*d]).collect();
    names.sort_by_key(|n| DAYS.iter().position(|d| d == n));
    names.dedup();
    Ok(names.join(","))
}

/// The fields of the six- or seven-field form, with what each accepts.
const FIELDS: [(&str, &str); 7] = [
    ("seconds", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 or SUN-SAT"),
    ("year", "1970-2099"),
];

/// Names the first field of `normalized` the cron crate refuses on its own, quoting it
/// as the operator typed it (`typed`: their fields; the 5-field form lacks seconds).
fn which_field_is_wrong(normalized: &str, typed: &[&str]) -> String {
    let fields: Vec<&str> = normalized.split_whitespace().collect();
    let offset = fields.len().saturating_sub(typed.len());
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if cron::Schedule::from_str(&probe.join(" ")).is_err() {
            let (name, range) = FIELDS[i.min(FIELDS.len() - 1)];
            let as_typed = i
                .checked_sub(offset)
                .and_then(|t| typed.get(t))
                .unwrap_or(field);
            return format!(
                "{name} {as_typed:?} is not valid: expected {range}, *, a list a,b, a range a-b or a step */n"
            );
        }
    }
    "not a valid schedule (minute hour day-of-month month day-of-week)".into()
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        let err = |why: String| ScheduleError {
            expr: expr.to_string(),
            why,
        };
        let trimmed = expr.trim();
        const SHORTHANDS: [&str; 5] = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];
        let typed: Vec<&str> = trimmed.split_whitespace().collect();
        let normalized = if trimmed.starts_with('@') {
            if !SHORTHANDS.contains(&trimmed) {
                return Err(err(format!(
                    "unknown shorthand; expected one of {}",
                    SHORTHANDS.join(", ")
                )));
            }
            trimmed.to_string()
        } else {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let mut fields: Vec<String> = match fields.len() {
                5 => std::iter::once("0")
                    .chain(fields.iter().copied())
                    .map(String::from)
                    .collect(),
                6 | 7 => fields.iter().map(|f| f.to_string()).collect(),
                n => {
                    return Err(err(format!(
                        "{n} fields; expected 5 (minute hour day-of-month month day-of-week), \
                         6 or 7 (seconds first, year last), or @hourly/@daily/@weekly/@monthly"
                    )));
                }
            };
            fields[5] = day_of_week_names(&fields[5]).map_err(err)?;
            fields.join(" ")
        };
        // The cron crate's message quotes the normalized six-field form, not what the
        // operator wrote: say which of their fields is wrong instead.
        let inner = cron::Schedule::from_str(&normalized)
            .map_err(|_| err(which_field_is_wrong(&normalized, &typed)))?;
        if inner.after(&Utc::now()).next().is_none() {
            return Err(err("never fires".into()));
        }
        Ok(Schedule {
            expr: expr.to_string(),
            inner,
        })
    }
}

impl Schedule {
    /// The first time strictly after `after`, in UTC.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner.after(&after).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        let s: Schedule = expr.parse().unwrap();
        s.next_after(at(after)).unwrap().to_rfc3339()
    }

    #[test]
    fn five_field_crontab_in_utc() {
        // 2026-11-22 is a Sunday.
        assert_eq!(
            next("30 2 * * *", "2026-11-22T10:00:00Z"),
            "2026-11-23T02:30:00+00:00"
        );
        assert_eq!(
            next("0 3 * * 6", "2026-11-22T10:00:00Z"),
            "2026-11-28T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * 0", "2026-11-22T10:00:00Z"),
            "2026-11-29T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * 7", "2026-11-22T10:00:00Z"),
            "2026-11-29T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * 1-5", "2026-11-22T10:00:00Z"),
            "2026-11-23T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * 5-7", "2026-11-23T10:00:00Z"),
            "2026-11-27T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * SAT,SUN", "2026-11-23T10:00:00Z"),
            "2026-11-28T03:00:00+00:00"
        );
    }

    #[test]
    fn seconds_forms_and_shorthands() {
        assert_eq!(
            next("15 30 2 * * *", "2026-11-22T10:00:00Z"),
            "2026-11-23T02:30:15+00:00"
        );
        assert_eq!(
            next("0 0 4 1 * * 2027", "2026-11-22T10:00:00Z"),
            "2027-01-01T04:00:00+00:00"
        );
        assert_eq!(
            next("@hourly", "2026-11-22T10:20:00Z"),
            "2026-11-22T11:00:00+00:00"
        );
        assert_eq!(
            next("@daily", "2026-11-22T10:20:00Z"),
            "2026-11-23T00:00:00+00:00"
        );
        assert_eq!(
            next("@weekly", "2026-11-22T10:20:00Z"),
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            next("@monthly", "2026-11-22T10:20:00Z"),
            "2026-12-01T00:00:00+00:00"
        );
        let _ = Utc.timestamp_opt(0, 0);
    }

    #[test]
    fn invalid_expressions_say_what_is_wrong() {
        for (bad, hint) in [
            ("* * *", "3 fields"),
            ("61 * * * *", "minute \"61\""),
            ("0 3 32 * *", "day of month \"32\""),
            ("0 3 * 13 *", "month \"13\""),
            ("*/0 * * * *", "minute"),
            ("0 3 * * MON-FOO", "day of week"),
            ("0 3 * * 8", "day of week"),
            ("0 3 * * 5-2", "backwards"),
            ("@fortnightly", "unknown shorthand"),
            ("0 0 0 30 2 * *", "never fires"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
            // Never the internal six-field form.
            assert!(!e.to_string().contains(&format!("0 {bad}")), "{e}");
            assert!(e.to_string().contains(hint), "{bad}: {e}");
        }
    }
}
