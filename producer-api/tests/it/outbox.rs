//! The outbox relay against a real broker: per-user order under concurrent
//! writers, a broker outage, and several relays on one database.

use crate::common::started;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use todo_api::testing::{assert_per_user_order, assert_schema_valid, Api, Stack};

const WAIT: Duration = Duration::from_secs(60);

/// `n` changes by `user`, one after the other: create, then updates and
/// state changes of that task. Returns how many events they cause.
async fn churn(stack: &Stack, api: &Api, user: &str, n: usize) -> usize {
    let token = stack.token(user);
    let task = stack
        .create(api, &token, json!({"title": format!("{user} 0")}))
        .await;
    let path = format!("/tasks/{}", task["id"].as_str().unwrap());
    for i in 1..n {
        let (method, p, body) = match i % 3 {
            0 => (
                Method::PATCH,
                path.clone(),
                Some(json!({"title": format!("{user} {i}")})),
            ),
            1 => (Method::POST, format!("{path}/complete"), None),
            _ => (Method::POST, format!("{path}/reopen"), None),
        };
        let (status, body) = stack.call(api, method, &p, &token, body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_changes_of_many_users_arrive_in_order_per_user() {
    let (stack, api) = started().await;
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let work = users.iter().map(|u| churn(&stack, &api, u, 40));
    let total: usize = futures::future::join_all(work).await.into_iter().sum();

    let events = stack.task_events().await.take(total, WAIT).await;
    assert_schema_valid(&events);
    let per_user = assert_per_user_order(&events);
    assert_eq!(per_user.len(), users.len());
    assert!(per_user.values().all(|&n| n == 40), "{per_user:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_no_request_and_loses_no_event() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    // The relay is up and publishing before the outage.
    stack.create(&api, &alice, json!({"title": "before"})).await;
    stack.outbox_drained(WAIT).await;

    stack.broker.stop();
    let mut expected = Vec::new();
    for i in 0..50 {
        let token = stack.token(if i % 2 == 0 { "alice" } else { "bob" });
        let t = stack
            .create(&api, &token, json!({"title": format!("during outage {i}")}))
            .await;
        expected.push(t["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        stack.count("outbox").await,
        50,
        "the 50 events wait in the outbox"
    );

    // The broker returns empty (memory storage): create the topics again, as
    // an operator restoring a broker would.
    stack.broker.restart();
    todo_platform::kafka::ensure_topics(&stack.kafka)
        .await
        .expect("topics");
    let events = stack.task_events().await.take(50, WAIT).await;
    assert_schema_valid(&events);
    let ids: Vec<_> = events
        .iter()
        .map(|e| e.value["data"]["task"]["id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_ids, sorted_expected, "all 50, none twice");
    // Per user, in the order they were made (sequences continue from 2 for
    // alice, whose first event was published before the outage).
    for user in ["alice", "bob"] {
        let mine: Vec<_> = events.iter().filter(|e| e.key == user).collect();
        let made: Vec<_> = expected
            .iter()
            .enumerate()
            .filter(|(i, _)| (i.is_multiple_of(2)) == (user == "alice"))
            .map(|(_, id)| id.as_str())
            .collect();
        let got: Vec<_> = mine
            .iter()
            .map(|e| e.value["data"]["task"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, made, "{user}'s events in order");
        let seqs: Vec<_> = mine.iter().map(|e| e.sequence()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{user}: {seqs:?}"
        );
    }
    let extra = stack
        .task_events()
        .await
        .drain(Duration::from_secs(2))
        .await;
    assert_eq!(extra.len(), 50, "nothing more arrives");
    stack.outbox_drained(WAIT).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_database_publish_everything_in_order() {
    let stack = Stack::new().await;
    let first = stack.spawn_api().await;
    let second = stack.spawn_api().await;

    // Writes through both instances at once.
    let users: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
    let work = users.iter().enumerate().map(|(i, u)| {
        let api = if i.is_multiple_of(2) { &first } else { &second };
        churn(&stack, api, u, 25)
    });
    let total: usize = futures::future::join_all(work).await.into_iter().sum();
    let reader = stack.task_events().await;
    let events = reader.take(total, WAIT).await;
    assert_per_user_order(&events);

    // Exactly one of them leads; stop it, and the other takes over.
    let leads = (
        first.relay_leads(&stack).await,
        second.relay_leads(&stack).await,
    );
    assert!(leads.0 ^ leads.1, "exactly one relay leads: {leads:?}");
    let (leader, survivor) = if leads.0 {
        (first, second)
    } else {
        (second, first)
    };
    leader.stop().await;
    let more: usize =
        futures::future::join_all(users.iter().map(|u| churn(&stack, &survivor, u, 5)))
            .await
            .into_iter()
            .sum();
    let later = reader.take(more, WAIT).await;
    let mut all = events;
    all.extend(later);
    // Per user: sequences 1..n with nothing missing. (A takeover may
    // redeliver rows the old leader had sent but not yet recorded; a clean
    // shutdown records them, so none are expected here.)
    let per_user = assert_per_user_order(&all);
    assert!(per_user.values().all(|&n| n == 30), "{per_user:?}");
    assert!(survivor.relay_leads(&stack).await);
    survivor.stop().await;
}

/// Terminates every server process of the test database but the caller's
/// (what a restart, a failover or an operator's pg_terminate_backend does
/// to a service's pooled connections).
async fn terminate_connections(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_never_answer_500() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let task = stack
        .create(&api, &alice, json!({"title": "warm the pool"}))
        .await;
    let path = format!("/tasks/{}", task["id"].as_str().unwrap_or_default());
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    for round in 0..4 {
        // Fill the pool with idle connections, then kill them all.
        let warm = (0..8).map(|_| stack.call(&api, Method::GET, "/tasks", &alice, None));
        futures::future::join_all(warm).await;
        assert!(terminate_connections(&stack).await > 0, "round {round}");
        for i in 0..10 {
            let (method, route, body) = match i % 3 {
                0 => (
                    Method::POST,
                    "/tasks".to_owned(),
                    Some(json!({"title": format!("r{round} {i}")})),
                ),
                1 => (Method::GET, path.clone(), None),
                _ => (Method::GET, "/tasks?limit=5".to_owned(), None),
            };
            let r = {
                let mut req = stack.request(&api, method, &route, &alice);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                req.send().await.expect("request")
            };
            let status = r.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "503 without Retry-After"
                );
            }
            *statuses.entry(status.as_u16()).or_default() += 1;
        }
    }
    assert!(
        statuses.keys().all(|s| *s < 500 || *s == 503),
        "server errors after terminated connections: {statuses:?}"
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) == 0,
        "a dead pooled connection is retried on a fresh one: {statuses:?}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_without_its_data_gets_its_topics_and_the_backlog_within_seconds() {
    let mut stack = Stack::new().await;
    // Not the broker's auto-create default: the relay makes them itself.
    stack.kafka.topic_partitions = 3;
    let api = stack.spawn_api().await;
    let alice = stack.token("alice");
    stack.create(&api, &alice, json!({"title": "before"})).await;
    stack.outbox_drained(WAIT).await;
    stack.broker.stop();
    for i in 0..50 {
        let token = stack.token(if i % 2 == 0 { "alice" } else { "bob" });
        stack
            .create(&api, &token, json!({"title": format!("during outage {i}")}))
            .await;
    }
    // Back, empty, and nobody creates the topics but the relay.
    stack.broker.restart();
    let back = std::time::Instant::now();
    stack.outbox_drained(Duration::from_secs(30)).await;
    let took = back.elapsed();
    assert!(took < Duration::from_secs(20), "the backlog took {took:?}");
    let events = stack.task_events().await.take(50, WAIT).await;
    assert_per_user_order_from(&events, &[("alice", 2), ("bob", 1)]);
    let partitions: std::collections::HashSet<i32> = events.iter().map(|e| e.partition).collect();
    assert!(partitions.iter().all(|p| *p < 3), "{partitions:?}");
    let metadata = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", stack.broker.bootstrap())
            .create()
            .expect("client");
        let topic = stack.topic(todo_contract::envelope::Topic::TaskEvents);
        let m = client
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .expect("metadata");
        m.topics()[0].partitions().len()
    };
    assert_eq!(metadata, 3, "recreated with the configured partitions");
    eprintln!("broker back empty: 50 events delivered {took:?} later");
    api.stop().await;
}

/// Per user (the key), sequences grow by one from `first`, no event twice.
fn assert_per_user_order_from(events: &[todo_testing::Received], first: &[(&str, i64)]) {
    let mut next: std::collections::HashMap<&str, i64> = first.iter().copied().collect();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        assert!(ids.insert(e.id().to_owned()), "{} twice", e.id());
        let want = next.get_mut(e.key.as_str()).expect("a known user");
        assert_eq!(e.sequence(), *want, "{}: out of order", e.key);
        *want += 1;
    }
}

/// The relay's leader is the lease holder: a leader that freezes (SIGSTOP)
/// keeps its database connection, and with a session lock would keep the
/// leadership for as long as that connection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_within_seconds() {
    let stack = Stack::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut leader = stack
        .service_command(env!("CARGO_BIN_EXE_todo-api"))
        .env("PORT", port.to_string())
        .spawn()
        .expect("todo-api starts");
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leads = match stack.http.get(&metrics).send().await {
            Ok(r) => r
                .text()
                .await
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == "todo_outbox_relay_leader 1"),
            Err(_) => false,
        };
        if leads {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never led"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = stack.spawn_api().await;
    assert!(!standby.relay_leads(&stack).await, "one leader");
    // SAFETY: kill(2) on a child of ours.
    unsafe { libc::kill(leader.id() as i32, libc::SIGSTOP) };
    let frozen = std::time::Instant::now();
    let alice = stack.token("alice");
    let task = stack
        .create(&standby, &alice, json!({"title": "after the freeze"}))
        .await;
    let reader = stack.task_events().await;
    let event = loop {
        let e = reader
            .next(Duration::from_secs(30))
            .await
            .expect("published after the freeze");
        if e.value["data"]["task"]["id"] == task["id"] {
            break e;
        }
    };
    let took = frozen.elapsed();
    assert!(took < Duration::from_secs(15), "replaced after {took:?}");
    assert!(standby.relay_leads(&stack).await);
    eprintln!(
        "frozen leader replaced: event {} published {took:?} after SIGSTOP",
        event.id()
    );
    // Thawed, the old leader finds its lease gone and stands by.
    unsafe { libc::kill(leader.id() as i32, libc::SIGCONT) };
    let more = stack
        .create(&standby, &alice, json!({"title": "both alive"}))
        .await;
    stack.outbox_drained(WAIT).await;
    let all = stack.task_events().await.take(2, WAIT).await;
    assert_eq!(all[1].value["data"]["task"]["id"], more["id"]);
    assert_per_user_order_from(&all, &[("alice", 1)]);
    let _ = leader.kill();
    let _ = leader.wait();
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_each_database_blip_publishing_resumes_at_once() {
    let stack = Stack::new().await;
    let proxy = todo_testing::TcpProxy::start(stack.db.server_addr()).await;
    let settings = todo_platform::config::Settings {
        database: stack.db.settings_via(proxy.port()),
        ..stack.settings()
    };
    let api = stack.spawn_api_with(settings, stack.api_options()).await;
    let alice = stack.token("alice");
    let mut waits = Vec::new();
    for i in 0..7 {
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.restore();
        let deadline = tokio::time::Instant::now() + WAIT;
        let task = loop {
            let (status, body) = stack
                .call(
                    &api,
                    reqwest::Method::POST,
                    "/tasks",
                    &alice,
                    Some(json!({"title": format!("blip {i}")})),
                )
                .await;
            if status == StatusCode::CREATED {
                break body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let created = std::time::Instant::now();
        let _ = task;
        stack.outbox_drained(WAIT).await;
        waits.push(created.elapsed());
    }
    eprintln!("time to publish after each blip: {waits:?}");
    assert!(
        waits.iter().all(|w| *w < Duration::from_secs(4)),
        "publishing waited longer after each blip: {waits:?}"
    );
    api.stop().await;
}

/// The relay's stall guard counts the broker's silence about rows in
/// flight, not the idle time before them: the first change after a quiet
/// spell longer than the stall timeout is published without a producer
/// restart (before, every such change purged the producer and was sent
/// twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_after_a_quiet_spell_is_not_taken_for_a_stall() {
    let stack = Stack::new().await;
    let mut options = stack.api_options();
    options.relay.stall_timeout = Duration::from_secs(2);
    let api = stack.spawn_api_with(stack.settings(), options).await;
    let ann = stack.token("ann");
    let reader = stack.task_events().await;
    stack.create(&api, &ann, json!({"title": "before"})).await;
    assert!(reader.next(WAIT).await.is_some(), "the first event");
    // Quiet for longer than the stall timeout: that is the scenario.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.create(&api, &ann, json!({"title": "after"})).await;
    let after = reader.next(WAIT).await.expect("the second event");
    assert_eq!(after.value["data"]["task"]["title"], "after");
    let metrics = stack.metrics(&api.base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.trim() == "todo_outbox_stalls_total 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("stall"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        reader.next(Duration::from_secs(1)).await.is_none(),
        "sent once"
    );
    api.stop().await;
}

/// The relay vacuums the outbox it empties (every 20,000 rows or 10 s), on
/// a connection of its own: publishing goes on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_vacuums_the_outbox_it_empties() {
    let (stack, api) = started().await;
    let ann = stack.token("ann");
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&stack.db.pool)
        .await
        .expect("table statistics")
    };
    let before = vacuums().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut created = 0;
    // Changes keep coming; after 10 s of them the relay's vacuum is due.
    while vacuums().await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VACUUM of the outbox after {created} published changes"
        );
        stack
            .create(&api, &ann, json!({"title": format!("t{created}")}))
            .await;
        created += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stack.outbox_drained(WAIT).await;
    api.stop().await;
}
