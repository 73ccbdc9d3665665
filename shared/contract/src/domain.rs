//! Domain types that refuse bad values where they enter.
//!
//! Each type parses (`TryFrom<String>` via serde) instead of being validated
//! later, so a value of the type is valid by construction, and a JSON body that
//! holds a bad value fails to deserialize with an error that names its field.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

pub const MAX_TITLE_CHARS: usize = 500;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;
pub const MAX_REMINDERS: usize = 10;
pub const MAX_LEAD_TIME: Duration = Duration::from_secs(366 * 24 * 3600);
pub const MAX_USER_ID_CHARS: usize = 128;
/// Most occurrences a recurrence rule may have in one day (the product of
/// its BYHOUR, BYMINUTE and BYSECOND counts): HOURLY and finer frequencies
/// are refused, and a DAILY rule with every BYSECOND would be one of them.
pub const MAX_OCCURRENCES_PER_DAY: usize = 24;
/// Longest text search (`q`) of a task list.
pub const MAX_SEARCH_CHARS: usize = 200;
/// Longest recurrence rule text.
pub const MAX_RULE_CHARS: usize = 500;

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

/// Free text may hold line breaks and tabs, but no other control character:
/// PostgreSQL refuses NUL in `text` and `jsonb`, and the others only make
/// trouble for whoever displays it.
fn has_control_other_than_whitespace(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// The earliest and latest instant the platform accepts (`due_at`, reminder
/// times, list filters): what every clock, rule evaluation and the database
/// agree on, with room for lead times and time zones at both ends.
pub fn earliest_time() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(0, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// See [`earliest_time`]: 9999-12-31T23:59:59.999999Z.
pub fn latest_time() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(253_402_300_799_999_999)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether `t` lies in the accepted range.
pub fn in_time_range(t: DateTime<Utc>) -> bool {
    (earliest_time()..=latest_time()).contains(&t)
}

fn time_range_error() -> String {
    "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z".into()
}

/// An RFC 3339 instant in the accepted range ([`earliest_time`] to
/// [`latest_time`]), with PostgreSQL's precision (microseconds).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "DateTime<Utc>", into = "DateTime<Utc>")]
#[schemars(description = "An RFC 3339 time such as 2026-12-01T09:00:00Z (between 1970 and 9999)")]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn get(self) -> DateTime<Utc> {
        self.0
    }
}

impl TryFrom<DateTime<Utc>> for Timestamp {
    type Error = String;
    fn try_from(t: DateTime<Utc>) -> Result<Self, Self::Error> {
        if in_time_range(t) {
            Ok(Timestamp(truncate_to_micros(t)))
        } else {
            Err(time_range_error())
        }
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(t: Timestamp) -> DateTime<Utc> {
        t.0
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = DateTime::parse_from_rfc3339(s)
            .map_err(|_| "expected an RFC 3339 time such as 2026-12-01T09:00:00Z".to_owned())?;
        Timestamp::try_from(t.with_timezone(&Utc))
    }
}

/// A user id: the `sub` of a token. Also the Kafka key of that user's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            return Err("user id must not be empty".into());
        }
        if s.chars().count() > MAX_USER_ID_CHARS {
            return Err(format!(
                "user id must be at most {MAX_USER_ID_CHARS} characters"
            ));
        }
        if has_control(&s) || s.chars().any(char::is_whitespace) {
            return Err("user id must not contain white space or control characters".into());
        }
        Ok(UserId(s))
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1–500 characters, not blank, no control characters other than none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(
    description = "1 to 500 characters, not blank, no control characters",
    extend("minLength" = 1, "maxLength" = MAX_TITLE_CHARS)
)]
pub struct Title(String);

impl Title {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Title {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        let n = s.chars().count();
        if n > MAX_TITLE_CHARS {
            return Err(format!(
                "must be at most {MAX_TITLE_CHARS} characters (got {n})"
            ));
        }
        if has_control(&s) {
            return Err("must not contain control characters".into());
        }
        Ok(Title(s))
    }
}

impl From<Title> for String {
    fn from(t: Title) -> String {
        t.0
    }
}

/// Free text up to 10,000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(
    description = "Free text up to 10,000 characters (line breaks and tabs allowed)",
    extend("maxLength" = MAX_DESCRIPTION_CHARS)
)]
pub struct Description(String);

impl Description {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Description {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let n = s.chars().count();
        if n > MAX_DESCRIPTION_CHARS {
            return Err(format!(
                "must be at most {MAX_DESCRIPTION_CHARS} characters (got {n})"
            ));
        }
        if has_control_other_than_whitespace(&s) {
            return Err(
                "must not contain control characters other than line breaks and tabs".into(),
            );
        }
        Ok(Description(s))
    }
}

impl From<Description> for String {
    fn from(d: Description) -> String {
        d.0
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(description = "One of low, medium (the default), high, urgent")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            "urgent" => Ok(Priority::Urgent),
            other => Err(format!(
                "unknown priority `{other}`, expected one of low, medium, high, urgent"
            )),
        }
    }
}

/// Up to 20 distinct tags of 1–50 characters; duplicates are folded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
#[schemars(
    description = "Up to 20 tags of 1 to 50 characters each; duplicates are folded",
    extend("maxItems" = MAX_TAGS)
)]
pub struct Tags(Vec<String>);

impl Tags {
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for Tags {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, Self::Error> {
        let mut out: Vec<String> = Vec::with_capacity(v.len());
        for (i, tag) in v.into_iter().enumerate() {
            if tag.trim().is_empty() {
                return Err(format!("tag {i} must not be empty"));
            }
            if tag.chars().count() > MAX_TAG_CHARS {
                return Err(format!(
                    "tag {i} must be at most {MAX_TAG_CHARS} characters"
                ));
            }
            if has_control(&tag) {
                return Err(format!("tag {i} must not contain control characters"));
            }
            if !out.contains(&tag) {
                out.push(tag);
            }
        }
        if out.len() > MAX_TAGS {
            return Err(format!("at most {MAX_TAGS} tags are allowed"));
        }
        Ok(Tags(out))
    }
}

impl From<Tags> for Vec<String> {
    fn from(t: Tags) -> Vec<String> {
        t.0
    }
}

/// An IANA time zone name such as `Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(description = "An IANA time zone name such as Europe/Berlin or UTC")]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl TryFrom<String> for TimeZone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse::<chrono_tz::Tz>().map(TimeZone).map_err(|_| {
            format!("unknown time zone `{s}`, expected an IANA name such as Europe/Berlin")
        })
    }
}

impl From<TimeZone> for String {
    fn from(t: TimeZone) -> String {
        t.0.name().to_owned()
    }
}

/// The RRULE part of an RFC 5545 recurrence (no DTSTART: that is the task's
/// `due_at`), checked by the `rrule` crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(
    description = "An RFC 5545 RRULE such as FREQ=WEEKLY;BYDAY=MO (FREQ DAILY, WEEKLY, MONTHLY or YEARLY; no DTSTART: the first occurrence is due_at)"
)]
pub struct RecurrenceRule(String);

impl RecurrenceRule {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rule as the `rrule` crate sees it, not yet tied to a start.
    pub fn parse(&self) -> Result<rrule::RRule<rrule::Unvalidated>, String> {
        self.0
            .parse::<rrule::RRule<rrule::Unvalidated>>()
            .map_err(|e| e.to_string())
    }

    /// The full recurrence set, starting at `start` in zone `tz`.
    pub fn set(&self, start: DateTime<Utc>, tz: TimeZone) -> Result<rrule::RRuleSet, String> {
        let dtstart = start.with_timezone(&rrule::Tz::Tz(tz.tz()));
        self.parse()?.build(dtstart).map_err(|e| e.to_string())
    }
}

impl TryFrom<String> for RecurrenceRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let text = s.trim();
        let text = text.strip_prefix("RRULE:").unwrap_or(text).to_owned();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > MAX_RULE_CHARS {
            return Err(format!("must be at most {MAX_RULE_CHARS} characters"));
        }
        if has_control(&text) || text.to_ascii_uppercase().contains("DTSTART") {
            return Err("must be a single RRULE (DTSTART is the task's due_at)".into());
        }
        let rule = RecurrenceRule(text);
        let parsed = rule
            .parse()
            .map_err(|e| format!("not a valid RFC 5545 RRULE: {e}"))?;
        match parsed.get_freq() {
            rrule::Frequency::Daily
            | rrule::Frequency::Weekly
            | rrule::Frequency::Monthly
            | rrule::Frequency::Yearly => {}
            other => {
                return Err(format!(
                    "FREQ={other} is not supported, expected DAILY, WEEKLY, MONTHLY or YEARLY"
                ))
            }
        }
        // RFC 5545 §3.3.10: INTERVAL and COUNT are positive integers.
        if parsed.get_interval() == 0 {
            return Err("INTERVAL must be a positive integer".into());
        }
        if parsed.get_count() == Some(0) {
            return Err("COUNT must be a positive integer".into());
        }
        // The rule crate builds every candidate of a period (a whole year for
        // YEARLY) before it looks at any: bound how many a day can hold.
        let per_day = [
            parsed.get_by_hour().len(),
            parsed.get_by_minute().len(),
            parsed.get_by_second().len(),
        ]
        .iter()
        .map(|n| (*n).max(1))
        .product::<usize>();
        if per_day > MAX_OCCURRENCES_PER_DAY {
            return Err(format!(
                "BYHOUR, BYMINUTE and BYSECOND together give {per_day} occurrences a day; \
                 at most {MAX_OCCURRENCES_PER_DAY} are allowed"
            ));
        }
        refuse_sparse_or_impossible(&parsed)?;
        // Validate against a fixed start: catches rules the crate refuses only
        // once they are tied to a DTSTART (e.g. BYSETPOS without a BYxxx).
        let probe = chrono::DateTime::<Utc>::from_timestamp(1_767_225_600, 0)
            .unwrap_or_default()
            .with_timezone(&rrule::Tz::UTC);
        parsed
            .validate(probe)
            .map_err(|e| format!("not a valid RFC 5545 RRULE: {e}"))?;
        Ok(rule)
    }
}

impl From<RecurrenceRule> for String {
    fn from(r: RecurrenceRule) -> String {
        r.0
    }
}

/// Rules the rule crate would have to step through period by period without
/// finding an occurrence: a day no month it names has (February 30th), or a
/// daily rule that filters down to a monthly or weekly one. Each period
/// costs the crate the same, matching or not, so a daily rule that matches
/// once in years costs a completion a third of a second; the same rule
/// written with the coarser FREQ costs next to nothing.
fn refuse_sparse_or_impossible(rule: &rrule::RRule<rrule::Unvalidated>) -> Result<(), String> {
    // Longest each month can be (February in leap years).
    const DAYS: [i8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let days = rule.get_by_month_day();
    if !days.is_empty() {
        let months: Vec<usize> = if rule.get_by_month().is_empty() {
            (1..=12).collect()
        } else {
            rule.get_by_month()
                .iter()
                .map(|m| usize::from(*m))
                .collect()
        };
        let exists = months.iter().any(|m| {
            let longest = DAYS[(m.clamp(&1, &12)) - 1];
            days.iter()
                .any(|d| d.unsigned_abs() <= longest.unsigned_abs())
        });
        if !exists {
            return Err("never occurs: no month it names has the days of BYMONTHDAY".into());
        }
    }
    if rule.get_freq() == rrule::Frequency::Daily {
        if !days.is_empty() {
            return Err(
                "FREQ=DAILY with BYMONTHDAY: write it as FREQ=MONTHLY with the same BYMONTHDAY"
                    .into(),
            );
        }
        let interval = rule.get_interval();
        if !rule.get_by_weekday().is_empty() && interval.is_multiple_of(7) {
            return Err(format!(
                "FREQ=DAILY;INTERVAL={interval} with BYDAY always falls on one weekday: \
                 write it as FREQ=WEEKLY;INTERVAL={}",
                interval / 7
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(
    description = "on_completion: the next instance is created when this one is completed; schedule: each instance is created when its time comes"
)]
pub enum RecurrenceMode {
    OnCompletion,
    Schedule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "How the task repeats; needs due_at (the first occurrence)")]
pub struct Recurrence {
    pub rule: RecurrenceRule,
    pub timezone: TimeZone,
    pub mode: RecurrenceMode,
}

/// An ISO 8601 duration of weeks, days, hours, minutes and seconds (`PT1H`,
/// `P1D`, `P1DT30M`), positive and at most a year. Years and months are
/// refused: their length depends on the calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(
    description = "An ISO 8601 duration before due_at such as PT1H, P1D or P1DT30M (weeks, days, hours, minutes, seconds; at most 366 days)"
)]
pub struct LeadTime {
    text: String,
    duration: Duration,
}

impl LeadTime {
    pub fn duration(&self) -> Duration {
        self.duration
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for LeadTime {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let not_a_duration = || {
            let shown: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
            format!("`{shown}` is not an ISO 8601 duration such as PT1H or P1D")
        };
        // The whole text must be the duration: the parser stops at the first
        // byte it does not know (a NUL, say) and would keep the rest.
        let parsed = match iso8601::parsers::parse_duration(s.as_bytes()) {
            Ok((&[], parsed)) => parsed,
            _ => return Err(not_a_duration()),
        };
        let duration = match parsed {
            iso8601::Duration::Weeks(w) => Duration::from_secs(u64::from(w) * 7 * 86_400),
            iso8601::Duration::YMDHMS {
                year,
                month,
                day,
                hour,
                minute,
                second,
                millisecond,
            } => {
                if year != 0 || month != 0 {
                    return Err(format!(
                        "`{s}`: years and months are not allowed in a lead time, use days or weeks"
                    ));
                }
                Duration::from_secs(
                    u64::from(day) * 86_400
                        + u64::from(hour) * 3600
                        + u64::from(minute) * 60
                        + u64::from(second),
                ) + Duration::from_millis(u64::from(millisecond))
            }
        };
        if duration.is_zero() {
            return Err(format!("`{s}` must be longer than zero"));
        }
        if duration > MAX_LEAD_TIME {
            return Err(format!("`{s}` is longer than the maximum of 366 days"));
        }
        Ok(LeadTime { text: s, duration })
    }
}

impl From<LeadTime> for String {
    fn from(l: LeadTime) -> String {
        l.text
    }
}

/// A reminder: a lead time before `due_at`, or an absolute time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schemars(
    description = "{\"before\": <ISO 8601 duration before due_at>} or {\"at\": <RFC 3339 time>}"
)]
pub enum Reminder {
    Before(LeadTime),
    At(Timestamp),
}

impl Reminder {
    /// When it fires for a task due at `due_at` (None: a lead time without a
    /// due date, which [`TaskSpec`] refuses, or a time before the first
    /// representable one).
    pub fn fire_at(&self, due_at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match self {
            Reminder::At(at) => Some(at.get()),
            Reminder::Before(lead) => {
                let lead = chrono::Duration::from_std(lead.duration()).ok()?;
                due_at?.checked_sub_signed(lead)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "Vec<Reminder>", into = "Vec<Reminder>")]
#[schemars(
    description = "Up to 10 reminders, each {\"before\": \"PT1H\"} (ISO 8601 duration before due_at) or {\"at\": \"2026-12-01T08:00:00Z\"} (RFC 3339 time)",
    extend("maxItems" = MAX_REMINDERS)
)]
pub struct Reminders(Vec<Reminder>);

impl Reminders {
    pub fn as_slice(&self) -> &[Reminder] {
        &self.0
    }
}

impl TryFrom<Vec<Reminder>> for Reminders {
    type Error = String;
    fn try_from(v: Vec<Reminder>) -> Result<Self, Self::Error> {
        if v.len() > MAX_REMINDERS {
            return Err(format!("at most {MAX_REMINDERS} reminders are allowed"));
        }
        Ok(Reminders(v))
    }
}

impl From<Reminders> for Vec<Reminder> {
    fn from(r: Reminders) -> Vec<Reminder> {
        r.0
    }
}

/// A problem with one field of a task, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldError {
    /// The field's JSON path (such as reminders[0].before), query
    /// parameter or header.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The writable fields of a task, checked together (rules that span fields:
/// a recurrence and lead-time reminders need `due_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub title: Title,
    pub description: Option<Description>,
    pub priority: Priority,
    pub tags: Tags,
    pub due_at: Option<Timestamp>,
    pub recurrence: Option<Recurrence>,
    pub reminders: Reminders,
}

impl TaskSpec {
    /// Cross-field rules; every violation is listed.
    pub fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(rec) = &self.recurrence {
            match self.due_at {
                None => errors.push(FieldError::new(
                    "due_at",
                    "a recurring task needs due_at (the first occurrence)",
                )),
                Some(due) => {
                    if let Err(e) = rec.rule.set(due.get(), rec.timezone) {
                        errors.push(FieldError::new("recurrence.rule", e));
                    }
                }
            }
        }
        for (i, r) in self.reminders.as_slice().iter().enumerate() {
            let Reminder::Before(_) = r else { continue };
            let field = format!("reminders[{i}].before");
            match self.due_at {
                None => errors.push(FieldError::new(
                    field,
                    "a reminder relative to due_at needs due_at",
                )),
                Some(due) => {
                    if !r.fire_at(Some(due.get())).is_some_and(in_time_range) {
                        errors.push(FieldError::new(
                            field,
                            format!("due_at minus this lead time {}", time_range_error()),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A task as stored, served and carried in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub completed: bool,
    #[serde(serialize_with = "crate::rfc3339::optional")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::rfc3339::optional")]
    pub due_at: Option<DateTime<Utc>>,
    pub recurrence: Option<Recurrence>,
    pub reminders: Vec<Reminder>,
    pub series_id: Option<Uuid>,
    /// When the task's series began: its first occurrence, the rule's
    /// DTSTART (COUNT counts from it). Null when the task is not recurring.
    #[serde(default, serialize_with = "crate::rfc3339::optional")]
    pub series_start: Option<DateTime<Utc>>,
    /// The due time the series produces after this task, in the task's zone
    /// by the rules todo-recurring applies (`schedule`: the occurrence after
    /// due_at; `on_completion`: after the later of due_at and completed_at,
    /// or due_at while open). Null when not recurring or when COUNT or
    /// UNTIL ended the series.
    #[serde(default, serialize_with = "crate::rfc3339::optional")]
    pub next_occurrence: Option<DateTime<Utc>>,
    pub version: i64,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl Task {
    /// Names of the fields that differ between `self` (before) and `after`,
    /// in the order of the task's JSON representation.
    pub fn changed_fields(&self, after: &Task) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut diff = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        diff("title", self.title == after.title);
        diff("description", self.description == after.description);
        diff("priority", self.priority == after.priority);
        diff("tags", self.tags == after.tags);
        diff("completed", self.completed == after.completed);
        diff("completed_at", self.completed_at == after.completed_at);
        diff("due_at", self.due_at == after.due_at);
        diff("recurrence", self.recurrence == after.recurrence);
        diff("reminders", self.reminders == after.reminders);
        diff("series_id", self.series_id == after.series_id);
        changed
    }
}

/// Timestamps with PostgreSQL's precision (microseconds), so that what an
/// event carries equals what the database returns.
pub fn now() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_bounded_and_not_blank() {
        assert!(Title::try_from("Buy milk".to_string()).is_ok());
        assert!(Title::try_from("   ".to_string()).is_err());
        assert!(Title::try_from("x".repeat(500)).is_ok());
        assert!(
            Title::try_from("é".repeat(500)).is_ok(),
            "counts characters, not bytes"
        );
        assert!(Title::try_from("x".repeat(501)).is_err());
        assert!(Title::try_from("a\u{0}b".to_string()).is_err());
    }

    #[test]
    fn priorities_are_a_closed_set() {
        let p: Priority = serde_json::from_str("\"urgent\"").unwrap();
        assert_eq!(p, Priority::Urgent);
        assert!(serde_json::from_str::<Priority>("\"critical\"").is_err());
    }

    #[test]
    fn tags_fold_duplicates_and_refuse_bad_ones() {
        let t = Tags::try_from(vec!["a".into(), "b".into(), "a".into()]).unwrap();
        assert_eq!(t.as_slice(), ["a", "b"]);
        assert!(Tags::try_from(vec!["".into()]).is_err());
        assert!(Tags::try_from(vec!["x".repeat(51)]).is_err());
        assert!(Tags::try_from((0..21).map(|i| i.to_string()).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn rrules_are_checked_by_the_rrule_crate() {
        for ok in [
            "FREQ=WEEKLY;BYDAY=MO",
            "RRULE:FREQ=MONTHLY;BYMONTHDAY=-1",
            "FREQ=MONTHLY;BYDAY=-1FR",
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            "FREQ=DAILY;INTERVAL=2;COUNT=5",
            "FREQ=YEARLY;UNTIL=20300101T000000Z",
        ] {
            assert!(RecurrenceRule::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "FREQ=FORTNIGHTLY",
            "FREQ=WEEKLY;BYDAY=XX",
            "FREQ=HOURLY",
            "FREQ=DAILY;INTERVAL=0",
            "FREQ=DAILY;COUNT=0",
            "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY",
        ] {
            assert!(
                RecurrenceRule::try_from(bad.to_string()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert!(TimeZone::try_from("Europe/Berlin".to_string()).is_ok());
        assert!(TimeZone::try_from("Mars/Olympus_Mons".to_string()).is_err());
    }

    #[test]
    fn lead_times_are_positive_calendar_free_durations() {
        assert_eq!(
            LeadTime::try_from("PT1H".to_string()).unwrap().duration(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            LeadTime::try_from("P1D".to_string()).unwrap().duration(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            LeadTime::try_from("P2W".to_string()).unwrap().duration(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(LeadTime::try_from("PT0S".to_string()).is_err());
        assert!(LeadTime::try_from("P1M".to_string()).is_err());
        assert!(LeadTime::try_from("P400D".to_string()).is_err());
        assert!(LeadTime::try_from("an hour".to_string()).is_err());
    }

    #[test]
    fn reminders_round_trip_as_before_or_at() {
        let r: Vec<Reminder> =
            serde_json::from_str(r#"[{"before":"PT1H"},{"at":"2026-12-01T09:00:00Z"}]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"[{"before":"PT1H"},{"at":"2026-12-01T09:00:00Z"}]"#
        );
        assert!(serde_json::from_str::<Reminder>(r#"{"after":"PT1H"}"#).is_err());
    }

    #[test]
    fn a_recurrence_needs_a_due_date() {
        let spec = TaskSpec {
            title: Title::try_from("t".to_string()).unwrap(),
            description: None,
            priority: Priority::Medium,
            tags: Tags::default(),
            due_at: None,
            recurrence: Some(Recurrence {
                rule: RecurrenceRule::try_from("FREQ=DAILY".to_string()).unwrap(),
                timezone: TimeZone::try_from("UTC".to_string()).unwrap(),
                mode: RecurrenceMode::OnCompletion,
            }),
            reminders: Reminders::try_from(vec![Reminder::Before(
                LeadTime::try_from("PT1H".to_string()).unwrap(),
            )])
            .unwrap(),
        };
        let errors = spec.check().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["due_at", "reminders[0].before"]);
    }

    #[test]
    fn what_postgresql_refuses_is_refused_here() {
        assert!(Description::try_from("a\u{0}b".to_string()).is_err());
        assert!(Description::try_from("line one\nline two\tend".to_string()).is_ok());
        assert!(Tags::try_from(vec!["a\u{0}".into()]).is_err());
        assert!(LeadTime::try_from("PT1H\u{0}".to_string()).is_err());
        assert!(LeadTime::try_from("PT1Hjunk".to_string()).is_err());
        assert!(RecurrenceRule::try_from("FREQ=DAILY\u{0}".to_string()).is_err());
    }

    #[test]
    fn times_are_bounded_to_years_1970_to_9999() {
        let parse = |s: &str| serde_json::from_str::<Timestamp>(&format!("\"{s}\""));
        assert!(parse("2026-12-01T09:00:00Z").is_ok());
        assert!(parse("1970-01-01T00:00:00Z").is_ok());
        assert!(parse("9999-12-31T23:59:59.999999Z").is_ok());
        for bad in [
            "+262142-12-31T23:59:59Z",
            "-4714-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "+10000-01-01T00:00:00Z",
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.contains("between 1970"), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<Reminder>(r#"{"at":"+262142-12-31T23:59:59Z"}"#).is_err());
    }

    #[test]
    fn a_lead_time_may_not_reach_before_1970() {
        let spec = |due: &str| TaskSpec {
            title: Title::try_from("t".to_string()).unwrap(),
            description: None,
            priority: Priority::Medium,
            tags: Tags::default(),
            due_at: Some(due.parse().unwrap()),
            recurrence: None,
            reminders: Reminders::try_from(vec![Reminder::Before(
                LeadTime::try_from("P2D".to_string()).unwrap(),
            )])
            .unwrap(),
        };
        assert!(spec("2026-12-01T09:00:00Z").check().is_ok());
        let errors = spec("1970-01-01T09:00:00Z").check().unwrap_err();
        assert_eq!(errors[0].field, "reminders[0].before");
    }

    #[test]
    fn rules_may_not_expand_past_a_few_occurrences_a_day() {
        let all = |n: u32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let worst = format!(
            "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR={};BYMINUTE={};BYSECOND={}",
            all(24),
            all(60),
            all(60)
        );
        let err = RecurrenceRule::try_from(worst).unwrap_err();
        assert!(err.contains("occurrences a day"), "{err}");
        let daily = format!("FREQ=DAILY;BYHOUR={};BYMINUTE=0,30", all(24));
        assert!(RecurrenceRule::try_from(daily).is_err());
        assert!(RecurrenceRule::try_from(format!("FREQ=DAILY;BYHOUR={}", all(24))).is_ok());
        assert!(
            RecurrenceRule::try_from("FREQ=DAILY;BYHOUR=9,17;BYMINUTE=0,30".to_string()).is_ok()
        );
    }

    #[test]
    fn rules_that_never_occur_or_hide_a_coarser_one_are_refused() {
        for (bad, why) in [
            ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "never occurs"),
            (
                "FREQ=MONTHLY;BYMONTH=4,6,9,11;BYMONTHDAY=31,-31",
                "never occurs",
            ),
            ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29", "FREQ=MONTHLY"),
            ("FREQ=DAILY;BYMONTHDAY=1,15", "FREQ=MONTHLY"),
            ("FREQ=DAILY;INTERVAL=14;BYDAY=MO", "FREQ=WEEKLY;INTERVAL=2"),
        ] {
            let err = RecurrenceRule::try_from(bad.to_string()).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        for ok in [
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
            "FREQ=MONTHLY;BYMONTHDAY=31",
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR",
            "FREQ=DAILY;INTERVAL=3;BYDAY=MO;BYMONTH=12",
        ] {
            assert!(RecurrenceRule::try_from(ok.to_string()).is_ok(), "{ok}");
        }
    }
}
