use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P384_SHA384, SanType};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::test_support::{id, plugin_pems, root_pems, signer, signer_with};
use crate::{cert, csr};

fn der(pem: &str) -> Vec<u8> {
    pem::parse(pem).unwrap().into_contents()
}

fn unix(t: x509_parser::time::ASN1Time) -> i64 {
    t.timestamp()
}

fn now_unix() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[test]
fn leaf_has_istiods_profile() {
    let signer = signer();
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    for (ttl, lifetime) in [
        (Duration::ZERO, 24 * 3600),
        (Duration::from_secs(3600), 3600),
    ] {
        let made = csr::generate(&requested).unwrap();
        let before = now_unix();
        let chain = signer.sign(&made.csr_pem, &requested, ttl).unwrap();
        let after = now_unix();

        // Leaf first, root last.
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], signer.root_pem());
        let leaf_der = der(&chain[0]);
        let root_der = der(&chain[1]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
        assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());

        // P-256 key (the CSR's).
        let spki = leaf.public_key();
        assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve, OID_EC_P256);

        // Empty subject; the SPIFFE id as the only SAN, critical.
        assert_eq!(leaf.subject().iter().count(), 0);
        let san = leaf
            .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap()
            .unwrap();
        assert!(
            san.critical,
            "the SAN must be critical with an empty subject"
        );
        let ParsedExtension::SubjectAlternativeName(names) = san.parsed_extension() else {
            panic!("not a SAN");
        };
        assert_eq!(
            names.general_names,
            vec![GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );

        // Usages.
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");
        assert!(
            !eku.any && !eku.code_signing && eku.other.is_empty(),
            "{eku:?}"
        );
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment(), "{ku:?}");
        assert!(
            !ku.key_cert_sign() && !ku.crl_sign() && !ku.non_repudiation(),
            "{ku:?}"
        );
        let constraints = leaf.basic_constraints().unwrap().unwrap().value;
        assert!(!constraints.ca);
        // The issuer's key id, so chains build with several roots in the bundle.
        assert!(
            leaf.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );

        // NotBefore two minutes back; NotAfter `lifetime` after issuance.
        let not_before = unix(leaf.validity().not_before);
        let not_after = unix(leaf.validity().not_after);
        assert!(
            (before - 121..=after - 119).contains(&not_before),
            "not_before {not_before}, issued between {before} and {after}"
        );
        assert_eq!(not_after - not_before, lifetime + 120, "ttl {ttl:?}");

        // A random positive serial of 16 octets.
        assert_eq!(leaf.raw_serial().len(), 16);
        assert!(leaf.raw_serial()[0] < 0x80);
    }
}

#[test]
fn serials_are_random() {
    let signer = signer();
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let serial = || {
        let made = csr::generate(&requested).unwrap();
        let chain = signer
            .sign(&made.csr_pem, &requested, Duration::ZERO)
            .unwrap();
        cert::info(&der(&chain[0]), "leaf").unwrap().serial
    };
    assert_ne!(serial(), serial());
}

fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.to_owned().try_into().unwrap())
}

#[test]
fn sign_refuses_bad_requests_with_a_typed_error() {
    let signer = signer();
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let p256 = KeyPair::generate().unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let good = csr::generate(&requested).unwrap().csr_pem;
    let tampered = {
        let mut bytes = der(&good);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes))
    };
    let spiffe = "spiffe://cluster.local/ns/default/sa/sleep";

    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, String, Duration, Check)> = vec![
        ("not PEM", "hello".to_owned(), Duration::ZERO, |e| {
            matches!(e, Error::CsrMalformed(_))
        }),
        (
            "a certificate, not a CSR",
            signer.root_pem(),
            Duration::ZERO,
            |e| matches!(e, Error::CsrMalformed(_)),
        ),
        ("tampered signature", tampered, Duration::ZERO, |e| {
            matches!(e, Error::CsrSignature)
        }),
        (
            "P-384 key",
            csr_with(&p384, vec![uri(spiffe)]),
            Duration::ZERO,
            |e| matches!(e, Error::CsrKey { .. }),
        ),
        (
            "another identity",
            csr_with(
                &p256,
                vec![uri("spiffe://cluster.local/ns/default/sa/other")],
            ),
            Duration::ZERO,
            |e| matches!(e, Error::CsrIdentity { .. }),
        ),
        (
            "another trust domain",
            csr_with(&p256, vec![uri("spiffe://evil.local/ns/default/sa/sleep")]),
            Duration::ZERO,
            |e| matches!(e, Error::CsrIdentity { .. }),
        ),
        (
            "an extra DNS SAN",
            csr_with(
                &p256,
                vec![
                    uri(spiffe),
                    SanType::DnsName("example.com".try_into().unwrap()),
                ],
            ),
            Duration::ZERO,
            |e| matches!(e, Error::CsrIdentity { .. }),
        ),
        (
            "two URIs",
            csr_with(
                &p256,
                vec![
                    uri(spiffe),
                    uri("spiffe://cluster.local/ns/default/sa/other"),
                ],
            ),
            Duration::ZERO,
            |e| matches!(e, Error::CsrIdentity { .. }),
        ),
        ("no SAN", csr_with(&p256, vec![]), Duration::ZERO, |e| {
            matches!(e, Error::CsrIdentity { .. })
        }),
        (
            "a lifetime over the maximum",
            good.clone(),
            Duration::from_secs(91 * 24 * 3600),
            |e| matches!(e, Error::TtlTooLong { .. }),
        ),
    ];
    for (case, csr_pem, ttl, check) in cases {
        let error = signer.sign(&csr_pem, &requested, ttl).expect_err(case);
        assert!(check(&error), "{case}: {error:?}");
        assert!(error.is_bad_request(), "{case}: {error:?}");
    }
    // The same CSR untouched is signed.
    signer.sign(&good, &requested, Duration::ZERO).unwrap();
}

#[test]
fn csr_identity_is_the_only_spiffe_san() {
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let good = csr::generate(&requested).unwrap().csr_pem;
    assert_eq!(csr_identity(&good).unwrap(), requested);
    let key = KeyPair::generate().unwrap();
    let cases = [
        csr_with(&key, vec![]),
        csr_with(&key, vec![uri("https://example.com")]),
        csr_with(
            &key,
            vec![
                uri("spiffe://cluster.local/ns/a/sa/b"),
                uri("spiffe://cluster.local/ns/c/sa/d"),
            ],
        ),
    ];
    for csr_pem in cases {
        let error = csr_identity(&csr_pem).expect_err(&csr_pem);
        assert!(error.is_bad_request(), "{error:?}");
    }
}

#[test]
fn self_signed_root_is_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let first = CaSigner::self_signed(&state, "cluster.local", SignerOptions::default()).unwrap();
    let root_pem = first.root_pem();

    for file in [SELF_SIGNED_CERT_FILE, SELF_SIGNED_KEY_FILE] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // The root: P-256, CA, O=<trust domain>, ten years.
    let root_der = der(&root_pem);
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    assert!(root.is_ca());
    assert_eq!(root.subject().to_string(), "O=cluster.local");
    let curve = root
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    let lifetime = unix(root.validity().not_after) - unix(root.validity().not_before);
    assert_eq!(lifetime, 10 * 365 * 24 * 3600 + 120);

    // A restart loads the same root, and what the first signer issued still verifies.
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let made = csr::generate(&requested).unwrap();
    let chain = first
        .sign(&made.csr_pem, &requested, Duration::ZERO)
        .unwrap();
    drop(first);
    let again = CaSigner::self_signed(&state, "cluster.local", SignerOptions::default()).unwrap();
    assert_eq!(again.root_pem(), root_pem);
    let ders: Vec<_> = chain.iter().map(|pem| der(pem).into()).collect();
    again
        .trust_bundle()
        .verify(&ders, SystemTime::now())
        .unwrap();
}

#[test]
fn a_root_missing_one_file_is_reported_not_replaced() {
    for missing in [SELF_SIGNED_CERT_FILE, SELF_SIGNED_KEY_FILE] {
        let dir = tempfile::tempdir().unwrap();
        CaSigner::self_signed(dir.path(), "cluster.local", SignerOptions::default()).unwrap();
        let other = if missing == SELF_SIGNED_KEY_FILE {
            SELF_SIGNED_CERT_FILE
        } else {
            SELF_SIGNED_KEY_FILE
        };
        let kept = std::fs::read(dir.path().join(other)).unwrap();
        std::fs::remove_file(dir.path().join(missing)).unwrap();

        let error = CaSigner::self_signed(dir.path(), "cluster.local", SignerOptions::default())
            .expect_err(missing);
        assert!(matches!(error, Error::PartialRoot { .. }), "{error:?}");
        assert!(error.to_string().contains(missing), "{error}");
        assert_eq!(std::fs::read(dir.path().join(other)).unwrap(), kept);
        assert!(!dir.path().join(missing).exists());
    }
}

#[test]
fn plugin_ca_chain_is_leaf_intermediate_root() {
    let (pems, root, intermediate) = plugin_pems();
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let layouts = [
        ("cert-chain = intermediate + root", pems.cert_chain.clone()),
        ("cert-chain = intermediate", Some(intermediate.clone())),
        ("no cert-chain", None),
    ];
    for (layout, cert_chain) in layouts {
        let pems = CaPems {
            cert_chain,
            ..pems.clone()
        };
        let signer = CaSigner::from_pem(&pems, SignerOptions::default()).unwrap();
        let made = csr::generate(&requested).unwrap();
        let chain = signer
            .sign(&made.csr_pem, &requested, Duration::ZERO)
            .unwrap();
        assert_eq!(chain.len(), 3, "{layout}");
        assert_eq!(chain[1], intermediate, "{layout}");
        assert_eq!(chain[2], root, "{layout}");
        let leaf_der = der(&chain[0]);
        let int_der = der(&chain[1]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let (_, int) = X509Certificate::from_der(&int_der).unwrap();
        assert_eq!(leaf.issuer().as_raw(), int.subject().as_raw(), "{layout}");
        assert_eq!(signer.trust_bundle().roots().len(), 1, "{layout}");
        assert!(signer.trust_bundle().contains(&der(&root)), "{layout}");
        assert_eq!(signer.root_pem(), root, "{layout}");
    }
}

#[test]
fn plugin_ca_loads_from_its_directory() {
    let (pems, root, intermediate) = plugin_pems();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(CA_CERT_FILE, &pems.ca_cert);
    write(CA_KEY_FILE, &pems.ca_key);
    write(ROOT_CERT_FILE, pems.root_cert.as_deref().unwrap());
    write(CERT_CHAIN_FILE, pems.cert_chain.as_deref().unwrap());
    let state = tempfile::tempdir().unwrap();

    let signer = CaSigner::plugin_or_self_signed(
        dir.path(),
        state.path(),
        "cluster.local",
        SignerOptions::default(),
    )
    .unwrap();
    assert_eq!(signer.root_pem(), root);
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let made = csr::generate(&requested).unwrap();
    let chain = signer
        .sign(&made.csr_pem, &requested, Duration::ZERO)
        .unwrap();
    assert_eq!(chain[1..], [intermediate, root]);
    // The plug-in CA is used: no self-signed root was made.
    assert!(!state.path().join(SELF_SIGNED_KEY_FILE).exists());

    // Without plug-in files, the self-signed root.
    let empty = tempfile::tempdir().unwrap();
    let own = CaSigner::plugin_or_self_signed(
        empty.path(),
        state.path(),
        "cluster.local",
        SignerOptions::default(),
    )
    .unwrap();
    assert!(state.path().join(SELF_SIGNED_KEY_FILE).exists());
    assert_ne!(own.root_pem(), signer.root_pem());
}

#[test]
fn istio_ca_secret_layout_is_its_own_root() {
    let (cert, key) = root_pems("cluster.local");
    let pems = CaPems {
        ca_cert: cert.clone(),
        ca_key: key,
        root_cert: None,
        cert_chain: None,
    };
    let signer = CaSigner::from_pem(&pems, SignerOptions::default()).unwrap();
    let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
    let made = csr::generate(&requested).unwrap();
    let chain = signer
        .sign(&made.csr_pem, &requested, Duration::ZERO)
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], cert);
}

#[test]
fn a_broken_ca_fails_to_load() {
    let (pems, _, intermediate) = plugin_pems();
    let (other_root, other_key) = root_pems("other");
    let leaf_pem = {
        let signer = signer();
        let requested = id("spiffe://cluster.local/ns/default/sa/sleep");
        let made = csr::generate(&requested).unwrap();
        signer
            .sign(&made.csr_pem, &requested, Duration::ZERO)
            .unwrap()[0]
            .clone()
    };
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, CaPems, Check)> = vec![
        (
            "the key of another CA",
            CaPems {
                ca_key: other_key.clone(),
                ..pems.clone()
            },
            |e| matches!(e, Error::SelfCheck(_)),
        ),
        (
            "a root that did not sign the intermediate",
            CaPems {
                root_cert: Some(other_root.clone()),
                cert_chain: Some(intermediate.clone()),
                ..pems.clone()
            },
            |e| matches!(e, Error::ChainBroken { .. }),
        ),
        (
            "a workload certificate as ca-cert.pem",
            CaPems {
                ca_cert: leaf_pem,
                ..pems.clone()
            },
            |e| matches!(e, Error::NotCa { .. }),
        ),
        (
            "an intermediate without its root",
            CaPems {
                root_cert: None,
                cert_chain: None,
                ..pems.clone()
            },
            |e| matches!(e, Error::NoRoot { .. }),
        ),
        (
            "a key that is not PEM",
            CaPems {
                ca_key: "nonsense".to_owned(),
                ..pems.clone()
            },
            |e| matches!(e, Error::Key { .. }),
        ),
        (
            "no certificate",
            CaPems {
                ca_cert: String::new(),
                ..pems.clone()
            },
            |e| matches!(e, Error::Cert(_)),
        ),
    ];
    for (case, pems, check) in cases {
        let error = CaSigner::from_pem(&pems, SignerOptions::default()).expect_err(case);
        assert!(check(&error), "{case}: {error:?}");
        assert!(!error.is_bad_request(), "{case}");
    }
}

#[test]
fn extra_roots_join_the_bundle() {
    let signer = signer_with(SignerOptions::default());
    let (next_root, _) = root_pems("next");
    let signer = std::sync::Arc::try_unwrap(signer)
        .unwrap()
        .with_extra_roots(&next_root)
        .unwrap();
    let roots = signer.trust_bundle().roots();
    assert_eq!(roots.len(), 2);
    assert!(signer.trust_bundle().contains(&der(&next_root)));
    // The chain still ends in the CA's own root.
    assert_ne!(signer.root_pem(), next_root);
}

#[test]
fn server_cert_names_the_ca_service() {
    let signer = signer();
    let (chain, key) = signer
        .issue_server_cert(
            &["istiod.istio-system.svc".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::ZERO,
        )
        .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let leaf_der = der(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(names.contains(&GeneralName::DNSName("istiod.istio-system.svc")));
    assert_eq!(names.len(), 2);
    assert!(cert::identity(&leaf_der, "server").is_err(), "no SPIFFE id");
}
