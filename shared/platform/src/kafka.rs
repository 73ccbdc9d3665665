//! Kafka client settings, built in one place for every producer, consumer and
//! admin client of the platform, and topic creation.

use crate::config::{KafkaSettings, SecurityProtocol};
use crate::shutdown::Shutdown;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use secrecy::ExposeSecret;
use std::time::Duration;
use todo_contract::envelope::TopicNames;

/// Settings every client shares: brokers and security.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.bootstrap_servers)
        .set(
            "security.protocol",
            settings.security_protocol.as_librdkafka(),
        )
        .set("client.dns.lookup", "use_all_dns_ips");
    if let Some(sasl) = &settings.sasl {
        cfg.set("sasl.mechanism", sasl.mechanism.as_librdkafka())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose_secret());
    }
    if matches!(
        settings.security_protocol,
        SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
    ) {
        // Managed Kafka (Redpanda Cloud, Confluent, MSK) presents certificates
        // signed by public CAs: verify them against the system's store.
        cfg.set("ssl.endpoint.identification.algorithm", "https");
    }
    // librdkafka's own debug contexts (e.g. `broker,topic,msg,eos`), for
    // diagnosing a client: its lines go to the service's log.
    if let Ok(contexts) = std::env::var("KAFKA_DEBUG") {
        if !contexts.trim().is_empty() {
            cfg.set("debug", contexts.trim());
        }
    }
    cfg
}

/// The producer of the platform: idempotent (no duplicates or reordering on
/// retries), acks from all in-sync replicas, Java-compatible key hashing so
/// that every client puts a user's events on the same partition.
///
/// `message.timeout.ms` is 0 (never give up): the relay keeps a batch in
/// flight until the broker takes it, so an outage delays events but never
/// fails them, and nothing behind a failed message can overtake it.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = client_config(settings);
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "2000");
    cfg
}

/// The outbox relay's producer: the platform's producer, which never lets
/// the broker auto-create a topic with its defaults (the relay creates its
/// topics itself, with their partitions), and gives up on a topic that does
/// not exist after seconds rather than half a minute, so that a broker
/// restarted without its data has its topics back quickly.
pub fn relay_producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(settings)
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.propagation.max.ms", "3000")
        .create()
}

/// A consumer in `group_id` that never commits on its own: the consumer
/// runtime stores and commits offsets once the handler's work is durable.
pub fn consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut cfg = client_config(settings);
    cfg.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "2000");
    cfg
}

pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(settings).create()
}

pub fn admin(settings: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(settings).create()
}

/// Creates every topic of the platform (dead-letter topics included) that
/// does not exist yet. Existing topics are left as they are. Where this
/// service may not create topics (managed Kafka whose service account lacks
/// CREATE, or a broker without the admin API), topics that exist are
/// enough: it fails only if one is really missing.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), KafkaError> {
    let names = TopicNames::new(settings.topic_prefix.clone()).all();
    // Topics that exist need no CreateTopics request, which this service may
    // not be allowed to send.
    let absent = missing_topics(settings, &names).await?;
    if absent.is_empty() {
        return Ok(());
    }
    let admin = admin(settings)?;
    let new_topics: Vec<NewTopic<'_>> = absent
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.topic_partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let mut not_mine = Vec::new();
    match admin.create_topics(&new_topics, &opts).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((
                        topic,
                        RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::PolicyViolation,
                    )) => not_mine.push(topic),
                    Err((topic, code)) => {
                        tracing::error!(%topic, error = %code, "could not create topic");
                        return Err(KafkaError::AdminOp(code));
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, topics = ?absent, "cannot create topics here");
            not_mine = absent;
        }
    }
    if not_mine.is_empty() {
        return Ok(());
    }
    // Another service (or the operator's bootstrap) may have created them
    // meanwhile.
    let missing = missing_topics(settings, &not_mine).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        tracing::error!(topics = ?missing, "topics are missing and this service may not create them");
        Err(KafkaError::AdminOp(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ))
    }
}

/// Which of `topics` the brokers do not know.
async fn missing_topics(
    settings: &KafkaSettings,
    topics: &[String],
) -> Result<Vec<String>, KafkaError> {
    // A producer's metadata request would let the broker auto-create the
    // topic with its defaults (the wrong partition count): ask without.
    let client: rdkafka::producer::BaseProducer = client_config(settings)
        .set("allow.auto.create.topics", "false")
        .create()?;
    let wanted = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for topic in &wanted {
            let metadata = client
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let exists = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !exists {
                missing.push(topic.clone());
            }
        }
        Ok(missing)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// [`ensure_topics`], retried with backoff until it succeeds (true) or
/// `shutdown` comes first (false): a service may start before its broker.
pub async fn ensure_topics_until_done(kafka: KafkaSettings, mut shutdown: Shutdown) -> bool {
    let mut attempt = 0;
    loop {
        match ensure_topics(&kafka).await {
            Ok(()) => return true,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "topics not ensured yet; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.recv() => return false,
            _ = tokio::time::sleep(crate::retry::backoff(attempt)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, SaslSettings};
    use secrecy::SecretString;

    #[test]
    fn plaintext_producer_is_idempotent_and_java_compatible() {
        let cfg = producer_config(&KafkaSettings::plaintext("b:9092", ""));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("partitioner"), Some("murmur2_random"));
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.get("sasl.mechanism"), None);
    }

    #[test]
    fn managed_kafka_uses_sasl_ssl_with_scram() {
        let mut settings = KafkaSettings::plaintext("seed.cloud.example:9092", "");
        settings.security_protocol = SecurityProtocol::SaslSsl;
        settings.sasl = Some(SaslSettings {
            mechanism: SaslMechanism::ScramSha256,
            username: "svc".into(),
            password: SecretString::from("pw".to_string()),
        });
        for cfg in [producer_config(&settings), consumer_config(&settings, "g")] {
            assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
            assert_eq!(cfg.get("sasl.username"), Some("svc"));
            assert_eq!(cfg.get("sasl.password"), Some("pw"));
            assert_eq!(
                cfg.get("ssl.endpoint.identification.algorithm"),
                Some("https")
            );
        }
        // librdkafka itself accepts the combination (it needs its SSL build).
        let producer: Result<FutureProducer, _> = producer_config(&settings).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn consumers_commit_only_by_hand() {
        let cfg = consumer_config(&KafkaSettings::plaintext("b:9092", ""), "todo-audit");
        assert_eq!(cfg.get("group.id"), Some("todo-audit"));
        assert_eq!(cfg.get("enable.auto.commit"), Some("false"));
        assert_eq!(cfg.get("enable.auto.offset.store"), Some("false"));
    }
}
