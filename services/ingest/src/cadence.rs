//! When a schedule's intervals start: a fixed period from an anchor, or a five-field cron
//! expression read in an explicit time zone.
//!
//! A schedule's data interval runs from one start to the next, and its run happens once the
//! interval has ended (as Airflow's data intervals do): the daily run for 2026-12-01 happens
//! just after midnight on 2026-12-02 and covers the day before it.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// How often a schedule runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Cadence {
    /// Every `period`, from `anchor`.
    Every {
        anchor: DateTime<Utc>,
        period: Duration,
    },
    /// At the minutes a cron expression names, in `tz`.
    Cron { cron: Cron, tz: Tz },
}

impl Cadence {
    /// The first interval start strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every { anchor, period } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let periods = (t - *anchor).num_milliseconds() / period.num_milliseconds() + 1;
                Some(*anchor + *period * i32::try_from(periods).ok()?)
            }
            Cadence::Cron { cron, tz } => cron.next_after(t, tz),
        }
    }

    /// The first interval start at or after `t`.
    pub fn first_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(t - Duration::milliseconds(1))
    }
}

/// Parses a period such as `30s`, `15m`, `1h`, `1d` or `1w` (at least one second).
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("every {text:?} needs a unit: s, m, h, d or w"))?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("every {text:?} must start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("every {text:?}: the unit must be s, m, h, d or w")),
    };
    if !(1..=10_000).contains(&n) {
        return Err(format!("every {text:?}: the number must be 1 to 10000"));
    }
    Ok(Duration::seconds(n * seconds))
}

/// A five-field cron expression: minute, hour, day of month, month, day of week. Fields take
/// `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, and month and weekday
/// names (`jan`, `mon`); 0 and 7 are both Sunday; `@hourly`, `@daily` (`@midnight`),
/// `@weekly`, `@monthly` and `@yearly` (`@annually`) stand for their expressions. As in every
/// cron, when both day fields are restricted a day matches either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days: BTreeSet<u32>,
    months: BTreeSet<u32>,
    weekdays: BTreeSet<u32>,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "cron {text:?} must have five fields: minute hour day-of-month month day-of-week"
            ));
        };
        let mut weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS, 0)?;
        if weekdays.remove(&7) {
            weekdays.insert(0);
        }
        Ok(Cron {
            minutes: field(minute, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)?,
            days: field(day, "day of month", 1, 31, &[], 0)?,
            months: field(month, "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = self.days.contains(&date.day());
        let weekday = self
            .weekdays
            .contains(&date.weekday().num_days_from_sunday());
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => day,
            (true, false) => weekday,
            (false, false) => day || weekday,
        }
    }

    /// The first matching minute strictly after `t`, read in `tz`. A local time that a
    /// daylight-saving change skips does not occur, so it does not fire; a local time that
    /// occurs twice fires once, at its first occurrence. Looks at most eight years ahead.
    pub fn next_after(&self, t: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(tz);
        let mut date = local.date_naive();
        for _ in 0..(366 * 8) {
            if self.months.contains(&date.month()) && self.day_matches(date) {
                for &h in &self.hours {
                    for &m in &self.minutes {
                        let Some(naive) = date.and_hms_opt(h, m, 0) else {
                            continue;
                        };
                        let Some(at) = tz.from_local_datetime(&naive).earliest() else {
                            continue;
                        };
                        let at = at.with_timezone(&Utc);
                        if at > t {
                            return Some(at);
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

/// One field's values: `*`, `n`, `a-b`, with an optional `/step`, comma-separated.
fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    first_name: u32,
) -> Result<BTreeSet<u32>, String> {
    let bad = |why: &str| format!("cron {what} {text:?}: {why}");
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + first_name);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| bad(&format!("{v:?} is not a number")))?;
        if n < lo || n > hi {
            return Err(bad(&format!("{n} is outside {lo}-{hi}")));
        }
        Ok(n)
    };
    let mut out = BTreeSet::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad("the step must be a number"))?;
                if step == 0 {
                    return Err(bad("the step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { hi } else { v })
        };
        if from > to {
            return Err(bad("a range must go upwards"));
        }
        out.extend((from..=to).step_by(step as usize));
    }
    Ok(out)
}

/// Renders `{ds}` (the interval's first day, `YYYY-MM-DD` in the schedule's time zone),
/// `{ds_nodash}`, `{start}` and `{end}` (`YYYYMMDDTHHMMSSZ`, UTC) in a path template.
pub fn render(template: &str, start: DateTime<Utc>, end: DateTime<Utc>, tz: &Tz) -> String {
    let day = start.with_timezone(tz).date_naive();
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    template
        .replace("{ds}", &day.format("%Y-%m-%d").to_string())
        .replace("{ds_nodash}", &day.format("%Y%m%d").to_string())
        .replace("{start}", &stamp(start))
        .replace("{end}", &stamp(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fixed_periods_step_from_their_anchor() {
        let c = Cadence::Every {
            anchor: utc("2026-01-01T00:00:00Z"),
            period: parse_period("15m").unwrap(),
        };
        assert_eq!(
            c.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:15:00Z"))
        );
        assert_eq!(
            c.next_after(utc("2026-01-01T00:14:59Z")),
            Some(utc("2026-01-01T00:15:00Z"))
        );
        assert_eq!(
            c.first_at_or_after(utc("2026-01-01T00:15:00Z")),
            Some(utc("2026-01-01T00:15:00Z"))
        );
        assert_eq!(
            c.next_after(utc("2025-06-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        for bad in ["", "15", "m", "0s", "3y", "-1h"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_fields_take_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/20 9-17 * jan-mar mon,fri").unwrap();
        assert_eq!(c.minutes, [0, 20, 40].into());
        assert_eq!(c.hours, (9..=17).collect());
        assert_eq!(c.months, [1, 2, 3].into());
        assert_eq!(c.weekdays, [1, 5].into());
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, [0].into());
        assert_eq!(Cron::parse("5/30 * * * *").unwrap().minutes, [5, 35].into());
        assert_eq!(
            Cron::parse("@daily").unwrap(),
            Cron::parse("0 0 * * *").unwrap()
        );
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daily_cron_in_a_time_zone_follows_its_daylight_saving_changes() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let c = Cron::parse("0 2 * * *").unwrap();
        // Winter: 02:00 in Paris is 01:00 UTC.
        assert_eq!(
            c.next_after(utc("2026-03-27T12:00:00Z"), &tz),
            Some(utc("2026-03-28T01:00:00Z"))
        );
        // 2026-03-29 02:00 does not exist in Paris (clocks jump to 03:00): no run that day.
        assert_eq!(
            c.next_after(utc("2026-03-28T01:00:00Z"), &tz),
            Some(utc("2026-03-30T00:00:00Z"))
        );
        // 2026-10-25 02:00 occurs twice; it fires at the first (02:00 CEST = 00:00 UTC).
        let c = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            c.next_after(utc("2026-10-24T12:00:00Z"), &tz),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn when_both_day_fields_are_restricted_either_matches() {
        // The 13th of the month, or any Monday.
        let c = Cron::parse("0 0 13 * mon").unwrap();
        let tz = Tz::UTC;
        // 2026-02-01 is a Sunday: Monday the 2nd comes first.
        assert_eq!(
            c.next_after(utc("2026-02-01T00:00:00Z"), &tz),
            Some(utc("2026-02-02T00:00:00Z"))
        );
        // From Tuesday the 10th, Friday the 13th comes before Monday the 16th.
        assert_eq!(
            c.next_after(utc("2026-02-10T00:00:00Z"), &tz),
            Some(utc("2026-02-13T00:00:00Z"))
        );
    }

    #[test]
    fn templates_render_the_interval_in_the_schedule_time_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let start = utc("2026-12-02T03:00:00Z"); // 22:00 on the 1st in New York
        let end = utc("2026-12-03T03:00:00Z");
        assert_eq!(
            render("feed/{ds}/part-{start}.csv", start, end, &tz),
            "feed/2026-12-01/part-20261202T030000Z.csv"
        );
        assert_eq!(
            render("{ds_nodash}-{end}", start, end, &tz),
            "20261201-20261203T030000Z"
        );
    }
}
