//! The admin API: HTTP/1.1 on `<run-dir>/admin.sock`, for `shuntctl` (and `curl
//! --unix-socket`). Bodies are JSON ([`api`]); errors are non-2xx with `{"error": "..."}`.
//!
//! - `GET /status`: the capture mode, capture (programs, attach points, pins, maps, counters,
//!   kernel probe; or each pod's iptables rules), the proxy connection and the CA mode;
//! - `GET /workloads`: every pod, captured or not and why, netns cookie, proxy state;
//! - `GET /config`: every object loaded, and the errors of the last load;
//! - `GET /maps/<NAME>`: a map's entries;
//! - `GET /routes/<NAMESPACE>/<POD>`: the effective routes of one pod;
//! - `GET /policies/<NAMESPACE>/<POD>`: its effective security policies;
//! - `POST /explain` (`api::ExplainQuery`): a dry run of one request from one pod;
//! - `POST /uninstall`: detaches and unpins everything, answers, then the agent exits.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use shunt_mesh::model::Workload;
use shunt_mesh::routing::{RouteTable, explain};

use crate::capture::ebpf;
use crate::capture::{self, Backend, Capture, Installed};
use crate::config::Snapshot;
use crate::pods::NodeView;
use shunt_api::admin as api;
use shunt_api::run_dir;

/// How long an answer being written may take once the agent stops (e.g. after uninstall).
const DRAIN: Duration = Duration::from_secs(2);
/// The largest request body read (`POST /explain`).
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] run_dir::Error),
}

/// What the admin API reads from, and the one thing it can do.
pub struct AdminContext {
    pub capture: Capture,
    /// What `POST /uninstall` removes.
    pub installed: Installed,
    pub config: watch::Receiver<Arc<Snapshot>>,
    pub node: watch::Receiver<NodeView>,
    /// Cancelled by `POST /uninstall` once capture is gone: the agent then stops.
    pub uninstalled: CancellationToken,
    /// The CA mode's status, when it is on.
    pub ca: Option<watch::Receiver<api::CaStatus>>,
}

pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminServer {
    /// Listens on `path` (mode 0600), replacing a stale socket file.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            listener: run_dir::bind_socket(path)?,
            path: path.to_owned(),
        })
    }

    /// Serves until `shutdown`, then lets answers in progress finish (up to `DRAIN`).
    pub async fn run(self, context: Arc<AdminContext>, shutdown: CancellationToken) {
        tracing::info!(socket = %self.path.display(), "admin API listening");
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                // Reaps finished connections so the set does not grow.
                Some(_) = connections.join_next() => continue,
            };
            match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, Arc::clone(&context), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _ = tokio::time::timeout(DRAIN, connections.join_all()).await;
    }
}

async fn serve(stream: UnixStream, context: Arc<AdminContext>, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |request| {
        let context = Arc::clone(&context);
        async move { Ok::<_, Infallible>(respond(&context, request).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN, connection.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

/// An answer other than 200, with the message for the operator.
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<capture::Error> for Failure {
    fn from(e: capture::Error) -> Self {
        let status = match &e {
            capture::Error::Uninstalled => StatusCode::SERVICE_UNAVAILABLE,
            capture::Error::Ebpf(ebpf::Error::UnknownMap { .. })
            | capture::Error::NoMaps { .. } => StatusCode::NOT_FOUND,
            capture::Error::Ebpf(_)
            | capture::Error::Iptables(_)
            | capture::Error::OtherModeInstalled { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

async fn respond(context: &AdminContext, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let answer = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => route(context, &parts.method, parts.uri.path(), &body.to_bytes()),
        Err(e) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
        )),
    };
    let (status, body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(failure) => (
            failure.status,
            // The shape of `api::ErrorBody`.
            serde_json::json!({ "error": failure.message }),
        ),
    };
    // Pretty, with a final newline: people read it with curl too.
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What each endpoint pod of an explained request would decide: the destination's
/// AuthorizationPolicies over the request as the endpoint would see it (the sending pod's
/// identity as the peer unless `principal` says otherwise, the path normalized as the mesh
/// config says, `jwt_claims` as a validated JWT).
fn explain_authz(
    mesh: &shunt_mesh::model::MeshState,
    source: &Workload,
    request: &shunt_mesh::routing::explain::ExplainRequest,
    explanation: &shunt_mesh::routing::explain::Explanation,
) -> Result<Vec<explain::AuthzExplanation>, Failure> {
    use shunt_mesh::security::authz::{Facts, HttpFacts, RemoteIp};
    use shunt_mesh::security::{AuthzTable, RequestAuth};
    use shunt_mesh::spiffe::SpiffeId;
    let bad = |message: String| Failure::new(StatusCode::BAD_REQUEST, message);
    let (authz, _) = AuthzTable::build(mesh);
    let trust_domain = &mesh.mesh.trust_domain;
    let peer: Option<SpiffeId> = match request.principal.as_deref() {
        Some("none") => None,
        Some(principal) => {
            let uri = if principal.starts_with("spiffe://") {
                principal.to_owned()
            } else {
                format!("spiffe://{principal}")
            };
            Some(
                uri.parse()
                    .map_err(|e| bad(format!("--principal {principal:?}: {e}")))?,
            )
        }
        None if source.captured => Some(
            format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                source.namespace, source.service_account
            )
            .parse()
            .map_err(|e| bad(format!("the sending pod's identity: {e}")))?,
        ),
        None => None,
    };
    let auth = request.jwt_claims.clone().map(RequestAuth::from_claims);
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|e| bad(format!("{}: {e}", request.url)))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let normalized = shunt_mesh::http_path::normalize(target, mesh.mesh.path_normalization)
        .map_err(|e| bad(format!("the path would be refused with 400: {e}")))?;
    let path = shunt_mesh::http_path::path_only(&normalized);
    let method = request.method.clone().unwrap_or_else(|| "GET".to_owned());
    let mut headers = http::HeaderMap::new();
    for header in &request.headers {
        if let Some((name, value)) = header.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(ToString::to_string))
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let endpoints = explanation
        .destinations
        .iter()
        .filter_map(|d| d.cluster.as_ref())
        .flat_map(|cluster| cluster.endpoints.iter());
    for endpoint in endpoints {
        // `ip:port`, maybe followed by the pod or a state in the view.
        let Some(addr) = endpoint
            .split_whitespace()
            .next()
            .and_then(|a| a.parse::<std::net::SocketAddrV4>().ok())
        else {
            continue;
        };
        let Some(workload) = mesh.workloads.iter().find(|w| w.ip == Some(*addr.ip())) else {
            continue;
        };
        if !seen.insert(addr) {
            continue;
        }
        let facts = Facts {
            peer: peer.as_ref(),
            source_ip: source.ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            destination_ip: *addr.ip(),
            destination_port: addr.port(),
            sni: None,
            http: Some(HttpFacts {
                host: &host,
                method: &method,
                path,
                headers: &headers,
                remote_ip: source.ip.map_or(RemoteIp::Peer, RemoteIp::Addr),
                auth: auth.as_ref(),
            }),
        };
        let decision = authz.evaluate(workload, &facts);
        out.push(explain::AuthzExplanation {
            endpoint: addr.to_string(),
            pod: format!("{}/{}", workload.namespace, workload.name),
            decision: decision.reason.clone(),
            allowed: decision.allowed,
            custom: decision
                .custom
                .iter()
                .map(|c| format!("{} (provider {})", c.policy, c.provider))
                .collect(),
            reported: decision
                .audits
                .iter()
                .map(|rule| format!("AUDIT {rule}"))
                .chain(decision.dry_run.iter().map(|(rule, deny)| {
                    format!(
                        "dry run {rule}: would {}",
                        if *deny { "deny" } else { "allow" }
                    )
                }))
                .collect(),
            principal: peer.as_ref().map(ToString::to_string),
            request_principal: auth.as_ref().map(|a| a.principal.clone()),
        });
    }
    Ok(out)
}

/// What `GET /policies/...` answers: the tables the proxy builds from the same state.
fn pod_policies(
    mesh: &shunt_mesh::model::MeshState,
    workload: &shunt_mesh::model::Workload,
) -> api::PodPolicies {
    use shunt_mesh::security::{AuthzTable, PeerAuthnTable, RequestAuthnTable};
    let (peer_authn, _) = PeerAuthnTable::build(mesh);
    let (request_authn, _) = RequestAuthnTable::build(mesh);
    let (authz, _) = AuthzTable::build(mesh);
    let mut peer_authentication: Vec<api::PortMtls> = workload
        .ports
        .iter()
        .map(|port| api::PortMtls {
            port: Some(port.container_port),
            decision: peer_authn
                .explain(workload, port.container_port)
                .to_string(),
        })
        .collect();
    // Port 0 is no workload port: what every port without a port-level mode gets.
    peer_authentication.push(api::PortMtls {
        port: None,
        decision: peer_authn.explain(workload, 0).to_string(),
    });
    api::PodPolicies {
        pod: format!("{}/{}", workload.namespace, workload.name),
        peer_authentication,
        request_authentication: request_authn
            .policies_for(workload)
            .into_iter()
            .map(|(policy, rejected)| {
                if rejected {
                    format!(
                        "{}/{} (rejected: its issuers' tokens are refused until it is fixed)",
                        policy.namespace, policy.name
                    )
                } else {
                    format!("{}/{}", policy.namespace, policy.name)
                }
            })
            .collect(),
        authorization: authz
            .applicable(workload)
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

fn route(
    context: &AdminContext,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<serde_json::Value, Failure> {
    let expect = |wanted: Method| {
        if *method == wanted {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {wanted}, not {method}"),
            ))
        }
    };
    let body = match path {
        "/status" => {
            expect(Method::GET)?;
            serde_json::to_value(&status(context)?)
        }
        "/workloads" => {
            expect(Method::GET)?;
            serde_json::to_value(&context.node.borrow().workloads)
        }
        "/config" => {
            expect(Method::GET)?;
            let snapshot = Arc::clone(&context.config.borrow());
            serde_json::to_value(&api::ConfigDump {
                dir: snapshot.dir.clone(),
                config: snapshot.config.clone(),
                errors: snapshot.errors.clone(),
            })
        }
        "/explain" => {
            expect(Method::POST)?;
            let query: api::ExplainQuery = serde_json::from_slice(body).map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not an explain query: {e}"),
                )
            })?;
            let snapshot = Arc::clone(&context.config.borrow());
            let source = pod(&snapshot, &query.from)?;
            let (table, _) = RouteTable::build(&snapshot.mesh);
            let mut explanation = explain::explain(&table, source, &query.request)
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            explanation.authorization =
                explain_authz(&snapshot.mesh, source, &query.request, &explanation)?;
            serde_json::to_value(&explanation)
        }
        "/uninstall" => {
            expect(Method::POST)?;
            let removed = context.capture.uninstall(&context.installed)?;
            tracing::info!(
                removed = removed.len(),
                "uninstalled through the admin API; stopping"
            );
            context.uninstalled.cancel();
            serde_json::to_value(&api::Uninstalled { removed })
        }
        _ if path.starts_with("/policies/") => {
            expect(Method::GET)?;
            let name = path.trim_start_matches("/policies/");
            let snapshot = Arc::clone(&context.config.borrow());
            let workload = pod(&snapshot, name)?;
            serde_json::to_value(pod_policies(&snapshot.mesh, workload))
        }
        _ if path.starts_with("/routes/") => {
            expect(Method::GET)?;
            let name = path.trim_start_matches("/routes/");
            let snapshot = Arc::clone(&context.config.borrow());
            let source = pod(&snapshot, name)?;
            let (table, _) = RouteTable::build(&snapshot.mesh);
            serde_json::to_value(&api::PodRoutes {
                pod: format!("{}/{}", source.namespace, source.name),
                hosts: explain::pod_routes(&table, source),
            })
        }
        _ => match path.strip_prefix("/maps/") {
            Some(name) if !name.is_empty() => {
                expect(Method::GET)?;
                Ok(context.capture.with(|capture| capture.dump_map(name))?)
            }
            _ => {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no such endpoint {method} {path}; there are GET /status, GET \
                         /workloads, GET /config, GET /maps/<NAME>, GET \
                         /routes/<NAMESPACE>/<POD>, GET /policies/<NAMESPACE>/<POD>, POST \
                         /explain and POST /uninstall"
                    ),
                ));
            }
        },
    };
    body.map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        )
    })
}

/// The pod `namespace/name` of the config, as a mesh workload.
fn pod<'a>(snapshot: &'a Snapshot, name: &str) -> Result<&'a Workload, Failure> {
    let Some((namespace, pod)) = name.split_once('/') else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{name:?}: name the pod as NAMESPACE/NAME"),
        ));
    };
    snapshot
        .mesh
        .workloads
        .iter()
        .find(|w| w.namespace == namespace && w.name == pod)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("no pod {namespace}/{pod} in the config"),
            )
        })
}

fn status(context: &AdminContext) -> Result<api::Status, Failure> {
    let (pin_dir, cgroup, sockmap_shortcut, capture) = context.capture.with(|backend| {
        Ok(match backend {
            Backend::Ebpf(capture) => {
                let status = capture.status();
                (
                    Some(status.pin_dir.clone()),
                    Some(status.cgroup.clone()),
                    status.sockmap_shortcut,
                    api::CaptureReport::Ebpf(Box::new(status)),
                )
            }
            Backend::Iptables(capture) => (
                None,
                None,
                false,
                api::CaptureReport::Iptables(capture.status()),
            ),
        })
    })?;
    Ok(api::Status {
        instance: context.installed.ebpf.instance.clone(),
        capture_mode: context.capture.mode(),
        pin_dir,
        cgroup,
        sockmap_shortcut,
        capture,
        proxy: context.node.borrow().proxy.clone(),
        ca: context.ca.as_ref().map(|ca| ca.borrow().clone()),
    })
}

#[cfg(test)]
mod tests;
