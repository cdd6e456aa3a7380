//! The NBD TLS flags `zeroblk serve` and `zeroblk attach --nbd-listen`
//! share, and the one rule both enforce: a TCP address other machines can
//! reach is served only over TLS, unless `--insecure-plaintext` says
//! otherwise. Loopback addresses and Unix sockets need no TLS.
//!
//! It promises that a combination of flags that cannot mean anything
//! (a client CA without a certificate, a key without a certificate,
//! certificates and pre-shared keys at once) is refused with one line
//! saying what to give instead, before anything listens.

use std::path::PathBuf;

use crate::nbd::{ListenAddr, TlsConfig};

/// The flags that ask for TLS.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct TlsArgs {
    /// NBD over TLS: the server's certificate chain (PEM), with --tls-key
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 600)
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM); needs --tls-cert
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// NBD over TLS with pre-shared keys: `identity:hexkey` lines, as
    /// nbdkit's --tls-psk and qemu's keys.psk (mode 600)
    #[arg(long, value_name = "FILE")]
    tls_psk: Option<PathBuf>,
    /// Serve plaintext NBD on an address other machines can reach: anyone
    /// who can connect reads and writes the volumes
    #[arg(long)]
    insecure_plaintext: bool,
}

impl TlsArgs {
    /// Whether any of the flags was given.
    pub fn given(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_client_ca.is_some()
            || self.tls_psk.is_some()
            || self.insecure_plaintext
    }

    /// The TLS the flags ask for (`None`: plaintext), checked against the
    /// addresses to listen on.
    pub fn load(&self, addresses: &[ListenAddr]) -> anyhow::Result<Option<TlsConfig>> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_psk) {
            (Some(_), Some(_), Some(_)) => anyhow::bail!(
                "--tls-psk and --tls-cert/--tls-key are two ways to do TLS: give one of them"
            ),
            (Some(_), None, _) => {
                anyhow::bail!("--tls-cert needs the certificate's private key: add --tls-key FILE")
            }
            (None, Some(_), _) => {
                anyhow::bail!("--tls-key needs its certificate: add --tls-cert FILE")
            }
            (Some(cert), Some(key), None) => Some(TlsConfig::certificate(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            (None, None, Some(psk)) => {
                anyhow::ensure!(
                    self.tls_client_ca.is_none(),
                    "--tls-client-ca checks client certificates, which --tls-psk does not use: leave out one of them"
                );
                Some(TlsConfig::psk(psk)?)
            }
            (None, None, None) => {
                anyhow::ensure!(
                    self.tls_client_ca.is_none(),
                    "--tls-client-ca needs the server's own certificate: add --tls-cert FILE --tls-key FILE"
                );
                None
            }
        };
        match &tls {
            Some(_) => anyhow::ensure!(
                !self.insecure_plaintext,
                "--insecure-plaintext contradicts the TLS flags: leave it out"
            ),
            None if !self.insecure_plaintext => {
                if let Some(open) = addresses.iter().find(|a| !a.is_local()) {
                    anyhow::bail!(
                        "refusing to serve NBD in plaintext on {open}, which other machines can reach: give --tls-cert/--tls-key or --tls-psk (or --insecure-plaintext to accept that anyone who connects reads and writes the volumes)"
                    );
                }
            }
            None => {}
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> TlsArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            tls: TlsArgs,
        }
        let mut full = vec!["zeroblk"];
        full.extend_from_slice(line);
        <Cli as clap::Parser>::parse_from(full).tls
    }

    fn refusal(line: &[&str], addresses: &[&str]) -> String {
        let addresses: Vec<ListenAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
        args(line).load(&addresses).unwrap_err().to_string()
    }

    #[test]
    fn nonsense_combinations_are_refused_with_the_fix() {
        let local = ["127.0.0.1:10809"];
        for (line, expected) in [
            (&["--tls-client-ca", "ca.pem"][..], "add --tls-cert"),
            (&["--tls-cert", "c.pem"][..], "add --tls-key"),
            (&["--tls-key", "k.pem"][..], "add --tls-cert"),
            (
                &["--tls-cert", "c", "--tls-key", "k", "--tls-psk", "p"][..],
                "give one of them",
            ),
            (
                &["--tls-psk", "p", "--tls-client-ca", "ca"][..],
                "leave out one",
            ),
        ] {
            let error = refusal(line, &local);
            assert!(error.contains(expected), "{line:?}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn plaintext_is_refused_only_where_other_machines_can_connect() {
        let none = args(&[]);
        for local in [
            "127.0.0.1:0",
            "[::1]:10809",
            "localhost:10809",
            "unix:/x.sock",
        ] {
            let address: ListenAddr = local.parse().unwrap();
            assert!(none.load(&[address]).unwrap().is_none(), "{local}");
        }
        for open in ["0.0.0.0:10809", "[::]:10809"] {
            let error = refusal(&[], &["127.0.0.1:1", open]);
            assert!(
                error.contains(open) && error.contains("--tls-cert/--tls-key or --tls-psk"),
                "{error}"
            );
            let insecure = args(&["--insecure-plaintext"]);
            assert!(insecure.load(&[open.parse().unwrap()]).unwrap().is_none());
        }
    }
}
