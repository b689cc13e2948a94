//! The CA signer: turns a checked CSR into a workload certificate chain.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SubjectPublicKeyInfo};
use rustls::pki_types::CertificateDer;
use shunt_mesh::spiffe::SpiffeId;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::error::Error;
use super::store::{self, CaPems};
use super::{profile, request};
use crate::cert;
use crate::trust::TrustBundle;

/// How the CA dates and limits what it issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignerOptions {
    /// The lifetime of a certificate whose request asks for none: 24 h, istiod's default.
    pub default_ttl: Duration,
    /// The longest lifetime a request may ask for: 90 days, istiod's default.
    pub max_ttl: Duration,
    /// How far in the past `NotBefore` is put, for peers whose clocks are behind: 2 minutes,
    /// as istiod.
    pub backdate: Duration,
}

impl Default for SignerOptions {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            backdate: Duration::from_secs(120),
        }
    }
}

/// A loaded CA: its signing key and certificate, the chain from that certificate to the
/// root, and the trust bundle.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    /// What follows the leaf in every chain: the signing certificate, intermediates, the
    /// root last.
    tail: Vec<CertificateDer<'static>>,
    /// No certificate is valid past the end of its CA's chain.
    chain_not_after: SystemTime,
    bundle: TrustBundle,
    options: SignerOptions,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("chain_len", &self.tail.len())
            .field("roots", &self.bundle.roots().len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// An identity no workload has, for the certificate a CA signs to check itself at load.
const SELF_CHECK_ID: &str = "spiffe://shunt.invalid/ns/shunt-system/sa/ca-self-check";

impl CaSigner {
    /// A CA from PEM text (Istio's `cacerts` Secret, or `istio-ca-secret`).
    ///
    /// Checks that the signing certificate is a CA, that every certificate of the chain is
    /// signed by the next up to the root, and signs and verifies one certificate before
    /// returning, so a key that does not match or a broken chain fails here rather than in
    /// every workload's handshake.
    pub fn from_pem(pems: &CaPems, options: SignerOptions) -> Result<Self, Error> {
        let mut signing = cert::parse_pem(&pems.ca_cert, store::CA_CERT_FILE)?;
        let ca = signing.remove(0);
        if !cert::is_ca(&ca, store::CA_CERT_FILE)? {
            return Err(Error::NotCa {
                what: store::CA_CERT_FILE.to_owned(),
            });
        }
        let key = KeyPair::from_pem(&pems.ca_key).map_err(|source| Error::Key {
            what: store::CA_KEY_FILE.to_owned(),
            source,
        })?;
        let roots = match &pems.root_cert {
            Some(pem) => cert::parse_pem(pem, store::ROOT_CERT_FILE)?,
            None if cert::is_self_issued(&ca, store::CA_CERT_FILE)? => vec![ca.clone()],
            None => {
                return Err(Error::NoRoot {
                    what: store::CA_CERT_FILE.to_owned(),
                });
            }
        };
        let root = roots[0].clone();

        // leaf + cert-chain + root, without repeating a certificate (cert-chain.pem usually
        // starts with ca-cert.pem and often ends with the root).
        let mut tail: Vec<CertificateDer<'static>> = Vec::new();
        let mut push = |der: CertificateDer<'static>| {
            if !tail.contains(&der) {
                tail.push(der);
            }
        };
        push(ca.clone());
        signing.into_iter().for_each(&mut push);
        if let Some(pem) = &pems.cert_chain {
            cert::parse_pem(pem, store::CERT_CHAIN_FILE)?
                .into_iter()
                .for_each(&mut push);
        }
        push(root);
        check_links(&tail)?;

        let chain_not_after = tail
            .iter()
            .enumerate()
            .map(|(index, der)| cert::info(der, &chain_name(index)).map(|info| info.not_after))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let issuer = Issuer::from_ca_cert_der(&ca, key).map_err(Error::Issue)?;
        let signer = Self {
            issuer,
            tail,
            chain_not_after,
            bundle: TrustBundle::new(roots).map_err(Error::Trust)?,
            options,
        };
        signer.self_check()?;
        Ok(signer)
    }

    /// The plug-in CA in `dir` (Istio's layout: `ca-cert.pem`, `ca-key.pem`,
    /// `root-cert.pem`, optional `cert-chain.pem`).
    pub fn from_plugin_dir(dir: &Path, options: SignerOptions) -> Result<Self, Error> {
        Self::from_pem(&store::read_plugin(dir)?, options)
    }

    /// The self-signed root kept in `state_dir`, generated the first time (see
    /// [`store::self_signed_root`]).
    pub fn self_signed(
        state_dir: &Path,
        trust_domain: &str,
        options: SignerOptions,
    ) -> Result<Self, Error> {
        Self::from_pem(
            &store::self_signed_root(state_dir, trust_domain, options.backdate)?,
            options,
        )
    }

    /// The plug-in CA in `plugin_dir` when it has a `ca-cert.pem`, else the self-signed root
    /// in `state_dir`, as istiod chooses.
    pub fn plugin_or_self_signed(
        plugin_dir: &Path,
        state_dir: &Path,
        trust_domain: &str,
        options: SignerOptions,
    ) -> Result<Self, Error> {
        if store::has_plugin(plugin_dir) {
            tracing::info!(dir = %plugin_dir.display(), "CA: using the plug-in CA certificates");
            Self::from_plugin_dir(plugin_dir, options)
        } else {
            tracing::info!(
                plugin_dir = %plugin_dir.display(),
                state_dir = %state_dir.display(),
                "CA: no plug-in CA certificates; using the self-signed root"
            );
            Self::self_signed(state_dir, trust_domain, options)
        }
    }

    /// Trusts the roots in `pem` too (root rotation: peers' certificates from the next or
    /// previous root keep verifying).
    pub fn with_extra_roots(mut self, pem: &str) -> Result<Self, Error> {
        self.bundle = self.bundle.with_pem(pem).map_err(Error::Trust)?;
        Ok(self)
    }

    /// The roots workload certificates are checked against.
    #[must_use]
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The root this CA's chain ends in, PEM.
    #[must_use]
    pub fn root_pem(&self) -> String {
        self.tail
            .last()
            .map(|root| cert::to_pem(root))
            .unwrap_or_default()
    }

    /// How this CA dates and limits what it issues.
    #[must_use]
    pub fn options(&self) -> SignerOptions {
        self.options
    }

    /// Signs `csr_pem` for `requested`, valid for `ttl` (zero: the default), and returns the
    /// chain as PEM, leaf first and root last.
    ///
    /// The CSR's signature must verify, its key must be ECDSA P-256, and its only SAN must be
    /// `requested`; nothing else of it is used (the certificate is istiod's profile, see
    /// [`profile`](super::profile)).
    pub fn sign(
        &self,
        csr_pem: &str,
        requested: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, Error> {
        let ttl = self.ttl(ttl)?;
        let request = request::parse(csr_pem)?;
        request.require_only(requested)?;
        let key = SubjectPublicKeyInfo::from_der(&request.spki).map_err(Error::Issue)?;
        let (not_before, not_after) = self.validity(ttl);
        let leaf = profile::leaf(requested, not_before, not_after)?
            .signed_by(&key, &self.issuer)
            .map_err(Error::Issue)?;
        Ok(self.chain(leaf.der()))
    }

    /// Signs `csr_pem` for `requested` with the validity given, unchecked: tests make expired
    /// and not-yet-valid certificates with it.
    #[cfg(test)]
    pub(crate) fn sign_with_validity(
        &self,
        csr_pem: &str,
        requested: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<String>, Error> {
        let request = request::parse(csr_pem)?;
        let key = SubjectPublicKeyInfo::from_der(&request.spki).map_err(Error::Issue)?;
        let leaf = profile::leaf(requested, not_before, not_after)?
            .signed_by(&key, &self.issuer)
            .map_err(Error::Issue)?;
        Ok(self.chain(leaf.der()))
    }

    /// A TLS server certificate for the CA's own gRPC endpoint, with these DNS names and IP
    /// addresses: the chain (PEM, leaf first) and its new private key (PKCS#8 PEM).
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), Error> {
        let ttl = self.ttl(ttl)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Issue)?;
        let (not_before, not_after) = self.validity(ttl);
        let leaf = profile::server(dns_names, ips, not_before, not_after)?
            .signed_by(&key, &self.issuer)
            .map_err(Error::Issue)?;
        Ok((self.chain(leaf.der()), key.serialize_pem()))
    }

    fn ttl(&self, ttl: Duration) -> Result<Duration, Error> {
        if ttl.is_zero() {
            Ok(self.options.default_ttl)
        } else if ttl > self.options.max_ttl {
            Err(Error::TtlTooLong {
                requested: ttl,
                max: self.options.max_ttl,
            })
        } else {
            Ok(ttl)
        }
    }

    /// `NotBefore` backdated, `NotAfter` `ttl` from now but never past the CA's chain.
    fn validity(&self, ttl: Duration) -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        let not_before = now.checked_sub(self.options.backdate).unwrap_or(now);
        (not_before, (now + ttl).min(self.chain_not_after))
    }

    fn chain(&self, leaf: &[u8]) -> Vec<String> {
        std::iter::once(cert::to_pem(leaf))
            .chain(self.tail.iter().map(|der| cert::to_pem(der)))
            .collect()
    }

    fn self_check(&self) -> Result<(), Error> {
        let id: SpiffeId = SELF_CHECK_ID
            .parse()
            .map_err(|e| Error::CsrMalformed(format!("{e}")))?;
        let made = crate::csr::generate(&id)
            .map_err(|e| Error::CsrMalformed(format!("self-check request: {e}")))?;
        let chain = self.sign(&made.csr_pem, &id, Duration::from_secs(60))?;
        let ders = chain
            .iter()
            .map(|pem| cert::parse_pem(pem, "self-check certificate").map(|mut v| v.remove(0)))
            .collect::<Result<Vec<_>, _>>()?;
        self.bundle
            .verify(&ders, SystemTime::now())
            .map_err(Error::SelfCheck)
    }
}

fn chain_name(index: usize) -> String {
    if index == 0 {
        store::CA_CERT_FILE.to_owned()
    } else {
        format!("CA chain certificate {index}")
    }
}

/// Each certificate of `tail` must be signed by the next one; the last (the root) by itself.
fn check_links(tail: &[CertificateDer<'static>]) -> Result<(), Error> {
    let parsed = tail
        .iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert)
                .map_err(|e| {
                    Error::Cert(cert::Error::Der {
                        what: chain_name(index),
                        reason: e.to_string(),
                    })
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, cert) in parsed.iter().enumerate() {
        let (issuer, issuer_name) = match parsed.get(index + 1) {
            Some(next) => (next, chain_name(index + 1)),
            None => (cert, format!("itself ({} is the root)", chain_name(index))),
        };
        if !issuer.is_ca() {
            return Err(Error::NotCa { what: issuer_name });
        }
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|e| Error::ChainBroken {
                what: chain_name(index),
                issuer: issuer_name.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}
