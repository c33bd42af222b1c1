//! TLS for a private endpoint (`walarch.s3_ca_file`, `--ca-file`).
//!
//! The file's certificates are trusted as CAs, as before, and each one is
//! also pinned: an endpoint presenting exactly (byte for byte) one of them
//! is accepted, its name still checked against the endpoint's host and the
//! handshake's signature still verified with its key. That is what a
//! self-signed certificate made with `openssl req -x509` needs: it is a CA
//! certificate serving as the server's own, which rustls otherwise refuses
//! (`CaUsedAsEndEntity`) while OpenSSL-based tools accept it. Pinning adds
//! no trust the file does not already give: whoever holds the key of a
//! certificate in it can sign any server certificate anyway. Its validity
//! dates are not checked (an operator who pins a certificate replaces it
//! in the file). Every other certificate is verified as usual, against
//! the file's CAs (and the system's unless `ca_only`).
//!
//! The same rustls configuration serves object_store's requests (through
//! the `HttpConnector` below) and the completion request `bucket.rs` sends
//! itself. Neither client turns off reqwest's proxy support: both honour
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` alike.

use std::sync::Arc;
use std::time::Duration;

use object_store::client::{HttpClient, HttpConnector};
use object_store::{ClientConfigKey, ClientOptions};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The certificates of a PEM file (bundle).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

#[derive(Debug)]
struct PinnedOrVerified {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for PinnedOrVerified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration trusting `certs` as CAs and as pinned endpoint
/// certificates, plus the system's CAs unless `ca_only`.
pub fn client_config(
    certs: Vec<CertificateDer<'static>>,
    ca_only: bool,
) -> Result<rustls::ClientConfig, String> {
    // The provider reqwest itself would pick.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let inner: Arc<dyn ServerCertVerifier> = if ca_only {
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(|e| e.to_string())?;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| e.to_string())?
    } else {
        // What reqwest uses with extra roots (tls_certs_merge).
        Arc::new(
            rustls_platform_verifier::Verifier::new_with_extra_roots(
                certs.clone(),
                Arc::clone(&provider),
            )
            .map_err(|e| e.to_string())?,
        )
    };
    let verifier = Arc::new(PinnedOrVerified {
        pinned: certs,
        inner,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Builds object_store's HTTP clients with `tls` (object_store's own
/// builder cannot take a certificate verifier).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub tls: rustls::ClientConfig,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        // Credential endpoints (instance metadata) are plain http.
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v == "true");
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .https_only(!allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e.without_url()),
            })?;
        Ok(HttpClient::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bundles() {
        assert_eq!(pem_certificates(b"").unwrap().len(), 0);
        assert_eq!(pem_certificates(b"not a certificate\n").unwrap().len(), 0);
    }
}
