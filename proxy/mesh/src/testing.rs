//! Small meshes for tests: here, in the proxy, the agent and the end-to-end tests (the
//! `testing` feature).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::model::{ContainerPort, Service, ServicePort, TargetPort, Workload};

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A ready, captured pod labelled `app: <app>` with container port `http`: 8080.
pub fn pod(namespace: &str, name: &str, ip: [u8; 4], app: &str) -> Workload {
    Workload {
        uid: format!("uid-{namespace}-{name}").into(),
        namespace: namespace.into(),
        name: name.into(),
        workload_name: app.into(),
        service_account: "default".into(),
        ip: Some(Ipv4Addr::from(ip)),
        labels: labels(&[("app", app)]),
        captured: true,
        ready: true,
        ports: vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            protocol: "TCP".into(),
        }],
        excluded_inbound_ports: vec![],
        node: None,
        num_trusted_proxies: None,
    }
}

/// A Service selecting `app: <app>` with the given ports.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: [u8; 4],
    app: &str,
    ports: &[(u16, TargetPort)],
) -> Service {
    Service {
        namespace: namespace.into(),
        name: name.into(),
        cluster_ip: Some(Ipv4Addr::from(cluster_ip)),
        ports: ports
            .iter()
            .map(|(port, target_port)| ServicePort {
                name: None,
                port: *port,
                target_port: target_port.clone(),
                protocol: "TCP".into(),
                app_protocol: None,
                endpoints: None,
            })
            .collect(),
        selector: labels(&[("app", app)]),
    }
}

/// A route named `web.0` that does `action` and nothing else: no timeout, no retries, no
/// fault, no header edits, as a test then changes what it exercises.
pub fn http_route(action: crate::routing::HttpAction) -> crate::routing::HttpRoute {
    use crate::routing::{HeaderOps, RetryOn, RetryPolicy};
    crate::routing::HttpRoute {
        name: "web.0".into(),
        virtual_service: None,
        action,
        timeout: None,
        retries: RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
        },
        fault: None,
        mirrors: vec![],
        cors: None,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        rewrite: None,
        rate_limit: None,
    }
}
