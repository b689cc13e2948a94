//! `shunt-httppod jwks` on loopback: a key made, its JWKS served, a token minted, as the
//! RequestAuthentication end-to-end tests use them.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shunt-httppod");

/// The value, or a panic naming what failed.
fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Runs a subcommand to completion; its JSON line.
fn run(args: &[&str]) -> Value {
    let output = must(
        Command::new(BIN).args(args).output(),
        "running shunt-httppod",
    );
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    must(serde_json::from_slice(&output.stdout), "its JSON line")
}

/// A running `jwks serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(file: &Path) -> Server {
    let port = {
        let listener = must(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)), "a free port");
        must(listener.local_addr(), "its address").port()
    };
    let mut child = must(
        Command::new(BIN)
            .args(["jwks", "serve", "--port", &port.to_string(), "--file"])
            .arg(file)
            .stdout(Stdio::piped())
            .spawn(),
        "spawning jwks serve",
    );
    let Some(stdout) = child.stdout.take() else {
        panic!("jwks serve has no stdout pipe");
    };
    let mut line = String::new();
    must(BufReader::new(stdout).read_line(&mut line), "reading ready");
    assert_eq!(line.trim(), "ready");
    Server { child, port }
}

/// `GET path`: the status and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = must(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        "connecting",
    );
    must(
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: jwks\r\nconnection: close\r\n\r\n"
        ),
        "sending",
    );
    let mut response = String::new();
    must(stream.read_to_string(&mut response), "reading");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

#[test]
fn keys_are_made_served_and_tokens_minted() {
    let dir = std::env::temp_dir().join(format!("httppod-jwks-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("ec.pem");
    let key_arg = key.to_str().unwrap();
    run(&["jwks", "keygen", "--alg", "ES256", "--out", key_arg]);
    let rsa = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rsa-2048.pem");
    let jwks = run(&[
        "jwks", "export", "--key", key_arg, "--alg", "ES256", "--kid", "ec", "--key", rsa, "--alg",
        "RS256", "--kid", "rsa",
    ]);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["ec", "rsa"]);
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();

    let server = serve(&file);
    let (status, body) = get(server.port, "/jwks.json");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), jwks);
    // The file is read on every request: a test can rotate keys under a running server.
    std::fs::write(&file, r#"{"keys": []}"#).unwrap();
    assert_eq!(get(server.port, "/jwks.json").1, r#"{"keys": []}"#);
    assert_eq!(get(server.port, "/other").0, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&get(server.port, "/count").1).unwrap()["served"],
        2
    );

    let minted = run(&[
        "jwks",
        "mint",
        "--key",
        key_arg,
        "--alg",
        "ES256",
        "--kid",
        "ec",
        "--iss",
        "https://issuer.test",
        "--sub",
        "alice",
        "--aud",
        "shop",
        "--exp-offset",
        "-120",
    ]);
    let token = minted["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");
    // A bad flag is a failure with a reason, not a token.
    let refused = must(
        Command::new(BIN)
            .args([
                "jwks", "mint", "--key", key_arg, "--alg", "HS256", "--iss", "i",
            ])
            .output(),
        "running mint",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HS256"));
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
