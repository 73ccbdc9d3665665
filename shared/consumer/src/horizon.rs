//! How far a tail has read each partition, against how far each partition
//! reached on the broker.
//!
//! A reader of two topics side by side sees one topic run ahead of the
//! other whenever it falls behind on one of them (a backlog, a slow fetch).
//! An event that seems missing may then simply be unread. The horizon
//! tells the two apart: [`ReadHorizon::mark`] notes where every partition
//! ended, as the broker last reported it; [`ReadHorizon::reached`] says
//! whether everything up to those ends has been handed to the service. An
//! event still missing after that was not in the log when the mark was
//! taken.

use std::collections::HashMap;
use std::sync::Mutex;

type Partition = (String, i32);
/// Topic → partition → position: a read looks its topic up by `&str`.
type Positions = HashMap<String, HashMap<i32, Position>>;

#[derive(Debug, Clone, Copy)]
struct Position {
    /// The next offset to hand to the service.
    read: i64,
    /// The partition's end (next offset to be written), as last reported.
    end: i64,
}

#[derive(Debug, Default)]
pub struct ReadHorizon {
    partitions: Mutex<Positions>,
}

/// The end of every partition at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    ends: Vec<(Partition, i64)>,
}

impl ReadHorizon {
    /// `partition` is read from offset `from`; it ends at `end`.
    pub fn opened(&self, topic: &str, partition: i32, from: i64, end: i64) {
        self.lock().entry(topic.to_owned()).or_default().insert(
            partition,
            Position {
                read: from,
                end: end.max(from),
            },
        );
    }

    /// The message at `offset` was handed to the service.
    pub fn read(&self, topic: &str, partition: i32, offset: i64) {
        let next = offset.saturating_add(1);
        if let Some(p) = self
            .lock()
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            p.read = p.read.max(next);
            p.end = p.end.max(next);
        }
    }

    /// The broker reported that `partition` ends at `end` (its high
    /// watermark). Reports arrive late and out of step with reads, so an
    /// end never moves back.
    pub fn reported_end(&self, topic: &str, partition: i32, end: i64) {
        if let Some(p) = self
            .lock()
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            p.end = p.end.max(end);
        }
    }

    pub fn mark(&self) -> Mark {
        let mut ends: Vec<(Partition, i64)> = self
            .lock()
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(|(partition, p)| ((topic.clone(), *partition), p.end))
            })
            .collect();
        ends.sort_unstable();
        Mark { ends }
    }

    /// Whether every partition has been read up to where `mark` saw it end.
    pub fn reached(&self, mark: &Mark) -> bool {
        let partitions = self.lock();
        mark.ends.iter().all(|((topic, partition), end)| {
            // A partition no longer read (none is ever given up today)
            // cannot hold anything back.
            partitions
                .get(topic)
                .and_then(|t| t.get(partition))
                .is_none_or(|p| p.read >= *end)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Positions> {
        // Every update leaves the map consistent, so a panic elsewhere
        // while it was held does not make it unusable.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_reached_once_every_partition_is_read_to_where_it_ended() {
        let horizon = ReadHorizon::default();
        horizon.opened("task-events", 0, 10, 15);
        horizon.opened("reminders", 0, 3, 3);
        let mark = horizon.mark();
        assert!(!horizon.reached(&mark), "task-events is 5 behind");
        for offset in 10..14 {
            horizon.read("task-events", 0, offset);
        }
        assert!(!horizon.reached(&mark), "one left");
        // What arrives after the mark does not hold it back.
        horizon.reported_end("task-events", 0, 40);
        horizon.read("task-events", 0, 14);
        assert!(horizon.reached(&mark));
        assert!(!horizon.reached(&horizon.mark()), "the newer end is not");
    }

    #[test]
    fn a_late_report_never_moves_an_end_back() {
        let horizon = ReadHorizon::default();
        horizon.opened("t", 0, 0, 0);
        horizon.read("t", 0, 7);
        horizon.reported_end("t", 0, 2);
        let mark = horizon.mark();
        assert_eq!(mark.ends, vec![(("t".to_owned(), 0), 8)]);
        assert!(horizon.reached(&mark));
    }
}
