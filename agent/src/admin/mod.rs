//! The admin API: HTTP/1.1 on `<run-dir>/admin.sock`, for `shuntctl` (and `curl
//! --unix-socket`). Bodies are JSON ([`api`]); errors are non-2xx with `{"error": "..."}`.
//!
//! - `GET /status`: the capture mode, capture (programs, attach points, pins, maps, counters,
//!   kernel probe; or each pod's iptables rules) and the proxy connection;
//! - `GET /workloads`: every pod, captured or not and why, netns cookie, proxy state;
//! - `GET /config`: every object loaded, and the errors of the last load;
//! - `GET /maps/<NAME>`: a map's entries;
//! - `POST /uninstall`: detaches and unpins everything, answers, then the agent exits.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::capture;
use crate::config::Snapshot;
use crate::pods::NodeView;
use crate::run_dir;
use crate::shared_capture::{self, Backend, Installed, SharedCapture};

/// How long an answer being written may take once the agent stops (e.g. after uninstall).
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] run_dir::Error),
}

/// What the admin API reads from, and the one thing it can do.
pub struct AdminContext {
    pub capture: SharedCapture,
    /// What `POST /uninstall` removes.
    pub installed: Installed,
    pub config: watch::Receiver<Arc<Snapshot>>,
    pub node: watch::Receiver<NodeView>,
    /// Cancelled by `POST /uninstall` once capture is gone: the agent then stops.
    pub uninstalled: CancellationToken,
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
        async move { Ok::<_, Infallible>(respond(&context, &request)) }
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

impl From<shared_capture::Error> for Failure {
    fn from(e: shared_capture::Error) -> Self {
        let status = match &e {
            shared_capture::Error::Uninstalled => StatusCode::SERVICE_UNAVAILABLE,
            shared_capture::Error::Capture(capture::Error::UnknownMap { .. })
            | shared_capture::Error::NoMaps { .. } => StatusCode::NOT_FOUND,
            shared_capture::Error::Capture(_)
            | shared_capture::Error::Iptables(_)
            | shared_capture::Error::OtherModeInstalled { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

fn respond(context: &AdminContext, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match route(context, request.method(), request.uri().path()) {
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

fn route(
    context: &AdminContext,
    method: &Method,
    path: &str,
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
                         /workloads, GET /config, GET /maps/<NAME> and POST /uninstall"
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

fn status(context: &AdminContext) -> Result<api::Status, Failure> {
    let (pin_dir, cgroup, sockmap_shortcut, capture) = context.capture.with(|backend| {
        Ok(match backend {
            Backend::Ebpf(capture) => {
                let status = capture.status();
                (
                    Some(status.pin_dir.clone()),
                    Some(status.cgroup.clone()),
                    status.sockmap_shortcut,
                    serde_json::to_value(&status),
                )
            }
            Backend::Iptables(capture) => {
                (None, None, false, serde_json::to_value(capture.status()))
            }
        })
    })?;
    Ok(api::Status {
        instance: context.installed.ebpf.instance.clone(),
        capture_mode: context.capture.mode(),
        pin_dir,
        cgroup,
        sockmap_shortcut,
        capture: capture.map_err(|e| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the capture status: {e}"),
            )
        })?,
        proxy: context.node.borrow().proxy.clone(),
    })
}

#[cfg(test)]
mod tests;
