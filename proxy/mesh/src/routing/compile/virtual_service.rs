//! VirtualServices: HTTP, TLS and TCP routes, their matches and destinations, merged per
//! host; and the default route of every registry host.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::StatusCode;

use super::compiled::*;
use crate::istio;
use crate::routing::Error;
use crate::routing::convert::{self, MISSING, Problems};
use crate::routing::decision::{
    Destination, HttpAction, HttpRoute, Mirror, ObjectRef, RateLimit, Redirect, Rewrite,
    StringMatch, WeightedDestination,
};

impl RouteTable {
    pub(super) fn add_virtual_service(
        &mut self,
        vs: &istio::VirtualService,
        rate_limits: &HashMap<(String, String, String), Arc<RateLimit>>,
        errors: &mut Vec<Error>,
    ) {
        let Some(compiled) = self.compile_virtual_service(vs, rate_limits, errors) else {
            return;
        };
        let spec = &vs.spec;
        self.bind_to_gateways(vs, rate_limits);
        // Routes bound only to gateways do not apply to sidecar (captured pod) traffic.
        if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
            tracing::debug!(virtual_service = %compiled.object, gateways = ?spec.gateways, "bound only to gateways; not applied to mesh traffic");
            return;
        }
        self.check_subsets(vs, &compiled.object, errors);
        self.virtual_services.push(Arc::new(compiled));
    }

    /// Checks and compiles `vs` as the mesh sees it (blocks bound only to gateways never
    /// match); `None` when it is invalid, with its problems in `errors`.
    pub(super) fn compile_virtual_service(
        &self,
        vs: &istio::VirtualService,
        rate_limits: &HashMap<(String, String, String), Arc<RateLimit>>,
        errors: &mut Vec<Error>,
    ) -> Option<CompiledVirtualService> {
        let object = object_ref("VirtualService", &vs.metadata);
        let namespace = vs.metadata.namespace.as_str();
        let spec = &vs.spec;
        let mut p = Problems::default();
        if spec.hosts.is_empty() {
            p.add("spec.hosts", MISSING);
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if host.is_empty() {
                p.add(
                    format!("spec.hosts[{i}]"),
                    "expected a host name, got an empty string",
                );
            }
        }
        let visibility = convert::export_to(&mut p, "spec.exportTo", &spec.export_to, namespace);
        let mut http = Vec::new();
        for (i, route) in spec.http.iter().enumerate() {
            let name = format!("{}.{i}", vs.metadata.name);
            let limit = route.name.as_ref().and_then(|n| {
                rate_limits.get(&(namespace.to_owned(), vs.metadata.name.clone(), n.clone()))
            });
            if let Some(compiled) = self.http_route(
                &mut p,
                &format!("spec.http[{i}]"),
                route,
                &object,
                name,
                limit,
            ) {
                http.push(CompiledHttpRoute {
                    index: i,
                    ..compiled
                });
            }
        }
        let tcp = spec
            .tcp
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        l4_attrs(
                            &[],
                            &m.destination_subnets,
                            m.port,
                            &m.source_labels,
                            &m.gateways,
                            m.source_namespace.as_ref(),
                        )
                    })
                    .collect();
                self.l4_route(
                    &mut p,
                    &format!("spec.tcp[{i}]"),
                    (i, &format!("{}.tcp.{i}", vs.metadata.name)),
                    matches,
                    &r.route,
                    namespace,
                )
            })
            .collect();
        let tls = spec
            .tls
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                if r.matches.is_empty() {
                    p.add(
                        format!("spec.tls[{i}].match"),
                        "a tls route needs at least one match with sniHosts",
                    );
                }
                for (j, m) in r.matches.iter().enumerate() {
                    if m.sni_hosts.is_empty() {
                        p.add(format!("spec.tls[{i}].match[{j}].sniHosts"), MISSING);
                    }
                }
                let matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        l4_attrs(
                            &m.sni_hosts,
                            &m.destination_subnets,
                            m.port,
                            &m.source_labels,
                            &m.gateways,
                            m.source_namespace.as_ref(),
                        )
                    })
                    .collect();
                self.l4_route(
                    &mut p,
                    &format!("spec.tls[{i}]"),
                    (i, &format!("{}.tls.{i}", vs.metadata.name)),
                    matches,
                    &r.route,
                    namespace,
                )
            })
            .collect::<Vec<_>>();
        if !p.is_empty() {
            errors.extend(invalid(&object, p));
            return None;
        }
        let hosts = spec
            .hosts
            .iter()
            .map(|h| self.resolve_host(h, namespace))
            .collect();
        Some(CompiledVirtualService {
            object,
            hosts,
            visibility,
            http,
            tcp,
            tls,
        })
    }

    /// Warns about every destination whose subset no DestinationRule defines (Istio's
    /// analyzer: IST0101 ReferencedResourceNotFound). The VirtualService still applies; a
    /// request routed there gets 503 NC.
    pub(super) fn check_subsets(
        &self,
        vs: &istio::VirtualService,
        object: &ObjectRef,
        errors: &mut Vec<Error>,
    ) {
        let spec = &vs.spec;
        let mut referenced: Vec<(String, &istio::Destination)> = Vec::new();
        for (i, route) in spec.http.iter().enumerate() {
            for (j, r) in route.route.iter().enumerate() {
                referenced.push((
                    format!("spec.http[{i}].route[{j}].destination"),
                    &r.destination,
                ));
            }
            if let Some(mirror) = &route.mirror {
                referenced.push((format!("spec.http[{i}].mirror"), mirror));
            }
            for (k, m) in route.mirrors.iter().enumerate() {
                referenced.push((
                    format!("spec.http[{i}].mirrors[{k}].destination"),
                    &m.destination,
                ));
            }
        }
        let l4 = spec
            .tcp
            .iter()
            .map(|r| ("tcp", &r.route))
            .enumerate()
            .chain(spec.tls.iter().map(|r| ("tls", &r.route)).enumerate());
        for (i, (section, routes)) in l4 {
            for (j, r) in routes.iter().enumerate() {
                referenced.push((
                    format!("spec.{section}[{i}].route[{j}].destination"),
                    &r.destination,
                ));
            }
        }
        for (field, destination) in referenced {
            let Some(subset) = destination.subset.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let host = self.resolve_host(&destination.host, &vs.metadata.namespace);
            if !self.subset_defined(&host, subset) {
                errors.push(Error::Warning {
                    object: object.clone(),
                    field: format!("{field}.subset"),
                    message: format!(
                        "referenced host+subset in destinationrule not found: \"{host}+{subset}\" \
                         (IST0101: no DestinationRule for {host} defines subset {subset:?}); \
                         requests routed there get 503 NC until one does"
                    ),
                });
            }
        }
    }

    pub(super) fn destination(
        &self,
        p: &mut Problems,
        field: &str,
        d: &istio::Destination,
        namespace: &str,
    ) -> Option<Destination> {
        if d.host.is_empty() {
            p.add(format!("{field}.host"), MISSING);
            return None;
        }
        let port = match d.port.as_ref().and_then(|s| s.number) {
            Some(n) => Some(convert::port(p, &format!("{field}.port.number"), n)?),
            None => None,
        };
        Some(Destination {
            host: self.resolve_host(&d.host, namespace),
            subset: d.subset.as_deref().filter(|s| !s.is_empty()).map(Arc::from),
            port,
        })
    }

    /// Weighted destinations; with more than one, the weights must sum to 100 (Istio).
    pub(super) fn weighted(
        &self,
        p: &mut Problems,
        field: &str,
        routes: &[(
            Option<&istio::Destination>,
            Option<i64>,
            Option<&istio::Headers>,
        )],
        namespace: &str,
    ) -> Vec<WeightedDestination> {
        let mut out = Vec::new();
        let mut sum: i64 = 0;
        for (i, (destination, weight, headers)) in routes.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let weight = match weight {
                Some(w) => {
                    convert::int_in::<u32>(p, &format!("{at}.weight"), *w, 0, 100).unwrap_or(0)
                }
                None => 0,
            };
            sum += i64::from(weight);
            let Some(destination) = destination
                .and_then(|d| self.destination(p, &format!("{at}.destination"), d, namespace))
            else {
                if destination.is_none() {
                    p.add(format!("{at}.destination"), MISSING);
                }
                continue;
            };
            out.push(WeightedDestination {
                destination,
                weight,
                request_headers: convert::header_ops(
                    p,
                    &format!("{at}.headers.request"),
                    headers.and_then(|h| h.request.as_ref()),
                ),
                response_headers: convert::header_ops(
                    p,
                    &format!("{at}.headers.response"),
                    headers.and_then(|h| h.response.as_ref()),
                ),
            });
        }
        if routes.len() > 1 && sum != 100 {
            p.add(
                field,
                format!("the weights of several destinations must sum to 100, got {sum}"),
            );
        }
        if let [only] = out.as_mut_slice() {
            only.weight = 100;
        }
        out
    }

    fn l4_route(
        &self,
        p: &mut Problems,
        field: &str,
        (index, name): (usize, &str),
        matches: Vec<L4Attrs<'_>>,
        route: &[istio::RouteDestination],
        namespace: &str,
    ) -> Option<CompiledL4Route> {
        let before = p.list.len();
        if route.is_empty() {
            p.add(format!("{field}.route"), MISSING);
        }
        let written = matches.len();
        let matches: Vec<L4Match> = matches
            .into_iter()
            .enumerate()
            .filter_map(|(j, m)| l4_match(p, &format!("{field}.match[{j}]"), &m))
            .collect();
        // Every block bound elsewhere (to gateways only): the route never applies here; an
        // empty list would match everything.
        let unbound = written > 0 && matches.is_empty();
        let routes: Vec<_> = route
            .iter()
            .map(|r| (Some(&r.destination), r.weight, None))
            .collect();
        let destinations = self.weighted(p, &format!("{field}.route"), &routes, namespace);
        (p.list.len() == before && !unbound).then(|| CompiledL4Route {
            index,
            name: name.into(),
            matches,
            destinations,
        })
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one field after the other, in Istio's order"
    )]
    pub(super) fn http_route(
        &self,
        p: &mut Problems,
        field: &str,
        route: &istio::HttpRoute,
        object: &ObjectRef,
        default_name: String,
        rate_limit: Option<&Arc<RateLimit>>,
    ) -> Option<CompiledHttpRoute> {
        let before = p.list.len();
        let namespace = &*object.namespace;
        let actions = usize::from(!route.route.is_empty())
            + usize::from(route.redirect.is_some())
            + usize::from(route.direct_response.is_some());
        if route.delegate.is_some() {
            p.add(
                format!("{field}.delegate"),
                "delegate is a gateway feature; shunt does not support it",
            );
        } else if actions != 1 {
            p.add(
                field,
                "set exactly one of route, redirect and directResponse",
            );
        }
        let action = if !route.route.is_empty() {
            let routes: Vec<_> = route
                .route
                .iter()
                .map(|r| (Some(&r.destination), r.weight, r.headers.as_ref()))
                .collect();
            HttpAction::Forward(self.weighted(p, &format!("{field}.route"), &routes, namespace))
        } else if let Some(redirect) = &route.redirect {
            let at = format!("{field}.redirect");
            let status = match redirect.redirect_code {
                None => StatusCode::MOVED_PERMANENTLY,
                Some(code) => match code {
                    301 | 302 | 303 | 307 | 308 => {
                        StatusCode::from_u16(u16::try_from(code).unwrap_or(301))
                            .unwrap_or(StatusCode::MOVED_PERMANENTLY)
                    }
                    other => {
                        p.add(
                            format!("{at}.redirectCode"),
                            format!("expected 301, 302, 303, 307 or 308, got {other}"),
                        );
                        StatusCode::MOVED_PERMANENTLY
                    }
                },
            };
            HttpAction::Redirect(Redirect {
                uri: redirect.uri.as_deref().map(Arc::from),
                authority: redirect.authority.as_deref().map(Arc::from),
                port: redirect
                    .port
                    .and_then(|n| convert::port(p, &format!("{at}.port"), n)),
                scheme: redirect.scheme.as_deref().map(Arc::from),
                status,
            })
        } else if let Some(direct) = &route.direct_response {
            let at = format!("{field}.directResponse");
            let status = match direct.status {
                None => {
                    p.add(format!("{at}.status"), MISSING);
                    StatusCode::OK
                }
                Some(s) => convert::int_in::<u16>(p, &format!("{at}.status"), s, 200, 599)
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::OK),
            };
            let body = direct
                .body
                .as_ref()
                .and_then(|body| match (&body.string, &body.bytes) {
                    (Some(s), None) => Some(bytes::Bytes::from(s.clone())),
                    (None, Some(b)) => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map(bytes::Bytes::from)
                            .map_err(|e| {
                                p.add(format!("{at}.body.bytes"), format!("not base64: {e}"))
                            })
                            .ok()
                    }
                    _ => {
                        p.add(format!("{at}.body"), "set exactly one of string and bytes");
                        None
                    }
                });
            HttpAction::DirectResponse { status, body }
        } else {
            HttpAction::Forward(Vec::new())
        };
        let timeout = convert::opt_duration(p, &format!("{field}.timeout"), route.timeout.as_ref())
            .filter(|d| !d.is_zero());
        let retries = convert::retries(p, &format!("{field}.retries"), route.retries.as_ref());
        let fault = route
            .fault
            .as_ref()
            .and_then(|f| convert::fault(p, &format!("{field}.fault"), f));
        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            let percentage = convert::percent_or_legacy(
                p,
                &format!("{field}.mirrorPercentage"),
                route.mirror_percentage.as_ref(),
                &format!("{field}.mirrorPercent"),
                route.mirror_percent,
            );
            if let (Some(destination), Some(percentage)) = (
                self.destination(p, &format!("{field}.mirror"), mirror, namespace),
                percentage,
            ) {
                mirrors.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
        for (i, mirror) in route.mirrors.iter().enumerate() {
            let at = format!("{field}.mirrors[{i}]");
            let percentage = convert::percent_or_legacy(
                p,
                &format!("{at}.percentage"),
                mirror.percentage.as_ref(),
                "",
                None,
            );
            if let (Some(destination), Some(percentage)) = (
                self.destination(
                    p,
                    &format!("{at}.destination"),
                    &mirror.destination,
                    namespace,
                ),
                percentage,
            ) {
                mirrors.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
        let cors = route
            .cors_policy
            .as_ref()
            .map(|c| convert::cors(p, &format!("{field}.corsPolicy"), c));
        let headers = route.headers.as_ref();
        let request_headers = convert::header_ops(
            p,
            &format!("{field}.headers.request"),
            headers.and_then(|h| h.request.as_ref()),
        );
        let response_headers = convert::header_ops(
            p,
            &format!("{field}.headers.response"),
            headers.and_then(|h| h.response.as_ref()),
        );
        let rewrite = route.rewrite.as_ref().and_then(|rw| {
            let at = format!("{field}.rewrite");
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                p.add(&at, "set only one of uri and uriRegexRewrite");
                return None;
            }
            let uri_regex = match &rw.uri_regex_rewrite {
                None => None,
                Some(rr) => {
                    let pattern = rr.pattern.as_deref().unwrap_or_default();
                    if pattern.is_empty() {
                        p.add(format!("{at}.uriRegexRewrite.match"), MISSING);
                        return None;
                    }
                    let re = regex::Regex::new(pattern)
                        .map_err(|e| {
                            p.add(
                                format!("{at}.uriRegexRewrite.match"),
                                format!("regex {pattern:?} does not compile: {e}"),
                            )
                        })
                        .ok()?;
                    // Kept in RE2's `\1` form, as `Rewrite::uri_regex` says; the data path
                    // expands it.
                    Some((re, Arc::from(rr.rewrite.as_deref().unwrap_or_default())))
                }
            };
            Some(Rewrite {
                uri: rw.uri.as_deref().map(Arc::from),
                authority: rw
                    .authority
                    .as_deref()
                    .and_then(|a| convert::header_value(p, &format!("{at}.authority"), a)),
                uri_regex,
                matched_prefix: None,
            })
        });
        let mut matches = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            if let Some(compiled) = http_match(p, &format!("{field}.match[{j}]"), m) {
                matches.push(compiled);
            }
        }
        if p.list.len() != before {
            return None;
        }
        let compiled = Arc::new(HttpRoute {
            name: route.name.clone().unwrap_or(default_name).into(),
            virtual_service: Some(object.clone()),
            action,
            timeout,
            retries,
            fault,
            mirrors,
            cors,
            request_headers,
            response_headers,
            rewrite,
            rate_limit: rate_limit.cloned(),
        });
        for m in &mut matches {
            if let (Some(StringMatch::Prefix(prefix)), Some(rewrite)) = (&m.uri, &compiled.rewrite)
                && rewrite.uri.is_some()
            {
                let mut with_prefix = (*compiled).clone();
                with_prefix.rewrite = Some(Rewrite {
                    matched_prefix: Some(prefix.clone()),
                    ..rewrite.clone()
                });
                m.prefix_route = Some(Arc::new(with_prefix));
            }
        }
        Some(CompiledHttpRoute {
            index: 0,
            matches,
            route: compiled,
        })
    }

    pub(super) fn build_default_routes(&mut self) {
        for (host, port) in self.targets.keys() {
            let route = default_route(
                Destination {
                    host: host.clone(),
                    subset: None,
                    port: Some(*port),
                },
                self.host_rate_limits.get(host).cloned(),
            );
            self.default_routes
                .insert((host.clone(), *port), Arc::new(route));
        }
    }
}

/// The route of a host without a VirtualService (or of an address nothing names): forward
/// to it, with Istio's default retries.
pub(in crate::routing) fn default_route(
    destination: Destination,
    rate_limit: Option<Arc<RateLimit>>,
) -> HttpRoute {
    HttpRoute {
        name: "default".into(),
        virtual_service: None,
        action: HttpAction::Forward(vec![WeightedDestination {
            destination,
            weight: 100,
            request_headers: Default::default(),
            response_headers: Default::default(),
        }]),
        timeout: None,
        retries: convert::default_retry_policy(),
        fault: None,
        mirrors: Vec::new(),
        cors: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        rewrite: None,
        rate_limit,
    }
}

struct L4Attrs<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<i64>,
    source_labels: &'a BTreeMap<String, String>,
    gateways: &'a [String],
    source_namespace: Option<&'a String>,
}

fn l4_attrs<'a>(
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<i64>,
    source_labels: &'a BTreeMap<String, String>,
    gateways: &'a [String],
    source_namespace: Option<&'a String>,
) -> L4Attrs<'a> {
    L4Attrs {
        sni_hosts,
        destination_subnets,
        port,
        source_labels,
        gateways,
        source_namespace,
    }
}

/// `None` for a bad block, or one bound only to gateways (it never matches mesh traffic).
fn l4_match(p: &mut Problems, field: &str, m: &L4Attrs<'_>) -> Option<L4Match> {
    let subnets = m
        .destination_subnets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| convert::subnet(p, &format!("{field}.destinationSubnets[{i}]"), s))
        .collect();
    let port = match m.port {
        Some(n) => Some(convert::port(p, &format!("{field}.port"), n)?),
        None => None,
    };
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return None;
    }
    Some(L4Match {
        sni_hosts: m.sni_hosts.to_vec(),
        destination_subnets: subnets,
        port,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.cloned(),
    })
}

pub(super) fn http_match(
    p: &mut Problems,
    field: &str,
    m: &istio::HttpMatchRequest,
) -> Option<HttpMatch> {
    let before = p.list.len();
    let one = |p: &mut Problems, name: &str, v: Option<&istio::StringMatch>, ignore_case: bool| {
        v.and_then(|v| {
            convert::string_match(p, &format!("{field}.{name}"), v, false, ignore_case).flatten()
        })
    };
    let map = |p: &mut Problems,
               name: &str,
               v: &BTreeMap<String, istio::StringMatch>|
     -> Vec<(http::HeaderName, Option<StringMatch>)> {
        v.iter()
            .filter_map(|(key, m)| {
                let at = format!("{field}.{name}.{key}");
                let header = convert::header_name(p, &at, key)?;
                Some((header, convert::string_match(p, &at, m, true, false)?))
            })
            .collect()
    };
    let compiled = HttpMatch {
        name: m.name.clone(),
        uri: one(p, "uri", m.uri.as_ref(), m.ignore_uri_case),
        scheme: one(p, "scheme", m.scheme.as_ref(), false),
        method: one(p, "method", m.method.as_ref(), false),
        authority: one(p, "authority", m.authority.as_ref(), false),
        headers: map(p, "headers", &m.headers),
        without_headers: map(p, "withoutHeaders", &m.without_headers),
        query_params: m
            .query_params
            .iter()
            .filter_map(|(key, v)| {
                Some((
                    key.clone(),
                    convert::string_match(
                        p,
                        &format!("{field}.queryParams.{key}"),
                        v,
                        true,
                        false,
                    )?,
                ))
            })
            .collect(),
        port: match m.port {
            Some(n) => convert::port(p, &format!("{field}.port"), n),
            None => None,
        },
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
        ignore_uri_case: m.ignore_uri_case,
        prefix_route: None,
    };
    if p.list.len() != before {
        return None;
    }
    // A block bound only to gateways never matches mesh traffic: keep it unmatchable.
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Some(HttpMatch {
            port: Some(0),
            ..compiled
        });
    }
    Some(compiled)
}
