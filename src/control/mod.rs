//! A running daemon's control socket: `zeroblk detach`, `volume snapshot
//! create`, `volume commit`, `volume resize` and `zeroblk status` talk to
//! the daemon that attached or serves a volume through it.
//!
//! The socket is the owner's alone (mode 600, in the private runtime
//! directory), and the daemon also checks its peer: only its own user or
//! root may ask. A request is one line of at most 128 bytes, sent within
//! 5 s, so that no client can hold a daemon up; the answer is one line,
//! `ok`, `ok WHAT` or `error: WHY`.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::status::StatusSource;

/// The longest answer read: a status of many volumes fits many times.
const LONGEST_ANSWER: u64 = 16 << 20;

/// Binds a daemon's control socket at `path`, the owner's alone; one a
/// dead daemon left there is replaced.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers `status` requests on `listener` until `stopped` turns true:
/// the control socket of `zeroblk serve`, which has no device to detach
/// (a signal stops it) and commits as its clients flush.
pub async fn serve_status(
    listener: UnixListener,
    source: StatusSource,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let outcome = match read_request(&mut stream).await {
                Ok(Request::Status) => Ok(source.collect().to_json()),
                Ok(_) => Err("`zeroblk serve` answers only status: stop it with SIGTERM (Ctrl-C), which commits every volume".into()),
                Err(refusal) => Err(refusal),
            };
            answer(&mut stream, outcome).await;
        });
    }
}

/// How long a control client has to send its request.
const CONTROL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a control client asks the daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `detach`: stop serving, commit everything, exit.
    Detach,
    /// `commit`: commit every write acknowledged so far to the store.
    Commit,
    /// `snapshot [LABEL]`: commit, then pin a volume snapshot; answered
    /// with `ok NAME`.
    Snapshot(Option<String>),
    /// `status`: the daemon's figures; answered with `ok JSON` (see
    /// [`crate::status::DaemonStatus`]).
    Status,
    /// `resize BYTES`: grow the volume to BYTES and commit that, then its
    /// device; answered with `ok WHAT`, a line saying what grew.
    Resize(u64),
}

/// Reads a control request from a client of this user (or root): at most
/// a line of 128 bytes, within [`CONTROL_REQUEST_TIMEOUT`], so no client
/// can hold the daemon up.
pub async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let me = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map_err(|e| e.to_string())?.uid();
    if peer != me && peer != 0 {
        return Err(format!("user {peer} may not control this daemon"));
    }
    let mut line = String::new();
    let mut reader = BufReader::new((&mut *stream).take(128));
    match tokio::time::timeout(CONTROL_REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.ends_with('\n') => parse_request(line.trim()),
        Ok(_) => Err("unknown request".into()),
        Err(_) => Err("no request within 5 s".into()),
    }
}

fn parse_request(line: &str) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    let request = match (words.next(), words.next()) {
        (Some("detach"), None) => Request::Detach,
        (Some("commit"), None) => Request::Commit,
        (Some("status"), None) => Request::Status,
        (Some("snapshot"), label) => Request::Snapshot(label.map(str::to_string)),
        (Some("resize"), Some(bytes)) => Request::Resize(parse_bytes(bytes)?),
        _ => return Err("unknown request".into()),
    };
    match words.next() {
        None => Ok(request),
        Some(_) => Err("unknown request".into()),
    }
}

/// The size of a `resize` request: a plain count of bytes.
fn parse_bytes(word: &str) -> Result<u64, String> {
    match word.bytes().all(|b| b.is_ascii_digit()) {
        true => word
            .parse()
            .map_err(|_| format!("resize {word}: the size is too large")),
        false => Err(format!("resize {word}: the size must be a number of bytes")),
    }
}

/// Answers a request: `ok`, `ok WHAT`, or `error: WHY`, on one line.
pub async fn answer(stream: &mut UnixStream, outcome: Result<String, String>) {
    let line = match outcome {
        Ok(what) if what.is_empty() => "ok\n".to_string(),
        Ok(what) => format!("ok {what}\n"),
        Err(why) => format!("error: {why}\n"),
    };
    let _ = stream.write_all(line.as_bytes()).await;
}
/// Asks the daemon serving `record` to detach, and waits for its answer.
pub async fn request_detach(control_socket: &PathBuf) -> Result<(), String> {
    ask(control_socket, "detach").await.map(drop)
}

/// Asks the daemon to commit every write it acknowledged to the store.
pub async fn request_commit(control_socket: &PathBuf) -> Result<(), String> {
    ask(control_socket, "commit").await.map(drop)
}

/// Asks the daemon to commit its volume and pin a snapshot of it (named
/// `label`, or after the time); returns the snapshot's name.
pub async fn request_snapshot(
    control_socket: &PathBuf,
    label: Option<&str>,
) -> Result<String, String> {
    let request = match label {
        Some(label) => format!("snapshot {label}"),
        None => "snapshot".to_string(),
    };
    ask(control_socket, &request).await
}

/// Asks the daemon to grow its volume to `bytes`, then its device;
/// returns the daemon's line saying what grew.
pub async fn request_resize(control_socket: &PathBuf, bytes: u64) -> Result<String, String> {
    ask(control_socket, &format!("resize {bytes}")).await
}

/// Asks the daemon for its figures (the JSON of
/// [`crate::status::DaemonStatus`]).
pub async fn request_status(control_socket: &PathBuf) -> Result<String, String> {
    ask(control_socket, "status").await
}

/// Sends `request` to the daemon; returns what follows its `ok`.
async fn ask(control_socket: &PathBuf, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(control_socket).await.map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e}",
            control_socket.display()
        )
    })?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream.take(LONGEST_ANSWER))
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("the daemon did not answer: {e}"))?;
    match answer.trim() {
        "" => Err("the daemon exited without answering; see its log".into()),
        "ok" => Ok(String::new()),
        ok if ok.starts_with("ok ") => Ok(ok[3..].to_string()),
        other => Err(other.trim_start_matches("error: ").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the daemon makes of a control client that sends `sent`, then
    /// keeps its end open.
    async fn request_of(sent: &[u8]) -> Result<Request, String> {
        let (mut daemon_end, mut client) = UnixStream::pair().unwrap();
        let sent = sent.to_vec();
        let sending = tokio::spawn(async move {
            let _ = client.write_all(&sent).await;
            client
        });
        let answer = read_request(&mut daemon_end).await;
        drop(daemon_end);
        drop(sending.await);
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn control_requests_are_bounded_in_size_and_time() {
        assert_eq!(request_of(b"detach\n").await, Ok(Request::Detach));
        assert_eq!(request_of(b"commit\n").await, Ok(Request::Commit));
        assert_eq!(request_of(b"status\n").await, Ok(Request::Status));
        assert_eq!(request_of(b"snapshot\n").await, Ok(Request::Snapshot(None)));
        assert_eq!(
            request_of(b"snapshot nightly\n").await,
            Ok(Request::Snapshot(Some("nightly".into())))
        );
        assert_eq!(
            request_of(b"resize 536870912\n").await,
            Ok(Request::Resize(512 << 20))
        );
        for bad in [
            &b"snapshot a b\n"[..],
            b"detach now\n",
            b"status all\n",
            b"resize\n",
            b"resize 1 2\n",
        ] {
            assert_eq!(request_of(bad).await, Err("unknown request".into()));
        }
        assert_eq!(request_of(b"attach\n").await, Err("unknown request".into()));
        for (bad, why) in [
            (
                &b"resize 512M\n"[..],
                "resize 512M: the size must be a number of bytes",
            ),
            (
                b"resize -1\n",
                "resize -1: the size must be a number of bytes",
            ),
            (
                b"resize 99999999999999999999\n",
                "resize 99999999999999999999: the size is too large",
            ),
        ] {
            assert_eq!(request_of(bad).await, Err(why.into()));
        }
        let endless = vec![b'x'; 1 << 20];
        assert_eq!(request_of(&endless).await, Err("unknown request".into()));
        // Nothing sent: given up after the timeout (paused time runs on).
        assert_eq!(request_of(b"").await, Err("no request within 5 s".into()));
    }
}
