//! `shuntctl flows`' filters, as `hubble observe` spells them: parsed from the flags (each
//! error names its flag) and matched against one [`Flow`] at a time. No I/O.

use std::time::Duration;

use shunt_api::flows::{Flow, FlowType, Verdict};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--http-status {0:?}: expected a code (404), a class (5+, 4+) or a range (500-504)")]
    HttpStatus(String),
    #[error("--verdict {0:?}: expected FORWARDED, DROPPED or ERROR")]
    Verdict(String),
    #[error("--protocol {0:?}: expected tcp, http or grpc")]
    Protocol(String),
    #[error(
        "--since {0:?}: expected a duration back from now: a number and a unit, s, m or h \
         (30s, 5m, 1h)"
    )]
    Since(String),
}

/// `--http-status`: one code, a class (`5+`: 500..=599) or a range (`500-504`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusMatch {
    low: u16,
    high: u16,
}

impl std::str::FromStr for StatusMatch {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || Error::HttpStatus(text.to_owned());
        let code = |s: &str| -> Result<u16, Error> {
            s.parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(bad)
        };
        let (low, high) = if let Some(class) = text.strip_suffix('+') {
            let class: u16 = class.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&class) {
                return Err(bad());
            }
            (class * 100, class * 100 + 99)
        } else if let Some((low, high)) = text.split_once('-') {
            (code(low)?, code(high)?)
        } else {
            let code = code(text)?;
            (code, code)
        };
        if low > high {
            return Err(bad());
        }
        Ok(Self { low, high })
    }
}

impl StatusMatch {
    fn matches(self, code: u16) -> bool {
        (self.low..=self.high).contains(&code)
    }
}

/// `--verdict`, case-insensitive.
pub fn parse_verdict(text: &str) -> Result<Verdict, Error> {
    match text.to_ascii_uppercase().as_str() {
        "FORWARDED" => Ok(Verdict::Forwarded),
        "DROPPED" => Ok(Verdict::Dropped),
        "ERROR" => Ok(Verdict::Error),
        _ => Err(Error::Verdict(text.to_owned())),
    }
}

/// `--protocol`.
pub fn parse_protocol(text: &str) -> Result<String, Error> {
    let lower = text.to_ascii_lowercase();
    if matches!(lower.as_str(), "tcp" | "http" | "grpc") {
        Ok(lower)
    } else {
        Err(Error::Protocol(text.to_owned()))
    }
}

/// `--since`: `30s`, `5m`, `1h` (back from now).
pub fn parse_since(text: &str) -> Result<Duration, Error> {
    let bad = || Error::Since(text.to_owned());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60).ok_or_else(bad)?,
        "h" => number.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(seconds))
}

/// Every filter given; a flow passes when it matches all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Events at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// `-n`: either end in this namespace.
    pub namespace: Option<String>,
    /// `--pod`: either end is this pod (`ns/name`, or `name` within `-n`).
    pub pod: Option<String>,
    pub from_pod: Option<String>,
    pub to_pod: Option<String>,
    /// Either end is this workload.
    pub workload: Option<String>,
    /// The destination Service: its FQDN, or its first labels (`web`, `web.shop`).
    pub service: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
    pub http_status: Option<StatusMatch>,
    pub verdict: Option<Verdict>,
}

impl Filter {
    #[must_use]
    pub fn matches(&self, flow: &Flow) -> bool {
        let pod_is = |want: &str, pod: &str| match want.split_once('/') {
            Some(_) => want == pod,
            None => match &self.namespace {
                Some(ns) => pod.split_once('/') == Some((ns.as_str(), want)),
                None => pod.split_once('/').is_some_and(|(_, name)| name == want),
            },
        };
        let service_is = |want: &str| {
            flow.dst_service == want
                || flow
                    .dst_service
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        self.since_ms.is_none_or(|since| flow.time_ms >= since)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| flow.src_namespace == ns || flow.dst_namespace == ns)
            && self
                .pod
                .as_deref()
                .is_none_or(|p| pod_is(p, &flow.src_pod) || pod_is(p, &flow.dst_pod))
            && self
                .from_pod
                .as_deref()
                .is_none_or(|p| pod_is(p, &flow.src_pod))
            && self
                .to_pod
                .as_deref()
                .is_none_or(|p| pod_is(p, &flow.dst_pod))
            && self
                .workload
                .as_deref()
                .is_none_or(|w| flow.src_workload == w || flow.dst_workload == w)
            && self.service.as_deref().is_none_or(service_is)
            && self.port.is_none_or(|port| flow.dst_port == port)
            && self.protocol.as_deref().is_none_or(|p| flow.protocol == p)
            && self.http_status.is_none_or(|status| {
                flow.kind == FlowType::Http
                    && flow.http.as_ref().is_some_and(|h| status.matches(h.code))
            })
            && self.verdict.is_none_or(|v| flow.verdict == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_api::flows::{HttpSummary, TcpSummary};

    fn http(code: u16) -> Flow {
        Flow {
            seq: 7,
            time_ms: 1_000_000,
            kind: FlowType::Http,
            verdict: Verdict::Forwarded,
            reporter: "source".into(),
            pod: "shop/client-1".into(),
            src_pod: "shop/client-1".into(),
            dst_pod: "shop/web-1".into(),
            protocol: "http".into(),
            src_addr: "10.0.0.1:40000".into(),
            dst_addr: "10.96.0.10:80".into(),
            dst_port: 80,
            src_workload: "client".into(),
            src_namespace: "shop".into(),
            dst_workload: "web".into(),
            dst_namespace: "shop".into(),
            dst_service: "web.shop.svc.cluster.local".into(),
            response_flags: "-".into(),
            reason: None,
            tcp: None,
            http: Some(HttpSummary {
                method: "GET".into(),
                path: "/".into(),
                code,
                latency_ms: 3,
            }),
        }
    }

    fn tcp() -> Flow {
        Flow {
            kind: FlowType::TcpClose,
            protocol: "tcp".into(),
            dst_port: 5432,
            dst_addr: "10.96.0.20:5432".into(),
            dst_service: "db.data.svc.cluster.local".into(),
            dst_namespace: "data".into(),
            dst_workload: "db".into(),
            dst_pod: "data/db-0".into(),
            verdict: Verdict::Dropped,
            http: None,
            tcp: Some(TcpSummary {
                bytes_received: 1,
                bytes_sent: 2,
                duration_ms: 3,
                rtt_us: None,
                retransmits: None,
            }),
            ..http(0)
        }
    }

    #[test]
    fn status_matches_parse_as_hubble_writes_them() {
        for (text, codes_in, codes_out) in [
            ("5+", &[500, 503, 599][..], &[499, 200][..]),
            ("4+", &[400, 404], &[500, 399]),
            ("404", &[404], &[403, 405]),
            ("500-504", &[500, 502, 504], &[499, 505]),
        ] {
            let status: StatusMatch = text.parse().unwrap();
            for code in codes_in {
                assert!(status.matches(*code), "{text} {code}");
            }
            for code in codes_out {
                assert!(!status.matches(*code), "{text} {code}");
            }
        }
        for bad in ["", "6+", "0+", "5xx", "99", "600", "504-500", "abc", "+"] {
            assert_eq!(
                bad.parse::<StatusMatch>(),
                Err(Error::HttpStatus(bad.to_owned())),
                "{bad}"
            );
        }
        assert!(
            Error::HttpStatus("5xx".into())
                .to_string()
                .starts_with("--http-status")
        );
    }

    #[test]
    fn flag_values_parse_or_name_their_flag() {
        assert_eq!(parse_verdict("dropped"), Ok(Verdict::Dropped));
        assert_eq!(parse_verdict("ERROR"), Ok(Verdict::Error));
        assert!(
            parse_verdict("DENIED")
                .unwrap_err()
                .to_string()
                .starts_with("--verdict")
        );
        assert_eq!(parse_protocol("GRPC"), Ok("grpc".to_owned()));
        assert!(
            parse_protocol("udp")
                .unwrap_err()
                .to_string()
                .starts_with("--protocol")
        );
        for (text, expected) in [
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("2h", Some(7200)),
            ("5", None),
            ("m", None),
            ("5d", None),
            ("-5m", None),
        ] {
            assert_eq!(
                parse_since(text).ok(),
                expected.map(Duration::from_secs),
                "{text}"
            );
        }
        assert!(
            parse_since("1d")
                .unwrap_err()
                .to_string()
                .starts_with("--since")
        );
    }

    #[test]
    fn each_filter_keeps_what_it_names() {
        let some = |s: &str| Some(s.to_owned());
        let five = Some("5+".parse().unwrap());
        for (name, filter, passes_http_503, passes_tcp) in [
            ("none", Filter::default(), true, true),
            (
                "since before",
                Filter {
                    since_ms: Some(999_000),
                    ..Filter::default()
                },
                true,
                true,
            ),
            (
                "since after",
                Filter {
                    since_ms: Some(1_000_001),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "-n shop",
                Filter {
                    namespace: some("shop"),
                    ..Filter::default()
                },
                true,
                true,
            ),
            (
                "-n data",
                Filter {
                    namespace: some("data"),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "-n other",
                Filter {
                    namespace: some("other"),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "--pod ns/name",
                Filter {
                    pod: some("shop/web-1"),
                    ..Filter::default()
                },
                true,
                false,
            ),
            (
                "--pod name",
                Filter {
                    pod: some("db-0"),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "--pod name -n elsewhere",
                Filter {
                    pod: some("db-0"),
                    namespace: some("shop"),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "--from-pod",
                Filter {
                    from_pod: some("shop/client-1"),
                    ..Filter::default()
                },
                true,
                true,
            ),
            (
                "--from-pod is not --to-pod",
                Filter {
                    from_pod: some("shop/web-1"),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "--to-pod",
                Filter {
                    to_pod: some("web-1"),
                    ..Filter::default()
                },
                true,
                false,
            ),
            (
                "--workload",
                Filter {
                    workload: some("db"),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "--workload either end",
                Filter {
                    workload: some("client"),
                    ..Filter::default()
                },
                true,
                true,
            ),
            (
                "--service short",
                Filter {
                    service: some("web"),
                    ..Filter::default()
                },
                true,
                false,
            ),
            (
                "--service fqdn",
                Filter {
                    service: some("db.data.svc.cluster.local"),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "--service is not a prefix of a label",
                Filter {
                    service: some("we"),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "--port",
                Filter {
                    port: Some(5432),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "--protocol",
                Filter {
                    protocol: some("http"),
                    ..Filter::default()
                },
                true,
                false,
            ),
            (
                "--http-status 5+",
                Filter {
                    http_status: five,
                    ..Filter::default()
                },
                true,
                false,
            ),
            (
                "--http-status 404",
                Filter {
                    http_status: Some("404".parse().unwrap()),
                    ..Filter::default()
                },
                false,
                false,
            ),
            (
                "--verdict DROPPED",
                Filter {
                    verdict: Some(Verdict::Dropped),
                    ..Filter::default()
                },
                false,
                true,
            ),
            (
                "all together",
                Filter {
                    namespace: some("shop"),
                    from_pod: some("client-1"),
                    http_status: five,
                    verdict: Some(Verdict::Forwarded),
                    ..Filter::default()
                },
                true,
                false,
            ),
        ] {
            assert_eq!(
                filter.matches(&http(503)),
                passes_http_503,
                "{name}: http 503"
            );
            assert_eq!(filter.matches(&tcp()), passes_tcp, "{name}: tcp");
        }
    }
}
