//! TLS to PostgreSQL with rustls, with libpq's meanings of the connection string's
//! `sslmode` and `sslrootcert`, so a DSN copied from psql behaves the same here:
//!
//! - `disable`: plain TCP.
//! - `prefer` (the default, as in libpq) and `require`: encrypted if the server offers it
//!   (`require`: or fail); the certificate is not checked, as libpq does not, unless
//!   `sslrootcert` names a CA file: then it is checked as for `verify-ca`.
//! - `verify-ca`: the chain must lead to `sslrootcert` (or to the public web roots).
//! - `verify-full`: that, and the certificate must name the host.
//!
//! tokio-postgres itself knows only disable/prefer/require and no `sslrootcert`, so those
//! are taken out of the string here and the rest goes to tokio-postgres unchanged.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
use crate::secret::SecretUrl;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Encryption only (libpq's prefer/require without a CA file).
    Nothing,
    /// The chain, not the host name (verify-ca).
    Chain,
    /// The chain and the host name (verify-full).
    Full,
}

/// What the connection string says about TLS beyond tokio-postgres's options.
#[derive(Debug, PartialEq)]
struct TlsParams {
    verify: Verify,
    root_cert: Option<PathBuf>,
}

/// The tokio-postgres configuration and TLS connector for a connection string.
pub fn connector(url: &SecretUrl) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (rest, params) = split(url.expose());
    let config: tokio_postgres::Config =
        rest.parse().map_err(|source| StoreError::Connect { target: url.redacted(), source })?;
    Ok((config, MakeRustlsConnect::new(client_config(&params)?)))
}

fn client_config(params: &TlsParams) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(format!("TLS set-up: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match params.verify {
        Verify::Nothing => Arc::new(Lenient { provider, chain: None }),
        level => {
            let mut roots = RootCertStore::empty();
            match &params.root_cert {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| StoreError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(StoreError::Tls(format!("sslrootcert {}: no usable certificate in it", path.display())));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| StoreError::Tls(format!("TLS set-up: {e}")))?;
            if level == Verify::Full {
                webpki
            } else {
                Arc::new(Lenient { provider, chain: Some(webpki) })
            }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// Takes libpq's TLS parameters out of a URL or key=value connection string; returns the
/// rest (with `verify-*` turned into `require`, which tokio-postgres knows) and them.
fn split(conn: &str) -> (String, TlsParams) {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Option<Option<String>> {
        match key {
            "sslrootcert" => {
                root_cert = Some(PathBuf::from(value));
                Some(None)
            }
            "sslmode" if value.starts_with("verify-") => {
                mode = Some(value.to_string());
                Some(Some("require".to_string()))
            }
            _ => None,
        }
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        match url::Url::parse(conn) {
            Ok(mut url) if url.query().is_some() => {
                let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                let kept: Vec<(String, String)> = pairs
                    .into_iter()
                    .filter_map(|(k, v)| match take(&k, &v) {
                        None => Some((k, v)),
                        Some(replacement) => replacement.map(|v| (k, v)),
                    })
                    .collect();
                if kept.is_empty() {
                    url.set_query(None);
                } else {
                    url.query_pairs_mut().clear().extend_pairs(kept);
                }
                url.to_string()
            }
            // No query, or a form the url crate does not take (several hosts): as it is.
            _ => conn.to_string(),
        }
    } else {
        conn.split_whitespace()
            .filter_map(|part| match part.split_once('=') {
                Some((k, v)) => match take(k, v) {
                    None => Some(part.to_string()),
                    Some(replacement) => replacement.map(|v| format!("{k}={v}")),
                },
                None => Some(part.to_string()),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Untouched unless something was taken: quoting and spacing stay as the user wrote them.
    let rest = if mode.is_none() && root_cert.is_none() { conn.to_string() } else { rest };
    let verify = match mode.as_deref() {
        Some("verify-full") => Verify::Full,
        Some(_) => Verify::Chain,
        None if root_cert.is_some() => Verify::Chain,
        None => Verify::Nothing,
    };
    (rest, TlsParams { verify, root_cert })
}

/// libpq's `require` (`chain: None`: the certificate is not checked) and `verify-ca` (the
/// chain is checked, the host name is not). Either way the server proves it holds the
/// certificate's key: the handshake signatures are always verified.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_taken_out() {
        let (rest, p) = split("postgres://u:pw@db.example:5432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x");
        assert_eq!(rest, "postgres://u:pw@db.example:5432/shop?sslmode=require&application_name=x");
        assert_eq!(p, TlsParams { verify: Verify::Full, root_cert: Some("/etc/ca.pem".into()) });

        let (rest, p) = split("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=shop");
        assert_eq!(rest, "host=db user=u sslmode=require dbname=shop");
        assert_eq!(p.verify, Verify::Chain);

        // A CA file makes require check the chain, as in libpq.
        assert_eq!(split("postgres://h/db?sslmode=require&sslrootcert=ca.pem").1.verify, Verify::Chain);
        assert_eq!(split("postgres://h/db?sslrootcert=ca.pem").0, "postgres://h/db");

        // Nothing to take: the string is passed on untouched.
        for conn in ["postgres://u:p%40ss@h/db", "postgres://u@h1,h2/db?sslmode=require", "host=h password='a b'"] {
            assert_eq!(split(conn), (conn.to_string(), TlsParams { verify: Verify::Nothing, root_cert: None }), "{conn}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let Err(err) = connector(&SecretUrl::new("postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")) else {
            panic!("a missing CA file was accepted");
        };
        let message = err.to_string();
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
