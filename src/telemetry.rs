//! Traces: spans for ticket mints, connection openings and authentications, server API
//! calls, RPCs, publish-proxy calls and webhook deliveries, exported over OTLP/HTTP
//! (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Calls to the app's backend carry the
//! W3C `traceparent` of their span, so the app's traces continue the gateway's. Unset, there
//! is no tracer at all: every span is `None` and costs a branch.

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The tracer, or nothing when tracing is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
}

/// What tracing is set to (`OTEL_*` settings).
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; spans go to `/v1/traces`.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
}

/// The exporter's owner: flushes what is left when the process ends.
pub struct Exporting(Option<SdkTracerProvider>);

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            log::warn!("flushing the last spans: {e}");
        }
    }
}

impl Telemetry {
    /// Tracing as `settings` say; off when no endpoint is set.
    pub fn start(settings: &TelemetrySettings) -> Result<(Telemetry, Exporting), String> {
        let Some(endpoint) = &settings.endpoint else {
            return Ok((Telemetry::default(), Exporting(None)));
        };
        use opentelemetry_otlp::{Protocol, WithExportConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", crate::build_info::VERSION))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "ticketgate");
        log::info!("tracing: spans go to {endpoint} (OTLP/HTTP)");
        Ok((
            Telemetry {
                tracer: Some(tracer),
            },
            Exporting(Some(provider)),
        ))
    }

    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// A span the gateway serves (a request to it).
    pub fn server(&self, name: &'static str) -> Span {
        self.span(name, SpanKind::Server)
    }

    /// A span for a call the gateway makes (to the app's backend or webhook).
    pub fn client(&self, name: &'static str) -> Span {
        self.span(name, SpanKind::Client)
    }

    fn span(&self, name: &'static str, kind: SpanKind) -> Span {
        Span(self.tracer.as_ref().map(|tracer| {
            let span = tracer.span_builder(name).with_kind(kind).start(tracer);
            Box::new(opentelemetry::Context::current_with_span(span))
        }))
    }
}

/// One span, ended when dropped; nothing when tracing is off (and then one pointer's
/// size, so a connection's task does not grow).
pub struct Span(Option<Box<opentelemetry::Context>>);

impl Span {
    /// Sets an attribute (when tracing).
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Sets an attribute made only when tracing (so nothing is formatted when it is off).
    pub fn set_with<V: Into<opentelemetry::Value>>(
        &self,
        key: &'static str,
        value: impl FnOnce() -> V,
    ) {
        if let Some(context) = &self.0 {
            context.span().set_attribute(KeyValue::new(key, value()));
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&self, why: impl Into<String>) {
        if let Some(context) = &self.0 {
            context.span().set_status(Status::error(why.into()));
        }
    }

    /// The W3C `traceparent` naming this span, for a call it makes.
    pub fn traceparent(&self) -> Option<String> {
        let context = self.0.as_ref()?;
        let span = context.span();
        let ids = span.span_context();
        Some(format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        ))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(context) = self.0.take() {
            context.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_no_span_and_no_traceparent() {
        let telemetry = Telemetry::default();
        let span = telemetry.client("rpc");
        span.set("rpc.method", "add");
        assert!(!telemetry.is_on());
        assert_eq!(span.traceparent(), None);
    }
}
