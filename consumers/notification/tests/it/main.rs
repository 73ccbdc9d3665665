//! The integration tests of todo-notifier: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod channels;
mod notifier;

/// The sum of a metric's samples (every label set) in a /metrics page.
async fn metric_sum(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
