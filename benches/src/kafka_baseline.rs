//! `todo-kafka-baseline`: what the broker and librdkafka do on their own,
//! with the platform's client settings, so that the pipeline's figures
//! (outbox → broker, broker → consumer) can be read as ratios to it.
//!
//! It creates a fresh topic, starts a consumer on it (a new group, settings
//! of the consumer runtime) and waits for its partitions, then produces
//! `--messages` task.created envelopes (~1 KB) keyed by `--users` user ids
//! with the relay's producer settings, as fast as librdkafka takes them:
//!   - produce: first send → last acknowledgement;
//!   - produce → consume: first send → last message received;
//!   - consume from the start: a second new group reads the whole topic
//!     (group join included, as pipeline step 4 measures todo-audit).
//!
//! Broker and security come from the platform's variables
//! (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SECURITY_PROTOCOL`, …,
//! `KAFKA_TOPIC_PREFIX`, `KAFKA_TOPIC_PARTITIONS`, `CONSUMER_FETCH_WAIT_MAX_MS`).

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::{Topic, CONTENT_TYPE};
use todo_platform::config::{Env, KafkaSettings};

#[derive(Parser, Debug)]
#[command(name = "todo-kafka-baseline", version)]
struct Args {
    /// Messages to produce.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Distinct keys (user ids), as the load generator's users.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the topic afterwards (it is deleted by default).
    #[arg(long)]
    keep_topic: bool,
    /// Append to this topic (created if missing, then kept) instead of a
    /// fresh one: the live reader starts at its end, and the reader from
    /// the start reads all of it, earlier runs' messages included. Shows
    /// whether the broker slows as one partition grows.
    #[arg(long)]
    topic: Option<String>,
    /// Give up waiting for the consumers after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

#[derive(Serialize)]
struct Report {
    topic: String,
    partitions: i32,
    messages: u64,
    users: usize,
    message_bytes_avg: f64,
    produce_seconds: f64,
    produce_per_s: f64,
    produce_mib_per_s: f64,
    produce_to_consume_seconds: f64,
    produce_to_consume_per_s: f64,
    consume_from_start_seconds: f64,
    consume_from_start_per_s: f64,
    consume_first_to_last_per_s: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.messages == 0 || args.users == 0 {
        bail!("--messages and --users must be at least 1");
    }
    let env = Env::process();
    let kafka = todo_bench::kafka_settings()?;
    // The consumer runtime's settings (fetch wait, session timeout).
    let runtime = ConsumerConfig::new("todo-kafka-baseline", &[Topic::TaskEvents])
        .with_env(&env)
        .context("consumer settings")?;
    let timeout = Duration::from_secs_f64(args.timeout);

    let topic = match &args.topic {
        Some(name) => format!("{}{name}", kafka.topic_prefix),
        None => format!(
            "{}bench-baseline-{}",
            kafka.topic_prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    };
    let (before, ends) = if args.topic.is_some() {
        let (held, ends) = create_topic_if_missing(&kafka, &topic).await?;
        (held, Some(ends))
    } else {
        create_topic(&kafka, &topic).await?;
        (0, None)
    };

    // The messages: realistic envelopes, cycled (the broker does not look).
    let payloads: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            let user = format!("load-baseline-{}", i % args.users);
            let payload = todo_bench::sample::created_payload(&user, i as i64 + 1);
            (user, payload)
        })
        .collect();
    let avg_bytes =
        payloads.iter().map(|(_, p)| p.len()).sum::<usize>() as f64 / payloads.len() as f64;

    // A consumer with its partitions before the first send.
    let live = Reader::start(&kafka, &runtime, &topic, "live", ends.as_ref())?;
    live.wait_assigned(timeout).await?;

    let producer: FutureProducer = todo_platform::kafka::producer_config(&kafka)
        .create()
        .context("producer")?;
    println!(
        "producing {} messages of ~{avg_bytes:.0} B to {topic} ({} partitions)",
        args.messages, kafka.topic_partitions
    );
    let started = Instant::now();
    let mut deliveries = FuturesUnordered::new();
    let mut failed = 0u64;
    for i in 0..args.messages {
        let (key, payload) = &payloads[i as usize % payloads.len()];
        let mut record =
            FutureRecord::to(&topic)
                .key(key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(CONTENT_TYPE),
                }));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // Make room: wait for an acknowledgement.
                    if let Some(result) = deliveries.next().await {
                        failed += u64::from(!matches!(result, Ok(Ok(_))));
                    }
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
    }
    while let Some(result) = deliveries.next().await {
        failed += u64::from(!matches!(result, Ok(Ok(_))));
    }
    let produced = started.elapsed();
    if failed > 0 {
        bail!("{failed} messages were not acknowledged");
    }
    let live_done = live.wait_for(args.messages, timeout).await?;
    let to_consume = live_done.duration_since(started);

    // A new group reads everything from the start.
    let from_start = Instant::now();
    let again = Reader::start(&kafka, &runtime, &topic, "from-start", None)?;
    let total = before + args.messages;
    let again_done = again.wait_for(total, timeout).await?;
    let first = again.first().unwrap_or(from_start);
    let consume_total = again_done.duration_since(from_start);
    let consume_first_to_last = again_done.duration_since(first);
    drop(live);
    drop(again);

    let n = args.messages as f64;
    let report = Report {
        topic: topic.clone(),
        partitions: kafka.topic_partitions,
        messages: args.messages,
        users: args.users,
        message_bytes_avg: avg_bytes,
        produce_seconds: produced.as_secs_f64(),
        produce_per_s: n / produced.as_secs_f64(),
        produce_mib_per_s: n * avg_bytes / produced.as_secs_f64() / (1024.0 * 1024.0),
        produce_to_consume_seconds: to_consume.as_secs_f64(),
        produce_to_consume_per_s: n / to_consume.as_secs_f64(),
        consume_from_start_seconds: consume_total.as_secs_f64(),
        consume_from_start_per_s: total as f64 / consume_total.as_secs_f64(),
        consume_first_to_last_per_s: total as f64 / consume_first_to_last.as_secs_f64().max(1e-9),
    };
    println!(
        "produce: {:.0} msgs/s ({:.1} MiB/s), {} messages in {:.2} s",
        report.produce_per_s, report.produce_mib_per_s, args.messages, report.produce_seconds
    );
    println!(
        "produce -> consume: {:.0} msgs/s (first send to last message received: {:.2} s)",
        report.produce_to_consume_per_s, report.produce_to_consume_seconds
    );
    println!(
        "consume from the start (new group, join included): {:.0} msgs/s in {:.2} s; first to last message: {:.0} msgs/s",
        report.consume_from_start_per_s, report.consume_from_start_seconds, report.consume_first_to_last_per_s
    );
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if !args.keep_topic && args.topic.is_none() {
        let admin = todo_platform::kafka::admin(&kafka)?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        if let Err(e) = admin.delete_topics(&[&topic], &opts).await {
            eprintln!("could not delete {topic}: {e}");
        }
    }
    Ok(())
}

async fn create_topic(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<()> {
    let admin = todo_platform::kafka::admin(kafka)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(
        topic,
        kafka.topic_partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    for result in admin
        .create_topics(&[new], &opts)
        .await
        .with_context(|| format!("creating {topic} at {}", kafka.bootstrap_servers))?
    {
        if let Err((t, code)) = result {
            bail!("creating {t}: {code}");
        }
    }
    Ok(())
}

/// Each partition of a topic and the offset it ends at.
type Ends = Vec<(i32, i64)>;

/// Creates `topic` unless it exists; how many messages it already holds,
/// and where each partition ends.
async fn create_topic_if_missing(
    kafka: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<(u64, Ends)> {
    let probe: StreamConsumer = todo_platform::kafka::consumer_config(kafka, "bench-probe")
        .create()
        .context("consumer")?;
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        create_topic(kafka, topic).await?;
        let ends = (0..kafka.topic_partitions).map(|p| (p, 0)).collect();
        return Ok((0, ends));
    }
    let (mut held, mut ends) = (0u64, Vec::new());
    for p in partitions {
        let (low, high) = probe.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        held += u64::try_from(high - low).unwrap_or(0);
        ends.push((p, high));
    }
    Ok((held, ends))
}

/// A consumer in a group of its own that counts what it receives.
struct Reader {
    consumer: Arc<StreamConsumer>,
    received: Arc<AtomicU64>,
    first: Arc<Mutex<Option<Instant>>>,
    last: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(
        kafka: &KafkaSettings,
        runtime: &ConsumerConfig,
        topic: &str,
        name: &str,
        from: Option<&Ends>,
    ) -> anyhow::Result<Reader> {
        let group = format!("{topic}-{name}-{}", uuid::Uuid::new_v4().simple());
        let mut cfg = todo_platform::kafka::consumer_config(kafka, &group);
        let session_ms = runtime.session_timeout.as_millis();
        cfg.set("session.timeout.ms", session_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_ms / 10).max(100).to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                runtime.fetch_wait_max.as_millis().to_string(),
            );
        let consumer: Arc<StreamConsumer> = Arc::new(cfg.create().context("consumer")?);
        match from {
            // Exactly from where the topic ended: nothing before, nothing
            // of the new messages missed.
            Some(ends) => {
                let mut tpl = rdkafka::TopicPartitionList::new();
                for (partition, end) in ends {
                    tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*end))?;
                }
                consumer.assign(&tpl)?;
            }
            None => consumer.subscribe(&[topic])?,
        }
        let received = Arc::new(AtomicU64::new(0));
        let first = Arc::new(Mutex::new(None));
        let last = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (consumer, received, first, last) = (
                consumer.clone(),
                received.clone(),
                first.clone(),
                last.clone(),
            );
            async move {
                loop {
                    match consumer.recv().await {
                        Ok(_) => {
                            let now = Instant::now();
                            if received.fetch_add(1, Ordering::Relaxed) == 0 {
                                *lock(&first) = Some(now);
                            }
                            *lock(&last) = Some(now);
                        }
                        Err(e) => {
                            eprintln!("consumer: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        Ok(Reader {
            consumer,
            received,
            first,
            last,
            task,
        })
    }

    async fn wait_assigned(&self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        while self.consumer.assignment()?.count() == 0 {
            if Instant::now() > until {
                bail!("the consumer got no partitions within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until `n` messages arrived; returns when the last one did.
    async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let until = Instant::now() + timeout;
        loop {
            let got = self.received.load(Ordering::Relaxed);
            if got >= n {
                return Ok(lock(&self.last).expect("a message arrived"));
            }
            if Instant::now() > until {
                bail!("the consumer received {got} of {n} messages within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn first(&self) -> Option<Instant> {
        *lock(&self.first)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
