//! Logs in tests. [`init_tracing`] installs a formatter for a test binary, so that `RUST_LOG`
//! shows what raft-core, raft-net and raft-storage logged (through the test harness's capture:
//! printed for failing tests only). [`CaptureLayer`] records every event with its fields and
//! the fields of the spans it happened in, for tests that assert on what was logged: installed
//! for one thread ([`capture_local`]) around code that runs on it (a `raft_core::Raft` stepped
//! by hand, a store opened), or for the whole process ([`capture_global`]) when the code runs
//! on threads of its own (a cluster's workers, a transport's tasks).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The filter of [`init_tracing`] when `RUST_LOG` is unset or invalid: warnings and errors.
pub const DEFAULT_FILTER: &str = "warn";

/// Installs, once per process, a `tracing-subscriber` formatter writing through the test
/// harness (shown for failing tests, or with `--nocapture`), filtered by `RUST_LOG`
/// ([`DEFAULT_FILTER`] without it). Does nothing if the process already has a subscriber.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter(env_filter()).with_test_writer().try_init();
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// One event as captured: its level, target, message, fields, and the spans it happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedEvent {
    /// The event's level.
    pub level: Level,
    /// The event's target (its module path unless set).
    pub target: String,
    /// The event's message (its `message` field).
    pub message: String,
    /// The event's other fields, formatted (`Display` or `Debug`, as the event recorded them).
    pub fields: BTreeMap<String, String>,
    /// The spans the event happened in, outermost first: name and fields.
    pub spans: Vec<(String, BTreeMap<String, String>)>,
}

impl CapturedEvent {
    /// The event's field `name`, formatted.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The field `name` of the innermost span that has it.
    pub fn span_field(&self, name: &str) -> Option<&str> {
        self.spans.iter().rev().find_map(|(_, fields)| fields.get(name)).map(String::as_str)
    }

    /// Whether the event happened inside a span called `span` whose field `name` is `value`.
    pub fn in_span(&self, span: &str, name: &str, value: &str) -> bool {
        self.spans.iter().any(|(span_name, fields)| span_name == span && fields.get(name).is_some_and(|v| v == value))
    }
}

impl fmt::Display for CapturedEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, fields) in &self.spans {
            write!(formatter, "{name}{fields:?}:")?;
        }
        write!(formatter, " {} {} {:?}", self.level, self.message, self.fields)
    }
}

/// The events a [`CaptureLayer`] recorded.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    events: Arc<Mutex<Vec<CapturedEvent>>>,
}

impl Captured {
    /// Every event recorded so far, in order.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The events recorded so far whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<CapturedEvent> {
        self.events().into_iter().filter(|event| event.message == message).collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// A layer that records each event it sees into a [`Captured`].
#[derive(Clone, Debug, Default)]
pub struct CaptureLayer {
    captured: Captured,
}

impl CaptureLayer {
    /// A layer and the handle its events are read through.
    pub fn new() -> (CaptureLayer, Captured) {
        let layer = CaptureLayer::default();
        let captured = layer.captured.clone();
        (layer, captured)
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(BTreeMap<String, String>);

/// Collects fields as strings; the `message` field apart.
#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, format!("{value:?}"));
    }
}

impl FieldVisitor {
    fn insert(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl<S> Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        attributes.record(&mut visitor);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(SpanFields(visitor.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        values.record(&mut visitor);
        if let Some(span) = context.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            fields.0.extend(visitor.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let spans = context
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let fields = span.extensions().get::<SpanFields>().map(|f| f.0.clone()).unwrap_or_default();
                        (span.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let captured = CapturedEvent {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
            spans,
        };
        self.captured.events.lock().unwrap_or_else(PoisonError::into_inner).push(captured);
    }
}

/// Runs `run` with a [`CaptureLayer`] (events at `level` and above) as this thread's
/// subscriber, and returns its result and what it recorded. Events on other threads are not
/// seen.
pub fn capture_local<R>(level: LevelFilter, run: impl FnOnce() -> R) -> (R, Vec<CapturedEvent>) {
    let (layer, captured) = CaptureLayer::new();
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(level));
    let result = tracing::subscriber::with_default(subscriber, run);
    (result, captured.events())
}

/// Installs, once per process, a global subscriber with a [`CaptureLayer`] (events at INFO
/// and above) beside the formatter of [`init_tracing`], and returns its events. Every test of
/// the binary logs into it: a test tells its own events apart (by node ids, addresses or
/// spans). `None` if the process already had another global subscriber.
pub fn capture_global() -> Option<Captured> {
    static GLOBAL: OnceLock<Option<Captured>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let (layer, captured) = CaptureLayer::new();
            let format = tracing_subscriber::fmt::layer().with_test_writer().with_filter(env_filter());
            let subscriber = tracing_subscriber::registry().with(layer.with_filter(LevelFilter::INFO)).with(format);
            tracing::subscriber::set_global_default(subscriber).ok().map(|()| captured)
        })
        .clone()
}
