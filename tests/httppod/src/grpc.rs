//! `grpc`: grpc.health.v1.Health/Check, N times, counting status codes and serving statuses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::CONNECT_TIMEOUT;
use crate::server::GRPC_SERVICE;

/// At most this many individual error messages are listed.
const MAX_LISTED_MESSAGES: usize = 20;

#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// The server (a Service ClusterIP:port or a pod IP:port).
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: u64,
    #[arg(long, default_value = GRPC_SERVICE)]
    pub service: String,
    /// Per-call timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

pub async fn run(args: GrpcArgs) -> Result<Value> {
    let endpoint = Endpoint::from_shared(format!("http://{}", args.addr))
        .context("--addr as a gRPC endpoint")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_millis(args.timeout_ms));
    // Lazy: a refused or reset connection shows as a status code per call, not one failure.
    let mut client = HealthClient::new(endpoint.connect_lazy());
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut serving: BTreeMap<String, u64> = BTreeMap::new();
    let mut messages = Vec::new();
    let overall = Duration::from_millis(args.timeout_ms).saturating_add(CONNECT_TIMEOUT);
    for _ in 0..args.count {
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        let outcome = tokio::time::timeout(overall, client.check(request)).await;
        match outcome {
            Ok(Ok(response)) => {
                *codes.entry("Ok".to_owned()).or_insert(0) += 1;
                let status = ServingStatus::try_from(response.into_inner().status)
                    .map_or_else(|_| "unknown".to_owned(), |s| s.as_str_name().to_owned());
                *serving.entry(status).or_insert(0) += 1;
            }
            Ok(Err(status)) => {
                *codes.entry(format!("{:?}", status.code())).or_insert(0) += 1;
                if messages.len() < MAX_LISTED_MESSAGES {
                    messages.push(status.message().to_owned());
                }
            }
            Err(_) => {
                *codes.entry("ClientTimeout".to_owned()).or_insert(0) += 1;
            }
        }
    }
    Ok(json!({
        "requests": args.count,
        "codes": codes,
        "serving": serving,
        "messages": messages,
    }))
}
