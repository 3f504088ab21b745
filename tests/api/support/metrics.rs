//! Reading the Prometheus metrics.

use std::collections::HashMap;

/// `GET <url>` (a `/metrics` endpoint), checked and parsed as the Prometheus text format.
pub async fn scrape_metrics(http: &reqwest::Client, url: &str) -> Vec<prometheus_parse::Sample> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid Prometheus text format")
        .samples
}

/// The value of `name` with these labels (a counter or gauge), or a histogram's count.
pub fn metric_value(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    try_metric_value(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// [`metric_value`], or None when there is no such sample.
pub fn try_metric_value(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use prometheus_parse::Value as Metric;
    let wanted: HashMap<&str, &str> = labels.iter().copied().collect();
    let sample = samples
        .iter()
        .find(|s| s.metric == name && wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))?;
    Some(match &sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{name}: unexpected {other:?}"),
    })
}
