//! The application in process on a free port, and the usual ways to reach it.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use serde_json::Value;
use ticketgate::bus::{self, Bus};
use ticketgate::config::Settings;
use ticketgate::hub::Hub;
use ticketgate::startup::Application;
use ticketgate_client::protocol;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Mongo,
    Memory,
}

pub struct TestApp {
    pub port: u16,
    pub hub: Arc<Hub>,
    pub bus: Arc<Bus>,
    /// What every connection of this app shares.
    pub session: Arc<ticketgate::session::SessionContext>,
    /// This node's id, as broadcasts carry it.
    pub node: String,
    pub http: reqwest::Client,
    /// The database this app's tickets live in (Mongo store only).
    pub db: Option<mongodb::Database>,
    /// The drain SIGTERM would start.
    pub shutdown: ticketgate::shutdown::Shutdown,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent at once; awaiting its completion is not needed.
        drop(self.handle.stop(false));
    }
}

/// The settings tests start from: fixed secret, port 0, a fresh database.
pub fn base_vars(store: Store) -> HashMap<String, String> {
    let mut vars = HashMap::from([
        ("BIND_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("JWT_SECRET".to_string(), SECRET.to_string()),
        ("JWT_LEEWAY_SECS".to_string(), "0".to_string()),
        // The test machine runs many gateways on one mongod and two cores: store calls get a
        // generous bound here, and the outage tests set their own short one.
        ("STORE_TIMEOUT_MS".to_string(), "10000".to_string()),
    ]);
    if store == Store::Mongo {
        vars.insert("MONGODB_URI".into(), mongo_uri());
        vars.insert("MONGODB_DATABASE".into(), unique_db_name());
    }
    vars
}

pub async fn spawn_app(store: Store, overrides: &[(&str, &str)]) -> TestApp {
    let mut vars = base_vars(store);
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    spawn_app_with(vars).await
}

pub async fn spawn_app_with(vars: HashMap<String, String>) -> TestApp {
    let settings = Settings::from_vars(&vars).expect("test settings are valid");
    let db = match (&settings.database.mongodb, vars.get("MONGODB_URI")) {
        (Some(m), Some(uri)) => Some(
            mongodb::Client::with_uri_str(uri)
                .await
                .unwrap()
                .database(&m.database),
        ),
        _ => None,
    };
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let test_app = TestApp {
        port: app.port(),
        hub: app.hub(),
        bus: app.bus(),
        session: app.session(),
        node: app.bus().node().id.to_string(),
        http: reqwest::Client::new(),
        db,
        shutdown: app.shutdown(),
        handle: app.handle(),
    };
    tokio::spawn(app.run_until_stopped());
    test_app
}

impl TestApp {
    /// Broadcasts `data` (JSON text) through the bus; returns its seq.
    pub async fn publish(&self, data: &str) -> u64 {
        let data = serde_json::value::RawValue::from_string(data.to_owned()).unwrap();
        let receipt = self.bus.send(bus::Command::Broadcast(data)).await.unwrap();
        receipt.seq.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, ticket: &str) -> String {
        format!("ws://127.0.0.1:{}/demo?token={ticket}", self.port)
    }

    /// `GET /token/ws` with an `Authorization` header value (or none).
    pub async fn mint(&self, authorization: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url("/token/ws"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A ticket for `sub`, asked for as every client asks (the client crate's request).
    pub async fn ticket(&self, sub: &str) -> String {
        protocol::request_ticket(&self.http, &self.url("/token/ws"), &jwt(sub))
            .await
            .unwrap_or_else(|e| panic!("a ticket for {sub}: {e}"))
    }

    pub async fn connect(&self, ticket: &str) -> WsClient {
        self.try_connect(ticket, None)
            .await
            .expect("the upgrade succeeds")
    }

    /// Opens `/demo?token=…`; on refusal, the HTTP status and JSON body.
    pub async fn try_connect(
        &self,
        ticket: &str,
        origin: Option<&str>,
    ) -> Result<WsClient, (u16, Value)> {
        try_connect_url(&self.ws_url(ticket), origin).await
    }

    /// Ticket, upgrade, JWT: a connection that received its `authenticated` message.
    pub async fn authenticated(&self, sub: &str) -> WsClient {
        let mut client = self.connect(&self.ticket(sub).await).await;
        assert_eq!(client.authenticate(&jwt(sub)).await, sub);
        client
    }

    /// A metric's value on this node; 0 for a labelled counter never incremented (it appears
    /// at its first increment).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = scrape_metrics(&self.http, &self.url("/metrics")).await;
        let present = samples
            .iter()
            .any(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
        if present {
            metric_value(&samples, name, labels)
        } else {
            0.0
        }
    }

    /// Waits, up to [`PATIENCE`], until a metric reads `value`, and returns what it last read.
    /// For counters a node bumps just after the effect a test observed (an insert seen on a
    /// change stream, a webhook batch received): the effect can be seen before the count.
    pub async fn metric_settles_at(&self, name: &str, labels: &[(&str, &str)], value: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let read = self.metric(name, labels).await;
            if read == value || tokio::time::Instant::now() >= deadline {
                return read;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A server API call with `api_key`: the status and the JSON body (null when none).
    pub async fn call_api(
        &self,
        api_key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Waits until no WebSocket connection is open or registered.
    pub async fn assert_no_connections_left(&self) {
        wait_until("all connections to leave", || {
            self.hub.authenticated_count() == 0 && self.hub.open_count() == 0
        })
        .await;
    }
}

pub async fn try_connect_url(url: &str, origin: Option<&str>) -> Result<WsClient, (u16, Value)> {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    try_connect_with_headers(url, &headers).await
}

pub async fn try_connect_with_headers(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().append(name, value.parse().unwrap());
    }
    // 4 KiB read buffers, as the load generator's clients: tungstenite's 128 KiB default is
    // zero-filled on every read, which the tests holding thousands of sockets pay for.
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    match tokio_tungstenite::connect_async_with_config(request, Some(config), false).await {
        Ok((stream, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(WsClient { stream })
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            Err((status, serde_json::from_slice(body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("connecting to {url}: {e}"),
    }
}
