//! The control plane's TLS material: certificates and keys read from PEM files once at start and
//! checked there, so that a wrong file is an error that names the configuration key and the
//! file, not a failed handshake later. Agents and the scheduler authenticate each other with
//! these (mutual TLS, docs/security.md); clients verify the scheduler with its CA.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity};

/// A configured TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{key} = {path}: cannot read it: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} = {path}: {problem}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsFileError {
    TlsFileError::Invalid {
        key,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// The PEM certificates in `path` (the configuration's `key`): at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(key, path)?;
    let count = CertificateDer::pem_slice_iter(&pem)
        .try_fold(0usize, |n, c| c.map(|_| n + 1))
        .map_err(|e| invalid(key, path, format!("not PEM certificates: {e}")))?;
    if count == 0 {
        return Err(invalid(
            key,
            path,
            "holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(pem)
}

/// A CA (trust anchors) from the PEM file `path`, named `key` in its configuration.
pub fn read_ca(key: &'static str, path: &Path) -> Result<Certificate, TlsFileError> {
    certificates(key, path).map(Certificate::from_pem)
}

/// One's own certificate chain (`cert_key` = `cert`) and its private key (`key_key` = `key`),
/// both PEM.
pub fn read_identity(
    (cert_key, cert): (&'static str, &Path),
    (key_key, key): (&'static str, &Path),
) -> Result<Identity, TlsFileError> {
    let chain = certificates(cert_key, cert)?;
    let private = read(key_key, key)?;
    PrivateKeyDer::from_pem_slice(&private).map_err(|e| {
        invalid(
            key_key,
            key,
            format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    Ok(Identity::from_pem(chain, private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_ca("tls_ca", &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("tls_ca = ") && e.contains("missing.pem"),
            "{e}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = read_ca("tls_client_ca", &junk).unwrap_err().to_string();
        assert!(
            e.contains("tls_client_ca") && e.contains("no certificate"),
            "{e}"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("c.pem");
        let key_path = dir.path().join("c.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        read_ca("tls_ca", &cert_path).unwrap();
        read_identity(("tls_cert", &cert_path), ("tls_key", &key_path)).unwrap();
        // A certificate where the key should be.
        let e = read_identity(("tls_cert", &cert_path), ("tls_key", &cert_path))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tls_key = ") && e.contains("private key"),
            "{e}"
        );
    }
}

/// A throw-away CA and certificates made in memory (rcgen), written as PEM files, for tests that
/// run real TLS on 127.0.0.1 (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use tonic::transport::ClientTlsConfig;

    /// A certificate and its key, as files.
    #[derive(Debug, Clone)]
    pub struct Pair {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    /// A CA whose files live in `dir`.
    #[derive(Debug)]
    pub struct Pki {
        dir: PathBuf,
        name: String,
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        /// A new CA named `name`; its certificate is `<dir>/<name>-ca.pem`.
        pub fn new(dir: &Path, name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("harvest test CA {name}"));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let pki = Self {
                dir: dir.to_owned(),
                name: name.to_owned(),
                ca,
            };
            std::fs::write(pki.ca(), pki.ca.pem()).unwrap();
            pki
        }

        /// The CA certificate's file.
        pub fn ca(&self) -> PathBuf {
            self.dir.join(format!("{}-ca.pem", self.name))
        }

        fn issue(&self, file: &str, params: CertificateParams) -> Pair {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let pair = Pair {
                cert: self.dir.join(format!("{}-{file}.pem", self.name)),
                key: self.dir.join(format!("{}-{file}.key", self.name)),
            };
            std::fs::write(&pair.cert, cert.pem()).unwrap();
            std::fs::write(&pair.key, key.serialize_pem()).unwrap();
            pair
        }

        /// A server certificate for 127.0.0.1 and localhost.
        pub fn server(&self) -> Pair {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "harvest-scheduler");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            self.issue("server", params)
        }

        /// An agent's client certificate: subject CN = `node`.
        pub fn node(&self, node: &str) -> Pair {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, node);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(&format!("node-{node}"), params)
        }

        /// A client's TLS settings that trust this CA, presenting `identity` when given.
        pub fn client_tls(&self, identity: Option<&Pair>) -> ClientTlsConfig {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(super::read_ca("ca", &self.ca()).unwrap());
            if let Some(p) = identity {
                tls =
                    tls.identity(super::read_identity(("cert", &p.cert), ("key", &p.key)).unwrap());
            }
            tls
        }
    }
}
