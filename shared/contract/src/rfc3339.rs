//! Timestamps serialized as one string.
//!
//! chrono's `Serialize` hands serde a `Display` that writes a timestamp a
//! digit or two at a time, and serde_json escapes every piece on its own.
//! Writing the string first cut ~13 k instructions per create in todo-api
//! under callgrind (benches/README.md, "instructions per create"). These
//! functions write the
//! same text first (chrono's `Serialize` calls the very formatting of
//! `to_rfc3339_opts(AutoSi, true)`: `Z`, and 0, 3, 6 or 9 fraction digits),
//! then give serde the whole string. Use with `#[serde(serialize_with)]`;
//! parsing stays chrono's.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// [`serialize`] for an optional timestamp (`null` when absent).
pub fn optional<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serializer.serialize_some(&Whole(t)),
        None => serializer.serialize_none(),
    }
}

/// A timestamp that serializes through [`serialize`].
struct Whole<'a>(&'a DateTime<Utc>);

impl Serialize for Whole<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "serialize")]
        t: DateTime<Utc>,
        #[serde(serialize_with = "optional")]
        some: Option<DateTime<Utc>>,
        #[serde(serialize_with = "optional")]
        none: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        t: DateTime<Utc>,
        some: Option<DateTime<Utc>>,
        none: Option<DateTime<Utc>>,
    }

    /// Every shape chrono writes: whole seconds, milli-, micro- and
    /// nanoseconds, a leap second, the edges of four-digit years and beyond.
    fn instants() -> Vec<DateTime<Utc>> {
        let mut all = vec![DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
        for secs in [
            -62_135_596_800, // 0001-01-01
            -1,
            0,
            951_782_400,     // 2000-02-29
            1_796_083_199,   // 2026-12-31T23:59:59
            253_402_300_799, // 9999-12-31T23:59:59
            253_402_300_800, // 10000-01-01
        ] {
            for nanos in [
                0,
                1,
                120_000_000,
                123_000,
                123_456,
                999_999_999,
                1_000_000_000,
            ] {
                if let Some(t) = DateTime::from_timestamp(secs, nanos) {
                    all.push(t);
                }
            }
        }
        let mut t = DateTime::from_timestamp(1_796_083_199, 0).unwrap_or_default();
        for _ in 0..2_000 {
            // Steps of odd lengths reach every field width and digit.
            t += TimeDelta::nanoseconds(86_399_987_654_321);
            all.push(t);
        }
        all
    }

    #[test]
    fn the_text_is_chronos_own() {
        for t in instants() {
            let ours = serde_json::to_string(&Ours {
                t,
                some: Some(t),
                none: None,
            })
            .unwrap();
            let chronos = serde_json::to_string(&Chronos {
                t,
                some: Some(t),
                none: None,
            })
            .unwrap();
            assert_eq!(ours, chronos, "{t:?}");
        }
    }
}
