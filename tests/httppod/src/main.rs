//! `shunt-httppod`: the HTTP/1.1, h2, gRPC and WebSocket server and clients the L7 end-to-end
//! tests run inside pods. Servers print `ready` once they listen; clients print one JSON line
//! and exit 0 when they ran (the JSON says what happened; judging it is the test's job), 1 when
//! they could not run at all.
//!
//! ```text
//! shunt-httppod serve --port P [--name NAME] [--grpc-port G] [--ws] [--status S] [--delay-ms D]
//!                     [--tls-port T --tls-cert CERT.pem --tls-key KEY.pem]
//! shunt-httppod http  --url URL [--connect IP:PORT] [-n N] [-c C] [-X M] [-H 'k: v']...
//!                     [--http2] [--cookie-jar] [--rps R --duration S] [--body-bytes N]
//! shunt-httppod grpc  --addr IP:PORT [-n N] [--service shunt.test]
//! shunt-httppod ws    --url ws://HOST/ws [--connect IP:PORT] [-n N]
//! shunt-httppod count --addr 127.0.0.1:P [--prefix /p] [--reset]
//! shunt-httppod ext-authz --port P [--delay-ms D] [--deny-status S]
//! shunt-httppod jwks serve|keygen|export|mint ...   (see jwks.rs)
//! shunt-httppod max --to IP:PORT --host H --duration-ms D [--connections C] [--warmup-ms W]
//!                   [--tls-ca CA.pem] [--new-connection]   (the bench's HTTPS client)
//! ```
//!
//! Request headers the server obeys: `x-fail-pattern: K/N` (the first K of every N requests
//! carrying that value and the same `x-fail-key` get 503), `x-status: S`, `x-delay-ms: D`, `x-set-cookie: C` (answered as `set-cookie: C`).
#![forbid(unsafe_code)]

mod client;
mod ext_authz;
mod grpc;
mod jwks;
mod max;
mod server;
mod websocket;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "shunt-httppod",
    about = "L7 test server and clients for shunt's end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The HTTP/1.1 + h2c server (and gRPC Health, WebSocket echo).
    Serve(server::ServeArgs),
    /// Send HTTP requests; print one JSON summary.
    Http(client::HttpArgs),
    /// grpc.health.v1.Health/Check N times; print the status codes.
    Grpc(grpc::GrpcArgs),
    /// WebSocket echo check.
    Ws(websocket::WsArgs),
    /// What a server has seen (`GET /count`).
    Count(client::CountArgs),
    /// An HTTP ext_authz service, as Istio's sample (`x-ext-authz: allow` allows).
    ExtAuthz(ext_authz::ExtAuthzArgs),
    /// A JWKS server, keys and tokens for the RequestAuthentication tests.
    Jwks(jwks::JwksArgs),
    /// The bench's closed-loop HTTP/1.1 max-rps client, over TCP or TLS.
    Max(max::MaxArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let report = match cli.command {
            Command::Serve(args) => return server::run(args).await,
            Command::Http(args) => client::run(args).await?,
            Command::Grpc(args) => grpc::run(args).await?,
            Command::Ws(args) => websocket::run(args).await?,
            Command::Count(args) => client::count(args).await?,
            Command::ExtAuthz(args) => return ext_authz::run(args).await,
            Command::Jwks(args) => jwks::run(args).await?,
            Command::Max(args) => max::run(args).await?,
        };
        println!("{report}");
        Ok(())
    })
}
