//! Client RPC through the app's backend (docs/PROTOCOL.md, "Upstream"): a real gateway calling
//! a real HTTP backend (`support::backend`), every answer and every failure as the client sees
//! it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

async fn gateway_for(backend: &TestBackend, extra: &[(&str, &str)]) -> TestApp {
    let vars = backend.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend_from_slice(extra);
    spawn_app(Store::Memory, &overrides).await
}

async fn rpc(client: &mut WsClient, id: Value, method: &str, data: Value) -> Value {
    client
        .send_json(&json!({"type": "rpc", "id": id, "method": method, "data": data}))
        .await;
    client.next_json().await
}

/// The connection is still open and answering.
async fn still_open(client: &mut WsClient) {
    client
        .send_json(&json!({"type": "ping", "id": "alive"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "id": "alive"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_round_trip_carries_who_asks() {
    let backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[]).await;
    let mut client = app.connect(&app.ticket("alice").await).await;
    client
        .send_json(&json!({"type": "jwt", "token": jwt_with_jti("alice", "session-7")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");

    let reply = rpc(
        &mut client,
        json!(1),
        "echo",
        json!({"text": "hi", "n": [1, 2]}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "rpc_result", "id": 1, "result": {"text": "hi", "n": [1, 2]}})
    );
    // A missing `data` is null; a string id comes back as a string.
    let reply = rpc(&mut client, json!("who"), "whoami", Value::Null).await;
    assert_eq!(reply["type"], "rpc_result");
    assert_eq!(reply["id"], "who");
    let asked = &reply["result"];
    assert_eq!(asked["method"], "whoami");
    assert_eq!(asked["data"], Value::Null);
    assert_eq!(asked["user_id"], "alice");
    assert_eq!(asked["node"], app.node.as_str());
    let connection_id = asked["connection_id"].as_str().unwrap();
    assert!(
        connection_id.starts_with('c') && connection_id.ends_with(&format!("@{}", app.node)),
        "{connection_id}"
    );
    assert_eq!(asked["jti"], "session-7");
    assert_eq!(asked["client_ip"], "127.0.0.1");

    let calls = backend.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body["method"], "echo");
    assert_eq!(calls[0].body["data"], json!({"text": "hi", "n": [1, 2]}));
    assert_eq!(calls[0].body["user_id"], "alice");
    assert!(calls.iter().all(|call| call.path == "/internal/rpc"));
    assert!(
        calls
            .iter()
            .all(|call| call.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_KEY}")))
    );
    assert_eq!(
        app.metric("ticketgate_rpcs_total", &[("result", "result")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_and_failures_reach_the_client_as_rpc_errors_and_keep_it_open() {
    let mut backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[("UPSTREAM_TIMEOUT_MS", "500")]).await;
    let mut client = app.authenticated("bob").await;

    // The backend's own error object, passed on as it wrote it.
    let reply = rpc(&mut client, json!(1), "error", json!("why")).await;
    assert_eq!(
        reply,
        json!({"type": "rpc_error", "id": 1,
               "error": {"code": 42, "message": "refused", "detail": "why"}})
    );
    let unavailable = |id: u64| {
        move |reply: Value| {
            assert_eq!(reply["type"], "rpc_error", "{reply}");
            assert_eq!(reply["id"], id, "{reply}");
            assert_eq!(reply["error"]["code"], "upstream_unavailable", "{reply}");
            assert!(reply["error"]["message"].is_string(), "{reply}");
        }
    };
    // 5xx, another status, an answer that is not JSON, one of none of the documented forms,
    // and a disconnect with a code outside 4000..=4999 are the backend's faults.
    unavailable(2)(rpc(&mut client, json!(2), "status", json!(500)).await);
    unavailable(3)(rpc(&mut client, json!(3), "status", json!(404)).await);
    unavailable(4)(rpc(&mut client, json!(4), "garbage", Value::Null).await);
    unavailable(5)(rpc(&mut client, json!(5), "empty", Value::Null).await);
    unavailable(6)(
        rpc(
            &mut client,
            json!(6),
            "disconnect",
            json!({"code": 1000, "reason": "x"}),
        )
        .await,
    );
    unavailable(9)(rpc(&mut client, json!(9), "bad_error", Value::Null).await);
    still_open(&mut client).await;

    // Slower than UPSTREAM_TIMEOUT_MS.
    let reply = rpc(&mut client, json!(7), "sleep", json!(3000)).await;
    assert_eq!(reply["type"], "rpc_error");
    assert_eq!(reply["error"]["code"], "upstream_timeout");
    still_open(&mut client).await;

    // The backend gone altogether.
    backend.go_away().await;
    unavailable(8)(rpc(&mut client, json!(8), "echo", json!(1)).await);
    still_open(&mut client).await;
    assert_eq!(
        app.metric(
            "ticketgate_rpcs_total",
            &[("result", "upstream_unavailable")]
        )
        .await,
        7.0
    );
    assert_eq!(
        app.metric("ticketgate_rpcs_total", &[("result", "upstream_timeout")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_answer_closes_the_connection_with_the_backends_code() {
    let backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[]).await;
    let mut client = app.authenticated("carol").await;
    client
        .send_json(&json!({"type": "rpc", "id": 1, "method": "disconnect",
                           "data": {"code": 4123, "reason": "banned by the app"}}))
        .await;
    assert_eq!(client.expect_close(4123).await, "banned by the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_without_an_id_or_method_is_refused_and_never_called() {
    let backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[]).await;
    let mut client = app.authenticated("dave").await;
    client
        .send_json(&json!({"type": "rpc", "method": "echo", "data": 1}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"], "bad_message");
    for bad in [
        json!({"type": "rpc", "id": 2, "data": 1}),
        json!({"type": "rpc", "id": 3, "method": "", "data": 1}),
        json!({"type": "rpc", "id": 4, "method": 7, "data": 1}),
    ] {
        client.send_json(&bad).await;
        let reply = client.next_json().await;
        assert_eq!(reply["error"], "bad_message", "{bad}: {reply}");
        assert_eq!(reply["id"], bad["id"], "{bad}: {reply}");
    }
    still_open(&mut client).await;
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_as_answers_do_and_the_in_flight_limit_refuses_without_a_call() {
    let backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[("MAX_RPC_IN_FLIGHT_PER_CONNECTION", "2")]).await;
    let mut client = app.authenticated("erin").await;
    for (id, ms) in [("slow", 1500), ("quick", 200), ("third", 10)] {
        client
            .send_json(&json!({"type": "rpc", "id": id, "method": "sleep", "data": ms}))
            .await;
    }
    // The third is refused at once; the quick one overtakes the slow one.
    let first = client.next_json().await;
    assert_eq!(
        first,
        json!({"type": "rpc_error", "id": "third",
               "error": {"code": "too_many_requests",
                         "message": first["error"]["message"].clone()}})
    );
    assert_eq!(
        client.next_json().await,
        json!({"type": "rpc_result", "id": "quick", "result": 200})
    );
    assert_eq!(
        client.next_json().await,
        json!({"type": "rpc_result", "id": "slow", "result": 1500})
    );
    assert_eq!(
        backend.calls().len(),
        2,
        "the refused call never reached the backend"
    );
    // With the answers in, there is room again.
    let reply = rpc(&mut client, json!("after"), "echo", json!(true)).await;
    assert_eq!(reply["result"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_drops_its_waiting_calls() {
    let backend = TestBackend::start().await;
    let app = gateway_for(&backend, &[]).await;
    let mut client = app.authenticated("frank").await;
    client
        .send_json(&json!({"type": "rpc", "id": 1, "method": "sleep", "data": 800}))
        .await;
    wait_until("the call reaches the backend", || {
        backend.calls().len() == 1
    })
    .await;
    drop(client);
    app.assert_no_connections_left().await;
    // The backend's late answer goes nowhere: no reply is counted, nothing breaks.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.metric("ticketgate_rpcs_total", &[("result", "result")])
            .await,
        0.0
    );
    let mut other = app.authenticated("frank").await;
    assert_eq!(
        rpc(&mut other, json!(2), "echo", json!(2)).await["result"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstream_url_an_rpc_is_refused_as_upstream_disabled() {
    let app = spawn_app(Store::Memory, &[]).await;
    let mut client = app.authenticated("gina").await;
    let reply = rpc(&mut client, json!(9), "echo", json!(1)).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"], "upstream_disabled");
    assert_eq!(reply["id"], 9);
    still_open(&mut client).await;
}
