//! The inbound security phases of one request, in the order Istio's inbound chain runs them
//! ahead of the router: **`authn`** ([`authenticate`], Envoy's `jwt_authn`) and **`authz`**
//! ([`authorize`], Envoy's `rbac`). Below [`super::filters`] (which runs them with CUSTOM's
//! checks between) and [`super::forward`] (a same-node delivery's destination side).
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use http::header;

use super::connection::{HttpConnection, InboundApp};
use super::exchange::Exchange;
use super::local_reply::LocalReply;
use crate::response_flag::ResponseFlags;

/// The inbound **`authn`** phase (Envoy's `envoy.filters.http.jwt_authn`): the
/// destination's RequestAuthentications for one request (`crate::authn`). No token passes
/// without a request principal; an invalid one is 401, a wrong audience 403, each with
/// `www-authenticate` and Envoy's `response_code_details`. A valid token is removed before
/// the request goes on, unless its rule says `forwardOriginalToken`.
pub(super) async fn authenticate(
    connection: &HttpConnection,
    app: &InboundApp,
    request: &mut http::request::Parts,
    exchange: &mut Exchange,
) -> Result<Option<Arc<shunt_mesh::security::RequestAuth>>, Box<LocalReply>> {
    let Some(destination) = app.workload.as_deref() else {
        return Ok(None);
    };
    let rules = connection
        .proxy
        .state
        .load()
        .request_authn()
        .rules_for(destination);
    if rules.is_empty() {
        return Ok(None);
    }
    let outcome = connection.proxy.authn.authenticate(&rules, request).await;
    if let Some(refusal) = outcome.refusal() {
        tracing::debug!(failure = %refusal.failure, "request authentication refused a token");
        exchange.response_code_details = Some(refusal.failure.response_code_details());
        let mut reply = LocalReply::text(refusal.status, refusal.body, ResponseFlags::NONE);
        reply
            .response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, refusal.www_authenticate.clone());
        return Err(Box::new(reply));
    }
    Ok(outcome.auth().cloned())
}

/// The inbound **`authz`** phase (Envoy's `envoy.filters.http.rbac`): the destination's
/// AuthorizationPolicies for one request to `app`, reached over `connection` (the inbound
/// listener's, an HBONE stream's, or a same-node delivery's destination side). A denial is
/// 403 `RBAC: access denied`, with the deciding policy in `response_code_details`.
pub(super) fn authorize(
    connection: &HttpConnection,
    app: &InboundApp,
    request: &http::request::Parts,
    auth: Option<&shunt_mesh::security::RequestAuth>,
    remote_ip: shunt_mesh::security::authz::RemoteIp,
    exchange: &mut Exchange,
) -> Option<shunt_mesh::security::authz::Decision> {
    let destination = app.workload.as_deref()?;
    let source_ip = match connection.client.0 {
        std::net::SocketAddr::V4(client) => *client.ip(),
        std::net::SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let host = exchange.authority.as_deref().unwrap_or_default();
    // The path the router sees: normalized by the server loop, query left out.
    let path = request.uri.path();
    let facts = shunt_mesh::security::authz::HttpFacts {
        host,
        method: request.method.as_str(),
        path,
        headers: &request.headers,
        // No trusted hops on a sidecar's inbound (`numTrustedProxies` 0): the client is the
        // direct peer. A gateway passes the client its trusted hops name, or unknown.
        remote_ip,
        auth,
    };
    let index = connection.proxy.state.load();
    let decision = crate::authz::Connection {
        destination,
        security: &app.security,
        source_ip,
        destination_addr: connection.orig_dst,
        sni: None,
    }
    .evaluate(&index, &connection.proxy.metrics.authz, Some(facts));
    Some(decision)
}
