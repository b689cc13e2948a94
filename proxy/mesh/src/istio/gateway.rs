//! `networking.istio.io` `Gateway` (v1, v1beta1, v1alpha3 share one shape).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

istio_struct! {
    /// `Gateway.spec`.
    pub struct GatewaySpec {
        /// `selector`: the labels of the gateway pods that serve it (any namespace).
        pub selector: BTreeMap<String, String>,
        /// `servers`: what each gateway pod serves.
        pub servers: Vec<Server>,
    }
}

istio_struct! {
    /// `spec.servers[]`.
    pub struct Server {
        /// `port`.
        pub port: Option<ServerPort>,
        /// `bind`: shunt binds every address of the pod; any other value is refused.
        pub bind: Option<String>,
        /// `hosts`: `[namespace/]host`.
        pub hosts: Vec<String>,
        /// `tls`.
        pub tls: Option<ServerTlsSettings>,
        /// `name`.
        pub name: Option<String>,
    }
}

istio_struct! {
    /// `servers[].port`.
    pub struct ServerPort {
        /// `number`.
        pub number: Option<i64>,
        /// `protocol`: HTTP, HTTPS, HTTP2, GRPC, TCP, TLS (MONGO and the like are TCP).
        pub protocol: Option<String>,
        /// `name`.
        pub name: Option<String>,
        /// `targetPort`: not used by shunt (it binds `number` in the pod).
        pub target_port: Option<i64>,
    }
}

istio_struct! {
    /// `servers[].tls`.
    pub struct ServerTlsSettings {
        /// `httpsRedirect`.
        pub https_redirect: bool,
        /// `mode`: PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL.
        pub mode: Option<String>,
        /// `serverCertificate`: a file path.
        pub server_certificate: Option<String>,
        /// `privateKey`: a file path.
        pub private_key: Option<String>,
        /// `caCertificates`: a file path.
        pub ca_certificates: Option<String>,
        /// `credentialName`: a Secret in the Gateway's namespace.
        pub credential_name: Option<String>,
        /// `credentialNames`: up to two Secrets (RSA and ECDSA).
        pub credential_names: Vec<String>,
        /// `subjectAltNames`: for MUTUAL.
        pub subject_alt_names: Vec<String>,
        /// `minProtocolVersion`.
        pub min_protocol_version: Option<String>,
        /// `maxProtocolVersion`.
        pub max_protocol_version: Option<String>,
        /// `cipherSuites`.
        pub cipher_suites: Vec<String>,
    }
}
