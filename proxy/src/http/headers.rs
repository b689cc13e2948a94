//! Request and response header handling every proxied request gets: hop-by-hop removal
//! (RFC 9110 §7.6.1), `x-forwarded-for`/`x-forwarded-proto`, and `x-request-id`. Trace
//! headers (B3, W3C `traceparent`) are end-to-end and pass through untouched.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of one message: those `Connection` lists, `Connection`
/// itself, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `TE` (unless it is just
/// `trailers`, which gRPC needs end to end) and `Upgrade`. When `upgrading`, `Upgrade` and a
/// `Connection: upgrade` stay so the next hop sees the upgrade request or its 101.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages carry none of them: one pass over the names instead of a lookup each.
    if !upgrading && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if upgrading && name == header::UPGRADE {
            continue;
        }
        // `te: trailers` survives even when listed: gRPC depends on it.
        if name == header::TE && is_te_trailers(headers) {
            continue;
        }
        headers.remove(&name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if !is_te_trailers(headers) {
        headers.remove(header::TE);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether `name` is one of the headers [`remove_hop_by_hop`] removes whatever `Connection`
/// lists.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TE,
        &header::UPGRADE,
    ]
    .contains(&name)
}

fn is_te_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"trailers")
    )
}

/// Appends `client` to `x-forwarded-for` and sets `x-forwarded-proto: http` (the proxy only
/// sees plain-text HTTP). Returns the resulting `x-forwarded-for`.
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<Ipv4Addr>) -> Option<String> {
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    let existing = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
    let Some(ip) = client else {
        return existing.map(str::to_owned);
    };
    let mut appended = Vec::with_capacity(existing.map_or(0, str::len) + 17);
    if let Some(existing) = existing.filter(|existing| !existing.trim().is_empty()) {
        appended.extend_from_slice(existing.as_bytes());
        appended.extend_from_slice(b", ");
    }
    crate::telemetry::json_line::push_ipv4(&mut appended, ip);
    let value = HeaderValue::from_bytes(&appended).ok()?;
    headers.insert(X_FORWARDED_FOR.clone(), value);
    String::from_utf8(appended).ok()
}

/// What an inbound hop does to the forwarded headers: `x-forwarded-for` stays as received
/// (Envoy appends only where it uses the remote address, which Istio's sidecars do not
/// inbound) and `x-forwarded-proto: http` is set only when absent. Returns the
/// `x-forwarded-for` received.
pub fn keep_forwarded(headers: &mut HeaderMap) -> Option<String> {
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The request's `x-request-id`, generated (UUID v4) and set when absent.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return id.to_owned();
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    id
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
#[must_use]
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_ones_kept() {
        // (case, request headers, upgrading, header names left)
        type Case = (
            &'static str,
            Vec<(&'static str, &'static str)>,
            bool,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "fixed hop-by-hop set",
                vec![
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                    ("te", "gzip"),
                    ("upgrade", "websocket"),
                    ("traceparent", "00-abc-def-01"),
                    ("x-b3-traceid", "abc"),
                ],
                false,
                vec!["traceparent", "x-b3-traceid"],
            ),
            (
                "headers Connection lists",
                vec![
                    ("connection", "x-secret, close"),
                    ("x-secret", "1"),
                    ("x-kept", "1"),
                ],
                false,
                vec!["x-kept"],
            ),
            (
                "te: trailers stays (gRPC)",
                vec![("te", "trailers"), ("content-type", "application/grpc")],
                false,
                vec!["content-type", "te"],
            ),
            (
                "an upgrade keeps Upgrade and Connection: upgrade",
                vec![
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("keep-alive", "1"),
                ],
                true,
                vec!["connection", "upgrade"],
            ),
            (
                "none of them: nothing changes",
                vec![("content-type", "text/plain"), ("x-request-id", "abc")],
                false,
                vec!["content-type", "x-request-id"],
            ),
            (
                "an upgrade without hop-by-hop headers still gets Connection: upgrade",
                vec![("x-kept", "1")],
                true,
                vec!["connection", "x-kept"],
            ),
        ];
        for (name, pairs, upgrading, expected) in cases {
            let mut map = headers(&pairs);
            remove_hop_by_hop(&mut map, upgrading);
            assert_eq!(names(&map), expected, "{name}");
        }
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let client = Some(Ipv4Addr::new(10, 0, 0, 7));
        for (existing, expected) in [(None, "10.0.0.7"), (Some("1.2.3.4"), "1.2.3.4, 10.0.0.7")] {
            let mut map = HeaderMap::new();
            if let Some(existing) = existing {
                map.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static(existing));
            }
            assert_eq!(add_forwarded(&mut map, client).as_deref(), Some(expected));
            assert_eq!(map[&X_FORWARDED_PROTO], "http");
        }
    }

    #[test]
    fn a_request_id_is_kept_or_generated() {
        let mut given = headers(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut given), "abc");
        let mut missing = HeaderMap::new();
        let id = ensure_request_id(&mut missing);
        assert_eq!(missing[&X_REQUEST_ID], id.as_str());
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
