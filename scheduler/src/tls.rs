//! Mutual TLS on the scheduler's port, and who an agent is.
//!
//! The scheduler presents `tls_cert` to everyone. It asks every peer for a client certificate
//! from `tls_client_ca` but does not require one at the TLS layer: clients (`harvest`, the
//! client library) share the port and prove who they are with munge instead. The
//! `AgentGateway` service requires one ([`agent_identity`]): an agent's node is the subject
//! common name (CN) of its certificate, and that is the only node it may register as and report
//! on. rustls has already verified the chain against `tls_client_ca` (and that the certificate
//! is for client authentication) before a request gets here.

use harvest_proto::tls::{TlsFileError, read_ca, read_identity};
use tonic::transport::ServerTlsConfig;
use x509_cert::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};

use crate::config::Config;

/// X.520 commonName.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The server side of mutual TLS as `config` asks for it; `None` when it asks for plaintext.
/// Reads and checks every file now, so that a bad one stops the scheduler at start.
pub fn server_tls(config: &Config) -> Result<Option<ServerTlsConfig>, TlsFileError> {
    if config.insecure_plaintext {
        return Ok(None);
    }
    // `validate` has checked that all three are set.
    let path = |p: &Option<std::path::PathBuf>| p.clone().unwrap_or_default();
    let (cert, key, ca) = (
        path(&config.tls_cert),
        path(&config.tls_key),
        path(&config.tls_client_ca),
    );
    let identity = read_identity(("tls_cert", &cert), ("tls_key", &key))?;
    let client_ca = read_ca("tls_client_ca", &ca)?;
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(client_ca)
            // Clients share the port without certificates; the gateway requires one.
            .client_auth_optional(true),
    ))
}

/// Why an agent's session is refused before its Register is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdentityError {
    #[error(
        "agent sessions need a client certificate from the agents' CA (the scheduler's \
         tls_client_ca); this connection presented none: set tls_cert and tls_key in harvestd's \
         configuration"
    )]
    NoCertificate,
    #[error("the agent's client certificate names no node: {0}")]
    NoNode(String),
}

impl AgentIdentityError {
    /// The label under which refusals are counted.
    pub fn reason(&self) -> &'static str {
        match self {
            AgentIdentityError::NoCertificate => "no_certificate",
            AgentIdentityError::NoNode(_) => "bad_certificate",
        }
    }
}

/// The node an agent's connection is, from its verified client certificate (`peer_certs`, the
/// end-entity certificate first, as tonic hands them over).
pub fn agent_identity<C: AsRef<[u8]>>(
    peer_certs: Option<&[C]>,
) -> Result<String, AgentIdentityError> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or(AgentIdentityError::NoCertificate)?;
    node_of_certificate(leaf.as_ref())
}

/// The node a DER certificate names: its subject's one common name.
pub fn node_of_certificate(der: &[u8]) -> Result<String, AgentIdentityError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| AgentIdentityError::NoNode(format!("cannot decode it: {e}")))?;
    let mut names = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == COMMON_NAME);
    let (Some(cn), None) = (names.next(), names.next()) else {
        return Err(AgentIdentityError::NoNode(
            "its subject must hold exactly one common name (CN), the node's name".into(),
        ));
    };
    let value = &cn.value;
    let text = match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .map(|s| s.to_string()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .map(|s| s.to_string()),
        Tag::Ia5String => value.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string()),
        t => {
            return Err(AgentIdentityError::NoNode(format!(
                "its CN is a {t}, not a string"
            )));
        }
    }
    .map_err(|e| AgentIdentityError::NoNode(format!("its CN cannot be decoded: {e}")))?;
    if !is_node_name(&text) {
        return Err(AgentIdentityError::NoNode(format!(
            "its CN {text:?} is not a node name (letters, digits, '-', '_', '.')"
        )));
    }
    Ok(text)
}

/// The node names harvestd accepts for `--node`.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    /// A client certificate as deploy/local-cluster's `openssl` commands make it (CN=n7).
    const OPENSSL_NODE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBYjCCAQmgAwIBAgICEjQwCgYIKoZIzj0EAwIwDTELMAkGA1UEAwwCY2EwIBcN
MjYxMjA2MDMxNDA2WhgPMjEyNjExMTIwMzE0MDZaMA0xCzAJBgNVBAMMAm43MFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENU01bl0IzQltPVFBUoDwSzmpAVpK/8Zq
pmkh5VN3SCAm/7X435XnuIctSrKhh5UV/vo4NVete0tJ78EluUPFFKNXMFUwEwYD
VR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0OBBYEFJo5+TFyMox8Bdrdfu9EztEnNaQt
MB8GA1UdIwQYMBaAFLvzw6W+t9jNGBxV0ZbC7BTGiuvvMAoGCCqGSM49BAMCA0cA
MEQCIGJQxuNmXaKHuVIiLYWoV5GnA8E0/2brpMfrNuEhuUhBAiAVI5PjHnGo9ocE
ZX6evZSVhwWchpxqWVw7qdbFdUhFAw==
-----END CERTIFICATE-----
";

    fn der(pem: &str) -> Vec<u8> {
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_node_is_the_subjects_common_name() {
        assert_eq!(node_of_certificate(&der(OPENSSL_NODE_CERT)).unwrap(), "n7");
        let dir = tempfile::tempdir().unwrap();
        let pki = harvest_proto::tls::testing::Pki::new(dir.path(), "t");
        let pair = pki.node("node-3.a_b");
        let pem = std::fs::read_to_string(pair.cert).unwrap();
        assert_eq!(agent_identity(Some(&[der(&pem)])).unwrap(), "node-3.a_b");
    }

    #[test]
    fn no_certificate_or_no_usable_name_is_no_agent() {
        assert_eq!(
            agent_identity::<Vec<u8>>(None),
            Err(AgentIdentityError::NoCertificate)
        );
        assert_eq!(
            agent_identity::<Vec<u8>>(Some(&[])),
            Err(AgentIdentityError::NoCertificate)
        );
        assert!(matches!(
            node_of_certificate(b"junk"),
            Err(AgentIdentityError::NoNode(_))
        ));
        // A CN that is no node name.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "../etc n1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let e = node_of_certificate(cert.der()).unwrap_err().to_string();
        assert!(e.contains("not a node name"), "{e}");
    }
}
