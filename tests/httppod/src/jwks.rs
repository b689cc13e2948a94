//! `jwks`: what the RequestAuthentication tests need around the proxy: a JWKS server in a pod,
//! and keys and tokens to go with it.
//!
//! ```text
//! shunt-httppod jwks serve  --port P --file JWKS.json [--path /jwks.json]
//! shunt-httppod jwks keygen --alg ES256|ES384|EdDSA --out KEY.pem
//! shunt-httppod jwks export --key KEY.pem --alg ALG --kid KID [--key ... --alg ... --kid ...]
//! shunt-httppod jwks mint   --key KEY.pem --alg ALG [--kid KID] --iss ISS [--sub SUB]
//!                           [--aud AUD]... [--exp-offset SECS] [--nbf-offset SECS]
//!                           [--claims JSON]
//! ```
//!
//! - `serve` answers `GET <path>` with the file, read again on every request (a test can
//!   change the keys without a restart), and `GET /count` with `{"served": N}`; it prints
//!   `ready` once it listens. A test stops it to make the JWKS unreachable.
//! - `keygen` writes a PKCS#8 key (ring cannot generate RSA keys: use a PKCS#1 RSA PEM, such
//!   as `testdata/rsa-2048.pem`, a test-only key, or `openssl genrsa -traditional`).
//! - `export` prints the public keys as JWKS JSON, a `kid` for each.
//! - `mint` prints `{"token": "<JWT>"}`, one signed token: `exp` is now + `--exp-offset` (default 3600; negative
//!   for an expired token; `none` for no `exp`), `nbf` now + `--nbf-offset` when given,
//!   `--claims` (a JSON object) merged over the rest.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;

#[derive(Debug, clap::Args)]
pub struct JwksArgs {
    #[command(subcommand)]
    command: JwksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JwksCommand {
    /// Serve a JWKS file over HTTP.
    Serve(ServeArgs),
    /// Write a new EC or Ed25519 private key (PKCS#8 PEM).
    Keygen(KeygenArgs),
    /// Print the JWKS of private keys' public halves.
    Export(ExportArgs),
    /// Print a signed JWT.
    Mint(MintArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[arg(long)]
    port: u16,
    /// The JWKS JSON served (read on every request).
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value = "/jwks.json")]
    path: String,
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// ES256, ES384 or EdDSA.
    #[arg(long)]
    alg: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// A private key (PEM); repeat with --alg and --kid for each key of the set.
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    #[arg(long, required = true)]
    alg: Vec<String>,
    #[arg(long, required = true)]
    kid: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    #[arg(long)]
    key: PathBuf,
    /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
    #[arg(long)]
    alg: String,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    iss: String,
    #[arg(long)]
    sub: Option<String>,
    /// One audience (`aud` a string), or several (`aud` a list).
    #[arg(long)]
    aud: Vec<String>,
    /// Seconds from now to `exp`; `none` leaves `exp` out.
    #[arg(long, default_value = "3600", allow_hyphen_values = true)]
    exp_offset: String,
    /// Seconds from now to `nbf`.
    #[arg(long, allow_hyphen_values = true)]
    nbf_offset: Option<i64>,
    /// A JSON object merged over the claims.
    #[arg(long)]
    claims: Option<String>,
}

/// Runs a `jwks` subcommand; the JSON it prints (`serve` never returns).
pub async fn run(args: JwksArgs) -> Result<Value> {
    match args.command {
        JwksCommand::Serve(args) => serve(args).await,
        JwksCommand::Keygen(args) => keygen(&args),
        JwksCommand::Export(args) => export(&args),
        JwksCommand::Mint(args) => mint(&args),
    }
}

async fn serve(args: ServeArgs) -> Result<Value> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .await
        .with_context(|| format!("binding the JWKS port {}", args.port))?;
    let served = Arc::new(AtomicU64::new(0));
    let file = Arc::new(args.file);
    let path = Arc::new(args.path);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    drop(stdout);
    loop {
        let (tcp, _) = listener.accept().await.context("accepting")?;
        let (served, file, path) = (served.clone(), file.clone(), path.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &path, &file, &served);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away is not the server's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(
    request: &Request<Incoming>,
    path: &str,
    file: &Path,
    served: &AtomicU64,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    };
    match request.uri().path() {
        "/count" => reply(
            StatusCode::OK,
            json!({"served": served.load(Ordering::SeqCst)}).to_string(),
        ),
        p if p == path => match std::fs::read_to_string(file) {
            Ok(body) => {
                served.fetch_add(1, Ordering::SeqCst);
                reply(StatusCode::OK, body)
            }
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("{}: {e}", file.display())}).to_string(),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "{}".into()),
    }
}

fn keygen(args: &KeygenArgs) -> Result<Value> {
    let rng = SystemRandom::new();
    let pkcs8 = match args.alg.as_str() {
        "ES256" => signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        ),
        "ES384" => signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &rng,
        ),
        "EdDSA" => signature::Ed25519KeyPair::generate_pkcs8(&rng),
        other => bail!(
            "--alg {other}: keygen makes ES256, ES384 or EdDSA keys (for RSA use an existing PEM, \
             e.g. testdata/rsa-2048.pem)"
        ),
    }
    .map_err(|_| anyhow::anyhow!("generating the key failed"))?;
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let encoded = STANDARD.encode(pkcs8.as_ref());
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    std::fs::write(&args.out, pem).with_context(|| format!("writing {}", args.out.display()))?;
    Ok(json!({"key": args.out, "alg": args.alg}))
}

fn algorithm(alg: &str) -> Result<Algorithm> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => bail!("--alg {other}: expected RS/PS 256, 384 or 512, ES256, ES384 or EdDSA"),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading --key {}", path.display()))
}

/// The public JWK of the private key at `path`, for `alg`.
fn public_jwk(path: &Path, alg: Algorithm, kid: &str) -> Result<Value> {
    let pem = read(path)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("--key {}: no PEM private key", path.display()))?;
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let bad = || format!("--key {}: not a key for {alg:?}", path.display());
    let rng = SystemRandom::new();
    let mut jwk = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let (signing, curve) = if alg == Algorithm::ES256 {
                (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
            } else {
                (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
            };
            let pair = signature::EcdsaKeyPair::from_pkcs8(signing, der.secret_der(), &rng)
                .map_err(|_| anyhow::anyhow!(bad()))?;
            let point = pair.public_key().as_ref();
            let half = (point.len() - 1) / 2;
            json!({"kty": "EC", "crv": curve, "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])})
        }
        Algorithm::EdDSA => {
            let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_der())
                .map_err(|_| anyhow::anyhow!(bad()))?;
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
        }
        _ => {
            let PrivateKeyDer::Pkcs1(pkcs1) = &der else {
                bail!("{}: an RSA key is PKCS#1 (BEGIN RSA PRIVATE KEY)", bad());
            };
            let pair = signature::RsaKeyPair::from_der(pkcs1.secret_pkcs1_der())
                .map_err(|_| anyhow::anyhow!(bad()))?;
            let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public_key().into();
            json!({
                "kty": "RSA",
                "n": b64(&public.n),
                "e": b64(&public.e),
            })
        }
    };
    jwk["kid"] = kid.into();
    jwk["alg"] = format!("{alg:?}").into();
    jwk["use"] = "sig".into();
    Ok(jwk)
}

fn export(args: &ExportArgs) -> Result<Value> {
    if args.key.len() != args.alg.len() || args.key.len() != args.kid.len() {
        bail!("give --alg and --kid once for each --key");
    }
    let keys = args
        .key
        .iter()
        .zip(&args.alg)
        .zip(&args.kid)
        .map(|((key, alg), kid)| public_jwk(key, algorithm(alg)?, kid))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"keys": keys}))
}

fn encoding_key(path: &Path, alg: Algorithm) -> Result<EncodingKey> {
    let pem = read(path)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("--key {}: no PEM private key", path.display()))?;
    Ok(match (alg, &der) {
        (Algorithm::ES256 | Algorithm::ES384, PrivateKeyDer::Pkcs8(pkcs8)) => {
            EncodingKey::from_ec_der(pkcs8.secret_pkcs8_der())
        }
        (Algorithm::EdDSA, PrivateKeyDer::Pkcs8(pkcs8)) => {
            EncodingKey::from_ed_der(pkcs8.secret_pkcs8_der())
        }
        (Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA, _) => {
            bail!(
                "--key {}: an EC or Ed25519 key is PKCS#8 (BEGIN PRIVATE KEY)",
                path.display()
            )
        }
        (_, PrivateKeyDer::Pkcs1(pkcs1)) => EncodingKey::from_rsa_der(pkcs1.secret_pkcs1_der()),
        _ => bail!(
            "--key {}: an RSA key is PKCS#1 (BEGIN RSA PRIVATE KEY; openssl genrsa -traditional)",
            path.display()
        ),
    })
}

fn mint(args: &MintArgs) -> Result<Value> {
    let alg = algorithm(&args.alg)?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    let mut claims = json!({"iss": args.iss});
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.as_str().into();
    }
    match args.aud.as_slice() {
        [] => {}
        [one] => claims["aud"] = one.as_str().into(),
        many => claims["aud"] = many.into(),
    }
    if args.exp_offset != "none" {
        let offset: i64 = args
            .exp_offset
            .parse()
            .with_context(|| format!("--exp-offset {:?}: seconds, or none", args.exp_offset))?;
        claims["exp"] = (now + offset).into();
    }
    if let Some(offset) = args.nbf_offset {
        claims["nbf"] = (now + offset).into();
    }
    claims["iat"] = now.into();
    if let Some(extra) = &args.claims {
        let extra: Value = serde_json::from_str(extra).context("--claims is not JSON")?;
        let Value::Object(extra) = extra else {
            bail!("--claims must be a JSON object");
        };
        for (key, value) in extra {
            claims[key] = value;
        }
    }
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    let token = jsonwebtoken::encode(&header, &claims, &encoding_key(&args.key, alg)?)?;
    Ok(json!({"token": token}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint_args(key: &Path, alg: &str, extra: &[&str]) -> MintArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            mint: MintArgs,
        }
        let mut argv = vec![
            "mint".to_owned(),
            "--key".into(),
            key.display().to_string(),
            "--alg".into(),
            alg.into(),
            "--kid".into(),
            "k1".into(),
            "--iss".into(),
            "https://issuer.test".into(),
            "--sub".into(),
            "alice".into(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        Wrapper::parse_from(argv).mint
    }

    fn token(minted: &Value) -> &str {
        minted["token"].as_str().unwrap()
    }

    fn payload(minted: &Value) -> Value {
        let section = token(minted).split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(section).unwrap()).unwrap()
    }

    /// Every algorithm: a key, its JWKS, a token that verifies against the JWKS's key.
    #[test]
    fn minted_tokens_verify_against_the_exported_jwks() {
        let dir = std::env::temp_dir().join(format!("httppod-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rsa = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/rsa-2048.pem");
        for alg in ["RS256", "PS384", "ES256", "ES384", "EdDSA"] {
            let key = if alg.starts_with("RS") || alg.starts_with("PS") {
                rsa.clone()
            } else {
                let out = dir.join(format!("{alg}.pem"));
                keygen(&KeygenArgs {
                    alg: alg.into(),
                    out: out.clone(),
                })
                .unwrap();
                out
            };
            let jwks = export(&ExportArgs {
                key: vec![key.clone()],
                alg: vec![alg.into()],
                kid: vec!["k1".into()],
            })
            .unwrap();
            let minted = mint(&mint_args(
                &key,
                alg,
                &["--aud", "shop", "--exp-offset", "-30"],
            ))
            .unwrap();
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(jwks["keys"][0].clone()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(algorithm(alg).unwrap());
            validation.set_audience(&["shop"]);
            validation.leeway = 60;
            let decoded = jsonwebtoken::decode::<Value>(
                token(&minted),
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &validation,
            )
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(decoded.header.kid.as_deref(), Some("k1"), "{alg}");
            assert_eq!(decoded.claims["sub"], "alice", "{alg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn claims_follow_the_flags() {
        let rsa = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/rsa-2048.pem");
        let minted = mint(&mint_args(
            &rsa,
            "RS256",
            &[
                "--aud",
                "a",
                "--aud",
                "b",
                "--exp-offset",
                "none",
                "--nbf-offset",
                "-5",
                "--claims",
                r#"{"groups": ["x"], "sub": "bob"}"#,
            ],
        ))
        .unwrap();
        let claims = payload(&minted);
        assert_eq!(claims["aud"], json!(["a", "b"]));
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["groups"], json!(["x"]));
        assert!(claims.get("exp").is_none());
        assert!(claims["nbf"].as_i64().unwrap() < claims["iat"].as_i64().unwrap());
        let expired = payload(&mint(&mint_args(&rsa, "RS256", &["--exp-offset", "-100"])).unwrap());
        assert!(expired["exp"].as_i64().unwrap() < expired["iat"].as_i64().unwrap());
        assert!(mint(&mint_args(&rsa, "HS256", &[])).is_err());
        assert!(
            mint(&mint_args(&rsa, "ES256", &[])).is_err(),
            "an RSA key is no EC key"
        );
    }
}
