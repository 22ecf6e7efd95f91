//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` say (rustls, the tree's one TLS
//! provider, aws-lc-rs):
//!
//! - `disable`: never.
//! - `prefer` (the default, as libpq's): when the server offers it, without checking its
//!   certificate (eavesdroppers see nothing; an impostor could still answer); else in the clear.
//! - `require`: always, else no connection; the certificate checked against `sslrootcert` when
//!   one is given (libpq's `verify-ca` then), not checked otherwise.
//! - `verify-ca`: always, the certificate signed by a CA of `sslrootcert`.
//! - `verify-full`: that, and the certificate names the host connected to (what production
//!   wants).
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the platform's. tokio-postgres
//! knows only the first three modes and neither parameter, so both are taken out of the URL here
//! and the rest is left to it.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connections of one URL are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode, String> {
        Ok(match text {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one this server knows: disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to go on without it.
    fn ssl_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// A URL with its TLS parameters taken out: the rest, for tokio-postgres, and the connector its
/// connections use.
pub(crate) struct Secured {
    /// The URL without `sslmode` and `sslrootcert`.
    pub(crate) url: String,
    /// What tokio-postgres is to do, when the URL said it here (else what it read itself).
    pub(crate) ssl_mode: Option<SslMode>,
    /// The connector (used only when TLS is asked for).
    pub(crate) tls: MakeRustlsConnect,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL's query, or libpq's
/// `key=value` words) and builds the connector they ask for. The error is a sentence about
/// them, to follow the URL's name.
pub(crate) fn secure(url: &str) -> Result<Secured, String> {
    let (url, mode, root) = take_parameters(url);
    // Without a mode taken here, tokio-postgres keeps whatever it reads of one itself (never
    // less than asked for).
    let told = mode.is_some() || root.as_deref() == Some("system");
    let mode = match (mode.as_deref(), root.as_deref()) {
        // As libpq: the platform's CAs vouch for any host they issued a certificate to, so
        // they are trusted only to say who the host is.
        (None, Some("system")) => Mode::VerifyFull,
        (Some(mode), Some("system")) if mode != "verify-full" => {
            return Err(format!(
                "sslrootcert=system trusts the platform's CAs, which vouch only for a host's name: it needs \
                 sslmode=verify-full, not sslmode={mode}"
            ));
        }
        (Some(mode), _) => Mode::parse(mode)?,
        (None, _) => Mode::Prefer,
    };
    let roots = match root.as_deref() {
        None => None,
        Some("system") => Some(system_roots()?),
        Some(path) => Some(file_roots(path)?),
    };
    let check = match (mode, roots) {
        (Mode::Disable | Mode::Prefer, _) | (Mode::Require, None) => Check::Nothing,
        (Mode::Require | Mode::VerifyCa, Some(roots)) => Check::Signer(roots),
        (Mode::VerifyFull, Some(roots)) => Check::SignerAndName(roots),
        (Mode::VerifyCa | Mode::VerifyFull, None) => {
            return Err(format!(
                "sslmode={} needs sslrootcert: a PEM file of the CA certificates to trust, or `system` for the \
                 platform's",
                if mode == Mode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            ));
        }
    };
    Ok(Secured {
        url,
        ssl_mode: told.then(|| mode.ssl_mode()),
        tls: MakeRustlsConnect::new(client_config(check)?),
    })
}

/// What is checked of the server's certificate.
enum Check {
    /// Nothing (its handshake's signature still is).
    Nothing,
    /// That a CA of these signed it.
    Signer(RootCertStore),
    /// That, and that it names the host.
    SignerAndName(RootCertStore),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(check: Check) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS cannot be set up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unchecked(provider.signature_verification_algorithms)),
        Check::Signer(roots) => Arc::new(SignerOnly(webpki(roots, &provider)?)),
        Check::SignerAndName(roots) => webpki(roots, &provider)?,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| format!("the CA certificates of sslrootcert cannot be used: {e}"))
}

fn file_roots(path: &str) -> Result<RootCertStore, String> {
    let read = |e: &dyn std::fmt::Display| format!("sslrootcert {path} cannot be read as PEM certificates: {e}");
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(&e))?;
    if certificates.is_empty() {
        return Err(format!("sslrootcert {path} holds no PEM certificate"));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| format!("sslrootcert {path} holds a certificate that cannot be a CA's: {e}"))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none was found".to_owned(), ToString::to_string);
        return Err(format!(
            "sslrootcert=system: the platform's CA certificates cannot be read: {why}"
        ));
    }
    Ok(roots)
}

/// `url` without `sslmode` and `sslrootcert`, and their values.
type Taken = (String, Option<String>, Option<String>);

pub(crate) fn take_parameters(url: &str) -> Taken {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => return false,
        }
        true
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // As tokio-postgres reads a URL: the credentials run to the first `@`, so the query is
        // after the first `?` that follows it (a `?` of a password is not the query's).
        let from = url.find('@').unwrap_or(0);
        let Some(at) = url[from..].find('?').map(|at| from + at) else {
            return (url.to_owned(), None, None);
        };
        let (base, query) = (&url[..at], &url[at + 1..]);
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(&percent_decoded(key), percent_decoded(value))
            })
            .collect();
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (url, mode, root);
    }
    // libpq's `key = value` pairs, values quoted or not: the two pairs taken are cut out of the
    // text, which is otherwise left as it is (a quoted password keeps its spaces).
    let mut kept = String::with_capacity(url.len());
    let mut copied = 0;
    for (key, value, range) in pairs(url) {
        if take(key, value) {
            kept.push_str(&url[copied..range.start]);
            copied = range.end;
        }
    }
    kept.push_str(&url[copied..]);
    (kept, mode, root)
}

/// The `key = value` pairs of a libpq connection string, as libpq reads them (a value quoted
/// with `'`, a `\` escaping the next character), with the byte range of each pair. Reading
/// stops at text that is no pair (tokio-postgres then says what is wrong with it).
fn pairs(text: &str) -> Vec<(&str, String, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let skip_spaces = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    let mut found = Vec::new();
    let mut at = skip_spaces(0);
    while at < bytes.len() {
        let start = at;
        while at < bytes.len() && bytes[at] != b'=' && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let key = &text[start..at];
        at = skip_spaces(at);
        if at >= bytes.len() || bytes[at] != b'=' || key.is_empty() {
            break;
        }
        at = skip_spaces(at + 1);
        let mut value = Vec::new();
        let quoted = bytes.get(at) == Some(&b'\'');
        if quoted {
            at += 1;
        }
        let mut closed = !quoted;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' if at + 1 < bytes.len() => {
                    value.push(bytes[at + 1]);
                    at += 2;
                    continue;
                }
                b'\'' if quoted => {
                    at += 1;
                    closed = true;
                    break;
                }
                byte if !quoted && byte.is_ascii_whitespace() => break,
                byte => value.push(byte),
            }
            at += 1;
        }
        if !closed {
            break;
        }
        found.push((key, String::from_utf8_lossy(&value).into_owned(), start..at));
        at = skip_spaces(at);
    }
    found
}

/// `%XX` decoded (as tokio-postgres decodes a URL's values); text that is not valid is left.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

/// Checks the handshake's signatures only (`prefer`, `require`): the connection is private, but
/// the certificate is not checked.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Checks that a trusted CA signed the certificate, whatever host it names (`verify-ca`).
#[derive(Debug)]
struct SignerOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SignerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_parameters_are_taken_out_of_either_form_of_url() {
        let cases = [
            ("postgres://u@h/db", ("postgres://u@h/db", None, None)),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
                (
                    "postgres://u@h/db?application_name=x",
                    Some("verify-full"),
                    Some("/etc/ca.pem"),
                ),
            ),
            (
                "postgresql://h/db?sslmode=disable",
                ("postgresql://h/db", Some("disable"), None),
            ),
            (
                "host=h sslmode=require dbname=db sslrootcert=/ca.pem",
                ("host=h  dbname=db ", Some("require"), Some("/ca.pem")),
            ),
            // Quoted, spaced, escaped: as libpq reads them; a quoted password is left whole.
            (
                "host=h password='a  b sslmode=disable' sslmode = 'verify-full' sslrootcert='/my ca.pem'",
                (
                    "host=h password='a  b sslmode=disable'  ",
                    Some("verify-full"),
                    Some("/my ca.pem"),
                ),
            ),
            ("host=h sslmode=re\\quire", ("host=h ", Some("require"), None)),
            // A `?` of a password is not the query's.
            (
                "postgres://ann:pa?ss@h/db?sslmode=require",
                ("postgres://ann:pa?ss@h/db", Some("require"), None),
            ),
            (
                "postgres://h/db?ssl%6Dode=verify-ca",
                ("postgres://h/db", Some("verify-ca"), None),
            ),
        ];
        for (url, (rest, mode, root)) in cases {
            let (taken, m, r) = take_parameters(url);
            assert_eq!(
                (taken.as_str(), m.as_deref(), r.as_deref()),
                (rest, mode, root),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_tls_parameters_are_told_in_a_sentence() {
        let error = |url: &str| secure(url).err().unwrap_or_else(|| panic!("{url} was taken"));
        assert_eq!(
            error("postgres://h/db?sslmode=allow"),
            "sslmode=allow is not one this server knows: disable, prefer, require, verify-ca or verify-full"
        );
        assert!(
            error("postgres://h/db?sslmode=verify-full").starts_with("sslmode=verify-full needs sslrootcert"),
            "{}",
            error("postgres://h/db?sslmode=verify-full")
        );
        let missing = error("postgres://h/db?sslmode=verify-ca&sslrootcert=/nowhere/ca.pem");
        assert!(
            missing.starts_with("sslrootcert /nowhere/ca.pem cannot be read as PEM certificates"),
            "{missing}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let url = format!("postgres://h/db?sslmode=verify-ca&sslrootcert={}", empty.display());
        assert_eq!(
            error(&url),
            format!("sslrootcert {} holds no PEM certificate", empty.display())
        );
        assert_eq!(
            error("postgres://h/db?sslmode=require&sslrootcert=system"),
            "sslrootcert=system trusts the platform's CAs, which vouch only for a host's name: it needs \
             sslmode=verify-full, not sslmode=require"
        );
        for fine in [
            "postgres://h/db",
            "postgres://h/db?sslmode=require",
            "host=h sslmode=disable",
        ] {
            assert!(secure(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_mode_is_told_to_tokio_postgres_only_when_given() {
        let mode = |url: &str| secure(url).unwrap().ssl_mode;
        assert_eq!(mode("postgres://h/db"), None, "tokio-postgres's own default (prefer)");
        assert_eq!(mode("postgres://h/db?sslmode=disable"), Some(SslMode::Disable));
        assert_eq!(mode("host=h sslmode='require'"), Some(SslMode::Require));
    }
}
