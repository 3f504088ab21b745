//! A real HTTP backend for the upstream tests: an actix-web server on a free port that records
//! every call and answers `/rpc` as the method name says, so a test can have it answer, fail,
//! answer slowly or wrongly, close the connection, or go away altogether.
//!
//! `…/events` (the events webhook) takes every batch with 204, or answers 503 while told to
//! refuse. `/publish` allows data with a `say` field, replaces `{"shout": X}` by `{"say": x}` (lower
//! case), and refuses anything else with `{"code": 403, "message": "not on my watch"}`.
//!
//! Methods: `echo` → `{"result": data}`; `whoami` → `{"result": <the call's body>}`;
//! `error` → `{"error": {"code": 42, "message": "refused", "detail": data}}`; `status` →
//! the HTTP status `data` with an empty body; `garbage` → 200 with a body that is not JSON;
//! `sleep` → `{"result": data}` after `data` milliseconds; `disconnect` → `{"disconnect":
//! data}`; `empty` → `{}`; `bad_error` → `{"error": "just text"}`. Anything else: `{"error": {"code": "unknown_method", …}}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

pub const UPSTREAM_KEY: &str = "test-upstream-key-0123456789";

/// One call the gateway made.
#[derive(Debug, Clone)]
pub struct BackendCall {
    pub path: String,
    /// Answered 503 because the backend was told to refuse events.
    pub refused: bool,
    pub authorization: Option<String>,
    /// The W3C trace context the call carried (when the gateway traces).
    pub traceparent: Option<String>,
    pub body: Value,
}

pub struct TestBackend {
    /// What UPSTREAM_URL is set to.
    pub url: String,
    calls: Arc<Mutex<Vec<BackendCall>>>,
    refusing: Arc<AtomicBool>,
    gone: Arc<Gone>,
    handle: Option<ServerHandle>,
}

/// Set by [`TestBackend::go_away`]: a connection the server had already accepted (a client's
/// pooled keep-alive connection) may still be served while the server stops; it gets a 503
/// and `Connection: close`, which callers see as the same failure as a refused connection.
#[derive(Default)]
struct Gone(AtomicBool);

impl TestBackend {
    pub async fn start() -> TestBackend {
        let calls: Arc<Mutex<Vec<BackendCall>>> = Arc::default();
        let refusing: Arc<AtomicBool> = Arc::default();
        let gone: Arc<Gone> = Arc::default();
        let (recorded, refuse, going) =
            (Arc::clone(&calls), Arc::clone(&refusing), Arc::clone(&gone));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&recorded)))
                .app_data(web::Data::new(Arc::clone(&refuse)))
                .app_data(web::Data::from(Arc::clone(&going)))
                .app_data(web::PayloadConfig::new(16 << 20))
                .default_service(web::to(answer))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("binding the test backend");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        TestBackend {
            url: format!("http://127.0.0.1:{port}/internal"),
            calls,
            refusing,
            gone,
            handle: Some(handle),
        }
    }

    /// The settings that point a gateway at this backend.
    pub fn vars(&self) -> [(&'static str, String); 2] {
        [
            ("UPSTREAM_URL", self.url.clone()),
            ("UPSTREAM_KEY", UPSTREAM_KEY.to_owned()),
        ]
    }

    pub fn calls(&self) -> Vec<BackendCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The lifecycle events the backend took (answered 2xx), in the order it got them.
    pub fn events(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|call| call.path.ends_with("/events") && !call.refused)
            .flat_map(|call| call.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// While set, calls to `…/events` are answered 503.
    pub fn refuse_events(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Stops the server: its port refuses connections from now on.
    pub async fn go_away(&mut self) {
        self.gone.0.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.stop(false).await;
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            drop(handle.stop(false));
        }
    }
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    calls: web::Data<Arc<Mutex<Vec<BackendCall>>>>,
    refusing: web::Data<Arc<AtomicBool>>,
    gone: web::Data<Gone>,
) -> HttpResponse {
    if gone.0.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("connection", "close"))
            .finish();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let events = req.path().ends_with("/events");
    let refused = events && refusing.load(Ordering::SeqCst);
    calls.lock().unwrap().push(BackendCall {
        path: req.path().to_owned(),
        refused,
        authorization: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let data = body["data"].clone();
    let json = |value: Value| HttpResponse::Ok().json(value);
    if refused {
        return HttpResponse::ServiceUnavailable().finish();
    }
    if events {
        return HttpResponse::NoContent().finish();
    }
    if req.path().ends_with("/publish") {
        return json(if data.get("say").is_some() {
            json!({"result": {}})
        } else if let Some(shout) = data["shout"].as_str() {
            json!({"result": {"data": {"say": shout.to_lowercase()}}})
        } else {
            json!({"error": {"code": 403, "message": "not on my watch"}})
        });
    }
    match body["method"].as_str().unwrap_or_default() {
        "echo" => json(json!({ "result": data })),
        "whoami" => json(json!({ "result": body })),
        "error" => json(json!({"error": {"code": 42, "message": "refused", "detail": data}})),
        "status" => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(data.as_u64().unwrap_or(500) as u16).unwrap(),
        )
        .finish(),
        "garbage" => HttpResponse::Ok().body("this is not JSON"),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(data.as_u64().unwrap_or(0))).await;
            json(json!({ "result": data }))
        }
        "disconnect" => json(json!({ "disconnect": data })),
        "empty" => json(json!({})),
        "bad_error" => json(json!({"error": "just text"})),
        other => json(json!({"error": {"code": "unknown_method", "message": other}})),
    }
}
