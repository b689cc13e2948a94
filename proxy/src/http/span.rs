//! Each request's tracing span, as Istio's sidecars make it: the context is read from the
//! request and a child span started ([`begin`]) as the request arrives, and the child
//! written back into the request so the next hop (the app, or the upstream) continues it.
//! The span is reported ([`report`]) when the exchange records, by the queue alone: a
//! push never waits ([`crate::telemetry::export::SpanQueue`]).
//!
//! The outbound side (and a gateway) starts a CLIENT span, the inbound side a SERVER span;
//! a same-node delivery, handled in one pass, reports both: its SERVER span is the child of
//! its CLIENT span ([`SpanStart::delivered`]).
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use rand::Rng as _;

use super::connection::{HttpConnection, Side};
use crate::telemetry::trace::{
    self, Propagation, RequestFacts, Sampler, Span, SpanContext, SpanKind, SpanWorkload,
};

/// How one request is traced: the header formats, the sampler for undecided requests, the
/// tag length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RequestTracing {
    pub(super) propagation: Propagation,
    pub(super) sampler: Sampler,
    pub(super) max_tag_length: usize,
}

/// The tracing settings of a request on `connection`, `None` when tracing is off (no
/// provider). The one place they are resolved: today MeshConfig's (`defaultProviders.tracing`,
/// `defaultConfig.tracing.sampling`); a Telemetry API override for the connection's pod
/// (its workload, then its namespace) plugs in here.
pub(super) fn tracing_for(connection: &HttpConnection) -> Option<RequestTracing> {
    let routes = connection.proxy.routes.routes();
    let settings = &routes.mesh().tracing;
    if !settings.is_on() {
        return None;
    }
    let max_tag_length = settings
        .providers
        .iter()
        .map(|p| p.max_tag_length)
        .max()
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(trace::DEFAULT_MAX_TAG_LENGTH);
    Some(RequestTracing {
        propagation: Propagation {
            b3: settings.b3(),
            w3c: settings.w3c(),
        },
        sampler: Sampler::from_per_million(settings.sampling_per_million),
        max_tag_length,
    })
}

/// A span begun with its request, reported when the exchange records.
#[derive(Clone, Debug)]
pub(super) struct SpanStart {
    pub(super) context: SpanContext,
    pub(super) kind: SpanKind,
    pub(super) max_tag_length: usize,
}

impl SpanStart {
    /// The SERVER span of a same-node delivery: the destination side the request skipped,
    /// a child of this CLIENT span in the same trace with the same decision.
    pub(super) fn delivered(&self) -> Self {
        Self {
            context: SpanContext::child(
                Some(&self.context.as_incoming()),
                Sampler::from_per_million(0),
                0,
                (0, rand::rng().random()),
            ),
            kind: SpanKind::Server,
            max_tag_length: self.max_tag_length,
        }
    }
}

/// Starts the span of a request arriving on `connection` with `headers`, and writes it
/// into them as the next hop's parent. `None` when tracing is off (the headers untouched).
pub(super) fn begin(connection: &HttpConnection, headers: &mut HeaderMap) -> Option<SpanStart> {
    let tracing = tracing_for(connection)?;
    let incoming = trace::extract(headers, tracing.propagation);
    let mut rng = rand::rng();
    let context = SpanContext::child(
        incoming.as_ref(),
        tracing.sampler,
        rng.random(),
        (rng.random(), rng.random()),
    );
    trace::inject(&context, tracing.propagation, headers);
    Some(SpanStart {
        context,
        kind: match connection.side {
            Side::Outbound { .. } => SpanKind::Client,
            Side::Inbound(_) => SpanKind::Server,
        },
        max_tag_length: tracing.max_tag_length,
    })
}

/// Reports a finished span (a sampled one) to the proxy's span queue, if it has one.
pub(super) fn report(
    connection: &HttpConnection,
    start: &SpanStart,
    workload: &SpanWorkload<'_>,
    facts: &RequestFacts<'_>,
    timing: (SystemTime, Duration),
) {
    if !start.context.sampled {
        return;
    }
    let Some(queue) = &connection.proxy.spans else {
        return;
    };
    let mut span = Span::of_request(
        start.context.clone(),
        start.kind,
        workload,
        facts,
        timing,
        start.max_tag_length,
    );
    span.local_ip = match start.kind {
        SpanKind::Client => Some(connection.client.0.ip()),
        SpanKind::Server => Some(connection.orig_dst.ip().to_owned().into()),
    };
    queue.push(span);
}
