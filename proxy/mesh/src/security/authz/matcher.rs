//! Compiled rules and how they match [`Facts`]: Istio's string matching (exact, `abc*`,
//! `*abc`, `*`), CIDR blocks, path templates, JWT principals and claims, and the TCP
//! rewriting of HTTP-only fields.

use std::cell::OnceCell;
use std::net::IpAddr;

use http::HeaderName;
use regex::Regex;

use super::facts::{Facts, HttpFacts, RemoteIp};

/// Istio's string match: `abc` exact, `abc*` prefix (`abc` itself included), `*abc` suffix,
/// `*` present and non-empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum StrPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StrPattern {
    pub(super) fn parse(value: &str) -> Self {
        if value == "*" {
            Self::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(value.to_owned())
        }
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        match self {
            Self::Exact(exact) => text == exact,
            Self::Prefix(prefix) => text.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => text.ends_with(suffix.as_str()),
            Self::Present => !text.is_empty(),
        }
    }

    /// For hosts, which Istio matches case-insensitively.
    fn matches_ignore_case(&self, text: &str) -> bool {
        let (text, pattern) = (text.as_bytes(), self);
        match pattern {
            Self::Exact(exact) => text.eq_ignore_ascii_case(exact.as_bytes()),
            Self::Prefix(prefix) => text
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            Self::Suffix(suffix) => text
                .len()
                .checked_sub(suffix.len())
                .and_then(|start| text.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes())),
            Self::Present => !text.is_empty(),
        }
    }

    /// For headers and methods, which Envoy's header matcher reads: `*` is presence, even of
    /// an empty value.
    fn matches_header(&self, value: &[u8]) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(exact) => value == exact.as_bytes(),
            Self::Prefix(prefix) => value.starts_with(prefix.as_bytes()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_bytes()),
        }
    }
}

/// A namespace pattern: Istio turns every `*` of it into `.*` (a glob, not only a prefix or
/// suffix), matched against the identity's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Glob(Vec<String>);

impl Glob {
    pub(super) fn parse(value: &str) -> Self {
        Self(value.split('*').map(str::to_owned).collect())
    }

    fn matches(&self, text: &str) -> bool {
        let parts = &self.0;
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return false;
        };
        if parts.len() == 1 {
            return text == first;
        }
        let Some(mut rest) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let middle = &parts[1..parts.len() - 1];
        for part in middle {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last.as_str())
    }
}

/// An IP or CIDR block (`ipBlocks`, `source.ip`, ...). IPv6 blocks are valid but never match:
/// the proxy's facts are IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IpBlock {
    V4 { network: u32, mask: u32 },
    V6,
}

impl IpBlock {
    /// `10.0.0.1` (a /32) or `10.0.0.0/8`; host bits are ignored, as Envoy masks them.
    pub(super) fn parse(value: &str) -> Result<Self, String> {
        let (addr, len) = match value.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{value:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|n| len.bytes().all(|b| b.is_ascii_digit()) && *n <= max)
                .ok_or_else(|| {
                    format!("{value:?}: the prefix length must be a number from 0 to {max}")
                })?,
        };
        Ok(match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Self::V4 {
                    network: u32::from(v4) & mask,
                    mask,
                }
            }
            IpAddr::V6(_) => Self::V6,
        })
    }

    fn contains(self, ip: std::net::Ipv4Addr) -> bool {
        match self {
            Self::V4 { network, mask } => u32::from(ip) & mask == network,
            Self::V6 => false,
        }
    }
}

/// A `paths` value: Istio's string match, or an Envoy URI template (`{*}`, `{**}`).
#[derive(Clone, Debug)]
pub(super) enum PathPattern {
    Str(StrPattern),
    Template(Regex),
}

/// RFC 3986 `pchar` without `/`, as Envoy's URI templates allow it (`*` excluded).
const PCHAR: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@=";

impl PathPattern {
    pub(super) fn parse(value: &str) -> Result<Self, String> {
        if !(value.contains("{*}") || value.contains("{**}")) {
            return Ok(Self::Str(StrPattern::parse(value)));
        }
        // Envoy's URI template, restricted as Istio restricts it: whole segments only, no
        // named variables, `{**}` last.
        let Some(rest) = value.strip_prefix('/') else {
            return Err(format!("path template {value:?} must start with '/'"));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let mut regex = String::from("^");
        let mut seen_any = false;
        for (i, segment) in segments.iter().enumerate() {
            regex.push('/');
            let last = i + 1 == segments.len();
            match *segment {
                "{*}" | "{**}" if seen_any => {
                    return Err(format!(
                        "path template {value:?}: {{**}} must be the last operator"
                    ));
                }
                "{*}" => regex.push_str(&format!("[{PCHAR}]+")),
                "{**}" => {
                    seen_any = true;
                    regex.push_str(&format!("[{PCHAR}/]*"));
                }
                "" if last => {}
                "" => {
                    return Err(format!(
                        "path template {value:?} has an empty segment ('//'), which Envoy refuses"
                    ));
                }
                literal => {
                    if let Some(bad) = literal
                        .chars()
                        .find(|c| !(c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(*c)))
                    {
                        return Err(format!(
                            "path template {value:?}: {bad:?} in segment {literal:?}; a segment \
                             is either {{*}}, {{**}} or literal path characters (no '*', '{{', \
                             '}}' outside an operator, nothing else beside one)"
                        ));
                    }
                    regex.push_str(&regex::escape(literal));
                }
            }
        }
        regex.push('$');
        Regex::new(&regex)
            .map(Self::Template)
            .map_err(|e| format!("path template {value:?}: {e}"))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Str(pattern) => pattern.matches(path),
            Self::Template(regex) => regex.is_match(path),
        }
    }
}

/// A header `request.headers[...]` reads; the pseudo-headers (and `Host`, which HTTP/2 and
/// Envoy keep as `:authority`) come from the request's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeaderKey {
    Authority,
    Method,
    Path,
    Named(HeaderName),
}

impl HeaderKey {
    pub(super) fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Ok(Self::Authority),
            ":method" => Ok(Self::Method),
            ":path" => Ok(Self::Path),
            lower => HeaderName::from_bytes(lower.as_bytes())
                .map(Self::Named)
                .map_err(|_| format!("{name:?} is not a valid HTTP header name")),
        }
    }
}

/// What one field (or `when` condition) tests; it holds if any of its values matches.
#[derive(Clone, Debug)]
pub(super) enum Test {
    /// `principals`, `source.principal`: the peer's SPIFFE id without `spiffe://`.
    Principal(Vec<StrPattern>),
    /// `namespaces`, `source.namespace`.
    Namespace(Vec<Glob>),
    /// `serviceAccounts`: `(namespace, name)`.
    ServiceAccount(Vec<(String, String)>),
    /// `trustDomains`.
    TrustDomain(Vec<StrPattern>),
    /// `ipBlocks`, `source.ip`.
    SourceIp(Vec<IpBlock>),
    /// `ports`, `destination.port`.
    Port(Vec<u16>),
    /// `destination.ip`.
    DestinationIp(Vec<IpBlock>),
    /// `connection.sni`.
    Sni(Vec<StrPattern>),
    // The HTTP-only ones.
    /// `remoteIpBlocks`, `remote.ip`.
    RemoteIp(Vec<IpBlock>),
    /// `requestPrincipals`, `request.auth.principal`: `(iss, sub)`.
    RequestPrincipal(Vec<(StrPattern, StrPattern)>),
    /// `hosts`.
    Host(Vec<StrPattern>),
    /// `methods`.
    Method(Vec<StrPattern>),
    /// `paths`.
    Path(Vec<PathPattern>),
    /// `request.headers[...]`.
    Header(HeaderKey, Vec<StrPattern>),
    /// `request.auth.audiences`.
    Audience(Vec<StrPattern>),
    /// `request.auth.presenter`.
    Presenter(Vec<StrPattern>),
    /// `request.auth.claims[a][b]...`: the path into the payload.
    Claim(Vec<String>, Vec<StrPattern>),
}

impl Test {
    /// Whether it needs the HTTP request: what the TCP rewriting takes out.
    pub(super) fn http_only(&self) -> bool {
        matches!(
            self,
            Self::RemoteIp(_)
                | Self::RequestPrincipal(_)
                | Self::Host(_)
                | Self::Method(_)
                | Self::Path(_)
                | Self::Header(..)
                | Self::Audience(_)
                | Self::Presenter(_)
                | Self::Claim(..)
        )
    }

    /// Whether any of its values matches.
    fn any(&self, ctx: &Ctx<'_>) -> bool {
        let facts = ctx.facts;
        match self {
            Self::Principal(patterns) => ctx
                .principal()
                .is_some_and(|p| patterns.iter().any(|m| m.matches(p))),
            Self::Namespace(globs) => facts
                .peer
                .is_some_and(|peer| globs.iter().any(|g| g.matches(peer.namespace()))),
            Self::ServiceAccount(accounts) => facts.peer.is_some_and(|peer| {
                accounts
                    .iter()
                    .any(|(ns, sa)| peer.namespace() == ns && peer.service_account() == sa)
            }),
            Self::TrustDomain(patterns) => facts
                .peer
                .is_some_and(|peer| patterns.iter().any(|m| m.matches(peer.trust_domain()))),
            Self::SourceIp(blocks) => blocks.iter().any(|b| b.contains(facts.source_ip)),
            Self::Port(ports) => ports.contains(&facts.destination_port),
            Self::DestinationIp(blocks) => blocks.iter().any(|b| b.contains(facts.destination_ip)),
            Self::Sni(patterns) => facts
                .sni
                .is_some_and(|sni| patterns.iter().any(|m| m.matches(sni))),
            Self::RemoteIp(blocks) => ctx.http().is_some_and(|http| {
                let ip = match http.remote_ip {
                    RemoteIp::Addr(ip) => ip,
                    // `Field::holds` answers for an unknown address before asking here.
                    RemoteIp::Peer | RemoteIp::Unknown => facts.source_ip,
                };
                blocks.iter().any(|b| b.contains(ip))
            }),
            Self::RequestPrincipal(patterns) => {
                ctx.http().and_then(|h| h.auth).is_some_and(|auth| {
                    let (iss, sub) = auth.issuer_and_subject();
                    patterns
                        .iter()
                        .any(|(i, s)| i.matches(iss) && s.matches(sub))
                })
            }
            Self::Host(patterns) => ctx
                .http()
                .is_some_and(|h| patterns.iter().any(|m| m.matches_ignore_case(h.host))),
            Self::Method(patterns) => ctx.http().is_some_and(|h| {
                patterns
                    .iter()
                    .any(|m| m.matches_header(h.method.as_bytes()))
            }),
            Self::Path(patterns) => ctx
                .http()
                .is_some_and(|h| patterns.iter().any(|m| m.matches(h.path))),
            Self::Header(key, patterns) => ctx.http().is_some_and(|h| {
                let matches = |value: &[u8]| patterns.iter().any(|m| m.matches_header(value));
                match key {
                    HeaderKey::Authority => matches(h.host.as_bytes()),
                    HeaderKey::Method => matches(h.method.as_bytes()),
                    HeaderKey::Path => matches(h.path.as_bytes()),
                    HeaderKey::Named(name) => h
                        .headers
                        .get_all(name)
                        .iter()
                        .any(|value| matches(value.as_bytes())),
                }
            }),
            Self::Audience(patterns) => ctx.http().and_then(|h| h.auth).is_some_and(|auth| {
                auth.audiences
                    .iter()
                    .any(|aud| patterns.iter().any(|m| m.matches(aud)))
            }),
            Self::Presenter(patterns) => ctx
                .http()
                .and_then(|h| h.auth)
                .and_then(|auth| auth.presenter.as_deref())
                .is_some_and(|azp| patterns.iter().any(|m| m.matches(azp))),
            Self::Claim(path, patterns) => ctx.http().and_then(|h| h.auth).is_some_and(|auth| {
                let claim = path
                    .iter()
                    .try_fold(&auth.claims, |value, key| value.as_object()?.get(key));
                let matches = |value: &serde_json::Value| {
                    value
                        .as_str()
                        .is_some_and(|s| patterns.iter().any(|m| m.matches(s)))
                };
                match claim {
                    Some(serde_json::Value::Array(items)) => items.iter().any(matches),
                    Some(value) => matches(value),
                    None => false,
                }
            }),
        }
    }
}

/// One field of a source or an operation, or one half (`values`/`notValues`) of a `when`.
#[derive(Clone, Debug)]
pub(super) struct Field {
    pub(super) test: Test,
    /// A `not…` field (`notValues`): holds when none of its values matches.
    pub(super) negated: bool,
}

impl Field {
    /// `widen`: the rule is a DENY (AUDIT, CUSTOM) one, where a fact that cannot be known
    /// (an unknown remote address) makes the field hold; in an ALLOW rule it never does.
    fn holds(&self, ctx: &Ctx<'_>, widen: bool) -> bool {
        let unknown = matches!(self.test, Test::RemoteIp(_))
            && ctx
                .http()
                .is_some_and(|http| http.remote_ip == RemoteIp::Unknown);
        if unknown {
            return widen;
        }
        self.test.any(ctx) != self.negated
    }
}

/// One of `spec.rules`, compiled.
#[derive(Clone, Debug, Default)]
pub(super) struct CompiledRule {
    /// `from`: `None` matches any source; each entry's fields are ANDed.
    pub(super) from: Option<Vec<Vec<Field>>>,
    /// `to`: `None` matches any operation.
    pub(super) to: Option<Vec<Vec<Field>>>,
    /// `when`: all must hold.
    pub(super) when: Vec<Field>,
}

impl CompiledRule {
    /// `widen`: see [`Field::holds`].
    pub(super) fn matches(&self, ctx: &Ctx<'_>, widen: bool) -> bool {
        let entry = |fields: &Vec<Field>| fields.iter().all(|f| f.holds(ctx, widen));
        self.from
            .as_ref()
            .is_none_or(|entries| entries.iter().any(entry))
            && self
                .to
                .as_ref()
                .is_none_or(|entries| entries.iter().any(entry))
            && self.when.iter().all(|f| f.holds(ctx, widen))
    }

    fn fields(&self) -> impl Iterator<Item = &Field> {
        fn entries(e: &Option<Vec<Vec<Field>>>) -> impl Iterator<Item = &Field> {
            e.iter().flatten().flatten()
        }
        entries(&self.from)
            .chain(entries(&self.to))
            .chain(&self.when)
    }

    /// Whether any of its fields needs the HTTP request.
    pub(super) fn http_only(&self) -> bool {
        self.fields().any(|f| f.test.http_only())
    }

    /// The rule with its HTTP-only fields taken out, as a DENY or AUDIT rule reads on TCP:
    /// wider, since a field taken out matches anything.
    pub(super) fn without_http_fields(&self) -> Self {
        let keep = |fields: &Vec<Field>| -> Vec<Field> {
            fields
                .iter()
                .filter(|f| !f.test.http_only())
                .cloned()
                .collect()
        };
        let entries =
            |e: &Option<Vec<Vec<Field>>>| e.as_ref().map(|e| e.iter().map(keep).collect());
        Self {
            from: entries(&self.from),
            to: entries(&self.to),
            when: keep(&self.when),
        }
    }
}

/// The facts of one evaluation, with what several rules may ask worked out once.
pub(super) struct Ctx<'a> {
    facts: &'a Facts<'a>,
    principal: OnceCell<Option<String>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(facts: &'a Facts<'a>) -> Self {
        Self {
            facts,
            principal: OnceCell::new(),
        }
    }

    fn http(&self) -> Option<&HttpFacts<'a>> {
        self.facts.http.as_ref()
    }

    /// The peer's identity as Istio's `principals` read it: the SPIFFE id without
    /// `spiffe://`.
    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| {
                self.facts.peer.map(|peer| {
                    format!(
                        "{}/ns/{}/sa/{}",
                        peer.trust_domain(),
                        peer.namespace(),
                        peer.service_account()
                    )
                })
            })
            .as_deref()
    }
}
