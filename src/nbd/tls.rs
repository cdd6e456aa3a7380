//! TLS for NBD connections (`NBD_OPT_STARTTLS`): the server's credentials,
//! loaded and checked once, and the handshake that turns an accepted
//! stream into an encrypted one. The only module that uses OpenSSL.
//!
//! Two kinds of credentials, one at a time:
//! - a certificate chain and its key (PEM), optionally with a CA that
//!   every client must present a certificate from;
//! - pre-shared keys, one `identity:hexkey` per line, the format nbdkit's
//!   `--tls-psk` and qemu's `tls-creds-psk` read (GnuTLS's `psktool`
//!   writes it).
//!
//! What it promises: a key or PSK file that other users can open is
//! refused, before anything is read from it; a file that does not parse is
//! refused with its path and what to do; a client that has none of the
//! credentials asked for never completes [`TlsConfig::accept`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    Ssl, SslAcceptor, SslContext, SslContextBuilder, SslMethod, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The shortest and longest pre-shared keys taken, in bytes (psktool
/// makes 32): a shorter key is one an attacker can guess.
const MIN_PSK_BYTES: usize = 16;
const MAX_PSK_BYTES: usize = 256;
/// The longest identity taken (TLS carries up to 64 KiB; names are short).
const MAX_IDENTITY_BYTES: usize = 1024;

/// Why TLS could not be set up, or a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}; check the path", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the {what} {} can be opened by other users (mode 0{mode:03o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    OpenToOthers {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "the {what} {} belongs to user {owner}, who could change it: keep it in a file of your own",
        path.display()
    )]
    OwnedByOther {
        what: &'static str,
        path: PathBuf,
        owner: u32,
    },
    #[error("the {what} {} is not valid PEM ({detail}): {fix}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
        fix: &'static str,
    },
    #[error(
        "the key {} does not belong to the certificate {}: give --tls-key the key the certificate was issued for",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "the PSK file {} line {line}: {problem}; write one `identity:hexkey` per line, as `psktool -u NAME -p FILE` does",
        path.display()
    )]
    PskLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(
        "the PSK file {} holds no keys: add `identity:hexkey` lines, e.g. with `psktool -u NAME -p {}`",
        path.display(),
        path.display()
    )]
    PskEmpty { path: PathBuf },
    #[error("OpenSSL could not set up TLS: {0} (is libssl3 installed and up to date?)")]
    Setup(#[from] ErrorStack),
    #[error("TLS handshake with the client failed: {0}")]
    Handshake(String),
}

/// A server's TLS credentials, ready to accept clients; cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    context: SslContext,
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Certificate { client_certificates: bool },
    Psk { identities: usize },
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TlsConfig {
    /// A server certificate chain (`cert`, the server's certificate first)
    /// and its `key`; with `client_ca`, every client must present a
    /// certificate issued by that CA.
    pub fn certificate(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsConfig, TlsError> {
        let key_pem = read_private("TLS key", key)?;
        let private_key = PKey::private_key_from_pem(&key_pem).map_err(|e| TlsError::Pem {
            what: "TLS key",
            path: key.to_path_buf(),
            detail: first_reason(&e),
            fix: "give the private key in PEM form (`-----BEGIN PRIVATE KEY-----`), unencrypted",
        })?;
        let chain = read_certificates("TLS certificate", cert)?;
        // Mozilla's "intermediate" profile: TLS 1.2 and 1.3 with AEAD
        // ciphers only.
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        let mut chain = chain.into_iter();
        let leaf = chain
            .next()
            .expect("read_certificates returns at least one");
        builder.set_certificate(&leaf)?;
        for intermediate in chain {
            builder.add_extra_chain_cert(intermediate)?;
        }
        builder.set_private_key(&private_key)?;
        builder
            .check_private_key()
            .map_err(|_| TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })?;
        let client_certificates = client_ca.is_some();
        if let Some(ca) = client_ca {
            for authority in read_certificates("client CA", ca)? {
                builder.add_client_ca(&authority)?;
                builder.cert_store_mut().add_cert(authority)?;
            }
            builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            // Resumed sessions keep the client's verified identity: OpenSSL
            // needs a context name for that.
            builder.set_session_id_context(b"zeroblk-nbd")?;
        }
        Ok(TlsConfig {
            context: builder.build().into_context(),
            kind: Kind::Certificate {
                client_certificates,
            },
        })
    }

    /// Pre-shared keys from `file`: one `identity:hexkey` per line.
    pub fn psk(file: &Path) -> Result<TlsConfig, TlsError> {
        let text = read_private("PSK file", file)?;
        let keys = Arc::new(parse_psk_file(file, &text)?);
        let identities = keys.len();
        let mut builder = SslContextBuilder::new(SslMethod::tls_server())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // TLS 1.2: the PSK suites, those with a fresh key exchange (forward
        // secrecy) first; TLS 1.3 uses its own suites, with (EC)DHE.
        builder.set_cipher_list("kECDHEPSK+AESGCM:kECDHEPSK+CHACHA20:kPSK+AESGCM:kPSK+CHACHA20")?;
        builder.set_psk_server_callback(move |_ssl, identity, out| {
            let key = identity.and_then(|identity| keys.get(identity));
            match key {
                Some(key) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    Ok(key.len())
                }
                // An unknown identity: zero bytes fails the handshake.
                _ => Ok(0),
            }
        });
        Ok(TlsConfig {
            context: builder.build(),
            kind: Kind::Psk { identities },
        })
    }

    /// What clients need, for the log.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Certificate {
                client_certificates: false,
            } => "TLS with a server certificate".into(),
            Kind::Certificate {
                client_certificates: true,
            } => "TLS with a server certificate; clients need a certificate from --tls-client-ca"
                .into(),
            Kind::Psk { identities } => {
                format!("TLS with pre-shared keys ({identities} identities)")
            }
        }
    }

    /// Runs the server side of the TLS handshake on `stream`.
    pub async fn accept<S>(&self, stream: S) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(&self.context)?;
        let mut stream = tokio_openssl::SslStream::new(ssl, stream)?;
        Pin::new(&mut stream).accept().await.map_err(|error| {
            let detail = match error.ssl_error() {
                Some(stack) => first_reason(stack),
                None => error.to_string(),
            };
            TlsError::Handshake(detail)
        })?;
        let ssl = stream.ssl();
        tracing::debug!(
            version = ssl.version_str(),
            cipher = ssl.current_cipher().map(|c| c.name()),
            "TLS handshake done"
        );
        Ok(TlsStream(stream))
    }
}

/// A stream after a TLS handshake: reads and writes go through TLS.
pub struct TlsStream<S>(tokio_openssl::SslStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// OpenSSL's reason for the first error on its stack, short.
fn first_reason(stack: &ErrorStack) -> String {
    stack
        .errors()
        .first()
        .and_then(|e| e.reason().map(str::to_string))
        .unwrap_or_else(|| stack.to_string())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a secret: refused if group or others have any access to it.
fn read_private(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::OpenToOthers {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != nix::unistd::geteuid().as_raw() && owner != 0 {
        return Err(TlsError::OwnedByOther {
            what,
            path: path.to_path_buf(),
            owner,
        });
    }
    read_file(what, path)
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = read_file(what, path)?;
    let fix = "give certificates in PEM form (`-----BEGIN CERTIFICATE-----`), e.g. `openssl x509 -in FILE -outform PEM`";
    let certificates = X509::stack_from_pem(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail: first_reason(&e),
        fix,
    })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: "no certificate in it".into(),
            fix,
        });
    }
    Ok(certificates)
}

/// Parses `identity:hexkey` lines (blank lines skipped).
fn parse_psk_file(path: &Path, text: &[u8]) -> Result<HashMap<Vec<u8>, Vec<u8>>, TlsError> {
    let line_error = |line: usize, problem: &str| TlsError::PskLine {
        path: path.to_path_buf(),
        line,
        problem: problem.to_string(),
    };
    let text = std::str::from_utf8(text).map_err(|_| line_error(1, "the file is not text"))?;
    let mut keys = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (identity, hex_key) = line
            .rsplit_once(':')
            .ok_or_else(|| line_error(number, "no `:` between identity and key"))?;
        if identity.is_empty() || identity.len() > MAX_IDENTITY_BYTES {
            return Err(line_error(
                number,
                &format!("the identity must be 1 to {MAX_IDENTITY_BYTES} bytes"),
            ));
        }
        let key = hex::decode(hex_key)
            .map_err(|_| line_error(number, "the key is not hexadecimal digits"))?;
        if !(MIN_PSK_BYTES..=MAX_PSK_BYTES).contains(&key.len()) {
            return Err(line_error(
                number,
                &format!(
                    "the key must be {MIN_PSK_BYTES} to {MAX_PSK_BYTES} bytes (32 hex digits or more; `psktool` makes 64)"
                ),
            ));
        }
        if keys.insert(identity.as_bytes().to_vec(), key).is_some() {
            return Err(line_error(
                number,
                &format!("the identity `{identity}` is given twice"),
            ));
        }
    }
    if keys.is_empty() {
        return Err(TlsError::PskEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_psk_file_parses_as_nbdkit_and_qemu_write_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = private_file(
            dir.path(),
            "keys.psk",
            "alice:00112233445566778899aabbccddeeff\n\nbob:0102030405060708090a0b0c0d0e0f10\n",
            0o600,
        );
        let config = TlsConfig::psk(&good).unwrap();
        assert!(config.describe().contains("2 identities"), "{config:?}");
        for (text, expected) in [
            ("alice\n", "line 1: no `:`"),
            (
                ":00112233445566778899aabbccddeeff\n",
                "line 1: the identity must be",
            ),
            (
                "a:00112233445566778899aabbccddeeff\na:zz\n",
                "line 2: the key is not hexadecimal",
            ),
            (
                "a:00112233445566778899aabbccddeeff\na:00112233445566778899aabbccddeeff\n",
                "line 2: the identity `a` is given twice",
            ),
            ("a:\n", "line 1: the key must be"),
            ("a:0011\n", "line 1: the key must be 16"),
            ("\n\n", "holds no keys"),
        ] {
            let path = private_file(dir.path(), "bad.psk", text, 0o600);
            let error = TlsConfig::psk(&path).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains("bad.psk"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn secrets_open_to_other_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = private_file(
            dir.path(),
            "keys.psk",
            "alice:00112233445566778899aabbccddeeff\n",
            0o640,
        );
        let error = TlsConfig::psk(&open).unwrap_err().to_string();
        assert!(
            error.contains(&format!("chmod 600 {}", open.display())) && error.contains("0640"),
            "{error}"
        );
        let key = private_file(dir.path(), "key.pem", "not a key", 0o604);
        let cert = private_file(dir.path(), "cert.pem", "not a cert", 0o644);
        let error = TlsConfig::certificate(&cert, &key, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn files_that_are_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = private_file(dir.path(), "garbage.pem", "not a key", 0o600);
        let cert = private_file(dir.path(), "cert.pem", "not a cert", 0o644);
        let error = TlsConfig::certificate(&cert, &garbage, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("TLS key") && error.contains("garbage.pem") && error.contains("PEM"),
            "{error}"
        );
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1);
        let key = PKey::from_ec_key(openssl::ec::EcKey::generate(&group.unwrap()).unwrap());
        let pem = String::from_utf8(key.unwrap().private_key_to_pem_pkcs8().unwrap()).unwrap();
        let key = private_file(dir.path(), "key.pem", &pem, 0o600);
        let error = TlsConfig::certificate(&cert, &key, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("TLS certificate")
                && error.contains("cert.pem")
                && error.contains("PEM"),
            "{error}"
        );
        let missing = dir.path().join("nope.pem");
        let error = TlsConfig::certificate(&missing, &key, None).unwrap_err();
        assert!(error.to_string().contains("nope.pem"), "{error}");
    }
}
