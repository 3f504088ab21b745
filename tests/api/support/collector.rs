//! A fake OpenTelemetry collector: `POST /v1/traces` (OTLP/HTTP, protobuf), the spans kept.

use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// One span as the collector got it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    pub name: String,
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The `service.name` of its resource.
    pub service: String,
    /// Attributes with string or integer values, as text.
    pub attributes: Vec<(String, String)>,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeCollector {
    /// What OTEL_EXPORTER_OTLP_ENDPOINT is set to.
    pub url: String,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    handle: ServerHandle,
}

impl FakeCollector {
    pub async fn start() -> FakeCollector {
        let spans: Arc<Mutex<Vec<CollectedSpan>>> = Arc::default();
        let kept = Arc::clone(&spans);
        let server = HttpServer::new(move || {
            let kept = Arc::clone(&kept);
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let kept = Arc::clone(&kept);
                    async move {
                        let request = ExportTraceServiceRequest::decode(body.as_ref())
                            .expect("an OTLP/HTTP protobuf body");
                        kept.lock().unwrap().extend(spans_of(request));
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeCollector {
            url: format!("http://127.0.0.1:{port}"),
            spans,
            handle,
        }
    }

    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until a span named `name` arrived; returns it.
    pub async fn span_named(&self, name: &str) -> CollectedSpan {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(span) = self.spans().into_iter().find(|s| s.name == name) {
                return span;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {name} span; got {:?}",
                self.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(CollectedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    service: service.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    spans
}
