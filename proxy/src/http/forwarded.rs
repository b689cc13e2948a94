//! The client address of a request behind proxies, as Envoy's connection manager finds it
//! from `X-Forwarded-For` (`use_remote_address`, `xff_num_trusted_hops`; Istio's
//! `gatewayTopology.numTrustedProxies`), and the headers it sets: the direct peer appended
//! to `X-Forwarded-For`, `x-envoy-external-address` for an external client,
//! `x-envoy-internal` for an internal one.
//!
//! Pure: the gateway listeners apply it ([`apply`]); mesh listeners act as Envoy's sidecars
//! (`use_remote_address: false`, no trusted hop) and leave `X-Forwarded-For` untouched.
//! AuthorizationPolicy `remoteIpBlocks` match [`ClientAddress::client`]; `ipBlocks` the peer.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderValue;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_ENVOY_EXTERNAL_ADDRESS: &str = "x-envoy-external-address";
pub const X_ENVOY_INTERNAL: &str = "x-envoy-internal";

/// How a listener treats `X-Forwarded-For`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardedConfig {
    /// Envoy's `use_remote_address`: this listener is where requests enter (a gateway): the
    /// peer is appended to `X-Forwarded-For` and the client address counts from there.
    pub use_remote_address: bool,
    /// Envoy's `xff_num_trusted_hops`: how many proxies in front of this one append to
    /// `X-Forwarded-For` truthfully.
    pub num_trusted_hops: u32,
}

/// The client address a request was found to come from, and whether it is internal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress {
    /// Envoy's trusted client address (`remote.ip`'s, `%DOWNSTREAM_REMOTE_ADDRESS%`'s).
    pub client: IpAddr,
    /// RFC 1918, loopback, link-local or unique local: Envoy's default internal addresses.
    pub internal: bool,
}

/// The addresses of `X-Forwarded-For` (every line, in order), leftmost first; an entry
/// that is no IP address stays as `None`, so that counting from the right stays true.
fn addresses(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| entry.parse().ok())
        .collect()
}

/// Envoy's trusted client address of a request from `peer` carrying `headers`:
/// - with `use_remote_address`, the `num_trusted_hops`-th address from the right of
///   `X-Forwarded-For` (none trusted: the peer itself);
/// - without, the (`num_trusted_hops` + 1)-th from the right;
///
/// falling back to the peer when `X-Forwarded-For` is shorter, or that entry is no address.
#[must_use]
pub fn client_address(headers: &HeaderMap, peer: IpAddr, config: ForwardedConfig) -> ClientAddress {
    let from_right = if config.use_remote_address {
        config.num_trusted_hops
    } else {
        config.num_trusted_hops + 1
    };
    let client = if from_right == 0 {
        peer
    } else {
        let addresses = addresses(headers);
        usize::try_from(from_right)
            .ok()
            .and_then(|n| addresses.len().checked_sub(n))
            .and_then(|index| addresses[index])
            .unwrap_or(peer)
    };
    ClientAddress {
        client,
        internal: is_internal(client),
    }
}

/// Finds the client address and sets the headers as Envoy does. With
/// `use_remote_address`: `peer` appended to `X-Forwarded-For` (its lines joined into one),
/// `x-envoy-external-address` set to an external client's address, `x-envoy-internal:
/// true` for an internal one. Without: the headers are left as they are, but for
/// `x-envoy-internal`, removed from an external client's request.
pub fn apply(headers: &mut HeaderMap, peer: IpAddr, config: ForwardedConfig) -> ClientAddress {
    let found = client_address(headers, peer, config);
    if config.use_remote_address {
        let appended = appended(headers, peer);
        headers.remove(X_FORWARDED_FOR);
        if let Ok(value) = HeaderValue::from_str(&appended) {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if found.internal {
            headers.remove(X_ENVOY_EXTERNAL_ADDRESS);
        } else if let Ok(value) = HeaderValue::from_str(&found.client.to_string()) {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS, value);
        }
    }
    if found.internal {
        headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        headers.remove(X_ENVOY_INTERNAL);
    }
    found
}

/// `X-Forwarded-For` with `peer` appended (every line joined, in order).
#[must_use]
pub fn appended(headers: &HeaderMap, peer: IpAddr) -> String {
    let mut value = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str(&peer.to_string());
    value
}

/// Envoy's default internal addresses (`internal_address_config` unset).
#[must_use]
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests;
