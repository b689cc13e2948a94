//! The named request phases, in Envoy's filter order, and the two pipelines that run them.
//!
//! **Outbound** ([`HttpConnection::outbound`]): the route is matched (`NR` when none), then
//! the route's [`Phase`]s run in [`Phase::OUTBOUND`] order — [`cors`] → [`rate_limit`] →
//! [`fault_delay`] → [`fault_abort`] → [`local_action`] (redirect / direct response) →
//! [`destination`] (weighted destination and its cluster) → [`edit_request`] (rewrite,
//! header edits, forwarded headers) — then [`super::forward`] sends the request (attempts,
//! retries, mirrors) and [`edit_response`] edits what comes back. Each phase is a function
//! of the route and the request that returns a [`Flow`]: go on, wait, or answer with a
//! [`LocalReply`]; none does I/O, so tests call them one by one.
//!
//! **Inbound** ([`HttpConnection::inbound`]): the request goes to the app as it came, as
//! Envoy's sidecar inbound listener does. This is where the inbound phases go, before the
//! delivery (the inbound "router"): **`authn`** (request authentication, JWT) then
//! **`authz`** (authorization policies), in that order, as Istio's inbound chain runs
//! `jwt_authn` and then `rbac` ahead of the router. There are none yet.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::header::HeaderMap;
use rand::Rng;

use super::connection::{GatewayRoute, HttpConnection, InboundApp, Side};
use super::exchange::{Counted, Exchange};
use super::forward::{Forwarded, Outgoing};
use super::headers;
use super::local_reply::{LocalReply, Reply};
use super::route_policy as policy;
use super::security;
use crate::ratelimit::{RateLimitOutcome, RateLimiter};
use crate::response_flag::ResponseFlag;
use http::Response;
use http::header;
use http_body_util::BodyExt;
use shunt_mesh::model::Workload;
use shunt_mesh::routing::{
    Cluster, HttpAction, HttpDecision, HttpRoute, OutboundTarget, PortProtocol, RequestFacts,
    Routes, WeightedDestination,
};
use shunt_mesh::security::authz::RemoteIp;
use shunt_mesh::settings::TrustedProxies;

/// The outbound request phases, named after the Envoy filter (or router step) that does the
/// same. [`Phase::OUTBOUND`] is their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `envoy.filters.http.cors`: answer an allowed preflight ([`cors`]).
    Cors,
    /// `envoy.filters.http.local_ratelimit`: 429 `RL` when the bucket is empty
    /// ([`rate_limit`]).
    RateLimit,
    /// `envoy.filters.http.fault`, delay: hold the request (`DI`) ([`fault_delay`]).
    FaultDelay,
    /// `envoy.filters.http.fault`, abort: answer the configured error (`FI`)
    /// ([`fault_abort`]).
    FaultAbort,
    /// The router's route actions that need no upstream: redirect, direct response
    /// ([`local_action`]).
    LocalAction,
    /// The router picks a weighted destination and its cluster (`NR`, `NC`)
    /// ([`destination`]).
    Destination,
    /// The router's request edits: rewrite, hop-by-hop headers, route and destination
    /// header edits, forwarded headers ([`edit_request`]).
    EditRequest,
}

impl Phase {
    /// The outbound phases, in the order they run. The inbound side has its own slot for
    /// `authn` and `authz` (see the module's documentation).
    pub const OUTBOUND: [Self; 7] = [
        Self::Cors,
        Self::RateLimit,
        Self::FaultDelay,
        Self::FaultAbort,
        Self::LocalAction,
        Self::Destination,
        Self::EditRequest,
    ];
}

/// What a phase decided.
pub enum Flow {
    /// Go on to the next phase.
    Continue,
    /// Wait this long, then go on (the fault filter's delay: `DI`).
    Delay(Duration),
    /// Answer the client with this, nothing more runs; its flags go on the exchange.
    Reply(LocalReply),
}

/// [`Phase::Cors`]: an allowed CORS preflight is answered here (200 and the `Access-Control-*`
/// headers); anything else, including a preflight from an origin not allowed, goes on.
#[must_use]
pub fn cors(route: &HttpRoute, request: &http::request::Parts) -> Flow {
    match route
        .cors
        .as_ref()
        .and_then(|cors| policy::cors_preflight(cors, &request.method, &request.headers))
    {
        Some(answer) => Flow::Reply(LocalReply::cors_preflight(answer)),
        None => Flow::Continue,
    }
}

/// [`Phase::RateLimit`]: takes a token of the route's bucket; 429 `RL` when there is none.
#[must_use]
pub fn rate_limit(route: &HttpRoute, limiter: &RateLimiter) -> Flow {
    let Some(limit) = &route.rate_limit else {
        return Flow::Continue;
    };
    match limiter.check(limit) {
        RateLimitOutcome::Allowed { .. } => Flow::Continue,
        RateLimitOutcome::Limited { limit, reset } => {
            Flow::Reply(LocalReply::rate_limited(limit, reset))
        }
    }
}

/// [`Phase::FaultDelay`]: the route's `fault.delay`, when its percentage rolls.
#[must_use]
pub fn fault_delay(route: &HttpRoute, rng: &mut impl Rng) -> Flow {
    match route.fault.as_ref().and_then(|fault| fault.delay.as_ref()) {
        Some(delay) if policy::roll(delay.percentage, rng) => Flow::Delay(delay.fixed_delay),
        _ => Flow::Continue,
    }
}

/// [`Phase::FaultAbort`]: the route's `fault.abort`, when its percentage rolls (`FI`).
#[must_use]
pub fn fault_abort(route: &HttpRoute, rng: &mut impl Rng) -> Flow {
    match route.fault.as_ref().and_then(|fault| fault.abort.as_ref()) {
        Some(abort) if policy::roll(abort.percentage, rng) => {
            Flow::Reply(LocalReply::fault_abort(abort.kind))
        }
        _ => Flow::Continue,
    }
}

/// [`Phase::LocalAction`]: a `redirect` (its status and `Location`, built from the request's
/// `uri` and `authority`) or a `directResponse` (with the route's response header edits);
/// a forwarding route goes on.
#[must_use]
pub fn local_action(route: &HttpRoute, uri: &Uri, authority: Option<&str>) -> Flow {
    match &route.action {
        HttpAction::Redirect(redirect) => {
            let location = policy::redirect_location(redirect, uri, authority);
            Flow::Reply(LocalReply::redirect(redirect.status, &location))
        }
        HttpAction::DirectResponse { status, body } => {
            let mut reply = LocalReply::direct_response(*status, body.clone());
            route.response_headers.apply(reply.response.headers_mut());
            Flow::Reply(reply)
        }
        HttpAction::Forward(_) => Flow::Continue,
    }
}

/// [`Phase::Destination`]: one of the route's weighted destinations (503 `NR` when it has
/// none) and its cluster (503 `NC` when `routes` knows none), for a request to `port` from
/// `source`.
///
/// # Errors
/// The local reply when there is no destination or no cluster.
pub fn destination<'r>(
    route: &'r HttpRoute,
    routes: &dyn Routes,
    port: u16,
    source: Option<&Workload>,
    rng: &mut impl Rng,
) -> Result<(&'r WeightedDestination, Arc<Cluster>), Box<LocalReply>> {
    let destinations = match &route.action {
        HttpAction::Forward(destinations) => destinations.as_slice(),
        // Answered by `local_action`, which runs first.
        HttpAction::Redirect(_) | HttpAction::DirectResponse { .. } => &[],
    };
    let Some(destination) = policy::pick_weighted(destinations, rng) else {
        return Err(Box::new(LocalReply::no_destination()));
    };
    match routes.cluster(&destination.destination, port, source) {
        Ok(cluster) => Ok((destination, cluster)),
        Err(error) => {
            tracing::debug!(%error, "no cluster for the route's destination");
            Err(Box::new(LocalReply::no_cluster()))
        }
    }
}

/// What [`edit_request`] leaves for the upstream besides the edited head.
#[derive(Debug, PartialEq, Eq)]
pub struct Edited {
    /// `:authority` / `Host` for the upstream (the request's, or the rewrite's).
    pub authority: Option<String>,
    /// `x-forwarded-for` as sent, for the access log.
    pub x_forwarded_for: Option<String>,
}

/// [`Phase::EditRequest`]: the request as the upstream sees it — `route.rewrite` (path
/// prefix or regex, authority), hop-by-hop headers removed (but for an `upgrading` request's
/// `Upgrade`), the route's then the destination's header edits, and `x-forwarded-for` /
/// `x-forwarded-proto` for `client_ip`. `authority` is the request's.
pub fn edit_request(
    route: &HttpRoute,
    destination: &WeightedDestination,
    parts: &mut http::request::Parts,
    authority: Option<&str>,
    upgrading: bool,
    client_ip: Option<Ipv4Addr>,
) -> Edited {
    let mut upstream_authority = authority.map(str::to_owned);
    if let Some(rewrite) = &route.rewrite {
        if let Some(path) = policy::rewrite_path(rewrite, &parts.uri)
            && let Ok(path) = path.parse::<http::uri::PathAndQuery>()
        {
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = Some(path);
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
            }
        }
        if let Some(authority) = &rewrite.authority {
            upstream_authority = authority.to_str().ok().map(str::to_owned);
        }
    }
    headers::remove_hop_by_hop(&mut parts.headers, upgrading);
    route.request_headers.apply(&mut parts.headers);
    destination.request_headers.apply(&mut parts.headers);
    let x_forwarded_for = headers::add_forwarded(&mut parts.headers, client_ip);
    Edited {
        authority: upstream_authority,
        x_forwarded_for,
    }
}

/// After the upstream answered: the route's then the destination's response header edits,
/// then the consistent-hash cookie the proxy issued (`set_cookie`).
pub fn edit_response(
    route: &HttpRoute,
    destination: &WeightedDestination,
    headers: &mut HeaderMap,
    set_cookie: Option<http::HeaderValue>,
) {
    route.response_headers.apply(headers);
    destination.response_headers.apply(headers);
    if let Some(cookie) = set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
}

impl HttpConnection {
    /// Routes an outbound request by the routing snapshot `routes` and runs its phases.
    pub(super) async fn outbound(
        &self,
        routes: &dyn Routes,
        gateway: Option<&GatewayRoute>,
        parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        exchange: &mut Exchange,
    ) -> Reply {
        if gateway.is_none() {
            return self
                .route(routes, None, parts, body, upgrade, exchange)
                .await;
        }
        // A gateway's own policies first, as Istio's gateway runs `jwt_authn` and `rbac`
        // ahead of its router: the gateway pod is the workload they select.
        let mut parts = parts;
        let remote_ip = self.gateway_client(&mut parts, routes);
        let app = InboundApp::new(
            self.source.clone(),
            None,
            self.orig_dst.port(),
            PortProtocol::Http,
        );
        let allowed = match self
            .security_phases(&app, &mut parts, remote_ip, exchange)
            .await
        {
            Ok(allowed) => allowed,
            Err(reply) => return *reply,
        };
        let mut reply = self
            .route(routes, gateway, parts, body, upgrade, exchange)
            .await;
        for check in &allowed {
            check.apply_to_response(reply.0.headers_mut());
        }
        reply
    }

    /// At a gateway, the client `remoteIpBlocks` sees, from `X-Forwarded-For` and the hops
    /// MeshConfig `gatewayTopology.numTrustedProxies` trusts; and the headers Envoy's
    /// gateway sets: the peer appended to `X-Forwarded-For`, `x-envoy-external-address`.
    fn gateway_client(&self, parts: &mut http::request::Parts, routes: &dyn Routes) -> RemoteIp {
        let trusted = self
            .source
            .as_ref()
            .and_then(|gateway| gateway.num_trusted_proxies)
            .unwrap_or(routes.mesh().num_trusted_proxies);
        let config = super::forwarded::ForwardedConfig {
            use_remote_address: true,
            // An invalid value still appends the peer; the client found is not used.
            num_trusted_hops: match trusted {
                TrustedProxies::Hops(hops) => hops,
                TrustedProxies::Invalid => 0,
            },
        };
        let client = super::forwarded::apply(&mut parts.headers, self.client.0.ip(), config);
        match (trusted, client.client) {
            // Never the load balancer's address in the client's place: fail closed.
            (TrustedProxies::Invalid, _) => RemoteIp::Unknown,
            (TrustedProxies::Hops(_), std::net::IpAddr::V4(ip)) => RemoteIp::Addr(ip),
            (TrustedProxies::Hops(_), std::net::IpAddr::V6(_)) => RemoteIp::Peer,
        }
    }

    /// Routes one request by the routing snapshot `routes` (the VirtualServices bound to
    /// `gateway` at a gateway port) and runs its phases.
    async fn route(
        &self,
        routes: &dyn Routes,
        gateway: Option<&GatewayRoute>,
        parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        exchange: &mut Exchange,
    ) -> Reply {
        let target = match gateway {
            None => routes.outbound_target(self.orig_dst, self.source.as_deref()),
            Some(gateway) => {
                match routes.gateway_target(&self.pod.uid, gateway.port, gateway.server.clone()) {
                    Some(target) => target,
                    // The Gateway went away under an open connection.
                    None => return exchange.reply(LocalReply::route_not_found()),
                }
            }
        };
        if let OutboundTarget::Service(service) = &target {
            exchange.target_service.clone_from(&service.service);
        }
        let decision = routes.http_route(
            &target,
            &RequestFacts {
                method: &parts.method,
                uri: &parts.uri,
                authority: exchange.authority.as_deref(),
                headers: &parts.headers,
                port: self.orig_dst.port(),
                source: self.source.as_deref(),
            },
        );
        match decision {
            HttpDecision::NoRouteMatched { virtual_service } => {
                exchange.route_name = Some(virtual_service.to_string());
                exchange.reply(LocalReply::route_not_found())
            }
            HttpDecision::BlockedByRegistryOnly { authority } => {
                self.proxy.metrics.registry_only_blocked("http");
                tracing::debug!(%authority, "REGISTRY_ONLY: host is not in the registry");
                exchange.reply(LocalReply::not_in_registry())
            }
            HttpDecision::NoVirtualHost { authority } => {
                tracing::debug!(%authority, "no virtual host at the gateway");
                exchange.reply(LocalReply::route_not_found())
            }
            HttpDecision::HttpsRedirect => {
                let authority = exchange.authority.clone().unwrap_or_default();
                let host = authority.split(':').next().unwrap_or_default();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                exchange.reply(LocalReply::redirect(
                    http::StatusCode::MOVED_PERMANENTLY,
                    &format!("https://{host}{path}"),
                ))
            }
            HttpDecision::Route(route) => {
                exchange.route_name = Some(route.name.to_string());
                let destination_workload = match &target {
                    OutboundTarget::Unknown { workload, .. } => workload.clone(),
                    OutboundTarget::Service(_) | OutboundTarget::Gateway(_) => None,
                };
                self.run_phases(
                    routes,
                    &route,
                    parts,
                    body,
                    upgrade,
                    destination_workload,
                    exchange,
                )
                .await
            }
        }
    }

    /// Runs `route`'s phases in [`Phase::OUTBOUND`] order, then forwards.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's parts travel separately so each phase borrows only its own"
    )]
    async fn run_phases(
        &self,
        routes: &dyn Routes,
        route: &HttpRoute,
        mut parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        destination_workload: Option<Arc<Workload>>,
        exchange: &mut Exchange,
    ) -> Reply {
        let mut routed: Option<(&WeightedDestination, Arc<Cluster>)> = None;
        let mut edited: Option<Edited> = None;
        // The CORS headers of the response, from the request as the client sent it.
        let mut cors_headers: Option<HeaderMap> = None;
        // At a gateway the client was appended to `x-forwarded-for` with the trusted hops
        // (`gateway_client`); what it terminated says the scheme.
        let gateway = match &self.side {
            Side::Outbound { gateway, .. } => gateway.as_ref(),
            Side::Inbound(_) => None,
        };
        let client_ip = if gateway.is_some() {
            None
        } else {
            self.client_ip()
        };
        for phase in Phase::OUTBOUND {
            let flow = match phase {
                Phase::Cors => cors(route, &parts),
                Phase::RateLimit => rate_limit(route, &self.proxy.rate_limiter),
                Phase::FaultDelay => fault_delay(route, &mut rand::rng()),
                Phase::FaultAbort => fault_abort(route, &mut rand::rng()),
                Phase::LocalAction => {
                    local_action(route, &parts.uri, exchange.authority.as_deref())
                }
                Phase::Destination => match destination(
                    route,
                    routes,
                    self.orig_dst.port(),
                    self.source.as_deref(),
                    &mut rand::rng(),
                ) {
                    Ok((destination, cluster)) => {
                        exchange.cluster = Some(cluster.clone());
                        cors_headers = route
                            .cors
                            .as_ref()
                            .and_then(|cors| policy::cors_response_headers(cors, &parts.headers));
                        routed = Some((destination, cluster));
                        Flow::Continue
                    }
                    Err(reply) => Flow::Reply(*reply),
                },
                Phase::EditRequest => {
                    if let Some((destination, _)) = &routed {
                        let edits = edit_request(
                            route,
                            destination,
                            &mut parts,
                            exchange.authority.as_deref(),
                            upgrade.is_some(),
                            client_ip,
                        );
                        if gateway.is_some_and(|g| g.server.is_some()) {
                            parts.headers.insert(
                                headers::X_FORWARDED_PROTO.clone(),
                                http::HeaderValue::from_static("https"),
                            );
                        }
                        exchange.x_forwarded_for.clone_from(&edits.x_forwarded_for);
                        edited = Some(edits);
                    }
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Delay(delay) => {
                    exchange.flag(ResponseFlag::DelayInjected);
                    tokio::time::sleep(delay).await;
                }
                Flow::Reply(reply) => return exchange.reply(reply),
            }
        }
        // Every phase ran, so `Destination` and `EditRequest` have filled these in; the
        // `else` cannot happen but answers as a route without a destination would.
        let (Some((destination, cluster)), Some(edited)) = (routed, edited) else {
            return exchange.reply(LocalReply::no_destination());
        };
        let outgoing = Outgoing {
            parts,
            body,
            upgrade,
            authority: edited.authority,
            client_ip,
            destination_workload,
        };
        let (mut response, grpc) = match self
            .forward(routes, route, &cluster, outgoing, exchange)
            .await
        {
            Forwarded::Upstream {
                mut head,
                body,
                grpc_status,
                set_cookie,
            } => {
                edit_response(route, destination, &mut head.headers, set_cookie);
                (
                    Response::from_parts(head, body.map_err(Into::into).boxed()),
                    grpc_status,
                )
            }
            Forwarded::Local(reply) => reply,
        };
        if let Some(cors_headers) = cors_headers {
            response.headers_mut().extend(cors_headers);
        }
        (response, grpc)
    }

    /// Hands an inbound request to the app, once the inbound phases let it: **`authn`**
    /// (JWT request authentication) and then **`authz`** ([`authorize`]), in that order, as
    /// Istio's inbound chain runs `jwt_authn` and then `rbac` ahead of the router.
    pub(super) async fn inbound(
        &self,
        app: &InboundApp,
        parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        exchange: &mut Exchange,
    ) -> Reply {
        let mut parts = parts;
        let allowed = match self
            .security_phases(app, &mut parts, RemoteIp::Peer, exchange)
            .await
        {
            Ok(allowed) => allowed,
            Err(reply) => return *reply,
        };
        let mut reply = self.deliver(app, parts, body, upgrade, exchange).await;
        for check in &allowed {
            check.apply_to_response(reply.0.headers_mut());
        }
        reply
    }

    /// The security phases of the workload `app` for one request: **`authn`**, then CUSTOM's
    /// checks and **`authz`**. What CUSTOM allowed (to edit the response with), or the reply
    /// that refuses the request. `remote_ip` is the client `remoteIpBlocks` sees when it is not
    /// the direct peer (a gateway's trusted `X-Forwarded-For` hops).
    pub(super) async fn security_phases(
        &self,
        app: &InboundApp,
        parts: &mut http::request::Parts,
        remote_ip: RemoteIp,
        exchange: &mut Exchange,
    ) -> Result<Vec<crate::ext_authz::Allowed>, Box<Reply>> {
        let auth = match security::authenticate(self, app, parts, exchange).await {
            Ok(auth) => auth,
            Err(reply) => return Err(Box::new(exchange.reply(*reply))),
        };
        let decision = security::authorize(self, app, parts, auth.as_deref(), remote_ip, exchange);
        // CUSTOM first, as Envoy's ext_authz filter runs ahead of RBAC: its denial is the
        // answer; what it allows may edit the request, and later the response.
        let mut allowed = Vec::new();
        if let Some(decision) = &decision {
            for check in &decision.custom {
                allowed.push(self.custom_check(check, parts, exchange).await?);
            }
            if !decision.allowed {
                exchange.response_code_details = decision.response_code_details();
                return Err(Box::new(exchange.reply(LocalReply::access_denied())));
            }
        }
        Ok(allowed)
    }

    /// One CUSTOM policy's ext_authz check, from the pod's netns: what it allowed (its headers
    /// already set on the request), or the reply that denies the request (the service's own
    /// answer, `UAEX`; 403 when the provider is not a usable `envoyExtAuthzHttp`, as Istio
    /// denies everything a bad CUSTOM policy selects).
    async fn custom_check(
        &self,
        check: &shunt_mesh::security::authz::CustomCheck,
        request: &mut http::request::Parts,
        exchange: &mut Exchange,
    ) -> Result<crate::ext_authz::Allowed, Box<Reply>> {
        let routes = self.proxy.routes.routes();
        let provider = match routes.mesh().extension_providers.http(&check.provider) {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(policy = %check.policy, %error, "CUSTOM authorization denies: its provider is unusable");
                exchange.response_code_details = Some(format!(
                    "rbac_access_denied_matched_policy[{}]",
                    check.policy.envoy_policy_id()
                ));
                return Err(Box::new(exchange.reply(LocalReply::access_denied())));
            }
        };
        let connector = crate::authz::custom::PodConnector {
            index: self.proxy.state.load(),
            sockets: self.pod.sockets.clone(),
            pod: self.pod.uid.to_string(),
        };
        let outcome = self
            .proxy
            .ext_authz
            .check(provider, request, &connector)
            .await;
        match outcome {
            crate::ext_authz::ExtAuthzOutcome::Allow(allowed) => {
                if let Some(error) = &allowed.failed_open {
                    tracing::info!(policy = %check.policy, %error, "ext_authz failed; failOpen lets the request through");
                }
                allowed.apply_to_request(&mut request.headers);
                Ok(allowed)
            }
            crate::ext_authz::ExtAuthzOutcome::Deny(denied) => {
                if let Some(error) = &denied.error {
                    tracing::info!(policy = %check.policy, %error, "ext_authz failed; denied (statusOnError)");
                }
                exchange.flag(ResponseFlag::UnauthorizedExternalService);
                exchange.response_code_details = Some(
                    if denied.error.is_some() {
                        "ext_authz_error"
                    } else {
                        "ext_authz_denied"
                    }
                    .to_owned(),
                );
                let (head, body) = denied.into_response().into_parts();
                Err(Box::new((
                    Response::from_parts(head, super::local_reply::full(body)),
                    None,
                )))
            }
        }
    }

    /// The client's IP for `x-forwarded-for` and source-IP hashing: the source workload's,
    /// else the peer's.
    fn client_ip(&self) -> Option<Ipv4Addr> {
        self.source
            .as_ref()
            .and_then(|w| w.ip)
            .or(match self.client.0 {
                std::net::SocketAddr::V4(addr) => Some(*addr.ip()),
                std::net::SocketAddr::V6(_) => None,
            })
    }
}

#[cfg(test)]
mod tests;
