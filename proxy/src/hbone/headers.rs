//! The headers HBONE's `CONNECT` carries besides `:authority` and `forwarded`.

/// The `baggage` header: the source workload, in ztunnel's keys.
pub const BAGGAGE: &str = "baggage";
/// W3C trace context, carried on the `CONNECT` when the application connection had one.
pub const TRACEPARENT: &str = "traceparent";
