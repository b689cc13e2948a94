//! The certificates the peer presents, minted here with `shunt-identity`'s own signer (so they
//! have exactly istiod's leaf profile and only the one property a case changes): from the
//! cluster's root, whose key the CA keeps in its state dir; from a root made here that
//! nobody trusts; or from the cluster's root but already expired.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use shunt_identity::SpiffeId;
use shunt_identity::ca::{
    CaPems, CaSigner, SELF_SIGNED_CERT_FILE, SELF_SIGNED_KEY_FILE, SignerOptions,
};
use shunt_identity::provider::InProcessCa;
use shunt_identity::trust::TrustBundle;
use shunt_identity::workload::WorkloadCert;

/// How long a good certificate is valid: longer than any test.
const LIFETIME: Duration = Duration::from_secs(3600);
/// An expired certificate's lifetime, waited out before it is used.
const EXPIRED_LIFETIME: Duration = Duration::from_secs(1);

/// Which certificate the peer presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertKind {
    /// Issued by the cluster's root, valid now.
    Cluster,
    /// Issued by a root made by this process, which no node trusts.
    OtherCa,
    /// Issued by the cluster's root, and expired (the peer waits out its one second).
    Expired,
    /// None at all.
    None,
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is --ca-dir the CA's self-signed root folder, <state dir>/self-signed?)",
            path.display()
        )
    })
}

/// The trust anchor of the cluster: `<ca_dir>/root-cert.pem`.
pub fn cluster_roots(ca_dir: &Path) -> Result<TrustBundle> {
    TrustBundle::from_pem(&read(ca_dir, SELF_SIGNED_CERT_FILE)?)
        .with_context(|| format!("the cluster's root in {}", ca_dir.display()))
}

/// A signer with the cluster's self-signed root and its key.
fn cluster_signer(ca_dir: &Path, options: SignerOptions) -> Result<Arc<CaSigner>> {
    let pems = CaPems {
        ca_cert: read(ca_dir, SELF_SIGNED_CERT_FILE)?,
        ca_key: read(ca_dir, SELF_SIGNED_KEY_FILE)?,
        root_cert: None,
        cert_chain: None,
    };
    let signer = CaSigner::from_pem(&pems, options)
        .with_context(|| format!("loading the cluster's CA from {}", ca_dir.display()))?;
    Ok(Arc::new(signer))
}

/// A signer with a fresh self-signed root of its own.
fn other_signer() -> Result<Arc<CaSigner>> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating a root key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::OrganizationName,
        "shunt-hbonepeer: a root no node trusts",
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - LIFETIME).into();
    params.not_after = (now + 24 * LIFETIME).into();
    let root = params.self_signed(&key).context("signing the other root")?;
    let pems = CaPems {
        ca_cert: root.pem(),
        ca_key: key.serialize_pem(),
        root_cert: None,
        cert_chain: None,
    };
    Ok(Arc::new(
        CaSigner::from_pem(&pems, SignerOptions::default()).context("loading the other root")?,
    ))
}

fn issue(signer: Arc<CaSigner>, identity: &SpiffeId, ttl: Duration) -> Result<WorkloadCert> {
    InProcessCa::new(signer, ttl)
        .issue(identity)
        .with_context(|| format!("issuing a certificate for {identity}"))
}

/// The certificate of `kind` for `identity`; `None` for [`CertKind::None`]. An expired one
/// takes a little over a second: it is issued valid and then waited out, since the signer
/// never dates a certificate's end in the past.
pub async fn mint(
    kind: CertKind,
    ca_dir: &Path,
    identity: &SpiffeId,
) -> Result<Option<WorkloadCert>> {
    let cert = match kind {
        CertKind::None => return Ok(None),
        CertKind::Cluster => issue(
            cluster_signer(ca_dir, SignerOptions::default())?,
            identity,
            LIFETIME,
        )?,
        CertKind::OtherCa => issue(other_signer()?, identity, LIFETIME)?,
        CertKind::Expired => {
            // NotBefore an hour back, so the certificate is plainly over, not "not yet".
            let options = SignerOptions {
                backdate: LIFETIME,
                ..SignerOptions::default()
            };
            let cert = issue(cluster_signer(ca_dir, options)?, identity, EXPIRED_LIFETIME)?;
            // X.509 times have whole seconds: a second past NotAfter is past it for anyone.
            let over = cert.not_after() + Duration::from_secs(1);
            if let Ok(wait) = over.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            cert
        }
    };
    Ok(Some(cert))
}
