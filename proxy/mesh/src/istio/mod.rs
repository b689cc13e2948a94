//! Istio's networking API (`networking.istio.io` v1, v1beta1 and v1alpha3, which share one
//! shape), its `PeerAuthentication`, `AuthorizationPolicy` and `RequestAuthentication`
//! (`security.istio.io` v1 and v1beta1), shunt's `shunt.io/v1alpha1 RateLimitPolicy` and the
//! mesh settings of Istio's ConfigMap, as serde types with Istio's JSON field names.
//!
//! These types check only the JSON shape (a string where a string belongs, ...); the values
//! (hosts, regexes, durations, weights, enums) are checked when `crate::routing` compiles
//! them, so that every problem is reported with the object and the field path together.
//! Unknown fields are ignored here: real manifests carry fields shunt does not act on (the
//! agent warns about them, and refuses them in a PeerAuthentication or a DestinationRule's
//! `tls`, where a misspelt field could weaken security).
#![forbid(unsafe_code)]

/// Derives shared by every spec type: absent fields take their default, as in Istio.
macro_rules! istio_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(default, rename_all = "camelCase")]
        pub struct $name { $($body)* }
    };
}

mod authz;
mod decimal;
mod duration;
mod gateway;
mod ingress;
mod networking;
mod object;
mod request_authn;
mod security;
mod shunt;
mod telemetry;

pub use authz::*;
pub use decimal::Decimal;
pub use duration::{DurationError, parse_duration};
pub use gateway::*;
pub use ingress::*;
pub use networking::*;
pub use request_authn::*;
pub use security::*;
pub use shunt::*;
pub use telemetry::*;

pub use object::{DEFAULT_NAMESPACE, Metadata, Resource};

/// `networking.istio.io` `VirtualService`.
pub type VirtualService = Resource<VirtualServiceSpec>;
/// `networking.istio.io` `Gateway`.
pub type Gateway = Resource<GatewaySpec>;
/// `networking.istio.io` `DestinationRule`.
pub type DestinationRule = Resource<DestinationRuleSpec>;
/// `networking.istio.io` `ServiceEntry`.
pub type ServiceEntry = Resource<ServiceEntrySpec>;
/// `shunt.io/v1alpha1` `RateLimitPolicy`.
pub type RateLimitPolicy = Resource<RateLimitPolicySpec>;
/// `security.istio.io` `PeerAuthentication`.
pub type PeerAuthentication = Resource<PeerAuthenticationSpec>;
/// `security.istio.io` `RequestAuthentication`.
pub type RequestAuthentication = Resource<RequestAuthenticationSpec>;

/// `telemetry.istio.io` `Telemetry`.
pub type Telemetry = Resource<TelemetrySpec>;

/// The API versions of `telemetry.istio.io` shunt reads; both share one schema.
pub const TELEMETRY_VERSIONS: [&str; 2] = ["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"];

/// The API versions of `networking.istio.io` shunt reads; all three share one schema.
pub const NETWORKING_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// `shunt.io/v1alpha1`, the API version of [`RateLimitPolicy`].
pub const SHUNT_API_VERSION: &str = "shunt.io/v1alpha1";
