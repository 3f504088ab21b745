//! Prometheus metrics, one registry per gateway, rendered at `GET /metrics` in the text format.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::hub::{ChannelStats, ConnectionCounts, TransportKind};

pub struct Metrics {
    registry: Registry,
    /// Every metric family's exported name, sorted.
    names: Vec<String>,
    /// Open connections by `state` (authenticated, unauthenticated); set when scraped.
    connections: IntGaugeVec,
    /// Channels with a subscriber on this node, and subscriptions on it; set when scraped.
    channels: IntGauge,
    subscriptions: IntGauge,
    /// Channel requests refused, by error `code` (permission_denied, …).
    pub channel_requests_refused: IntCounterVec,
    /// Subscribes that asked to recover, by `result`: recovered, failed.
    pub recoveries: IntCounterVec,
    /// Reads of a channel's history from the store made by subscribes (a node's window on a
    /// channel is read once for all the subscribers recovering at once).
    pub history_reads: IntCounter,
    /// History appends made again because another node had moved the channel's position (or
    /// its history had expired) since this node last wrote there.
    pub history_appends_moved: IntCounter,
    pub publish_transaction_retries: IntCounter,
    /// Outbox documents by `result`: `published` (a repeat of a key included) or `failed`.
    pub outbox_documents: IntCounterVec,
    /// The age of the oldest outbox document not yet marked (on the lease holder).
    pub outbox_lag_seconds: Gauge,
    /// 1 on the node consuming the outbox.
    pub outbox_lease_held: IntGauge,
    /// By `stream`: `cluster`, 1 while the bus delivers (its change stream answered within
    /// BUS_STALL_SECS), set when scraped; `outbox`, on the lease holder only, 1 while its
    /// stream is open.
    pub bus_up: IntGaugeVec,
    pub publish_duplicates: IntCounter,
    /// MongoDB operations refused because STORE_MAX_IN_FLIGHT were running.
    pub store_operations_shed: IntCounter,

    pub tickets_minted: IntCounter,
    pub tickets_consumed: IntCounter,
    pub authentications: IntCounter,
    /// Refused tickets by `reason`: missing, malformed, unknown, secret_mismatch, expired, already_used.
    pub tickets_rejected: IntCounterVec,
    /// Failed authentications by close `code`: 4400, 4401, 4408.
    pub auth_failures: IntCounterVec,
    /// Closed connections by close `code` ("none" when the socket was simply gone).
    pub closes: IntCounterVec,
    /// Data messages received from clients.
    pub messages_in: IntCounter,
    /// Text messages sent to clients.
    pub messages_out: IntCounter,
    /// From a broadcast's publication to its write to one connection.
    pub broadcast_fanout_seconds: Histogram,
    /// MongoDB ticket-store operations by `operation`.
    pub store_operation_seconds: HistogramVec,
    /// Events this node wrote to the cluster bus.
    pub cluster_events_published: IntCounter,
    /// Cluster events delivered to this node's connections, by `kind`.
    pub cluster_events_delivered: IntCounterVec,
    /// Cluster events not delivered, by `reason`: malformed, repeat.
    pub cluster_events_skipped: IntCounterVec,
    /// From a cluster event's write (by any node) to its delivery here.
    pub bus_lag_seconds: Histogram,
    /// Times a change stream broke and was reopened, by `stream` (cluster, outbox).
    pub bus_restarts: IntCounterVec,
    /// Channel partitions the cluster stream carries (all of them: 4096).
    pub bus_partitions: IntGauge,
    /// Times the cluster stream was reopened for this node's interest, by `change`: widen (a
    /// subscriber in a partition it did not carry), narrow (partitions nobody here holds).
    pub bus_interest_changes: IntCounterVec,
    /// Times a change stream could not resume because its point had left the oplog, by
    /// `stream` (cluster, outbox).
    pub bus_history_lost: IntCounterVec,
    /// What connections were told after the cluster stream lost its place, by `notice`:
    /// resubscribe (one per channel with history), missed (one per connection).
    pub bus_loss_notices: IntCounterVec,
    /// Calls to the app's backend by `path` (/rpc, /publish) and `outcome` (answered,
    /// failed, timeout).
    pub upstream_calls: IntCounterVec,
    /// How long calls to the backend took, by `path`, the wait for a turn included.
    pub upstream_call_seconds: HistogramVec,
    /// Client RPCs by `result`: result, error, disconnect, upstream_unavailable,
    /// upstream_timeout, too_many_requests, upstream_disabled.
    pub rpcs: IntCounterVec,
    /// Client publications by `result`: published, or the error code that refused them.
    pub client_publications: IntCounterVec,
    /// Lifecycle events emitted, delivered to the webhook, and dropped (over the limit of
    /// waiting events); webhook calls that failed.
    pub lifecycle_events_queued: IntCounter,
    pub lifecycle_events_delivered: IntCounter,
    pub lifecycle_events_dropped: IntCounter,
    pub lifecycle_events_shed: IntCounter,
    pub lifecycle_webhook_failures: IntCounter,
    pub lifecycle_events_recorded: IntCounter,
    pub lifecycle_record_failures: IntCounter,
    pub lifecycle_streams_adopted: IntCounter,
    pub lifecycle_node_lost_disconnects: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("ticketgate".into()), None).expect("a valid prefix");
        // Every family's name as exported, kept for [`Metrics::names`]: a family with labels
        // but no sample yet is left out of the text format.
        let names = std::cell::RefCell::new(Vec::new());
        let register = |collector: Box<dyn prometheus::core::Collector>| {
            names.borrow_mut().extend(
                collector
                    .desc()
                    .iter()
                    .map(|desc| format!("ticketgate_{}", desc.fq_name)),
            );
            registry.register(collector)
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("a valid metric");
            register(Box::new(counter.clone())).expect("registered once");
            counter
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let counter =
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            register(Box::new(counter.clone())).expect("registered once");
            counter
        };
        let connections = IntGaugeVec::new(
            Opts::new("connections", "Open connections by state and transport"),
            &["state", "transport"],
        )
        .expect("a valid metric");
        register(Box::new(connections.clone())).expect("registered once");
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("a valid metric");
            register(Box::new(gauge.clone())).expect("registered once");
            gauge
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            register(Box::new(gauge.clone())).expect("registered once");
            gauge
        };
        let latency = |name: &str, help: &str| {
            let histogram = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("a valid metric");
            register(Box::new(histogram.clone())).expect("registered once");
            histogram
        };
        let broadcast_fanout_seconds = latency(
            "broadcast_fanout_seconds",
            "From publication to the write to one connection",
        );
        let latency_vec = |name: &str, help: &str, label: &str| {
            let histogram = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &[label],
            )
            .expect("a valid metric");
            register(Box::new(histogram.clone())).expect("registered once");
            histogram
        };
        let store_operation_seconds = latency_vec(
            "store_operation_seconds",
            "MongoDB ticket-store operations",
            "operation",
        );
        let bus_lag_seconds = latency(
            "bus_lag_seconds",
            "From a cluster event's write to its delivery on this node",
        );
        let upstream_calls = IntCounterVec::new(
            Opts::new("upstream_calls_total", "Calls to the app's backend"),
            &["path", "outcome"],
        )
        .expect("a valid metric");
        register(Box::new(upstream_calls.clone())).expect("registered once");
        let upstream_call_seconds = latency_vec(
            "upstream_call_seconds",
            "Calls to the app's backend",
            "path",
        );
        // CPU, memory and file descriptors of this process, from /proc.
        let _ = register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let metrics = Metrics {
            connections,
            channels: gauge("channels", "Channels with a subscriber on this node"),
            subscriptions: gauge("subscriptions", "Channel subscriptions on this node"),
            channel_requests_refused: counter_vec(
                "channel_requests_refused_total",
                "Subscribe, unsubscribe and presence requests refused",
                "code",
            ),
            recoveries: counter_vec(
                "recoveries_total",
                "Subscribes that asked to recover missed publications, by result",
                "result",
            ),
            history_reads: counter(
                "history_reads_total",
                "History reads from the store made by subscribes",
            ),
            history_appends_moved: counter(
                "history_appends_moved_total",
                "History appends made again because the channel's position had moved",
            ),
            outbox_documents: counter_vec(
                "outbox_documents_total",
                "Outbox documents handled by this node, by result (published, failed)",
                "result",
            ),
            outbox_lag_seconds: {
                let gauge = Gauge::new(
                    "outbox_lag_seconds",
                    "Age of the oldest outbox document not yet published (on the node holding the lease)",
                )
                .expect("a valid metric");
                register(Box::new(gauge.clone())).expect("registered once");
                gauge
            },
            bus_up: gauge_vec(
                "bus_up",
                "By stream: cluster, 1 while the bus delivers (its change stream answered within BUS_STALL_SECS), 0 when stalled or starting; outbox, on the lease holder, 1 while its stream is open",
                "stream",
            ),
            outbox_lease_held: gauge(
                "outbox_lease_held",
                "1 on the node that consumes the outbox, 0 elsewhere",
            ),
            publish_transaction_retries: counter(
                "publish_transaction_retries_total",
                "Transactions of keyed publications tried again (another node wrote a channel or a key meanwhile)",
            ),
            publish_duplicates: counter(
                "publish_duplicates_total",
                "Publications not made because their idempotency key was used within its window",
            ),
            store_operations_shed: counter(
                "store_operations_shed_total",
                "MongoDB operations refused because STORE_MAX_IN_FLIGHT were running",
            ),

            tickets_minted: counter("tickets_minted_total", "Tickets issued"),
            tickets_consumed: counter("tickets_consumed_total", "Tickets that opened a connection"),
            authentications: counter(
                "authentications_total",
                "Connections that authenticated (their first JWT was accepted)",
            ),
            tickets_rejected: counter_vec(
                "tickets_rejected_total",
                "Tickets refused at the upgrade",
                "reason",
            ),
            auth_failures: counter_vec(
                "auth_failures_total",
                "Connections closed before authenticating",
                "code",
            ),
            closes: counter_vec("connections_closed_total", "Connections closed", "code"),
            messages_in: counter("messages_in_total", "Data messages received from clients"),
            messages_out: counter("messages_out_total", "Text messages sent to clients"),
            broadcast_fanout_seconds,
            store_operation_seconds,
            cluster_events_published: counter(
                "cluster_events_published_total",
                "Events this node wrote to the cluster bus",
            ),
            cluster_events_delivered: counter_vec(
                "cluster_events_delivered_total",
                "Cluster events delivered to this node's connections",
                "kind",
            ),
            cluster_events_skipped: counter_vec(
                "cluster_events_skipped_total",
                "Cluster events not delivered",
                "reason",
            ),
            bus_lag_seconds,
            upstream_calls,
            upstream_call_seconds,
            rpcs: counter_vec("rpcs_total", "Client RPCs, by result", "result"),
            client_publications: counter_vec(
                "client_publications_total",
                "Publications from clients, by result",
                "result",
            ),
            lifecycle_events_queued: counter(
                "lifecycle_events_queued_total",
                "Lifecycle events emitted (for the events webhook or MongoDB)",
            ),
            lifecycle_events_delivered: counter(
                "lifecycle_events_delivered_total",
                "Lifecycle events the events webhook took",
            ),
            lifecycle_events_dropped: counter(
                "lifecycle_events_dropped_total",
                "Lifecycle events dropped, over the limit of events waiting",
            ),
            lifecycle_events_shed: counter(
                "lifecycle_events_shed_total",
                "Lifecycle events not queued because the node's queue was full",
            ),
            lifecycle_webhook_failures: counter(
                "lifecycle_webhook_failures_total",
                "Calls to the events webhook that failed and will be made again",
            ),
            lifecycle_events_recorded: counter(
                "lifecycle_events_recorded_total",
                "Lifecycle events this node wrote to MongoDB",
            ),
            lifecycle_record_failures: counter(
                "lifecycle_record_failures_total",
                "Writes of lifecycle events to MongoDB that failed and will be made again",
            ),
            lifecycle_streams_adopted: counter(
                "lifecycle_streams_adopted_total",
                "Dead nodes whose lifecycle events this node took over",
            ),
            lifecycle_node_lost_disconnects: counter(
                "lifecycle_node_lost_disconnects_total",
                "disconnect events with reason node_lost this node wrote for dead nodes",
            ),
            bus_restarts: counter_vec(
                "bus_restarts_total",
                "Times a change stream was reopened",
                "stream",
            ),
            bus_partitions: gauge(
                "bus_partitions",
                "Channel partitions this node's cluster stream carries, of 4096",
            ),
            bus_interest_changes: counter_vec(
                "bus_interest_changes_total",
                "Times the cluster stream was reopened for this node's interest: widen, narrow",
                "change",
            ),
            bus_history_lost: counter_vec(
                "bus_history_lost_total",
                "Times a change stream could not resume from its point",
                "stream",
            ),
            bus_loss_notices: counter_vec(
                "bus_loss_notices_total",
                "Notices to connections after the cluster stream lost its place",
                "notice",
            ),
            registry,
            names: {
                let mut names = names.into_inner();
                names.sort_unstable();
                names
            },
        };
        // Exported at 0 from the start, so a rate() or an alert has a series before the
        // first event.
        metrics.bus_restarts.with_label_values(&["cluster"]);
        metrics.bus_history_lost.with_label_values(&["cluster"]);
        for change in ["widen", "narrow"] {
            metrics.bus_interest_changes.with_label_values(&[change]);
        }
        for notice in ["resubscribe", "missed"] {
            metrics.bus_loss_notices.with_label_values(&[notice]);
        }
        metrics
    }

    /// Every metric family's exported name (`ticketgate_…`), sorted, whether it has a
    /// sample yet or not (a histogram's `_bucket`, `_sum` and `_count` series are its name's).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format, with the connection and channel gauges as of now.
    pub fn render(
        &self,
        counts: &[(TransportKind, ConnectionCounts)],
        channels: ChannelStats,
    ) -> String {
        self.channels.set(channels.channels as i64);
        self.subscriptions.set(channels.subscriptions as i64);
        for (transport, counts) in counts {
            let transport = transport.as_str();
            self.connections
                .with_label_values(&["authenticated", transport])
                .set(counts.authenticated as i64);
            self.connections
                .with_label_values(&["unauthenticated", transport])
                .set(counts.unauthenticated as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Metrics;

    /// Every `expr` in a Grafana dashboard, wherever it sits.
    fn expressions<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => found.push(expr),
                        _ => expressions(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_metric_the_grafana_dashboard_queries_is_one_the_gateway_exports() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/ticketgate.json")).unwrap();
        let metrics = Metrics::new();
        let exported: BTreeSet<&str> = metrics.names().iter().map(String::as_str).collect();
        let mut found = Vec::new();
        expressions(&dashboard, &mut found);
        assert!(found.len() > 20, "the dashboard's queries: {found:?}");
        let mut queried = BTreeSet::new();
        for expr in found {
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|token| token.starts_with("ticketgate_"));
            for name in names {
                // A histogram's series carry its name with a suffix.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| exported.contains(base))
                    .unwrap_or(name);
                assert!(
                    exported.contains(family),
                    "the dashboard queries {name}, which the gateway does not export: {expr}"
                );
                queried.insert(family.to_owned());
            }
        }
        // What issue 31 asks the dashboard to show.
        for shown in [
            "ticketgate_connections",
            "ticketgate_authentications_total",
            "ticketgate_auth_failures_total",
            "ticketgate_messages_out_total",
            "ticketgate_broadcast_fanout_seconds",
            "ticketgate_bus_lag_seconds",
            "ticketgate_bus_up",
            "ticketgate_store_operations_shed_total",
            "ticketgate_upstream_call_seconds",
            "ticketgate_rpcs_total",
            "ticketgate_lifecycle_events_queued_total",
        ] {
            assert!(queried.contains(shown), "the dashboard shows {shown}");
        }
    }
}
