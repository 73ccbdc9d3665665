//! Next-occurrence computation (`todo_contract::recurrence::Series`): on every
//! completion of an `on_completion` task todo-recurring's handler builds the
//! series from its rule and DTSTART and asks for the first occurrence after
//! the completion; its scheduler does the same for `schedule` series, and
//! todo-api once per write of a recurring task (`next_occurrence`). The cost
//! grows with the occurrences between DTSTART and "now", so each rule is
//! measured with a series started today and one started a year ago.
//!
//! `cargo bench -p todo-bench --bench recurrence [-- --quick]`

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use todo_contract::domain::{RecurrenceRule, TimeZone};
use todo_contract::recurrence::Series;

const RULES: &[(&str, &str, &str)] = &[
    ("daily", "FREQ=DAILY", "Europe/Berlin"),
    (
        "weekdays",
        "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
        "America/New_York",
    ),
    ("monthly-31st", "FREQ=MONTHLY", "Europe/Berlin"),
    ("last-friday", "FREQ=MONTHLY;BYDAY=-1FR", "Asia/Tokyo"),
    (
        "fortnightly",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH",
        "Europe/Berlin",
    ),
];

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn next_occurrence(c: &mut Criterion) {
    // A fixed "now", so runs compare; DTSTART on a 31st at 09:00 Berlin.
    let now = at("2026-11-25T10:00:00Z");
    let today = at("2026-10-31T08:00:00Z");
    let year_ago = today - TimeDelta::days(365);
    let mut g = c.benchmark_group("next_after");
    for &(name, rule, zone) in RULES {
        let rule = RecurrenceRule::try_from(rule.to_owned()).unwrap();
        let zone = TimeZone::try_from(zone.to_owned()).unwrap();
        for (age, dtstart) in [("recent", today), ("year-old", year_ago)] {
            // What the handler does per completion: build, then ask.
            g.bench_function(format!("new+next_after/{name}/{age}"), |b| {
                b.iter(|| {
                    Series::new(black_box(&rule), &zone, dtstart)
                        .unwrap()
                        .next_after(black_box(now))
                })
            });
        }
        let series = Series::new(&rule, &zone, today).unwrap();
        g.bench_function(format!("next_after/{name}/recent"), |b| {
            b.iter(|| series.next_after(black_box(now)))
        });
    }
    g.finish();
}

criterion_group!(benches, next_occurrence);
criterion_main!(benches);
