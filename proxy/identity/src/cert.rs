//! Reading X.509 certificates: PEM in and out, and the few facts shunt needs from a
//! certificate (its SPIFFE identity, serial, validity, subject and issuer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use shunt_mesh::spiffe::SpiffeId;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text holds no `CERTIFICATE` PEM block.
    #[error("{what}: no PEM CERTIFICATE block found (expected -----BEGIN CERTIFICATE-----)")]
    NoPem {
        /// What was being read.
        what: String,
    },
    /// A PEM block is malformed.
    #[error("{what}: malformed PEM: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// The PEM decoder's complaint.
        reason: String,
    },
    /// The DER is not an X.509 certificate.
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    Der {
        /// What was being read.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate names no SPIFFE identity, or more than one.
    #[error(
        "{what}: expected exactly one spiffe:// URI SAN, found {found:?} (is it a workload \
         certificate issued by an Istio-compatible CA?)"
    )]
    Identity {
        /// What was being read.
        what: String,
        /// The URI SANs the certificate has.
        found: Vec<String>,
    },
}

/// The facts of one certificate that `shuntctl certs` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as RFC 4514 text (empty for a workload certificate).
    pub subject: String,
    /// The issuer, as RFC 4514 text.
    pub issuer: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Every `CERTIFICATE` block of `pem`, in order; at least one. `what` names the source in
/// errors (a file, a field of a response).
pub fn parse_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoPem {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// A DER certificate as one PEM block.
#[must_use]
pub fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, Error> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::Der {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Der {
            what: what.to_owned(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// The subject, issuer, serial and validity of a certificate.
pub fn info(der: &[u8], what: &str) -> Result<CertInfo, Error> {
    let cert = parse(der, what)?;
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex(cert.raw_serial()),
        not_before: system_time(cert.validity().not_before.timestamp()),
        not_after: system_time(cert.validity().not_after.timestamp()),
    })
}

/// The URI SANs of a certificate, as written.
pub fn uri_sans(der: &[u8], what: &str) -> Result<Vec<String>, Error> {
    let cert = parse(der, what)?;
    let san = cert.subject_alternative_name().map_err(|e| Error::Der {
        what: what.to_owned(),
        reason: format!("subjectAltName: {e}"),
    })?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Every DNS, URI, IP and email SAN of a certificate, as text (IPs in their usual notation),
/// for `subjectAltNames` checks, which Envoy matches against any of these kinds.
pub fn subject_alt_names(der: &[u8], what: &str) -> Result<Vec<String>, Error> {
    let cert = parse(der, what)?;
    let san = cert.subject_alternative_name().map_err(|e| Error::Der {
        what: what.to_owned(),
        reason: format!("subjectAltName: {e}"),
    })?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    GeneralName::RFC822Name(email) => Some((*email).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// An IP SAN's octets as text; `None` for a length that is no address.
fn ip_text(bytes: &[u8]) -> Option<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(std::net::Ipv4Addr::from(v4).to_string());
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| std::net::Ipv6Addr::from(v6).to_string())
}

/// The SPIFFE identity a certificate certifies: its only `spiffe://` URI SAN. DNS and IP SANs
/// do not count; a certificate with several SPIFFE ids names none (fail closed).
pub fn identity(der: &[u8], what: &str) -> Result<SpiffeId, Error> {
    let uris = uri_sans(der, what)?;
    let mut spiffe = uris.iter().filter(|uri| uri.starts_with("spiffe://"));
    match (spiffe.next(), spiffe.next()) {
        (Some(only), None) => only.parse().map_err(|_| Error::Identity {
            what: what.to_owned(),
            found: uris.clone(),
        }),
        _ => Err(Error::Identity {
            what: what.to_owned(),
            found: uris,
        }),
    }
}

/// Whether the certificate names itself as its issuer (a root, for the chains shunt sees).
pub fn is_self_issued(der: &[u8], what: &str) -> Result<bool, Error> {
    let cert = parse(der, what)?;
    Ok(cert.subject().as_raw() == cert.issuer().as_raw())
}

/// Whether the certificate has `basicConstraints CA:true`.
pub fn is_ca(der: &[u8], what: &str) -> Result<bool, Error> {
    Ok(parse(der, what)?.is_ca())
}

/// Lower-case hex, no separators.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A Unix timestamp as a `SystemTime` (before 1970 too, which no certificate of ours has).
fn system_time(timestamp: i64) -> SystemTime {
    let magnitude = Duration::from_secs(timestamp.unsigned_abs());
    if timestamp >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}
