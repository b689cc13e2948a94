//! Shared fixtures of this crate's tests: CAs made in memory, identities.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use shunt_mesh::spiffe::SpiffeId;

use crate::ca::{CaPems, CaSigner, SignerOptions};
use crate::provider::InProcessCa;
use crate::workload::WorkloadCert;

pub fn id(text: &str) -> SpiffeId {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn ca_params(organization: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    params
}

/// A self-signed root, `O=<organization>`: its certificate and key, PEM.
pub fn root_pems(organization: &str) -> (String, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = ca_params(organization).self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A root and an intermediate it signed, as Istio's plug-in layout: the intermediate signs;
/// `cert-chain.pem` is intermediate + root, as Istio's tools write it.
pub fn plugin_pems() -> (
    CaPems,
    String, /* root */
    String, /* intermediate */
) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("plug-in root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut intermediate_params = ca_params("plug-in intermediate");
    intermediate_params.use_authority_key_identifier_extension = true;
    let intermediate = intermediate_params
        .signed_by(&intermediate_key, &root_issuer)
        .unwrap();
    let pems = CaPems {
        ca_cert: intermediate.pem(),
        ca_key: intermediate_key.serialize_pem(),
        root_cert: Some(root.pem()),
        cert_chain: Some(format!("{}{}", intermediate.pem(), root.pem())),
    };
    (pems, root.pem(), intermediate.pem())
}

/// A CA with a fresh self-signed root, made in memory.
pub fn signer_with(options: SignerOptions) -> Arc<CaSigner> {
    signer_named("cluster.local", options)
}

/// A CA whose root is `O=<organization>`.
pub fn signer_named(organization: &str, options: SignerOptions) -> Arc<CaSigner> {
    let (cert, key) = root_pems(organization);
    let pems = CaPems {
        ca_cert: cert,
        ca_key: key,
        root_cert: None,
        cert_chain: None,
    };
    Arc::new(CaSigner::from_pem(&pems, options).unwrap())
}

pub fn signer() -> Arc<CaSigner> {
    signer_with(SignerOptions::default())
}

/// A certificate for `id` from `signer`, as a workload would hold it.
pub fn workload_cert(signer: &Arc<CaSigner>, id: &SpiffeId) -> WorkloadCert {
    InProcessCa::new(Arc::clone(signer), Duration::ZERO)
        .issue(id)
        .unwrap()
}

/// A certificate for `id` from `signer` with the validity given (expired ones, say).
pub fn workload_cert_valid(
    signer: &CaSigner,
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> WorkloadCert {
    let made = crate::csr::generate(id).unwrap();
    let chain = signer
        .sign_with_validity(&made.csr_pem, id, not_before, not_after)
        .unwrap();
    WorkloadCert::from_pem(&made.key_pem, &chain).unwrap()
}
