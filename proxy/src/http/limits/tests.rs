use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::*;

fn limits() -> HttpLimits {
    HttpLimits {
        max_request_headers_bytes: 200,
        max_headers_count: 3,
        ..HttpLimits::default()
    }
}

/// Feeds `head` whole, then byte by byte: both must end the same way.
fn scan(head: &[u8]) -> Scan {
    let whole = HeadScanner::new(&limits()).feed(head);
    let mut bytewise = HeadScanner::new(&limits());
    let mut last = Scan::Partial;
    for byte in head {
        last = bytewise.feed(std::slice::from_ref(byte));
        if last != Scan::Partial {
            break;
        }
    }
    assert_eq!(whole, last, "{}", String::from_utf8_lossy(head));
    whole
}

#[test]
fn heads_within_the_limits_complete_and_smuggling_framings_are_refused() {
    let ok = Scan::Complete { h2: false };
    let refused = Scan::Refused;
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
    let big_headers = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "b".repeat(190));
    let long_name = format!("GET / HTTP/1.1\r\n{}: v\r\n\r\n", "n".repeat(100));
    let cases: &[(&[u8], Scan)] = &[
        (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", ok),
        (b"\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n", ok),
        (b"GET / HTTP/1.1\nhost: a\n\n", ok),
        (b"GET / HTTP/1.1\r\nhost: a\r\n", Scan::Partial),
        (b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello", ok),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            ok,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n",
            ok,
        ),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Scan::Complete { h2: true },
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n",
            refused(Refusal::ContentLengthAndChunked),
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 6\r\n\r\n",
            refused(Refusal::ContentLengthAndChunked),
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            refused(Refusal::MultipleContentLength),
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 5, 6\r\n\r\n",
            refused(Refusal::MultipleContentLength),
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            refused(Refusal::InvalidTransferEncoding),
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            refused(Refusal::InvalidTransferEncoding),
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
            refused(Refusal::InvalidTransferEncoding),
        ),
        (
            b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n",
            refused(Refusal::TooManyHeaders),
        ),
        (long_line.as_bytes(), refused(Refusal::UriTooLong)),
        (big_headers.as_bytes(), refused(Refusal::HeadersTooLarge)),
        (
            b"GET / HTTP/1.1\r\nx: a\0b\r\n\r\n",
            refused(Refusal::InvalidHeader),
        ),
        (
            b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n",
            refused(Refusal::InvalidHeader),
        ),
        (b"GET /\0 HTTP/1.1\r\n\r\n", refused(Refusal::InvalidHeader)),
        (
            b"GET / HTTP/1.1\r\nx: a\nb\r\n\r\n",
            refused(Refusal::InvalidHeader),
        ),
        // A colon past the bytes kept of a line still counts.
        (long_name.as_bytes(), ok),
    ];
    for (head, expected) in cases {
        assert_eq!(scan(head), *expected, "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn the_scanner_stops_at_the_end_of_the_head() {
    let mut scanner = HeadScanner::new(&limits());
    assert!(!scanner.started());
    assert_eq!(scanner.feed(b"\r\n"), Scan::Partial);
    assert!(!scanner.started(), "leading empty lines are no head yet");
    assert_eq!(scanner.feed(b"GE"), Scan::Partial);
    assert!(scanner.started());
    // What follows the head (a body that looks like anything) is not judged.
    let body = format!("{}\r\n\r\n", "x: y\r\n".repeat(50));
    let mut rest = b"T / HTTP/1.1\r\ncontent-length: 300\r\n\r\n".to_vec();
    rest.extend_from_slice(body.as_bytes());
    assert_eq!(scanner.feed(&rest), Scan::Complete { h2: false });
}

#[test]
fn every_refusal_has_a_status_a_label_and_a_response() {
    let all = [
        Refusal::HeadersTooLarge,
        Refusal::TooManyHeaders,
        Refusal::UriTooLong,
        Refusal::HeadersTimeout,
        Refusal::ContentLengthAndChunked,
        Refusal::MultipleContentLength,
        Refusal::InvalidTransferEncoding,
        Refusal::HeaderUnderscore,
        Refusal::HostMismatch,
        Refusal::InvalidBody,
        Refusal::InvalidHeader,
    ];
    for refusal in all {
        let response = std::str::from_utf8(refusal.http1_response()).unwrap();
        let status_line = format!("HTTP/1.1 {} ", refusal.status().as_u16());
        assert!(
            response.starts_with(&status_line),
            "{refusal:?}: {response}"
        );
        assert!(
            response.ends_with("connection: close\r\n\r\n"),
            "{refusal:?}"
        );
        assert!(!refusal.limit().is_empty() && !refusal.details().is_empty());
    }
}

#[test]
fn parsed_requests_are_checked_for_underscores_counts_and_host() {
    let strict = HttpLimits {
        reject_header_underscores: true,
        max_headers_count: 2,
        ..HttpLimits::default()
    };
    let lenient = HttpLimits {
        max_headers_count: 2,
        ..HttpLimits::default()
    };
    let h2 = http::Version::HTTP_2;
    let h1 = http::Version::HTTP_11;
    let with_authority: http::Uri = "http://a.test/x".parse().unwrap();
    let origin_form: http::Uri = "/x".parse().unwrap();
    type Case<'a> = (
        &'a HttpLimits,
        http::Version,
        &'a http::Uri,
        &'a [(&'a str, &'a str)],
        Option<Refusal>,
    );
    let cases: &[Case<'_>] = &[
        (&lenient, h1, &origin_form, &[("x_y", "1")], None),
        (
            &strict,
            h1,
            &origin_form,
            &[("x_y", "1")],
            Some(Refusal::HeaderUnderscore),
        ),
        (
            &strict,
            h2,
            &with_authority,
            &[("x_y", "1")],
            Some(Refusal::HeaderUnderscore),
        ),
        (&strict, h1, &origin_form, &[("x-y", "1")], None),
        (&lenient, h2, &with_authority, &[("host", "a.test")], None),
        (&lenient, h2, &with_authority, &[("host", "A.TEST")], None),
        (&lenient, h2, &with_authority, &[], None),
        (
            &lenient,
            h2,
            &with_authority,
            &[("host", "b.test")],
            Some(Refusal::HostMismatch),
        ),
        (
            &lenient,
            h2,
            &with_authority,
            &[("host", "a.test"), ("host", "a.test")],
            Some(Refusal::HostMismatch),
        ),
        // HTTP/1 has one Host; an absolute-form target overrides it (RFC 9112 §3.2.2).
        (&lenient, h1, &with_authority, &[("host", "b.test")], None),
        (
            &lenient,
            h2,
            &origin_form,
            &[("a", "1"), ("b", "2"), ("c", "3")],
            Some(Refusal::TooManyHeaders),
        ),
        // hyper's HTTP/1 parser counts those itself.
        (
            &lenient,
            h1,
            &origin_form,
            &[("a", "1"), ("b", "2"), ("c", "3")],
            None,
        ),
    ];
    for (limits, version, uri, pairs, expected) in cases {
        assert_eq!(
            check_request(limits, &parts(*version, uri, pairs)),
            *expected,
            "{version:?} {uri} {pairs:?}"
        );
    }
}

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

fn parts(version: http::Version, uri: &http::Uri, pairs: &[(&str, &str)]) -> http::request::Parts {
    let mut request = http::Request::get(uri.clone())
        .version(version)
        .body(())
        .unwrap();
    *request.headers_mut() = headers(pairs);
    request.into_parts().0
}

#[test]
fn an_h2_header_list_is_bounded_by_its_rfc_size_pseudo_headers_included() {
    let limits = HttpLimits {
        max_request_headers_bytes: 300,
        ..HttpLimits::default()
    };
    let uri: http::Uri = "http://a.test/x".parse().unwrap();
    // :method GET (42), :scheme http (43), :authority a.test (48), :path /x (39): 172.
    let pseudo = 172;
    let value = |len: usize| "v".repeat(len);
    let cases: &[(http::Version, usize, Option<Refusal>)] = &[
        // "x" + value + 32 brings the list to exactly the limit.
        (http::Version::HTTP_2, 300 - pseudo - 33, None),
        (
            http::Version::HTTP_2,
            300 - pseudo - 32,
            Some(Refusal::HeaderListTooLarge),
        ),
        // HTTP/1's head is the head scanner's to measure.
        (http::Version::HTTP_11, 300, None),
    ];
    for (version, len, expected) in cases {
        let value = value(*len);
        assert_eq!(
            check_request(&limits, &parts(*version, &uri, &[("x", &value)])),
            *expected,
            "{version:?} {len}"
        );
    }
}

/// Frames as an h2 server writes them: 9-byte header, payload.
fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, 0];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn server_frames_count_h2_refusals_however_the_writes_split_them() {
    let rst = |code: u32| frame(0x3, 1, &code.to_be_bytes());
    let goaway = |code: u32| {
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(b"debug data");
        frame(0x7, 0, &payload)
    };
    // A DATA frame whose payload looks like an RST_STREAM REFUSED_STREAM: never judged.
    let data = frame(0x0, 1, &rst(0x7));
    let settings = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
    let cases: Vec<(&str, Vec<u8>, Vec<H2Refusal>)> = vec![
        (
            "settings and data",
            [settings.clone(), data.clone()].concat(),
            vec![],
        ),
        ("refused stream", rst(0x7), vec![H2Refusal::RefusedStream]),
        (
            "protocol error",
            rst(0x1),
            vec![H2Refusal::StreamProtocolError],
        ),
        ("cancel is the server's own choice", rst(0x8), vec![]),
        ("graceful goaway", goaway(0x0), vec![]),
        (
            "enhance your calm",
            goaway(0xb),
            vec![H2Refusal::EnhanceYourCalm],
        ),
        (
            "goaway protocol error",
            goaway(0x1),
            vec![H2Refusal::ConnectionError],
        ),
        (
            "a run of frames",
            [
                settings,
                rst(0x7),
                data,
                rst(0x7),
                frame(0x3, 3, &[0, 0]),
                goaway(0xb),
            ]
            .concat(),
            vec![
                H2Refusal::RefusedStream,
                H2Refusal::RefusedStream,
                H2Refusal::EnhanceYourCalm,
            ],
        ),
    ];
    for (name, bytes, expected) in &cases {
        // Whole, byte by byte, and split at every point.
        let mut splits: Vec<Vec<&[u8]>> = vec![vec![bytes], bytes.chunks(1).collect()];
        for at in 1..bytes.len() {
            splits.push(vec![&bytes[..at], &bytes[at..]]);
        }
        for writes in splits {
            let mut frames = ServerFrames::default();
            let mut seen = Vec::new();
            for write in &writes {
                frames.feed(write, |refusal| seen.push(refusal));
            }
            assert_eq!(
                &seen,
                expected,
                "{name}: writes of {:?}",
                writes.iter().map(|w| w.len()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn the_rapid_reset_budget_follows_envoys_rule() {
    let early = Duration::from_millis(1);
    // Half the budget reset early trips it before the budget's stream count is reached.
    let watch = StreamWatch::default();
    for i in 0..10 {
        watch.dispatched();
        watch.reset(early, 20);
        assert_eq!(watch.is_tripped(), i == 9, "reset {i}");
    }
    // Streams that lived long enough never count.
    let watch = StreamWatch::default();
    for _ in 0..100 {
        watch.dispatched();
        watch.reset(PREMATURE_RESET_LIFETIME, 20);
    }
    assert!(!watch.is_tripped());
    // Past the budget's stream count, fewer than half reset early is fine; half is not.
    let watch = StreamWatch::default();
    for i in 0..40 {
        watch.dispatched();
        watch.finished();
        if i % 3 == 0 {
            watch.reset(early, 20);
        }
    }
    assert!(!watch.is_tripped(), "14 early resets of 40 streams");
    for i in 0..12 {
        assert!(!watch.is_tripped(), "{} of {}", 14 + i, 40 + i);
        watch.dispatched();
        watch.reset(early, 20);
    }
    assert!(watch.is_tripped(), "26 of 52");
}

#[tokio::test(start_paused = true)]
async fn idle_resolves_only_after_the_timeout_with_nothing_in_flight() {
    let watch = std::sync::Arc::new(StreamWatch::default());
    watch.dispatched();
    let idle = tokio::spawn({
        let watch = watch.clone();
        async move { watch.idle(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(!idle.is_finished(), "a request is in flight");
    watch.finished();
    assert_eq!(
        watch.idle_for().map(|d| d < Duration::from_secs(1)),
        Some(true)
    );
    tokio::time::timeout(Duration::from_secs(30), idle)
        .await
        .expect("idle after the timeout")
        .unwrap();
    let tripped = watch.clone();
    let waiting = tokio::spawn(async move { tripped.tripped().await });
    for _ in 0..5 {
        watch.dispatched();
        watch.reset(Duration::ZERO, 10);
    }
    tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("tripped")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_head_arriving_is_not_idle() {
    let watch = StreamWatch::default();
    watch.set_reading_head(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(watch.idle_for(), None);
    watch.set_reading_head(false);
    assert!(
        watch
            .idle_for()
            .is_some_and(|idle| idle >= Duration::from_secs(5))
    );
}

#[test]
fn a_body_scanner_finds_where_the_body_ends_however_it_arrives() {
    use BodyScan::{Done, Invalid, Partial};
    let cases: &[(Framing, &[u8], BodyScan)] = &[
        (Framing::Length(5), b"helloGET", Done(5)),
        (Framing::Length(5), b"hell", Partial),
        (Framing::Chunked, b"5\r\nhello\r\n0\r\n\r\nGET", Done(15)),
        (Framing::Chunked, b"5;ext=1\r\nhello\r\n0\r\n\r\n", Done(21)),
        (Framing::Chunked, b"5 \r\nhello\r\n0\r\n\r\n", Done(16)),
        (Framing::Chunked, b"0\r\nx-t: 1\r\n\r\nGET", Done(13)),
        (Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n", Done(20)),
        (Framing::Chunked, b"5\r\nhello\r\n", Partial),
        (Framing::Chunked, b"zz\r\n", Invalid(1)),
        (Framing::Chunked, b"5\nhello\r\n0\r\n\r\n", Invalid(2)),
        (Framing::Chunked, b"5\r\nhelloX\r\n", Invalid(9)),
        (Framing::Chunked, b"0\r\n\n", Invalid(4)),
        (Framing::Chunked, b"\r\n", Invalid(1)),
        (Framing::Chunked, b"00000000000000001\r\n", Invalid(17)),
    ];
    for (framing, bytes, expected) in cases {
        let whole = BodyScanner::new(*framing).unwrap().feed(bytes);
        assert_eq!(whole, *expected, "{}", String::from_utf8_lossy(bytes));
        // Byte by byte: the same end at the same place.
        let mut bytewise = BodyScanner::new(*framing).unwrap();
        let mut last = Partial;
        for (at, byte) in bytes.iter().enumerate() {
            last = match bytewise.feed(std::slice::from_ref(byte)) {
                Partial => Partial,
                Done(n) => Done(at + n),
                Invalid(n) => Invalid(at + n),
            };
            if last != Partial {
                break;
            }
        }
        assert_eq!(
            last,
            *expected,
            "bytewise {}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(BodyScanner::new(Framing::Length(0)).is_none());
}

#[test]
fn a_complete_head_says_its_framing_and_whether_it_may_upgrade() {
    let cases: &[(&[u8], Framing, bool)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", Framing::Length(0), false),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n",
            Framing::Length(12),
            false,
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: +12\r\n\r\n",
            Framing::Unknown,
            false,
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            Framing::Chunked,
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            Framing::Length(0),
            true,
        ),
        (b"CONNECT a:443 HTTP/1.1\r\n\r\n", Framing::Length(0), true),
    ];
    for (head, framing, upgrade) in cases {
        let mut scanner = HeadScanner::new(&limits());
        assert_eq!(scanner.feed(head), Scan::Complete { h2: false });
        assert_eq!(
            scanner.framing(),
            *framing,
            "{}",
            String::from_utf8_lossy(head)
        );
        assert_eq!(
            scanner.upgrade(),
            *upgrade,
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}
