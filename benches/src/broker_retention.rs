//! `todo-broker-retention`: time-based retention for the test broker, which
//! has none, so that a benchmark longer than a few seconds measures the
//! platform and not the test broker's history.
//!
//! nisshi's memory engine keeps every batch it is given and, on every fetch
//! with something to read, lists all of the partition's batches to find the
//! one asked for (nisshi-storage-dynostore 0.8.1's `fetch` over
//! object_store's `InMemory::list`, which builds a record per batch). A
//! fetch therefore costs more the more batches the partition holds: at
//! 1,000 creates/s (mostly one event per batch) nisshi's CPU rose from 36 %
//! to 80 % of a core over one minute, and the WebSocket p99 from ~90 ms over
//! 20 s to 800 ms over 60 s (benches/README.md). Kafka and Redpanda index
//! their segments and drop old ones by `retention.ms`; this does the second
//! with DeleteRecords.
//!
//! Every `--every` seconds (for `--rounds`, or until killed), for each
//! partition of the topics under `KAFKA_TOPIC_PREFIX`, records older than
//! `--keep` seconds are deleted, never past the committed offset of a
//! `--group` (a group that has committed nothing for a partition keeps all
//! of it). A reader without a group (the realtime tail) must stay less than
//! `--keep` behind.

use anyhow::Context;
use clap::Parser;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use todo_platform::config::KafkaSettings;

#[derive(Parser, Debug)]
#[command(name = "todo-broker-retention", version)]
struct Args {
    /// Keep records younger than this many seconds.
    #[arg(long, default_value_t = 10.0)]
    keep: f64,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 2.0)]
    every: f64,
    /// A consumer group whose committed offsets bound what is deleted
    /// (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Stop after this many rounds (0: run until killed).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let day = 86_400.0;
    if !((0.0..=365.0 * day).contains(&args.keep) && args.every > 0.0 && args.every <= day) {
        anyhow::bail!(
            "--keep must be 0 to 31536000 seconds and --every more than 0, at most 86400"
        );
    }
    let kafka = todo_bench::kafka_settings()?;
    let probe: BaseConsumer =
        todo_platform::kafka::consumer_config(&kafka, "todo-broker-retention")
            .create()
            .context("a client for metadata and offsets")?;
    // One client per group: committed offsets are asked for as that group,
    // which is never joined.
    let groups: Vec<(String, BaseConsumer)> = args
        .groups
        .iter()
        .map(|g| {
            Ok((
                g.clone(),
                todo_platform::kafka::consumer_config(&kafka, g).create()?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let admin = todo_platform::kafka::admin(&kafka)?;
    let keep = Duration::from_secs_f64(args.keep);
    let every = Duration::from_secs_f64(args.every);
    let mut deleted_total: i64 = 0;
    let mut reported = Instant::now();
    let mut rounds: u64 = 0;
    loop {
        let started = Instant::now();
        match round(&kafka, &probe, &groups, keep) {
            Ok(cuts) if cuts.list.count() > 0 => {
                match admin.delete_records(&cuts.list, &AdminOptions::new()).await {
                    Ok(result) => {
                        for p in result.elements() {
                            match p.error() {
                                Ok(()) => {
                                    deleted_total = deleted_total
                                        .saturating_add(cuts.dropped(p.topic(), p.partition()))
                                }
                                Err(e) => eprintln!(
                                    "todo-broker-retention: {} [{}] not trimmed: {e}",
                                    p.topic(),
                                    p.partition()
                                ),
                            }
                        }
                    }
                    Err(e) => eprintln!("todo-broker-retention: DeleteRecords failed: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("todo-broker-retention: {e:#}"),
        }
        rounds = rounds.saturating_add(1);
        if rounds == args.rounds {
            println!("todo-broker-retention: {deleted_total} records deleted");
            return Ok(());
        }
        if reported.elapsed() >= Duration::from_secs(60) {
            println!("todo-broker-retention: {deleted_total} records deleted so far");
            reported = Instant::now();
        }
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

/// What one round deletes: each partition's new start, and where it started
/// before.
struct Cuts {
    list: TopicPartitionList,
    /// (topic, partition) → its low watermark before the cut.
    lows: HashMap<(String, i32), i64>,
}

impl Cuts {
    /// Records the cut of this partition drops (0 for one not cut).
    fn dropped(&self, topic: &str, partition: i32) -> i64 {
        let Some(low) = self.lows.get(&(topic.to_owned(), partition)) else {
            return 0;
        };
        match self
            .list
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(cut)) => cut.saturating_sub(*low),
            _ => 0,
        }
    }
}

fn round(
    kafka: &KafkaSettings,
    probe: &BaseConsumer,
    groups: &[(String, BaseConsumer)],
    keep: Duration,
) -> anyhow::Result<Cuts> {
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    let older_than = chrono::Utc::now() - keep;
    let mut by_time = TopicPartitionList::new();
    for topic in metadata.topics() {
        if topic.name().starts_with(&kafka.topic_prefix) && !topic.name().starts_with("__") {
            for p in topic.partitions() {
                by_time.add_partition_offset(
                    topic.name(),
                    p.id(),
                    Offset::Offset(older_than.timestamp_millis()),
                )?;
            }
        }
    }
    // The first offset at or after the cut-off time: everything before it
    // is older than `keep`. None there (End): all of it is.
    let first_kept = probe.offsets_for_times(by_time, TIMEOUT)?;
    let mut committed: Vec<TopicPartitionList> = Vec::with_capacity(groups.len());
    for (name, client) in groups {
        committed.push(
            client
                .committed_offsets(first_kept.clone(), TIMEOUT)
                .with_context(|| format!("committed offsets of {name}"))?,
        );
    }
    let mut cuts = Cuts {
        list: TopicPartitionList::new(),
        lows: HashMap::new(),
    };
    for p in first_kept.elements() {
        let (low, high) = probe.fetch_watermarks(p.topic(), p.partition(), TIMEOUT)?;
        let mut cut = match p.offset() {
            Offset::Offset(o) => o,
            Offset::End => high,
            _ => continue,
        };
        for group in &committed {
            let done = match group
                .find_partition(p.topic(), p.partition())
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            cut = cut.min(done);
        }
        if cut > low {
            cuts.list
                .add_partition_offset(p.topic(), p.partition(), Offset::Offset(cut))?;
            cuts.lows.insert((p.topic().to_owned(), p.partition()), low);
        }
    }
    Ok(cuts)
}
