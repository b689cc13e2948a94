//! The consistent-hash key of a request (`consistentHash` of a DestinationRule).
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use http::HeaderValue;
use http::header::COOKIE;
use rand::Rng;

use super::lb::hash;
use shunt_mesh::routing::HashKey;

/// The request's hash for `key`, and, for a cookie key with a `ttl` when the request has no
/// such cookie, the `Set-Cookie` value to send back so that the client's next requests hash
/// the same. `None` hash: the request lacks the key; the balancer then picks at random.
#[must_use]
pub fn hash_key(
    key: &HashKey,
    request: &http::request::Parts,
    source_ip: Option<Ipv4Addr>,
) -> (Option<u64>, Option<HeaderValue>) {
    match key {
        HashKey::Header(name) => (request.headers.get(name).map(|v| hash(v.as_bytes())), None),
        HashKey::SourceIp => (source_ip.map(|ip| hash(ip.to_string().as_bytes())), None),
        HashKey::QueryParameter(name) => (
            query_parameter(request.uri.query(), name).map(|v| hash(v.as_bytes())),
            None,
        ),
        HashKey::Cookie { name, path, ttl } => {
            if let Some(value) = cookie(&request.headers, name) {
                return (Some(hash(value.as_bytes())), None);
            }
            let Some(ttl) = ttl else {
                return (None, None);
            };
            // A fresh random value: the hash of this request and of every later request that
            // carries the cookie is the hash of this value.
            let value = format!("{:016x}", rand::rng().random::<u64>());
            let mut set_cookie = format!("{name}={value}; Path={}", path.as_deref().unwrap_or("/"));
            if !ttl.is_zero() {
                set_cookie.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
            }
            set_cookie.push_str("; HttpOnly");
            (
                Some(hash(value.as_bytes())),
                HeaderValue::from_str(&set_cookie).ok(),
            )
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The first value of query parameter `name`, as sent (not percent-decoded).
fn query_parameter<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_hash_what_they_name() {
        let header = HashKey::Header(http::HeaderName::from_static("x-user"));
        let query = HashKey::QueryParameter(Arc::from("user"));
        let cookie = HashKey::Cookie {
            name: Arc::from("session"),
            path: None,
            ttl: None,
        };
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let table: &[(
            &HashKey,
            http::request::Parts,
            Option<Ipv4Addr>,
            Option<u64>,
        )] = &[
            (
                &header,
                parts("/", &[("x-user", "ann")]),
                None,
                Some(hash(b"ann")),
            ),
            (&header, parts("/", &[]), None, None),
            (
                &query,
                parts("/p?a=1&user=bob", &[]),
                None,
                Some(hash(b"bob")),
            ),
            (&query, parts("/p?a=1", &[]), None, None),
            (
                &cookie,
                parts("/", &[("cookie", "a=1; session=\"xyz\"")]),
                None,
                Some(hash(b"xyz")),
            ),
            (&cookie, parts("/", &[]), None, None),
            (
                &HashKey::SourceIp,
                parts("/", &[]),
                Some(ip),
                Some(hash(b"10.1.2.3")),
            ),
            (&HashKey::SourceIp, parts("/", &[]), None, None),
        ];
        for (key, request, source, expected) in table {
            assert_eq!(
                hash_key(key, request, *source),
                (*expected, None),
                "{key:?}"
            );
        }
    }

    #[test]
    fn a_missing_cookie_with_ttl_is_issued_and_then_honoured() {
        let key = HashKey::Cookie {
            name: Arc::from("session"),
            path: Some(Arc::from("/shop")),
            ttl: Some(Duration::from_secs(60)),
        };
        let (first, issued) = hash_key(&key, &parts("/", &[]), None);
        let issued = issued.unwrap();
        let issued = issued.to_str().unwrap();
        assert!(issued.starts_with("session="), "{issued}");
        assert!(
            issued.ends_with("; Path=/shop; Max-Age=60; HttpOnly"),
            "{issued}"
        );
        let pair = issued.split(';').next().unwrap();
        let (again, none) = hash_key(&key, &parts("/", &[("cookie", pair)]), None);
        assert_eq!((again, none), (first, None));
    }
}
