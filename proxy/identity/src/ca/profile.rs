//! The certificates the CA makes, field by field, as istiod makes them.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use shunt_mesh::spiffe::SpiffeId;
use time::OffsetDateTime;

use super::error::Error;

/// How long a self-signed root is valid: 10 years, as istiod's.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A random, positive 128-bit serial number (RFC 5280 allows up to 20 octets; istiod uses
/// 128 random bits too).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive and exactly 16 octets in DER: top bit clear, next bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);
}

/// A workload certificate for `id`: empty subject, the SPIFFE id as the only SAN (critical,
/// which rcgen does for an empty subject), not a CA, digitalSignature + keyEncipherment,
/// serverAuth + clientAuth, the issuer's key id, a random serial.
pub(crate) fn leaf(
    id: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.to_string().try_into().map_err(Error::Issue)?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, not_before, not_after);
    Ok(params)
}

/// The CA's own TLS certificate (istiod's `istiod.istio-system.svc`): DNS and IP SANs,
/// serverAuth only.
pub(crate) fn server(
    dns_names: &[String],
    ips: &[IpAddr],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| {
            name.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(Error::Issue)
        })
        .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, not_before, not_after);
    Ok(params)
}

/// A self-signed root for `trust_domain`: `O=<trust domain>` as istiod's, CA:true, may sign
/// certificates and CRLs.
pub(crate) fn root(trust_domain: &str, now: SystemTime, backdate: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let not_before = now.checked_sub(backdate).unwrap_or(now);
    validity(&mut params, not_before, now + ROOT_LIFETIME);
    params
}
