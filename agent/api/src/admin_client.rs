//! A client of the admin API over its Unix socket: `shuntctl`, `shunt-agent --uninstall`
//! (which asks a running agent first) and the admin API's tests use it. Behind the `client`
//! feature, so the proxy does not link it.

use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::admin as api;

/// Each variant's cause is its `source`, not in its message: binaries print the whole chain
/// (`crate::report::chain`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no agent at {}: is shunt-agent running{}?", socket.display(), hint(instance.as_deref()))]
    NoAgent {
        socket: PathBuf,
        instance: Option<String>,
    },
    #[error("cannot connect to {}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("talking to the agent at {} failed", socket.display())]
    Http {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("building the request failed")]
    Request(#[from] hyper::http::Error),
    #[error("the agent answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the agent's answer is not what this shuntctl expects")]
    Decode(#[from] serde_json::Error),
}

fn hint(instance: Option<&str>) -> String {
    instance.map_or_else(String::new, |i| format!(" with --instance {i}"))
}

pub struct AdminClient {
    socket: PathBuf,
    /// Named in the error when no agent answers.
    instance: Option<String>,
}

impl AdminClient {
    /// `instance` is what the socket path was derived from, if it was.
    #[must_use]
    pub fn new(socket: &Path, instance: Option<&str>) -> Self {
        Self {
            socket: socket.to_owned(),
            instance: instance.map(str::to_owned),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.request(Method::GET, path).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.request(Method::POST, path).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// `POST path` with a JSON body.
    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let body = serde_json::to_vec(body)?;
        let answer = self.send(Method::POST, path, Bytes::from(body)).await?;
        Ok(serde_json::from_slice(&answer)?)
    }

    async fn request(&self, method: Method, path: &str) -> Result<Bytes, Error> {
        self.send(method, path, Bytes::new()).await
    }

    async fn send(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, Error> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NoAgent {
                        socket: self.socket.clone(),
                        instance: self.instance.clone(),
                    },
                    _ => Error::Connect {
                        socket: self.socket.clone(),
                        source,
                    },
                })?;
        let http = |source| Error::Http {
            socket: self.socket.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "shunt-agent")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        drop(sender);
        let _ = driver.await;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<api::ErrorBody>(&body).map_or_else(
            |_| String::from_utf8_lossy(&body).trim().to_owned(),
            |e| e.error,
        );
        Err(Error::Refused { status, message })
    }
}
