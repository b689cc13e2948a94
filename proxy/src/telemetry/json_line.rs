//! A JSON object written field by field into a reused line buffer: the access log's encoder.
//! Two lines per proxied request made serde's generic path (a per-byte escape loop, a
//! `String` per address, timestamp and cluster name) a tenth of the proxy's user time. The
//! bytes are exactly what `serde_json` writes for the same fields, which the access log's
//! tests check entry by entry.
#![forbid(unsafe_code)]

use std::fmt::{self, Display, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One JSON object being written to the end of `out`.
pub struct JsonLine<'a> {
    out: &'a mut Vec<u8>,
    fields: usize,
}

impl<'a> JsonLine<'a> {
    /// Opens an object at the end of `out`.
    pub fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, fields: 0 }
    }

    /// Closes the object.
    pub fn close(self) {
        self.out.push(b'}');
    }

    /// `name` is one of the access log's own field names, which need no escape.
    fn key(&mut self, name: &str) {
        debug_assert!(is_clean(name.as_bytes()), "{name:?}");
        if self.fields > 0 {
            self.out.push(b',');
        }
        self.fields += 1;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        push_escaped(self.out, value);
    }

    /// The value's `Display` text, as a JSON string.
    pub fn display(&mut self, name: &str, value: &impl Display) {
        self.key(name);
        self.out.push(b'"');
        // Writing to a Vec cannot fail; a Display impl that errs leaves its partial text.
        let _ = write!(Escaping(self.out), "{value}");
        self.out.push(b'"');
    }

    pub fn u64(&mut self, name: &str, value: u64) {
        self.key(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn null(&mut self, name: &str) {
        self.key(name);
        self.out.extend_from_slice(b"null");
    }

    pub fn opt_str(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(name, value),
            None => self.null(name),
        }
    }

    pub fn opt_display(&mut self, name: &str, value: Option<&impl Display>) {
        match value {
            Some(value) => self.display(name, value),
            None => self.null(name),
        }
    }

    /// `a.b.c.d:port`, written with integer formatting rather than `Display`, whose generic
    /// machinery cost more than the rest of an address's line.
    pub fn socket_addr(&mut self, name: &str, addr: SocketAddrV4) {
        self.key(name);
        self.out.push(b'"');
        push_ipv4(self.out, *addr.ip());
        self.out.push(b':');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
        self.out.push(b'"');
    }

    pub fn opt_socket_addr(&mut self, name: &str, addr: Option<SocketAddrV4>) {
        match addr {
            Some(addr) => self.socket_addr(name, addr),
            None => self.null(name),
        }
    }

    pub fn opt_u64(&mut self, name: &str, value: Option<u64>) {
        match value {
            Some(value) => self.u64(name, value),
            None => self.null(name),
        }
    }

    /// RFC 3339 in UTC, as `time` formats it (nanoseconds without trailing zeros).
    pub fn rfc3339(&mut self, name: &str, at: SystemTime) {
        self.key(name);
        self.out.push(b'"');
        let start = self.out.len();
        if OffsetDateTime::from(at)
            .format_into(&mut *self.out, &Rfc3339)
            .is_err()
        {
            // Only a year past 9999 fails; say so rather than write half a date.
            self.out.truncate(start);
            self.out.extend_from_slice(b"unrepresentable time");
        }
        self.out.push(b'"');
    }
}

/// `ip` in dotted decimal, as its `Display` writes it but without the formatting machinery
/// (per request, also for `x-forwarded-for`).
pub fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
}

/// Whether `byte` must be escaped inside a JSON string (no short circuit: see [`is_clean`]).
fn must_escape(byte: u8) -> bool {
    (byte < 0x20) | (byte == b'"') | (byte == b'\\')
}

/// Whether `bytes` need no escape at all. Branch-free over fixed 16-byte blocks, which the
/// compiler turns into vector compares; it stops at the first block that needs one.
fn is_clean(bytes: &[u8]) -> bool {
    let (blocks, tail) = bytes.as_chunks::<16>();
    for block in blocks {
        if block
            .iter()
            .fold(false, |dirty, &byte| dirty | must_escape(byte))
        {
            return false;
        }
    }
    !tail
        .iter()
        .fold(false, |dirty, &byte| dirty | must_escape(byte))
}

/// `text` as a JSON string. Most fields (names, addresses, paths) need no escape: a scan
/// finds that before a plain copy.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped_body(out, text);
    out.push(b'"');
}

fn push_escaped_body(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if !must_escape(byte) {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..at]);
        plain_from = at + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(control >> 4)]);
                out.push(HEX[usize::from(control & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// A `fmt::Write` that escapes what it is given into a JSON string's body.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        push_escaped_body(self.0, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let cases = [
            "",
            "plain/path?q=1",
            "quote \" and backslash \\",
            "controls \n \r \t \u{8} \u{c} \u{0} \u{1f} \u{7f}",
            "unicode é ✓ 🚀 stays as it is",
            "\\\"\\\"",
            "ends with a newline\n",
            // Past the first 16-byte block, and in the tail after the last whole block.
            "/a/longer/path/in/the/second/block\\here",
            "/a/longer/path/in/the/second/block/and/a/tail\n",
        ];
        for text in cases {
            let mut line = Vec::new();
            let mut json = JsonLine::open(&mut line);
            json.str("s", text);
            json.display("d", &text);
            json.close();
            let quoted = serde_json::to_string(text).unwrap();
            let expected = format!(r#"{{"s":{quoted},"d":{quoted}}}"#);
            assert_eq!(String::from_utf8(line).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let cases = [
            SocketAddrV4::new([0, 0, 0, 0].into(), 0),
            SocketAddrV4::new([10, 244, 0, 20].into(), 8080),
            SocketAddrV4::new([255, 255, 255, 255].into(), 65535),
            SocketAddrV4::new([1, 20, 100, 9].into(), 15006),
        ];
        for addr in cases {
            let mut line = Vec::new();
            let mut json = JsonLine::open(&mut line);
            json.socket_addr("a", addr);
            json.close();
            assert_eq!(
                String::from_utf8(line).unwrap(),
                format!(r#"{{"a":"{addr}"}}"#)
            );
        }
    }

    #[test]
    fn numbers_nulls_and_times_read_back_as_json() {
        let at =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
        let mut line = Vec::new();
        let mut json = JsonLine::open(&mut line);
        json.u64("zero", 0);
        json.u64("max", u64::MAX);
        json.opt_u64("none", None);
        json.opt_str("absent", None);
        json.opt_display("addr", Some(&SocketAddrV4::new([10, 0, 0, 1].into(), 80)));
        json.opt_socket_addr("none_addr", None);
        json.rfc3339("at", at);
        json.close();
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "zero": 0,
                "max": u64::MAX,
                "none": null,
                "absent": null,
                "addr": "10.0.0.1:80",
                "none_addr": null,
                "at": "2023-11-14T22:13:20.123456789Z",
            })
        );
    }
}
