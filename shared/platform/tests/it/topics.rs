//! Topic creation where the service may not create topics (managed Kafka
//! whose service account lacks CREATE): librdkafka's mock cluster refuses
//! every CreateTopics request with an authorization error, which nisshi
//! cannot be told to do. Existing topics must be enough to start; a topic
//! that is really missing must still be an error.

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use todo_contract::envelope::TopicNames;
use todo_platform::config::KafkaSettings;
use todo_platform::kafka;
use todo_testing as testing;

/// A mock cluster whose every CreateTopics request is refused as
/// unauthorized (enough errors queued for every attempt a test makes).
fn refusing_cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.request_errors(
        RDKafkaApiKey::CreateTopics,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 16],
    );
    mock
}

#[tokio::test]
async fn topics_that_exist_are_enough_where_creating_them_is_refused() {
    testing::init_logging();
    let mock = refusing_cluster();
    let prefix = testing::unique_prefix();
    for name in TopicNames::new(prefix.clone()).all() {
        mock.create_topic(&name, 6, 1).expect("topic");
    }
    let kafka = KafkaSettings::plaintext(mock.bootstrap_servers(), prefix);
    kafka::ensure_topics(&kafka)
        .await
        .expect("every topic exists, so nothing needs creating");
}

#[tokio::test]
async fn a_missing_topic_this_service_may_not_create_is_an_error() {
    testing::init_logging();
    let mock = refusing_cluster();
    let prefix = testing::unique_prefix();
    let names = TopicNames::new(prefix.clone()).all();
    // All but the last one (a dead-letter topic) exist.
    for name in &names[..names.len() - 1] {
        mock.create_topic(name, 6, 1).expect("topic");
    }
    let kafka = KafkaSettings::plaintext(mock.bootstrap_servers(), prefix);
    let outcome = kafka::ensure_topics(&kafka).await;
    assert!(
        outcome.is_err(),
        "{} is missing and may not be created, yet ensure_topics said {outcome:?}",
        names[names.len() - 1]
    );
}
