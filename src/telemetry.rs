//! Traces (`serve --otlp-endpoint`): spans exported over OTLP/gRPC, and
//! W3C trace context (`traceparent`) carried from a call into the job it
//! enqueues, from the job into each attempt, and from the attempt into
//! the plugin (spec/plugin.md, "Trace context"). Off unless started: then
//! every function here does nothing and costs one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The running exporter; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting spans to the OTLP/gRPC collector at `endpoint`
    /// (`http://host:4317`). Must be called in a tokio runtime: exports
    /// run on it.
    ///
    /// # Errors
    /// An endpoint the exporter refuses, or a second start.
    pub fn start(endpoint: &str) -> Result<Telemetry, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        let exporter = OnRuntime {
            inner: Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name("pulse-ledger")
                    .build(),
            )
            .build();
        use opentelemetry::trace::TracerProvider as _;
        TRACER
            .set(provider.tracer("pulse-ledger"))
            .map_err(|_| "traces were already started".to_owned())?;
        ENABLED.store(true, Ordering::Release);
        Ok(Telemetry { provider })
    }

    /// Stops: spans not sent yet are sent (within a few seconds). Blocks.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Release);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: the last spans were not all sent");
        }
    }
}

/// The OTLP exporter, run on the server's tokio runtime: the batch
/// processor calls it from a thread of its own, where the tonic client
/// would find no reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Whether traces are being exported.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The context a `traceparent` value names (an empty context if it is
/// absent or not valid W3C trace context).
fn context_of(traceparent: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(t) = traceparent {
        carrier.insert("traceparent".to_owned(), t.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of the span of the RPC a request belongs to, as a
/// request extension (set by the server's layer while traces are on).
#[derive(Debug, Clone)]
pub(crate) struct RpcTrace(pub(crate) String);

/// The RPC's trace parent, if traces are on.
pub(crate) fn rpc_trace<T>(request: &tonic::Request<T>) -> Option<String> {
    request.extensions().get::<RpcTrace>().map(|t| t.0.clone())
}

/// One span, ended when dropped.
pub(crate) struct TraceSpan(opentelemetry_sdk::trace::Span);

impl TraceSpan {
    /// Starts a span named `name`, the child of `parent` (a `traceparent`
    /// value; a new trace without one). `None` while traces are off.
    pub(crate) fn start(
        name: String,
        kind: SpanKind,
        parent: Option<&str>,
        attributes: Vec<KeyValue>,
    ) -> Option<TraceSpan> {
        if !enabled() {
            return None;
        }
        let tracer = TRACER.get()?;
        let builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        Some(TraceSpan(
            tracer.build_with_context(builder, &context_of(parent)),
        ))
    }

    /// This span as a `traceparent` value, for its children.
    pub(crate) fn traceparent(&self) -> String {
        let cx = Context::new().with_remote_span_context(self.0.span_context().clone());
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent").unwrap_or_default()
    }

    /// Marks the span failed, with why.
    pub(crate) fn fail(&mut self, why: String) {
        self.0.set_status(Status::error(why));
    }
}

impl Drop for TraceSpan {
    fn drop(&mut self) {
        self.0.end();
    }
}
