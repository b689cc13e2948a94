//! The limits an HTTP listener enforces on its clients ([`HttpLimits`]), the pure parts:
//! the HTTP/1 request-head scanner that refuses oversized heads, too many headers, a too
//! long request line and the framing that request smuggling relies on ([`HeadScanner`]);
//! the checks of a parsed request's headers ([`check_request`]); the HTTP/2 frames a server
//! writes when h2 refuses a stream or a connection itself ([`ServerFrames`]); and what a
//! connection's requests share to enforce the rest ([`StreamWatch`]: requests in flight,
//! when it went idle, the HTTP/2 rapid-reset budget).
//!
//! The serve loop ([`super::server`]) applies them; the exchange ([`super::exchange`])
//! reports each request's end into the watch.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use http::header;
use tokio::sync::Notify;
// tokio's clock, so that tests with paused time see connections go idle.
use tokio::time::Instant;

use crate::context::HttpLimits;

/// A stream reset by its client this soon after it began counts against the rapid-reset
/// budget (Envoy's `premature_reset_min_stream_lifetime_seconds`).
pub(super) const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);

/// Why a client's request or connection was refused, with what the client gets and how
/// metrics and logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request line and headers weigh more than `max_request_headers_kb`.
    HeadersTooLarge,
    /// More header lines than `max_headers_count`.
    TooManyHeaders,
    /// The request line alone is longer than `max_request_headers_kb`.
    UriTooLong,
    /// The head did not arrive within `request_headers_timeout`.
    HeadersTimeout,
    /// `Content-Length` and `Transfer-Encoding` together.
    ContentLengthAndChunked,
    /// More than one `Content-Length` (lines or values).
    MultipleContentLength,
    /// A transfer coding other than a single `chunked`.
    InvalidTransferEncoding,
    /// A header name with `_` while `--reject-header-underscores` is on.
    HeaderUnderscore,
    /// An HTTP/2 request whose `Host` names another authority than its `:authority`.
    HostMismatch,
    /// An HTTP/2 header list (RFC 9113's size: names, values, 32 each) over
    /// `max_request_headers_kb`.
    HeaderListTooLarge,
    /// The request body broke its framing (an invalid chunk).
    InvalidBody,
    /// A NUL or a bare CR in the head, or a header line without a colon (what an LF inside a
    /// value leaves): refused here rather than by hyper's parser, so that it is counted and
    /// logged as every other refusal.
    InvalidHeader,
}

impl Refusal {
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::HeadersTooLarge | Self::TooManyHeaders | Self::HeaderListTooLarge => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ContentLengthAndChunked
            | Self::MultipleContentLength
            | Self::InvalidTransferEncoding
            | Self::HeaderUnderscore
            | Self::HostMismatch
            | Self::InvalidBody
            | Self::InvalidHeader => StatusCode::BAD_REQUEST,
        }
    }

    /// The `limit` label of `shunt_http_limit_rejections_total`.
    #[must_use]
    pub fn limit(self) -> &'static str {
        match self {
            Self::HeadersTooLarge | Self::HeaderListTooLarge => "request_headers_size",
            Self::TooManyHeaders => "request_headers_count",
            Self::UriTooLong => "request_line_size",
            Self::HeadersTimeout => "request_headers_timeout",
            Self::ContentLengthAndChunked
            | Self::MultipleContentLength
            | Self::InvalidTransferEncoding => "request_framing",
            Self::HeaderUnderscore => "header_underscore",
            Self::HostMismatch => "host_authority_mismatch",
            Self::InvalidBody => "request_body_framing",
            Self::InvalidHeader => "header_characters",
        }
    }

    /// Envoy's `response_code_details` for it.
    #[must_use]
    pub fn details(self) -> &'static str {
        match self {
            Self::HeadersTooLarge => "http1.headers_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::UriTooLong => "http1.uri_too_long",
            Self::HeadersTimeout => "request_header_timeout",
            Self::ContentLengthAndChunked => "http1.content_length_and_chunked_not_allowed",
            Self::MultipleContentLength => "http1.multiple_content_length",
            Self::InvalidTransferEncoding => "http1.invalid_transfer_encoding",
            Self::HeaderUnderscore => "unexpected_underscore",
            Self::HostMismatch => "host_authority_mismatch",
            // Envoy's HTTP/2 codec names the size and the count of a header list alike.
            Self::HeaderListTooLarge => "http2.too_many_headers",
            Self::InvalidBody => "downstream_body_error",
            Self::InvalidHeader => "http1.codec_error",
        }
    }

    /// The whole HTTP/1.1 response the listener writes itself before closing, when no
    /// request was handed on (the head was refused).
    #[must_use]
    pub fn http1_response(self) -> &'static [u8] {
        match self {
            Self::HeadersTooLarge | Self::TooManyHeaders | Self::HeaderListTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Self::UriTooLong => {
                b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Self::HeadersTimeout => {
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Self::ContentLengthAndChunked
            | Self::MultipleContentLength
            | Self::InvalidTransferEncoding
            | Self::HeaderUnderscore
            | Self::HostMismatch
            | Self::InvalidBody
            | Self::InvalidHeader => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        }
    }
}

/// What a scanner made of the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head goes on.
    Partial,
    /// The head is complete and within the limits; `h2`: it was HTTP/2's preface.
    Complete {
        h2: bool,
    },
    Refused(Refusal),
}

/// Follows one HTTP/1 request head as its bytes arrive, without keeping more than the
/// limit allows: its size, its header count, and the framing headers (`Content-Length`,
/// `Transfer-Encoding`) whose ambiguity request smuggling relies on. hyper parses the head
/// itself; this only decides whether it may.
#[derive(Debug)]
pub struct HeadScanner {
    max_bytes: usize,
    max_headers: usize,
    /// The current line's bytes (capped: a header line only needs its name and a short
    /// value to be judged, and the size is counted apart).
    line: Vec<u8>,
    /// Bytes of the head so far, leading empty lines excluded.
    size: usize,
    /// Whether the request line is over.
    past_request_line: bool,
    headers: usize,
    content_lengths: usize,
    /// The `Content-Length` value, when it is one number.
    content_length: Option<u64>,
    transfer_encodings: usize,
    chunked: bool,
    /// CONNECT, or an `Upgrade` header: the bytes after it may be a tunnel's.
    upgrade: bool,
    /// The last byte was a CR: only an LF may follow.
    after_cr: bool,
    /// The current line has a colon (judged whole, not only its kept bytes).
    colon: bool,
}

/// How the bytes after a complete HTTP/1 head are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A body of this many bytes (0: none), then the next head.
    Length(u64),
    Chunked,
    /// A `Content-Length` hyper may read otherwise than this scanner: nothing more is
    /// followed (fail closed).
    Unknown,
}

/// Bytes of a line kept for judging it: `transfer-encoding: chunked` with room for blanks.
const LINE_KEPT: usize = 64;
/// The request line of HTTP/2's connection preface.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

impl HeadScanner {
    #[must_use]
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            max_bytes: limits.max_request_headers_bytes,
            max_headers: limits.max_headers_count,
            line: Vec::new(),
            size: 0,
            past_request_line: false,
            headers: 0,
            content_lengths: 0,
            content_length: None,
            transfer_encodings: 0,
            chunked: false,
            upgrade: false,
            after_cr: false,
            colon: false,
        }
    }

    /// Whether the complete head may start a tunnel (CONNECT, an `Upgrade` header).
    #[must_use]
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }

    /// The complete (accepted) head's body framing.
    #[must_use]
    pub fn framing(&self) -> Framing {
        match (self.chunked, self.content_lengths, self.content_length) {
            (true, _, _) => Framing::Chunked,
            (false, 0, _) => Framing::Length(0),
            (false, _, Some(length)) => Framing::Length(length),
            (false, _, None) => Framing::Unknown,
        }
    }

    /// Whether any byte of a head (beyond leading empty lines) was seen.
    #[must_use]
    pub fn started(&self) -> bool {
        self.size > 0
    }

    /// Follows `bytes`; after anything but [`Scan::Partial`] the scanner is spent (make a
    /// new one for the next head). Bytes after a complete head are not looked at.
    pub fn feed(&mut self, bytes: &[u8]) -> Scan {
        self.feed_counted(bytes).0
    }

    /// As [`Self::feed`], with how many of `bytes` it took (all of them while partial).
    pub fn feed_counted(&mut self, bytes: &[u8]) -> (Scan, usize) {
        for (at, &byte) in bytes.iter().enumerate() {
            let scan = self.feed_byte(byte);
            if scan != Scan::Partial {
                return (scan, at + 1);
            }
        }
        (Scan::Partial, bytes.len())
    }

    fn feed_byte(&mut self, byte: u8) -> Scan {
        {
            if self.size == 0 && (byte == b'\r' || byte == b'\n') {
                // hyper skips empty lines before a request, as RFC 9112 allows.
                return Scan::Partial;
            }
            self.size += 1;
            if byte == 0 || (self.after_cr && byte != b'\n') {
                return Scan::Refused(Refusal::InvalidHeader);
            }
            self.after_cr = byte == b'\r';
            self.colon |= byte == b':';
            if byte == b'\n' {
                return self.end_line().unwrap_or(Scan::Partial);
            }
            if self.line.len() < LINE_KEPT {
                self.line.push(byte);
            }
            if self.size > self.max_bytes {
                return Scan::Refused(if self.past_request_line {
                    Refusal::HeadersTooLarge
                } else {
                    Refusal::UriTooLong
                });
            }
        }
        Scan::Partial
    }

    /// A `\n`: judges the line it ends.
    fn end_line(&mut self) -> Option<Scan> {
        let mut line = std::mem::take(&mut self.line);
        let colon = std::mem::take(&mut self.colon);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !self.past_request_line {
            self.past_request_line = true;
            if line.starts_with(H2_PREFACE_LINE) {
                return Some(Scan::Complete { h2: true });
            }
            self.upgrade = line.starts_with(b"CONNECT ");
            self.line = line;
            self.line.clear();
            return None;
        }
        if line.is_empty() {
            return Some(self.complete());
        }
        if !colon {
            return Some(Scan::Refused(Refusal::InvalidHeader));
        }
        self.headers += 1;
        if self.headers > self.max_headers {
            return Some(Scan::Refused(Refusal::TooManyHeaders));
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                // `Content-Length: 5, 5` is two lengths as much as two lines are.
                self.content_lengths += 1 + value.iter().filter(|&&b| b == b',').count();
                // Digits only, as hyper reads it; anything else is followed no further.
                self.content_length = (!value.is_empty() && value.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(value).ok()?.parse().ok())
                    .flatten();
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.transfer_encodings += 1;
                self.chunked = value.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
        self.line = line;
        self.line.clear();
        None
    }

    fn complete(&self) -> Scan {
        let refusal = if self.transfer_encodings > 0 && self.content_lengths > 0 {
            Some(Refusal::ContentLengthAndChunked)
        } else if self.content_lengths > 1 {
            Some(Refusal::MultipleContentLength)
        } else if self.transfer_encodings > 1 || (self.transfer_encodings == 1 && !self.chunked) {
            Some(Refusal::InvalidTransferEncoding)
        } else {
            None
        };
        refusal.map_or(Scan::Complete { h2: false }, Scan::Refused)
    }
}

/// Follows an HTTP/1 request body as its head framed it, so that the next head is found
/// where hyper will look for it: a length counted down, or chunks (sizes, data, trailers).
/// Strict: whatever it does not read as RFC 9112 does ends the following there.
#[derive(Debug)]
pub struct BodyScanner {
    state: Chunk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// A fixed length left (or a chunk's data).
    Data {
        left: u64,
        chunked: bool,
    },
    /// A chunk size's hex digits so far (`digits` of them).
    Size {
        size: u64,
        digits: u8,
    },
    /// Blanks after the size, before `;` or CR.
    SizeBlank {
        size: u64,
    },
    /// A chunk extension, until CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty one).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    /// The body is over.
    End,
}

/// What a body scanner made of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyScan {
    /// The body goes on past these bytes.
    Partial,
    /// The body ended after this many of the bytes.
    Done(usize),
    /// The framing broke at this byte (this many bytes, it included).
    Invalid(usize),
}

/// Hex digits of a chunk size hyper accepts (a `u64`).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

impl BodyScanner {
    /// `None`: no body (the next head follows at once).
    #[must_use]
    pub fn new(framing: Framing) -> Option<Self> {
        let state = match framing {
            Framing::Length(0) | Framing::Unknown => return None,
            Framing::Length(left) => Chunk::Data {
                left,
                chunked: false,
            },
            Framing::Chunked => Chunk::Size { size: 0, digits: 0 },
        };
        Some(Self { state })
    }

    pub fn feed(&mut self, bytes: &[u8]) -> BodyScan {
        let mut at = 0;
        while at < bytes.len() {
            if let Chunk::Data { left, chunked } = &mut self.state {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - at);
                *left -= n as u64;
                at += n;
                if *left == 0 {
                    if !*chunked {
                        return BodyScan::Done(at);
                    }
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let byte = bytes[at];
            at += 1;
            let Some(next) = self.step(byte) else {
                return BodyScan::Invalid(at);
            };
            self.state = next;
            if next == Chunk::End {
                return BodyScan::Done(at);
            }
        }
        BodyScan::Partial
    }

    /// The state after `byte`; `None`: invalid.
    fn step(&self, byte: u8) -> Option<Chunk> {
        let hex = |b: u8| char::from(b).to_digit(16).map(u64::from);
        Some(match self.state {
            Chunk::Size { size, digits } => match (byte, hex(byte)) {
                (_, Some(digit)) if digits < MAX_CHUNK_SIZE_DIGITS => Chunk::Size {
                    size: size << 4 | digit,
                    digits: digits + 1,
                },
                (b' ' | b'\t', _) if digits > 0 => Chunk::SizeBlank { size },
                (b';', _) if digits > 0 => Chunk::Extension { size },
                (b'\r', _) if digits > 0 => Chunk::SizeLf { size },
                _ => return None,
            },
            Chunk::SizeBlank { size } => match byte {
                b' ' | b'\t' => Chunk::SizeBlank { size },
                b';' => Chunk::Extension { size },
                b'\r' => Chunk::SizeLf { size },
                _ => return None,
            },
            Chunk::Extension { size } => match byte {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return None,
                _ => Chunk::Extension { size },
            },
            Chunk::SizeLf { size: 0 } if byte == b'\n' => Chunk::TrailerStart,
            Chunk::SizeLf { size } if byte == b'\n' => Chunk::Data {
                left: size,
                chunked: true,
            },
            Chunk::DataCr if byte == b'\r' => Chunk::DataLf,
            Chunk::DataLf if byte == b'\n' => Chunk::Size { size: 0, digits: 0 },
            Chunk::TrailerStart if byte == b'\r' => Chunk::EndLf,
            Chunk::TrailerStart | Chunk::TrailerLine if byte != b'\n' && byte != b'\r' => {
                Chunk::TrailerLine
            }
            Chunk::TrailerLine if byte == b'\r' => Chunk::TrailerLf,
            Chunk::TrailerLf if byte == b'\n' => Chunk::TrailerStart,
            Chunk::EndLf if byte == b'\n' => Chunk::End,
            _ => return None,
        })
    }
}

/// What a parsed request's headers must satisfy on every listener: no `_` in a name when
/// the listener refuses them, at most `max_headers_count` of them (HTTP/2: hyper's HTTP/1
/// parser already counted), and on HTTP/2 a header list within `max_request_headers_kb`
/// (h2's own bound is a ceiling above it, [`H2_HEADER_LIST_CEILING`]) and a `Host` that
/// agrees with `:authority`.
#[must_use]
pub fn check_request(limits: &HttpLimits, parts: &http::request::Parts) -> Option<Refusal> {
    let (uri, headers) = (&parts.uri, &parts.headers);
    if limits.reject_header_underscores && headers.keys().any(|name| name.as_str().contains('_')) {
        return Some(Refusal::HeaderUnderscore);
    }
    if parts.version == http::Version::HTTP_2 {
        if headers.len() > limits.max_headers_count {
            return Some(Refusal::TooManyHeaders);
        }
        if header_list_size(parts) > limits.max_request_headers_bytes {
            return Some(Refusal::HeaderListTooLarge);
        }
        if let (Some(authority), Some(host)) = (uri.authority(), headers.get(header::HOST)) {
            let agrees = host
                .to_str()
                .is_ok_and(|host| host.eq_ignore_ascii_case(authority.as_str()));
            if !agrees || headers.get_all(header::HOST).iter().count() > 1 {
                return Some(Refusal::HostMismatch);
            }
        }
    }
    None
}

/// How many times `max_request_headers_kb` h2 itself lets a header list be (its
/// `SETTINGS_MAX_HEADER_LIST_SIZE`): below it, [`check_request`] refuses with the metric and
/// the access log line; above it (a client that ignored the setting), h2 answers 431 and
/// resets the stream (PROTOCOL_ERROR, counted by [`ServerFrames`]), and past four times
/// that it closes the connection (ENHANCE_YOUR_CALM, counted too).
pub const H2_HEADER_LIST_CEILING: usize = 2;

/// An HTTP/2 request's header list size as RFC 9113 §6.5.2 and h2 count it: each field's
/// name and value plus 32, pseudo-headers included.
fn header_list_size(parts: &http::request::Parts) -> usize {
    const FIELD: usize = 32;
    let pseudo =
        |name: &str, value: Option<&str>| value.map_or(0, |value| name.len() + value.len() + FIELD);
    let uri = &parts.uri;
    pseudo(":method", Some(parts.method.as_str()))
        + pseudo(":scheme", uri.scheme_str())
        + pseudo(
            ":authority",
            uri.authority().map(http::uri::Authority::as_str),
        )
        + pseudo(
            ":path",
            uri.path_and_query().map(http::uri::PathAndQuery::as_str),
        )
        + parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD)
            .sum::<usize>()
}

/// A stream or a connection h2 refused itself, as the frame the server wrote says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Refusal {
    /// RST_STREAM REFUSED_STREAM: a stream over `max_concurrent_streams`.
    RefusedStream,
    /// RST_STREAM PROTOCOL_ERROR: a malformed stream, or a header list over h2's ceiling
    /// (after its 431).
    StreamProtocolError,
    /// GOAWAY ENHANCE_YOUR_CALM: one of h2's abuse bounds (reset bursts, CONTINUATION
    /// floods, a header list far over the ceiling).
    EnhanceYourCalm,
    /// GOAWAY with any other error: the client broke the protocol.
    ConnectionError,
}

impl H2Refusal {
    /// The `limit` label of `shunt_http_limit_rejections_total`.
    #[must_use]
    pub fn limit(self) -> &'static str {
        match self {
            Self::RefusedStream => "max_concurrent_streams",
            Self::StreamProtocolError => "http2_stream_protocol_error",
            Self::EnhanceYourCalm => "http2_enhance_your_calm",
            Self::ConnectionError => "http2_connection_error",
        }
    }
}

/// Follows the HTTP/2 frames a server writes, as they are written (a frame may span writes),
/// for the RST_STREAM and GOAWAY frames h2 sends on its own: hyper exposes neither. Only
/// frame headers and the error codes are kept; payloads are skipped.
#[derive(Debug, Default)]
pub struct ServerFrames {
    /// The frame header (9 bytes), then the start of an RST_STREAM or GOAWAY payload.
    kept: [u8; FRAME_HEADER + 8],
    have: usize,
    /// Bytes of the current frame's payload still to skip once `kept` is full.
    skip: usize,
}

const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

impl ServerFrames {
    /// Follows `bytes`, the next ones written; `refused` hears of each refusal frame.
    pub fn feed(&mut self, mut bytes: &[u8], mut refused: impl FnMut(H2Refusal)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = self.wanted();
            let n = (want - self.have).min(bytes.len());
            self.kept[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            // A complete header may ask for part of the payload next.
            if self.have == self.wanted() {
                self.frame_kept(&mut refused);
            }
        }
    }

    fn length(&self) -> usize {
        usize::from(self.kept[0]) << 16 | usize::from(self.kept[1]) << 8 | usize::from(self.kept[2])
    }

    /// How much of the current frame to keep: its header, then the part of the payload
    /// with the error code.
    fn wanted(&self) -> usize {
        if self.have < FRAME_HEADER {
            return FRAME_HEADER;
        }
        let code_end = match self.kept[3] {
            RST_STREAM => 4,
            GOAWAY => 8,
            _ => 0,
        };
        FRAME_HEADER + code_end.min(self.length())
    }

    /// The kept part of a frame is in: judges it and skips the rest.
    fn frame_kept(&mut self, refused: &mut impl FnMut(H2Refusal)) {
        let length = self.length();
        let payload = &self.kept[FRAME_HEADER..self.have];
        let code = |at: usize| {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let refusal = match (self.kept[3], code(0), code(4)) {
            (RST_STREAM, Some(REFUSED_STREAM), _) => Some(H2Refusal::RefusedStream),
            (RST_STREAM, Some(PROTOCOL_ERROR), _) => Some(H2Refusal::StreamProtocolError),
            (GOAWAY, _, Some(ENHANCE_YOUR_CALM)) => Some(H2Refusal::EnhanceYourCalm),
            (GOAWAY, _, Some(code)) if code != NO_ERROR => Some(H2Refusal::ConnectionError),
            _ => None,
        };
        if let Some(refusal) = refusal {
            refused(refusal);
        }
        self.skip = length - payload.len();
        self.have = 0;
    }
}

/// What one connection's requests share with its serve loop: how many are in flight and
/// since when none is (the idle timeout, and when an HTTP/1 head may begin), and the
/// rapid-reset budget.
#[derive(Debug)]
pub struct StreamWatch {
    born: Instant,
    /// Requests handed to the service whose exchange is not over.
    in_flight: AtomicU32,
    /// Requests handed to the service, ever.
    dispatched: AtomicU64,
    /// When `in_flight` last fell to 0, in ms since `born`.
    idle_since_ms: AtomicU64,
    /// An HTTP/1 head has begun and is not over: not idle (its own timeout bounds it).
    reading_head: AtomicBool,
    /// Set when the connection upgraded (the bytes that follow are a tunnel's): head
    /// scanning stops for the connection.
    scanning_stopped: AtomicBool,
    /// Dispatched requests whose exchange is over, ever.
    finishes: AtomicU64,
    /// Requests the service answered (and so decided whether they upgrade), ever.
    answered: AtomicU64,
    /// The connection's reader, waiting on `finishes` or `answered`.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
    /// Streams reset by the client within [`PREMATURE_RESET_LIFETIME`].
    premature_resets: AtomicU32,
    /// Over the rapid-reset budget: the serve loop sends GOAWAY and closes.
    tripped: AtomicBool,
    trip: Notify,
}

impl Default for StreamWatch {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            dispatched: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            reading_head: AtomicBool::new(false),
            scanning_stopped: AtomicBool::new(false),
            finishes: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            reader: std::sync::Mutex::new(None),
            premature_resets: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            trip: Notify::new(),
        }
    }
}

/// A request in flight on its connection, until dropped (with its exchange).
#[derive(Debug)]
pub struct InFlight(Arc<StreamWatch>);

impl InFlight {
    #[must_use]
    pub fn watch(&self) -> &StreamWatch {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished();
    }
}

impl StreamWatch {
    /// A request was handed to the service: in flight until the guard is dropped.
    #[must_use]
    pub fn dispatch(self: &Arc<Self>) -> InFlight {
        self.dispatched();
        InFlight(self.clone())
    }

    /// A request was handed to the service.
    pub fn dispatched(&self) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A dispatched request's exchange is over.
    pub fn finished(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.finishes.fetch_add(1, Ordering::AcqRel);
        self.wake_reader();
    }

    /// Dispatched requests whose exchange is over, ever.
    #[must_use]
    pub fn finishes(&self) -> u64 {
        self.finishes.load(Ordering::Acquire)
    }

    /// The service answered a request: `upgraded`, its connection becomes a tunnel.
    pub fn answered(&self, upgraded: bool) {
        if upgraded {
            self.stop_scanning();
        }
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.wake_reader();
    }

    #[must_use]
    pub fn answered_count(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// The reader waits for a request to finish or be answered.
    pub fn park_reader(&self, waker: &std::task::Waker) {
        let mut reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reader.replace(waker.clone());
    }

    pub fn wake_reader(&self) {
        let waker = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    #[must_use]
    pub fn dispatched_count(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether an HTTP/1 head is arriving (the head scanner says).
    pub fn set_reading_head(&self, reading: bool) {
        self.reading_head.store(reading, Ordering::Relaxed);
    }

    pub fn stop_scanning(&self) {
        self.scanning_stopped.store(true, Ordering::Release);
    }

    #[must_use]
    pub fn scanning_stopped(&self) -> bool {
        self.scanning_stopped.load(Ordering::Acquire)
    }

    /// How long the connection has had no request in flight; `None` while one is (or its
    /// head is arriving).
    #[must_use]
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 || self.reading_head.load(Ordering::Relaxed) {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(self.born.elapsed().saturating_sub(since))
    }

    /// A stream the client reset (or left) `lifetime` after it began; trips the budget when
    /// the premature ones are too many (Envoy's rule: half of the streams, judged once
    /// there were `budget` of them, or as soon as half of `budget` were reset early).
    pub fn reset(&self, lifetime: Duration, budget: u32) {
        if lifetime >= PREMATURE_RESET_LIFETIME {
            return;
        }
        let premature = u64::from(self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1);
        let streams = self.dispatched_count();
        let budget = u64::from(budget);
        let over = if streams < budget {
            premature * 2 >= budget
        } else {
            premature * 2 >= streams
        };
        if over && !self.tripped.swap(true, Ordering::AcqRel) {
            self.trip.notify_one();
        }
    }

    /// Whether the rapid-reset budget is spent (the connection is closing).
    #[must_use]
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Resolves once the rapid-reset budget is spent.
    pub async fn tripped(&self) {
        loop {
            let notified = self.trip.notified();
            if self.is_tripped() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return,
                Some(idle) => timeout - idle,
                // Busy: look again a timeout later; a request in flight has its own limits.
                None => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests;
