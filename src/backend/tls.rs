//! The TLS trust of backend requests: the web PKI roots ureq uses, plus the CAs of `--backend-ca-file`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A PEM file of CA certificates, read and checked, with the rustls
/// configuration that trusts them besides the web PKI roots.
#[derive(Clone)]
pub struct CaFile {
    /// As given, for messages.
    pub path: String,
    pub count: usize,
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaFile({}, {} certificate(s))", self.path, self.count)
    }
}

impl CaFile {
    /// Reads every `CERTIFICATE` block of a PEM file. An unreadable file,
    /// one without a certificate, a broken block or a block that is not an
    /// X.509 certificate is an error that names the file.
    pub fn load(path: &Path) -> Result<CaFile, String> {
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mut certs = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert =
                cert.map_err(|e| format!("{shown}: PEM certificate {} is broken ({e})", i + 1))?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"
            ));
        }
        let config = client_config(&certs).map_err(|e| format!("{shown}: {e}"))?;
        Ok(CaFile {
            path: shown.to_string(),
            count: certs.len(),
            config,
        })
    }
}

/// ureq's own configuration, for a connector of ours.
pub(super) fn web_pki_config() -> Arc<rustls::ClientConfig> {
    client_config(&[]).expect("the web PKI roots and ring's defaults are valid")
}

/// ureq's own configuration (ring, TLS 1.2 and 1.3, the compiled-in web
/// PKI roots of `webpki-roots`) with `extra` trusted too.
fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (i, cert) in extra.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("certificate {} is not a usable CA certificate ({e})", i + 1))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
    .map_err(|e| format!("TLS setup failed ({e})"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether a failed request failed because the backend's certificate was
/// signed by no trusted CA: then a hint about `--backend-ca-file` helps
/// (a wrong name or an expired certificate is another matter).
pub fn is_unknown_issuer(error: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        // io::Error's own `source` skips the error it wraps: look inside.
        let inner = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => Some(e),
        };
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) =
            inner.and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("etp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn files_without_a_usable_certificate_are_refused_by_name() {
        let missing = std::env::temp_dir().join("etp-tls-missing/ca.pem");
        let e = CaFile::load(&missing).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("ca.pem"), "{e}");
        for (name, content, problem) in [
            ("empty.pem", &b""[..], "holds no PEM certificate"),
            (
                "text.pem",
                b"not a certificate\n",
                "holds no PEM certificate",
            ),
            (
                "key.pem",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "holds no PEM certificate",
            ),
            (
                "broken.pem",
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "broken",
            ),
            (
                "unterminated.pem",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n",
                "broken",
            ),
            (
                "garbage.pem",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "not a usable CA certificate",
            ),
        ] {
            let path = file(name, content);
            let e = CaFile::load(&path).unwrap_err();
            assert!(e.contains(name) && e.contains(problem), "{name}: {e}");
        }
    }
}
