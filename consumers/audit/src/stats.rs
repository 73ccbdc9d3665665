//! `GET /stats`: the caller's activity from the event store (the specs'
//! "processes events for analytics"): tasks created and completed per local
//! day, completion rate, overdue now, reminders sent.

use crate::routes::{AuditError, AuditState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{Duration, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use todo_contract::domain::{FieldError, TimeZone};
use todo_platform::http::AuthUser;

/// Longest range one request may ask for.
pub const MAX_DAYS: i64 = 366;
/// The range when none is given: the 30 days ending today.
pub const DEFAULT_DAYS: i64 = 30;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// First day of the range (YYYY-MM-DD, in `tz`; default: 29 days before `to`).
    #[schemars(extend("format" = "date"))]
    from: Option<String>,
    /// Last day of the range, included (YYYY-MM-DD, in `tz`; default: today).
    #[schemars(extend("format" = "date"))]
    to: Option<String>,
    /// The IANA time zone days are counted in (default UTC).
    tz: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Stats {
    /// The zone the days are in.
    timezone: String,
    from: NaiveDate,
    to: NaiveDate,
    /// Every day of the range, in order, zeros included.
    days: Vec<Day>,
    /// Tasks created in the range.
    created: i64,
    /// Completions in the range (a task reopened and completed again counts twice).
    completed: i64,
    /// Of the tasks created in the range and not deleted, the share that is
    /// completed now; null when none was created.
    completion_rate: Option<f64>,
    /// Tasks open now whose due time has passed.
    overdue: i64,
    /// Reminders delivered in the range (`reminder.sent`, one per channel).
    reminders_sent: i64,
}

#[derive(Serialize, JsonSchema)]
pub struct Day {
    date: NaiveDate,
    created: i64,
    completed: i64,
    reminders_sent: i64,
}

fn bad(field: &'static str, message: impl Into<String>) -> AuditError {
    AuditError::BadQuery(FieldError::new(field, message.into()))
}

fn date(field: &'static str, value: &str) -> Result<NaiveDate, AuditError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        // Far outside any task's life; keeps every day arithmetic in range.
        .filter(|d| (1970..=9000).contains(&chrono::Datelike::year(d)))
        .ok_or_else(|| bad(field, "must be a date YYYY-MM-DD between 1970 and 9000"))
}

pub async fn stats(
    State(state): State<AuditState>,
    AuthUser(user): AuthUser,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Stats>, AuditError> {
    let Query(q) = query.map_err(|e| {
        bad(
            "from",
            format!("{e}; expected ?from=YYYY-MM-DD&to=YYYY-MM-DD&tz=<IANA zone>"),
        )
    })?;
    let zone = TimeZone::try_from(q.tz.unwrap_or_else(|| "UTC".into()))
        .map_err(|e| bad("tz", e.to_string()))?;
    let tz = zone.tz();
    let to = match &q.to {
        Some(s) => date("to", s)?,
        None => Utc::now().with_timezone(&tz).date_naive(),
    };
    let from = match &q.from {
        Some(s) => date("from", s)?,
        None => to - Duration::days(DEFAULT_DAYS - 1),
    };
    let days = (to - from).num_days() + 1;
    if days < 1 {
        return Err(bad("from", "must not be after `to`"));
    }
    if days > MAX_DAYS {
        return Err(bad("from", format!("the range is at most {MAX_DAYS} days")));
    }
    let tz_name = tz.name();
    // The day boundaries are the zone's local midnights, resolved by
    // PostgreSQL in the same zone it groups by.
    let counts: Vec<(NaiveDate, i64, i64, i64)> = todo_platform::db::read(&state.pool, || {
        sqlx::query_as(include_str!("stats/days.sql"))
            .bind(user.as_str())
            .bind(tz_name)
            .bind(from)
            .bind(to)
            .fetch_all(&state.pool)
    })
    .await
    .map_err(unknown_zone)?;
    // Each task's newest task.* event is its state now (a deleted task's is
    // task.deleted). This reads all of the user's events (170-210 ms at 100,000:
    // benches/stats.sh); a per-task state table would make it one row each.
    let (overdue, made, done): (i64, i64, i64) = todo_platform::db::read(&state.pool, || {
        sqlx::query_as(include_str!("stats/state.sql"))
            .bind(user.as_str())
            .bind(local_midnight(tz, from))
            .bind(local_midnight(tz, to + Duration::days(1)))
            .fetch_one(&state.pool)
    })
    .await?;
    let by_day: HashMap<NaiveDate, (i64, i64, i64)> = counts
        .into_iter()
        .map(|(d, c, k, s)| (d, (c, k, s)))
        .collect();
    let days: Vec<Day> = from
        .iter_days()
        .take(days as usize)
        .map(|date| {
            let (created, completed, reminders_sent) =
                by_day.get(&date).copied().unwrap_or_default();
            Day {
                date,
                created,
                completed,
                reminders_sent,
            }
        })
        .collect();
    Ok(Json(Stats {
        timezone: tz_name.to_owned(),
        from,
        to,
        created: days.iter().map(|d| d.created).sum(),
        completed: days.iter().map(|d| d.completed).sum(),
        reminders_sent: days.iter().map(|d| d.reminders_sent).sum(),
        completion_rate: (made > 0).then(|| done as f64 / made as f64),
        overdue,
        days,
    }))
}

/// The first instant of `day` in `tz` (a midnight inside a DST gap is
/// the gap's end).
fn local_midnight(tz: chrono_tz::Tz, day: NaiveDate) -> chrono::DateTime<Utc> {
    use chrono::TimeZone as _;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=3)
        .find_map(|h| {
            tz.from_local_datetime(&(midnight + Duration::hours(h)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

/// A zone chrono-tz knows but this PostgreSQL's tz database does not is the
/// query's fault, not the server's.
fn unknown_zone(e: sqlx::Error) -> AuditError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => {
            bad("tz", "not a time zone this server's database knows")
        }
        _ => AuditError::from(e),
    }
}
