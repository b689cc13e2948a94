//! `shunt-hbonepeer`: an HBONE peer for the multi-node tests, well-behaved or deliberately
//! not, run inside a pod's netns against (or instead of) a node proxy's `<pod IP>:15008`.
//!
//! ```text
//! shunt-hbonepeer client --to IP:15008 --ca-dir DIR [--identity SPIFFE]
//!                        [--cert cluster|other-ca|expired|none] [--tls 1.2|1.3|any]
//!                        [--ciphers default|aes-gcm|chacha20] [--alpn P]...
//!                        [--expect-server SPIFFE] [--authority HOST:PORT]... [--header 'N: V']...
//!                        [--send-bytes N]
//! shunt-hbonepeer server --listen IP:PORT --ca-dir DIR --identity SPIFFE
//! ```
//!
//! Certificates are minted here from the cluster's root (`DIR/root-cert.pem` and
//! `DIR/root-key.pem`: the agent's self-signed root, `<CA state dir>/self-signed`), so a
//! test can present any identity, or one from a root nobody trusts, or an expired one.
//!
//! The client prints one JSON line and exits 0 when it ran (what happened is in the JSON:
//! judging it is the test's job), 1 when it could not run at all (a bad flag, an unreadable
//! CA). The server prints `ready` once it listens, then a JSON line per event (each
//! connection's ClientHello, its handshake, each `CONNECT` and its end), until killed.
#![forbid(unsafe_code)]

mod certs;
mod client;
mod server;
mod tls;

#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "shunt-hbonepeer",
    about = "An HBONE client or server for shunt's wire tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dial an HBONE listener, send `CONNECT`s; print one JSON report.
    Client(client::ClientArgs),
    /// Serve HBONE (answering every `CONNECT` with 200 and an echo); print JSON events.
    Server(server::ServerArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Client(args) => {
                let report = client::run(args).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            Command::Server(args) => server::run(args).await,
        }
    })
}
