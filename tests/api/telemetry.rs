//! Traces (docs/PROTOCOL.md, "Tracing"): with OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway's
//! spans reach an OTLP/HTTP collector (a fake one here, reading the protobuf), and a call to
//! the app's backend carries the `traceparent` of its span, so the app continues the trace;
//! unset, no call carries one.

use serde_json::json;

use crate::support::*;

const API_KEY: &str = "telemetry-test-api-key-0123456789";

/// A gateway with a backend (and, when given, a collector); alice authenticated, one RPC
/// answered, one publication the backend allowed, one server API call made, and lifecycle
/// events posted to the webhook.
async fn session_with_an_rpc(
    backend: &TestBackend,
    collector: Option<&FakeCollector>,
) -> GatewayProcess {
    let upstream = backend.vars();
    let file = crate::channels::ConfigFile::new(
        "[[channels.namespaces]]\nname = \"moderated\"\npublic = true\nclient_publish = true\npublish_proxy = true\n",
    );
    let webhook = format!("{}/events", backend.url);
    let mut vars: Vec<(&str, &str)> = vec![
        ("JWT_SECRET", SECRET),
        ("API_KEY", API_KEY),
        (upstream[0].0, &upstream[0].1),
        (upstream[1].0, &upstream[1].1),
        ("EVENTS_WEBHOOK_URL", &webhook),
        ("CONFIG_FILE", file.path()),
        ("OTEL_SERVICE_NAME", "ticketgate-under-test"),
        // The batch exporter's delay, read by the OpenTelemetry SDK itself.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    if let Some(collector) = collector {
        vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url));
    }
    let gateway = GatewayProcess::start(&vars);
    let http = reqwest::Client::new();
    let ticket = gateway.ticket(&http, "alice").await;
    let mut client = try_connect_url(&gateway.ws_url(&ticket), None)
        .await
        .unwrap();
    client.authenticate(&jwt("alice")).await;
    client
        .send_json(&json!({"type": "rpc", "id": 1, "method": "echo", "data": {"x": 1}}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "rpc_result", "{reply}");
    client
        .send_json(
            &json!({"type": "publish", "id": 2, "channel": "moderated:1", "data": {"say": "hi"}}),
        )
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "published", "{reply}");
    let broadcast = http
        .post(gateway.url("/api/broadcast"))
        .bearer_auth(API_KEY)
        .json(&json!({"data": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(broadcast.status(), 202);
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_the_backend_continues_the_trace() {
    let collector = FakeCollector::start().await;
    let backend = TestBackend::start().await;
    let gateway = session_with_an_rpc(&backend, Some(&collector)).await;

    let mint = collector.span_named("ticket.mint").await;
    assert_eq!(mint.service, "ticketgate-under-test");
    assert_eq!(mint.attribute("enduser.id"), Some("alice"));
    let open = collector.span_named("connection.open").await;
    assert_eq!(open.attribute("transport"), Some("websocket"));
    let authenticated = collector.span_named("connection.authenticate").await;
    assert_eq!(authenticated.attribute("enduser.id"), Some("alice"));
    let api = collector.span_named("api.request").await;
    assert_eq!(api.attribute("http.route"), Some("/api/broadcast"));
    assert_eq!(api.attribute("http.response.status_code"), Some("202"));

    // The backend got the RPC span's own trace context.
    let rpc = collector.span_named("upstream.rpc").await;
    let call = backend
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/rpc"))
        .expect("the RPC reached the backend");
    assert_eq!(
        call.traceparent,
        Some(format!("00-{}-{}-01", rpc.trace_id, rpc.span_id)),
        "the backend continues the rpc span's trace"
    );
    assert_eq!(rpc.attribute("outcome"), Some("answered"));
    // So do the publish proxy's call and the webhook's deliveries.
    for (span, path) in [
        ("upstream.publish", "/publish"),
        ("webhook.deliver", "/events"),
    ] {
        let span = collector.span_named(span).await;
        let carried = format!("00-{}-{}-01", span.trace_id, span.span_id);
        let calls = backend.calls();
        assert!(
            calls
                .iter()
                .any(|c| c.path.ends_with(path) && c.traceparent.as_deref() == Some(&carried)),
            "{path} carried {carried}: {calls:?}"
        );
    }

    // No credential in any span.
    for span in collector.spans() {
        for (key, value) in &span.attributes {
            assert!(
                value.len() < 100 && !value.contains(SECRET) && !value.contains(API_KEY),
                "{}: {key}={value}",
                span.name
            );
        }
    }
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_call_carries_a_traceparent() {
    let backend = TestBackend::start().await;
    let gateway = session_with_an_rpc(&backend, None).await;
    let calls = backend.calls();
    assert!(calls.iter().any(|c| c.path.ends_with("/rpc")));
    assert!(calls.iter().all(|c| c.traceparent.is_none()), "{calls:?}");
    assert!(!gateway.log().contains("tracing:"), "no tracer was made");
}
