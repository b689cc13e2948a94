//! Envoy's response flags (`%RESPONSE_FLAGS%`): why a request or connection ended the way it
//! did, as the access log's `response_flags` field and the `response_flags` label of Istio's
//! metrics show it.
//!
//! A low module: it depends on nothing in the crate, so the upstream clusters, the HTTP path,
//! the TCP path and telemetry can all name the same flags.
#![forbid(unsafe_code)]

use std::fmt;

/// One of Envoy's response flags, the subset shunt sets today. [`ResponseFlag::as_str`] (and
/// `Display`) give Envoy's short code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream host in the cluster (or its DNS names do not resolve).
    NoHealthyUpstream,
    /// `UF`: the connection to the upstream failed.
    UpstreamConnectionFailure,
    /// `UO`: the cluster's connection pool limits overflowed (circuit breaking).
    UpstreamOverflow,
    /// `UC`: the upstream closed or reset the connection.
    UpstreamConnectionTermination,
    /// `UT`: the upstream request timed out (route timeout or per-try timeout).
    UpstreamRequestTimeout,
    /// `URX`: the retries (or the attempts a streamed body allows) ran out.
    UpstreamRetryLimitExceeded,
    /// `NR`: no route matched the request (or the host is outside a `REGISTRY_ONLY` mesh).
    NoRouteFound,
    /// `NC`: no cluster for the route's destination.
    NoClusterFound,
    /// `DC`: the client went away before the response was over.
    DownstreamConnectionTermination,
    /// `DI`: the fault filter delayed the request.
    DelayInjected,
    /// `FI`: the fault filter aborted the request.
    FaultInjected,
    /// `RL`: the local rate limit refused the request.
    RateLimited,
    /// `UAEX`: an external authorization service (AuthorizationPolicy `CUSTOM`) refused it.
    UnauthorizedExternalService,
    /// `DPE`: the client's request broke HTTP's rules or a limit of the listener (an
    /// invalid chunk, a refused header).
    DownstreamProtocolError,
    /// `SI`: no byte moved on the request for the stream idle timeout.
    StreamIdleTimeout,
}

impl ResponseFlag {
    /// Every flag, in declaration order.
    pub const ALL: [Self; 15] = [
        Self::NoHealthyUpstream,
        Self::UpstreamConnectionFailure,
        Self::UpstreamOverflow,
        Self::UpstreamConnectionTermination,
        Self::UpstreamRequestTimeout,
        Self::UpstreamRetryLimitExceeded,
        Self::NoRouteFound,
        Self::NoClusterFound,
        Self::DownstreamConnectionTermination,
        Self::DelayInjected,
        Self::FaultInjected,
        Self::RateLimited,
        Self::UnauthorizedExternalService,
        Self::DownstreamProtocolError,
        Self::StreamIdleTimeout,
    ];

    /// Envoy's short code (`UH`, `UF`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamOverflow => "UO",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::NoRouteFound => "NR",
            Self::NoClusterFound => "NC",
            Self::DownstreamConnectionTermination => "DC",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::RateLimited => "RL",
            Self::UnauthorizedExternalService => "UAEX",
            Self::DownstreamProtocolError => "DPE",
            Self::StreamIdleTimeout => "SI",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ResponseFlag {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ResponseFlag {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The flags of one request or connection: each flag at most once, in the order they were
/// set. Renders as Envoy does: the codes joined with `,`, or `-` when there is none. `Copy`
/// and allocation-free (there are only [`ResponseFlag::ALL`] flags to hold).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags {
    flags: [Option<ResponseFlag>; ResponseFlag::ALL.len()],
    len: u8,
}

impl ResponseFlags {
    /// No flag (`-`).
    pub const NONE: Self = Self {
        flags: [None; ResponseFlag::ALL.len()],
        len: 0,
    };

    /// Adds `flag` unless it is already set.
    pub fn insert(&mut self, flag: ResponseFlag) {
        if !self.contains(flag) {
            // Each flag is held at most once, so there is always room for a new one.
            self.flags[usize::from(self.len)] = Some(flag);
            self.len += 1;
        }
    }

    #[must_use]
    pub fn contains(&self, flag: ResponseFlag) -> bool {
        self.iter().any(|known| known == flag)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flags in the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = ResponseFlag> + '_ {
        self.flags[..usize::from(self.len)]
            .iter()
            .flatten()
            .copied()
    }

    /// Keeps only the flags `keep` accepts, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(ResponseFlag) -> bool) {
        let mut kept = Self::NONE;
        for flag in self.iter() {
            if keep(flag) {
                kept.insert(flag);
            }
        }
        *self = kept;
    }
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(flag: ResponseFlag) -> Self {
        let mut flags = Self::NONE;
        flags.insert(flag);
        flags
    }
}

impl FromIterator<ResponseFlag> for ResponseFlags {
    fn from_iter<I: IntoIterator<Item = ResponseFlag>>(flags: I) -> Self {
        let mut set = Self::NONE;
        set.extend(flags);
        set
    }
}

impl Extend<ResponseFlag> for ResponseFlags {
    fn extend<I: IntoIterator<Item = ResponseFlag>>(&mut self, flags: I) {
        for flag in flags {
            self.insert(flag);
        }
    }
}

impl<'a> IntoIterator for &'a ResponseFlags {
    type Item = ResponseFlag;
    type IntoIter =
        std::iter::Copied<std::iter::Flatten<std::slice::Iter<'a, Option<ResponseFlag>>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.flags[..usize::from(self.len)]
            .iter()
            .flatten()
            .copied()
    }
}

impl fmt::Display for ResponseFlags {
    /// `UT,URX`; `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// Compares the rendering: `flags == "DC,UF"`, `flags == "-"`.
impl PartialEq<str> for ResponseFlags {
    fn eq(&self, other: &str) -> bool {
        if self.is_empty() {
            return other == "-";
        }
        let mut parts = other.split(',');
        self.iter().all(|flag| parts.next() == Some(flag.as_str())) && parts.next().is_none()
    }
}

impl PartialEq<&str> for ResponseFlags {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlag::{
        DelayInjected, DownstreamConnectionTermination, FaultInjected, UpstreamConnectionFailure,
        UpstreamConnectionTermination, UpstreamRetryLimitExceeded,
    };
    use super::*;

    #[test]
    fn flags_render_envoys_codes() {
        let codes: Vec<&str> = ResponseFlag::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            codes,
            [
                "UH", "UF", "UO", "UC", "UT", "URX", "NR", "NC", "DC", "DI", "FI", "RL", "UAEX",
                "DPE", "SI"
            ]
        );
        for flag in ResponseFlag::ALL {
            assert_eq!(flag.to_string(), flag.as_str());
            assert_eq!(flag, flag.as_str());
        }
    }

    #[test]
    fn sets_keep_the_order_flags_were_set_in_and_hold_each_once() {
        let cases: &[(&[ResponseFlag], &str)] = &[
            (&[], "-"),
            (&[UpstreamConnectionFailure], "UF"),
            (&[DelayInjected, FaultInjected], "DI,FI"),
            (&[FaultInjected, DelayInjected], "FI,DI"),
            (
                &[
                    UpstreamRetryLimitExceeded,
                    UpstreamConnectionFailure,
                    UpstreamRetryLimitExceeded,
                    DownstreamConnectionTermination,
                ],
                "URX,UF,DC",
            ),
        ];
        for (set, rendered) in cases {
            let flags: ResponseFlags = set.iter().copied().collect();
            assert_eq!(flags.to_string(), *rendered);
            assert_eq!(flags, *rendered);
            assert_ne!(flags, "UF,UF,UF");
        }
        let mut all: ResponseFlags = ResponseFlag::ALL.into_iter().collect();
        all.extend(ResponseFlag::ALL);
        assert_eq!(all.iter().count(), ResponseFlag::ALL.len());
    }

    #[test]
    fn retain_keeps_the_accepted_flags_in_order() {
        let mut flags: ResponseFlags = [
            DownstreamConnectionTermination,
            FaultInjected,
            UpstreamConnectionTermination,
        ]
        .into_iter()
        .collect();
        flags.retain(|f| {
            matches!(
                f,
                DownstreamConnectionTermination | UpstreamConnectionTermination
            )
        });
        assert_eq!(flags, "DC,UC");
        assert_eq!((&flags).into_iter().count(), 2);
    }
}
