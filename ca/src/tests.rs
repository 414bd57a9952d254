//! Unit tests of issuance and verification working together, on a controlled clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, SanType};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::KeyUsage;

use crate::authority::BACKDATE;
use crate::*;

/// A fixed "now" so lifetimes are exact: 2026-06-01T00:00:00Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_272_000)
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap())
}

fn td() -> TrustDomain {
    TrustDomain::parse("edgeward.local").unwrap()
}

struct Ca {
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    intermediate_key: PrivateKey,
    authority: Authority,
}

fn new_ca() -> Ca {
    let generated = GeneratedHierarchy::generate(&td(), now()).unwrap();
    let root = generated.root_cert.clone();
    let intermediate = generated.intermediate_cert.clone();
    let intermediate_key = PrivateKey::from_pem(&generated.intermediate_key.to_pem()).unwrap();
    let authority = generated.into_authority(td()).unwrap();
    Ca {
        root,
        intermediate,
        intermediate_key,
        authority,
    }
}

fn workload(ns: &str, sa: &str) -> SpiffeId {
    td().workload_id(ns, sa).unwrap()
}

fn issue(ca: &Ca, id: &SpiffeId, lifetime: Duration) -> (IssuedSvid, PrivateKey) {
    let key = PrivateKey::generate().unwrap();
    let svid = ca
        .authority
        .issue(&key.csr_der().unwrap(), id, lifetime, now())
        .unwrap();
    (svid, key)
}

fn verifier(ca: &Ca, policy: PeerPolicy) -> SpiffeVerifier {
    let bundle = TrustBundle::new(td(), vec![ca.root.clone()]).unwrap();
    SpiffeVerifier::new(SharedBundle::new(bundle), policy)
}

/// Signs a leaf with the CA's intermediate exactly as asked, bypassing issuance checks.
fn craft_leaf(ca: &Ca, uris: &[&str]) -> CertificateDer<'static> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = (now() - Duration::from_secs(60)).into();
    params.not_after = (now() + Duration::from_secs(3600)).into();
    let issuer = Issuer::from_ca_cert_der(&ca.intermediate, ca.intermediate_key.pair()).unwrap();
    let key = PrivateKey::generate().unwrap();
    params.signed_by(key.pair(), &issuer).unwrap().der().clone()
}

#[test]
fn issued_chain_is_valid_for_rustls_own_verifier() {
    let ca = new_ca();
    let (svid, _) = issue(&ca, &workload("demo", "greeter"), DEFAULT_SVID_LIFETIME);
    assert_eq!(svid.chain.len(), 2, "leaf and intermediate");

    let mut roots = RootCertStore::empty();
    roots.add(ca.root.clone()).unwrap();
    let rustls_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .unwrap();
    rustls_verifier
        .verify_client_cert(&svid.chain[0], &svid.chain[1..], unix(now()))
        .expect("rustls' WebPKI verifier accepts the chain");

    let ours = verifier(&ca, PeerPolicy::Exact(workload("demo", "greeter")));
    let id = ours
        .verify(
            &svid.chain[0],
            &svid.chain[1..],
            unix(now()),
            KeyUsage::server_auth(),
        )
        .unwrap();
    assert_eq!(id, workload("demo", "greeter"));
}

#[test]
fn leaf_lifetime_is_backdated_and_defaults_to_a_day() {
    let ca = new_ca();
    let (svid, _) = issue(&ca, &workload("a", "b"), DEFAULT_SVID_LIFETIME);
    assert_eq!(svid.not_before, now() - BACKDATE);
    assert_eq!(svid.not_after, now() + Duration::from_secs(24 * 3600));
    let info = CertInfo::parse(&svid.chain[0]).unwrap();
    assert_eq!(info.not_before, svid.not_before);
    assert_eq!(info.not_after, svid.not_after);
    assert!(!info.is_ca);
}

#[test]
fn not_after_never_passes_the_issuer() {
    let ca = new_ca();
    let (svid, _) = issue(
        &ca,
        &workload("a", "b"),
        Duration::from_secs(5 * 365 * 24 * 3600),
    );
    assert_eq!(svid.not_after, ca.authority.issuer_not_after());
    let issuer = CertInfo::parse(&ca.intermediate).unwrap();
    assert_eq!(svid.not_after, issuer.not_after);

    let late = ca.authority.issuer_not_after() + Duration::from_secs(1);
    let key = PrivateKey::generate().unwrap();
    let refused = ca.authority.issue(
        &key.csr_der().unwrap(),
        &workload("a", "b"),
        DEFAULT_SVID_LIFETIME,
        late,
    );
    assert!(matches!(refused, Err(IssueError::IssuerExpired(_))));
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let ca = new_ca();
    let mut csr = PrivateKey::generate().unwrap().csr_der().unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let refused = ca
        .authority
        .issue(&csr, &workload("a", "b"), DEFAULT_SVID_LIFETIME, now());
    assert!(
        matches!(refused, Err(IssueError::BadCsrSignature)),
        "{refused:?}"
    );
}

#[test]
fn garbage_csr_is_refused_with_a_reason() {
    let ca = new_ca();
    for garbage in [&b""[..], b"\x30\x03\x02\x01\x00", b"plain text, not DER"] {
        let refused =
            ca.authority
                .issue(garbage, &workload("a", "b"), DEFAULT_SVID_LIFETIME, now());
        assert!(
            matches!(refused, Err(IssueError::MalformedCsr(_))),
            "{refused:?}"
        );
    }
}

#[test]
fn csr_asking_for_a_ca_and_other_names_gets_a_plain_leaf() {
    let ca = new_ca();
    let key = PrivateKey::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.subject_alt_names.push(SanType::URI(
        "spiffe://edgeward.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = params.serialize_request(key.pair()).unwrap();

    let granted = workload("demo", "client");
    let svid = ca
        .authority
        .issue(csr.der(), &granted, DEFAULT_SVID_LIFETIME, now())
        .unwrap();
    let info = CertInfo::parse(&svid.chain[0]).unwrap();
    assert!(!info.is_ca, "the leaf must not be a CA");
    assert_eq!(
        info.uris,
        vec![granted.to_string()],
        "only the granted ID, nothing from the CSR"
    );
    assert_eq!(info.public_key_der, key.public_key_der());

    let leaf = x509_parser::parse_x509_certificate(&svid.chain[0])
        .unwrap()
        .1;
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "no DNS name carried over");
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
}

#[test]
fn p384_and_ed25519_keys_are_accepted() {
    let ca = new_ca();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&pair)
            .unwrap();
        let svid = ca
            .authority
            .issue(csr.der(), &workload("a", "b"), DEFAULT_SVID_LIFETIME, now())
            .unwrap();
        let info = CertInfo::parse(&svid.chain[0]).unwrap();
        assert_eq!(
            info.public_key_der,
            rcgen::PublicKeyData::subject_public_key_info(&pair)
        );
    }
}

#[test]
fn issuance_refuses_another_trust_domain_and_zero_lifetime() {
    let ca = new_ca();
    let key = PrivateKey::generate().unwrap();
    let csr = key.csr_der().unwrap();
    let foreign = SpiffeId::parse("spiffe://other.domain/ns/a/sa/b").unwrap();
    let refused = ca
        .authority
        .issue(&csr, &foreign, DEFAULT_SVID_LIFETIME, now());
    assert!(matches!(
        refused,
        Err(IssueError::ForeignTrustDomain { .. })
    ));
    let refused = ca
        .authority
        .issue(&csr, &workload("a", "b"), Duration::ZERO, now());
    assert!(matches!(refused, Err(IssueError::ZeroLifetime)));
}

#[test]
fn spiffe_id_table_is_refused_by_issuance_and_verification() {
    let ca = new_ca();
    let v = verifier(&ca, PeerPolicy::AnyInTrustDomain);
    for (bad, reason) in crate::spiffe::tests::bad_ids() {
        // Issuance takes only a parsed SpiffeId, so a bad string never reaches the signer.
        assert_eq!(SpiffeId::parse(&bad), Err(reason.clone()));

        // Verification: a CA-signed certificate carrying the bad ID is refused for that reason.
        // A URI SAN is an IA5String, so IDs with non-ASCII characters cannot be encoded at all.
        if bad.is_ascii() {
            let leaf = craft_leaf(&ca, &[&bad]);
            let err = v
                .verify(
                    &leaf,
                    std::slice::from_ref(&ca.intermediate),
                    unix(now()),
                    KeyUsage::client_auth(),
                )
                .unwrap_err();
            assert_eq!(
                err,
                VerifyError::NotSvid(SvidError::InvalidSpiffeId {
                    uri: bad.clone(),
                    reason
                }),
                "{bad:?}"
            );
        }
    }
}

#[test]
fn verification_names_each_rejection() {
    let ca = new_ca();
    let other_ca = new_ca();
    let chain_of = |ca: &Ca, id: &SpiffeId| issue(ca, id, DEFAULT_SVID_LIFETIME).0.chain;
    let greeter = workload("demo", "greeter");
    let check = |v: &SpiffeVerifier, chain: &[CertificateDer<'static>], at: SystemTime| {
        v.verify(&chain[0], &chain[1..], unix(at), KeyUsage::server_auth())
    };

    let exact = verifier(&ca, PeerPolicy::Exact(greeter.clone()));
    let foreign = chain_of(&other_ca, &greeter);
    assert_eq!(
        check(&exact, &foreign, now()),
        Err(VerifyError::UnknownIssuer)
    );

    let client = chain_of(&ca, &workload("demo", "client"));
    assert!(matches!(
        check(&exact, &client, now()),
        Err(VerifyError::IdentityMismatch { .. })
    ));

    let good = chain_of(&ca, &greeter);
    let later = now() + Duration::from_secs(25 * 3600);
    assert_eq!(check(&exact, &good, later), Err(VerifyError::Expired));
    let earlier = now() - Duration::from_secs(3600);
    assert_eq!(check(&exact, &good, earlier), Err(VerifyError::NotYetValid));

    let workloads_only = verifier(&ca, PeerPolicy::AnyWorkload);
    let node = chain_of(&ca, &td().node_id("node-1").unwrap());
    assert!(matches!(
        check(&workloads_only, &node, now()),
        Err(VerifyError::KindNotAllowed(_))
    ));

    let any = verifier(&ca, PeerPolicy::AnyInTrustDomain);
    let elsewhere = craft_leaf(&ca, &["spiffe://other.domain/ns/a/sa/b"]);
    let err = any
        .verify(
            &elsewhere,
            std::slice::from_ref(&ca.intermediate),
            unix(now()),
            KeyUsage::server_auth(),
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::ForeignTrustDomain { .. }),
        "{err:?}"
    );

    let two = craft_leaf(
        &ca,
        &["spiffe://edgeward.local/a", "spiffe://edgeward.local/b"],
    );
    let err = any
        .verify(
            &two,
            std::slice::from_ref(&ca.intermediate),
            unix(now()),
            KeyUsage::server_auth(),
        )
        .unwrap_err();
    assert_eq!(err, VerifyError::NotSvid(SvidError::SeveralUris(2)));

    let none = craft_leaf(&ca, &[]);
    let err = any
        .verify(
            &none,
            std::slice::from_ref(&ca.intermediate),
            unix(now()),
            KeyUsage::server_auth(),
        )
        .unwrap_err();
    assert_eq!(err, VerifyError::NotSvid(SvidError::NoSpiffeId));
}

#[test]
fn a_bundle_with_two_roots_accepts_chains_from_either() {
    let old = new_ca();
    let new = new_ca();
    let bundle = TrustBundle::new(td(), vec![old.root.clone(), new.root.clone()]).unwrap();
    let v = SpiffeVerifier::new(SharedBundle::new(bundle), PeerPolicy::AnyWorkload);
    for ca in [&old, &new] {
        let (svid, _) = issue(ca, &workload("a", "b"), DEFAULT_SVID_LIFETIME);
        v.verify(
            &svid.chain[0],
            &svid.chain[1..],
            unix(now()),
            KeyUsage::client_auth(),
        )
        .unwrap();
    }
}

#[test]
fn shared_bundle_replacement_applies_to_the_next_verification() {
    let old = new_ca();
    let new = new_ca();
    let shared = SharedBundle::new(TrustBundle::new(td(), vec![old.root.clone()]).unwrap());
    let v = SpiffeVerifier::new(shared.clone(), PeerPolicy::AnyWorkload);
    let (svid, _) = issue(&new, &workload("a", "b"), DEFAULT_SVID_LIFETIME);
    let run = || {
        v.verify(
            &svid.chain[0],
            &svid.chain[1..],
            unix(now()),
            KeyUsage::client_auth(),
        )
    };
    assert_eq!(run(), Err(VerifyError::UnknownIssuer));
    shared.replace(TrustBundle::new(td(), vec![new.root.clone()]).unwrap());
    assert!(run().is_ok());
}

#[test]
fn bundle_pem_round_trip_and_bad_input() {
    let ca = new_ca();
    let bundle = TrustBundle::new(td(), vec![ca.root.clone(), ca.intermediate.clone()]).unwrap();
    let again = TrustBundle::from_pem(td(), &bundle.to_pem()).unwrap();
    assert_eq!(again.roots(), bundle.roots());
    assert!(matches!(
        TrustBundle::from_pem(td(), ""),
        Err(BundleError::Pem(_))
    ));
    assert!(matches!(
        TrustBundle::new(td(), vec![]),
        Err(BundleError::Empty)
    ));
    let junk = crate::pem::encode("CERTIFICATE", b"junk");
    assert!(matches!(
        TrustBundle::from_pem(td(), &junk),
        Err(BundleError::BadRoot { index: 0, .. })
    ));
}

#[test]
fn authority_refuses_a_key_that_is_not_the_issuers() {
    let ca = new_ca();
    let bundle = ca.authority.bundle().clone();
    let wrong = PrivateKey::generate().unwrap();
    let refused = Authority::new(td(), ca.intermediate.clone(), wrong, vec![], bundle.clone());
    assert!(matches!(refused, Err(IssueError::KeyMismatch)));
    let (svid, _) = issue(&ca, &workload("a", "b"), DEFAULT_SVID_LIFETIME);
    let leaf_key = PrivateKey::generate().unwrap();
    let refused = Authority::new(td(), svid.chain[0].clone(), leaf_key, vec![], bundle);
    assert!(matches!(refused, Err(IssueError::IssuerNotCa)));
}

#[test]
fn svid_checks_its_id_and_key() {
    let ca = new_ca();
    let id = workload("a", "b");
    let (issued, key) = issue(&ca, &id, DEFAULT_SVID_LIFETIME);
    let svid = Svid::new(id.clone(), issued.chain.clone(), key).unwrap();
    assert_eq!(svid.not_after(), issued.not_after);
    assert!(!format!("{svid:?}").contains("BEGIN"));
    let other_key = PrivateKey::generate().unwrap();
    assert!(matches!(
        Svid::new(id, issued.chain.clone(), other_key),
        Err(crate::tls::SvidSetupError::KeyMismatch)
    ));
    let key = PrivateKey::generate().unwrap();
    assert!(matches!(
        Svid::new(workload("x", "y"), issued.chain, key),
        Err(crate::tls::SvidSetupError::WrongId { .. })
    ));
}

#[test]
fn rejection_reasons_are_labelled() {
    let err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
        rustls::OtherError(Arc::new(VerifyError::UnknownIssuer)),
    ));
    assert_eq!(rejection_reason(&err), "unknown_issuer");
    assert_eq!(
        rejection_reason(&rustls::Error::NoCertificatesPresented),
        "no_certificate"
    );
    let plaintext = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
    assert_eq!(rejection_reason(&plaintext), "not_tls");
}
