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
use x509_cert::der::{Decode, Tagged};

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
        t if t == x509_cert::der::Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .map(|s| s.to_string()),
        t if t == x509_cert::der::Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .map(|s| s.to_string()),
        t if t == x509_cert::der::Tag::Ia5String => {
            value.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string())
        }
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
