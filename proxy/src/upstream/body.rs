//! The bodies and protocol versions the upstream pools speak.

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the upstream pools send it.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The protocol spoken to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}
