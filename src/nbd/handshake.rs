//! Fixed newstyle negotiation: options until the client picks an export
//! (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`), asks for TLS, or leaves.
//!
//! With TLS required, a client that has not started it gets
//! `NBD_REP_ERR_TLS_REQD` for every option but `NBD_OPT_STARTTLS` and
//! `NBD_OPT_ABORT` (so not even the list of exports), and
//! `NBD_OPT_EXPORT_NAME`, which has no error reply, ends the connection.
//! After `NBD_OPT_STARTTLS` the caller runs the TLS handshake and the
//! options start over on the encrypted stream, with nothing kept from
//! before.

use std::io;
use std::sync::Arc;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::{self, ProtoError, info, opt, rep};
use super::{Export, Exports};

/// The id of the `base:allocation` meta context, when a client sets it.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What a client negotiated before transmission.
pub struct Session {
    pub export: Arc<Export>,
    pub structured: bool,
    pub base_allocation: bool,
}

/// Why a negotiation ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("client flags {0:#x} are not ones this server knows")]
    UnknownClientFlags(u32),
    #[error("no export named `{0}`")]
    UnknownExport(String),
    #[error("the client asked for an export before starting TLS, which this server requires")]
    ExportBeforeTls,
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

/// Where a negotiation stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// The server has no TLS: `NBD_OPT_STARTTLS` is refused.
    Off,
    /// TLS is required and not started: only `NBD_OPT_STARTTLS` and
    /// `NBD_OPT_ABORT` are served.
    Required,
    /// TLS is on: options are served; a second `NBD_OPT_STARTTLS` is not.
    On,
}

/// How a round of options ended.
pub enum Outcome {
    /// The client picked an export.
    Transmit(Session),
    /// The client asked for TLS and was told yes: run the TLS handshake,
    /// then [`options`] again with [`Tls::On`].
    StartTls,
    /// The client aborted or only asked questions.
    Ended,
}

/// What the client said in its flags; kept across STARTTLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientFlags {
    no_zeroes: bool,
}

/// The server's greeting and the client's flags.
pub async fn greet<S>(stream: &mut S) -> Result<ClientFlags, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.put_u64(proto::NBDMAGIC);
    hello.put_u64(proto::IHAVEOPT);
    hello.put_u16(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
    stream.write_all(&hello).await?;
    stream.flush().await?;
    let client_flags = stream.read_u32().await?;
    if client_flags & !(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    Ok(ClientFlags {
        no_zeroes: client_flags & proto::CLIENT_NO_ZEROES != 0,
    })
}

/// Serves options, after [`greet`], until the client picks an export,
/// starts TLS (never with [`Tls::Off`] or [`Tls::On`]) or leaves.
pub async fn options<S>(
    stream: &mut S,
    exports: &Exports,
    flags: ClientFlags,
    tls: Tls,
) -> Result<Outcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut negotiation = Negotiation {
        stream,
        exports,
        tls,
        structured: false,
        base_allocation: false,
    };
    loop {
        let mut header = [0u8; proto::OPTION_HEADER_LEN];
        negotiation.stream.read_exact(&mut header).await?;
        let header = proto::decode_option_header(&header)?;
        let mut data = vec![0u8; header.len as usize];
        negotiation.stream.read_exact(&mut data).await?;
        let step = match tls {
            Tls::Required => negotiation.before_tls(header.option, &data).await?,
            Tls::Off | Tls::On => {
                negotiation
                    .option(header.option, &data, flags.no_zeroes)
                    .await?
            }
        };
        match step {
            Step::Continue => {}
            Step::Abort => return Ok(Outcome::Ended),
            Step::StartTls => return Ok(Outcome::StartTls),
            Step::Transmit(export) => {
                return Ok(Outcome::Transmit(Session {
                    export,
                    structured: negotiation.structured,
                    base_allocation: negotiation.base_allocation,
                }));
            }
        }
    }
}

/// Negotiates with a client on a server without TLS; `Ok(None)` when it
/// aborted or only asked questions.
pub async fn negotiate<S>(
    stream: &mut S,
    exports: &Exports,
) -> Result<Option<Session>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let flags = greet(stream).await?;
    match options(stream, exports, flags, Tls::Off).await? {
        Outcome::Transmit(session) => Ok(Some(session)),
        Outcome::StartTls | Outcome::Ended => Ok(None),
    }
}

enum Step {
    Continue,
    Abort,
    StartTls,
    Transmit(Arc<Export>),
}

struct Negotiation<'a, S> {
    stream: &'a mut S,
    exports: &'a Exports,
    tls: Tls,
    structured: bool,
    base_allocation: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Negotiation<'_, S> {
    async fn option(
        &mut self,
        option: u32,
        data: &[u8],
        no_zeroes: bool,
    ) -> Result<Step, HandshakeError> {
        match option {
            opt::EXPORT_NAME => self.export_name(data, no_zeroes).await,
            opt::ABORT => {
                // The reply is a courtesy: the client may be gone already.
                let _ = self.reply(option, rep::ACK, &[]).await;
                Ok(Step::Abort)
            }
            opt::LIST => self.list(option, data).await,
            opt::INFO | opt::GO => self.info_or_go(option, data).await,
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() || self.structured {
                    self.error(
                        option,
                        rep::ERR_INVALID,
                        "structured replies take no data and are set once",
                    )
                    .await?;
                } else {
                    self.structured = true;
                    self.reply(option, rep::ACK, &[]).await?;
                }
                Ok(Step::Continue)
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => self.meta_context(option, data).await,
            opt::STARTTLS => {
                let (code, message) = match self.tls {
                    Tls::On => (rep::ERR_INVALID, "TLS is already on"),
                    _ => (
                        rep::ERR_UNSUP,
                        "this server has no TLS: start it with --tls-cert/--tls-key or --tls-psk",
                    ),
                };
                self.error(option, code, message).await?;
                Ok(Step::Continue)
            }
            _ => {
                self.error(option, rep::ERR_UNSUP, "option not supported")
                    .await?;
                Ok(Step::Continue)
            }
        }
    }

    /// An option before STARTTLS on a server that requires TLS.
    async fn before_tls(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        match option {
            opt::STARTTLS if data.is_empty() => {
                self.reply(option, rep::ACK, &[]).await?;
                Ok(Step::StartTls)
            }
            opt::STARTTLS => {
                self.error(option, rep::ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
                    .await?;
                Ok(Step::Continue)
            }
            opt::ABORT => {
                let _ = self.reply(option, rep::ACK, &[]).await;
                Ok(Step::Abort)
            }
            opt::EXPORT_NAME => Err(HandshakeError::ExportBeforeTls),
            _ => {
                self.error(
                    option,
                    rep::ERR_TLS_REQD,
                    "this server requires TLS: connect with nbds:// and the server's CA or a pre-shared key",
                )
                .await?;
                Ok(Step::Continue)
            }
        }
    }

    async fn export_name(&mut self, data: &[u8], no_zeroes: bool) -> Result<Step, HandshakeError> {
        let name = String::from_utf8_lossy(data).into_owned();
        // This option has no error reply: an unknown name ends the session.
        let export = self
            .exports
            .find(&name)
            .ok_or(HandshakeError::UnknownExport(name))?;
        let mut reply = Vec::with_capacity(134);
        reply.put_u64(export.volume().size());
        reply.put_u16(export.transmission_flags(self.structured));
        if !no_zeroes {
            reply.put_slice(&[0; 124]);
        }
        self.stream.write_all(&reply).await?;
        Ok(Step::Transmit(export))
    }

    async fn list(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        if !data.is_empty() {
            self.error(option, rep::ERR_INVALID, "NBD_OPT_LIST takes no data")
                .await?;
            return Ok(Step::Continue);
        }
        let names: Vec<String> = self.exports.names().map(str::to_string).collect();
        for name in names {
            self.reply(option, rep::SERVER, &proto::encode_server_entry(&name))
                .await?;
        }
        self.reply(option, rep::ACK, &[]).await?;
        Ok(Step::Continue)
    }

    async fn info_or_go(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        let request = match proto::decode_info_request(data) {
            Ok(request) => request,
            Err(error) => {
                self.error(option, rep::ERR_INVALID, &error.to_string())
                    .await?;
                return Ok(Step::Continue);
            }
        };
        let Some(export) = self.exports.find(&request.name) else {
            let message = format!("no export named `{}`", request.name);
            self.error(option, rep::ERR_UNKNOWN, &message).await?;
            return Ok(Step::Continue);
        };
        let flags = export.transmission_flags(self.structured);
        self.reply(
            option,
            rep::INFO,
            &proto::encode_info_export(export.volume().size(), flags),
        )
        .await?;
        let (minimum, preferred, maximum) = export.block_sizes();
        self.reply(
            option,
            rep::INFO,
            &proto::encode_info_block_size(minimum, preferred, maximum),
        )
        .await?;
        if request.requests.contains(&info::NAME) {
            self.reply(
                option,
                rep::INFO,
                &proto::encode_info_text(info::NAME, export.name()),
            )
            .await?;
        }
        if request.requests.contains(&info::DESCRIPTION) {
            let description = format!("zeroblk volume {}", export.name());
            self.reply(
                option,
                rep::INFO,
                &proto::encode_info_text(info::DESCRIPTION, &description),
            )
            .await?;
        }
        self.reply(option, rep::ACK, &[]).await?;
        Ok(if option == opt::GO {
            Step::Transmit(export)
        } else {
            Step::Continue
        })
    }

    async fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        if option == opt::SET_META_CONTEXT && !self.structured {
            self.error(
                option,
                rep::ERR_INVALID,
                "negotiate structured replies first",
            )
            .await?;
            return Ok(Step::Continue);
        }
        let request = match proto::decode_meta_context_request(data) {
            Ok(request) => request,
            Err(error) => {
                self.error(option, rep::ERR_INVALID, &error.to_string())
                    .await?;
                return Ok(Step::Continue);
            }
        };
        if self.exports.find(&request.export).is_none() {
            let message = format!("no export named `{}`", request.export);
            self.error(option, rep::ERR_UNKNOWN, &message).await?;
            return Ok(Step::Continue);
        }
        let matches = |query: &str| match option {
            opt::LIST_META_CONTEXT => query == "base:" || query == proto::BASE_ALLOCATION,
            _ => query == proto::BASE_ALLOCATION,
        };
        let wanted = if option == opt::LIST_META_CONTEXT && request.queries.is_empty() {
            true
        } else {
            request.queries.iter().any(|q| matches(q))
        };
        if option == opt::SET_META_CONTEXT {
            self.base_allocation = wanted;
        }
        if wanted {
            let context = proto::encode_meta_context(BASE_ALLOCATION_ID, proto::BASE_ALLOCATION);
            self.reply(option, rep::META_CONTEXT, &context).await?;
        }
        self.reply(option, rep::ACK, &[]).await?;
        Ok(Step::Continue)
    }

    async fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&proto::encode_option_reply(option, reply_type, data))
            .await?;
        self.stream.flush().await
    }

    async fn error(&mut self, option: u32, reply_type: u32, message: &str) -> io::Result<()> {
        self.reply(option, reply_type, message.as_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Feeds client bytes to a negotiation with no exports; returns
    /// whether it ended (it must, without panicking).
    fn negotiate_bytes(input: Vec<u8>) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (mut client, mut server) = tokio::io::duplex(1 << 20);
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            let exports = Exports::default();
            let ended = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                negotiate(&mut server, &exports),
            )
            .await;
            ended.is_ok()
        })
    }

    fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u64(proto::IHAVEOPT);
        out.put_u32(code);
        out.put_u32(data.len() as u32);
        out.put_slice(data);
        out
    }

    /// Reads one option reply: its option, type and data.
    async fn read_reply<S: AsyncRead + Unpin>(client: &mut S) -> (u32, u32, Vec<u8>) {
        let mut header = [0u8; 20];
        client.read_exact(&mut header).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(header[..8].try_into().unwrap()),
            proto::OPTION_REPLY_MAGIC
        );
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        client.read_exact(&mut data).await.unwrap();
        (option, kind, data)
    }

    /// A client and a server task serving options with `tls`, past the
    /// greeting.
    async fn start(
        tls: Tls,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<Outcome, HandshakeError>>,
    ) {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(async move {
            let exports = Exports::default();
            let flags = greet(&mut server).await?;
            options(&mut server, &exports, flags, tls).await
        });
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).await.unwrap();
        client.write_all(&3u32.to_be_bytes()).await.unwrap();
        (client, serving)
    }

    #[tokio::test]
    async fn before_starttls_every_option_but_starttls_and_abort_needs_tls() {
        let (mut client, serving) = start(Tls::Required).await;
        for code in [
            opt::LIST,
            opt::INFO,
            opt::GO,
            opt::STRUCTURED_REPLY,
            opt::LIST_META_CONTEXT,
            99,
        ] {
            client.write_all(&option(code, &[])).await.unwrap();
            let (replied_to, kind, message) = read_reply(&mut client).await;
            assert_eq!(
                (replied_to, kind),
                (code, rep::ERR_TLS_REQD),
                "option {code}"
            );
            let message = String::from_utf8(message).unwrap();
            assert!(message.contains("requires TLS"), "{message}");
        }
        client
            .write_all(&option(opt::STARTTLS, b"x"))
            .await
            .unwrap();
        let (_, kind, _) = read_reply(&mut client).await;
        assert_eq!(kind, rep::ERR_INVALID, "STARTTLS takes no data");
        client.write_all(&option(opt::STARTTLS, &[])).await.unwrap();
        let (replied_to, kind, _) = read_reply(&mut client).await;
        assert_eq!((replied_to, kind), (opt::STARTTLS, rep::ACK));
        let outcome = serving.await.unwrap().unwrap();
        assert!(matches!(outcome, Outcome::StartTls));
    }

    #[tokio::test]
    async fn an_export_name_before_starttls_ends_the_connection() {
        let (mut client, serving) = start(Tls::Required).await;
        client
            .write_all(&option(opt::EXPORT_NAME, b""))
            .await
            .unwrap();
        let ended = serving.await.unwrap();
        assert!(matches!(ended, Err(HandshakeError::ExportBeforeTls)));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing about the export was sent");
    }

    #[tokio::test]
    async fn starttls_is_refused_once_tls_is_on_and_without_tls() {
        for (tls, code, words) in [
            (Tls::On, rep::ERR_INVALID, "already on"),
            (
                Tls::Off,
                rep::ERR_UNSUP,
                "--tls-cert/--tls-key or --tls-psk",
            ),
        ] {
            let (mut client, serving) = start(tls).await;
            client.write_all(&option(opt::STARTTLS, &[])).await.unwrap();
            let (_, kind, message) = read_reply(&mut client).await;
            let message = String::from_utf8(message).unwrap();
            assert_eq!(kind, code, "{tls:?}");
            assert!(message.contains(words), "{message}");
            client.write_all(&option(opt::LIST, &[])).await.unwrap();
            let (_, kind, _) = read_reply(&mut client).await;
            assert_eq!(kind, rep::ACK, "{tls:?}: options are served");
            client.write_all(&option(opt::ABORT, &[])).await.unwrap();
            let outcome = serving.await.unwrap().unwrap();
            assert!(matches!(outcome, Outcome::Ended));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_end_the_negotiation(input in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(negotiate_bytes(input));
        }

        #[test]
        fn random_options_end_the_negotiation(
            options in prop::collection::vec((0u32..12, prop::collection::vec(any::<u8>(), 0..64)), 0..8)
        ) {
            let mut input = 3u32.to_be_bytes().to_vec();
            for (code, data) in options {
                input.extend(option(code, &data));
            }
            prop_assert!(negotiate_bytes(input));
        }
    }
}
