//! age encryption of backups: the recipients a backup is encrypted to
//! (`--age-recipient`) and the identities that open it (`--age-identity`).
//!
//! A backup outlives the volume it came from, so it is plain age
//! (age-encryption.org/v1, binary, X25519 keys), not a zeroblk format:
//! `age -d -i KEY_FILE` opens what [`AgeRecipients::encrypt`] makes, and
//! [`AgeIdentities::decrypt`] opens what `age -r` makes. Keys are the ones
//! `age-keygen` writes; recipients files are read as `age -R` reads them.
//!
//! What is promised:
//! - `decrypt` gives back exactly the bytes `encrypt` was given, or an
//!   error, never data: a changed, truncated or swapped byte anywhere in
//!   the payload is [`CryptoError::AgeDamaged`]; a file encrypted to none
//!   of the identities is [`CryptoError::WrongIdentity`]. (age cannot tell
//!   a damaged recipient line in the header from one meant for someone
//!   else: such a file is the second.)
//! - Secret keys are wiped from memory when dropped (age's X25519
//!   identities are x25519-dalek secrets, which are), and so is the text
//!   of the identity file they were read from.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use ::age::x25519;
use ::age::{DecryptError, Decryptor, Encryptor};
use zeroize::Zeroizing;

use super::CryptoError;

/// The first line of every age file (the binary format; an armored one
/// starts with a PEM line instead).
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";
const ARMOR_HEADER: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// The largest identity file read: `age-keygen` writes about 200 bytes.
const MAX_IDENTITY_FILE: u64 = 1 << 20;

/// Whether `bytes` starts like an age file: the `age-encryption.org/v1`
/// header line, newline included.
pub fn looks_age_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(AGE_HEADER)
}

/// The recipients a backup is encrypted to (`--age-recipient KEY`,
/// repeatable). Public keys only: printing them is fine.
#[derive(Clone, Debug)]
pub struct AgeRecipients {
    keys: Arc<[x25519::Recipient]>,
}

impl AgeRecipients {
    /// Each argument is an age public key (`age1...`) or the path of a
    /// recipients file (one key per line, `#` comments and blank lines
    /// ignored, as `age -R` reads). An unparseable key names itself and
    /// says what a recipient looks like; an empty file is an error.
    pub fn parse(args: &[String]) -> Result<AgeRecipients, CryptoError> {
        let mut keys = Vec::new();
        for arg in args {
            let arg = arg.trim();
            let looks_like_key = ["age1", "ssh-", "ecdsa-"]
                .iter()
                .any(|start| arg.starts_with(start));
            if looks_like_key && !Path::new(arg).exists() {
                keys.push(
                    parse_recipient(arg).map_err(|reason| CryptoError::BadRecipient {
                        recipient: shown(arg),
                        reason,
                    })?,
                );
            } else {
                keys.extend(read_recipients_file(Path::new(arg))?);
            }
        }
        Ok(AgeRecipients { keys: keys.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// age-encrypts `plain` to every recipient (binary age format, not
    /// armored): any one of their identities opens it.
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if self.keys.is_empty() {
            return Err(CryptoError::NoRecipients);
        }
        let recipients = self.keys.iter().map(|key| key as &dyn ::age::Recipient);
        let encryptor = Encryptor::with_recipients(recipients)
            .expect("X25519 recipients always wrap a file key, and there is at least one");
        // The header is a few hundred bytes; each 64 KiB chunk gains a tag.
        let mut sealed = Vec::with_capacity(plain.len() + plain.len() / 4096 + 1024);
        let mut writer = encryptor
            .wrap_output(&mut sealed)
            .expect("writing to a Vec cannot fail");
        writer
            .write_all(plain)
            .expect("writing to a Vec cannot fail");
        writer.finish().expect("writing to a Vec cannot fail");
        Ok(sealed)
    }
}

/// Why `text` is not an age recipient, or the recipient it is.
/// The largest recipients file read: thousands of keys.
const MAX_RECIPIENTS_FILE: u64 = 1 << 20;

/// A line as an error may show it: never a secret key.
fn shown(text: &str) -> String {
    match text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        true => "AGE-SECRET-KEY-… (a secret key, not shown)".to_string(),
        false => text.chars().take(120).collect(),
    }
}

/// The text of the regular file at `path`, refused if larger than `max`
/// bytes (a device or a FIFO is refused before it is opened: reading one
/// could block, or never end).
fn read_small_file(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let mut text = String::new();
    File::open(path)?.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {max} bytes"),
        ));
    }
    Ok(text)
}

fn parse_recipient(text: &str) -> Result<x25519::Recipient, &'static str> {
    if text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        return Err(
            "it is an age identity (a secret key), not a recipient: give its public key (`age-keygen -y FILE` prints it)",
        );
    }
    if text.starts_with("ssh-") || text.starts_with("ecdsa-") {
        return Err("SSH keys are not supported: make an age key with age-keygen");
    }
    // Bech32 has no 1 but the one that ends the prefix: a later one makes
    // the prefix age1NAME, a plugin's.
    if text.starts_with("age1") && text.rfind('1') > Some(3) {
        return Err("plugin recipients (age1NAME1...) are not supported");
    }
    text.parse::<x25519::Recipient>()
}

/// The recipients in the file at `path`: one per line, `#` comments and
/// blank lines skipped.
fn read_recipients_file(path: &Path) -> Result<Vec<x25519::Recipient>, CryptoError> {
    let text = read_small_file(path, MAX_RECIPIENTS_FILE).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CryptoError::BadRecipient {
                recipient: shown(&path.display().to_string()),
                reason: "it is neither an age public key nor a file that exists",
            }
        } else {
            CryptoError::RecipientsFile {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = parse_recipient(line).map_err(|reason| CryptoError::BadRecipientLine {
            path: path.to_path_buf(),
            line: index + 1,
            text: shown(line),
            reason,
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(CryptoError::NoRecipientsInFile {
            path: path.to_path_buf(),
        });
    }
    Ok(keys)
}

/// The identities that open a backup (`--age-identity FILE`, as
/// `age-keygen` writes it). Secret: never printed, wiped when dropped.
pub struct AgeIdentities {
    keys: Vec<x25519::Identity>,
}

impl std::fmt::Debug for AgeIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeIdentities({} keys)", self.keys.len())
    }
}

impl AgeIdentities {
    /// Reads an identity file (`AGE-SECRET-KEY-1...` lines, `#` comments
    /// and blank lines allowed). A file readable by group or others is
    /// accepted with a warning: it holds a secret key.
    pub fn from_file(path: &Path) -> Result<AgeIdentities, CryptoError> {
        let cannot_read = |source| CryptoError::IdentityFile {
            path: path.to_path_buf(),
            source,
        };
        // A FIFO or a device could block the open, or never end.
        let meta = std::fs::metadata(path).map_err(cannot_read)?;
        if !meta.is_file() {
            let not_file =
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is not a regular file");
            return Err(cannot_read(not_file));
        }
        let file = File::open(path).map_err(cannot_read)?;
        if meta.mode() & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.mode() & 0o777),
                "the age identity file is readable by group or others, and it holds a secret key: run `chmod 600 {}`",
                path.display()
            );
        }
        let text = read_secret(file, meta.len()).map_err(cannot_read)?;
        let bad = |reason: String| CryptoError::BadIdentityFile {
            path: path.to_path_buf(),
            reason,
        };
        if text.len() as u64 > MAX_IDENTITY_FILE {
            return Err(bad("it is larger than an identity file ever is".into()));
        }
        if looks_age_encrypted(&text) || text.starts_with(ARMOR_HEADER) {
            return Err(bad(format!(
                "it is itself age-encrypted (with a passphrase): decrypt it first (`age -d -o PLAIN_FILE {}`), keep the result private, and give that",
                path.display()
            )));
        }
        let mut keys = Vec::new();
        for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
            let number = index + 1;
            let line =
                std::str::from_utf8(line).map_err(|_| bad(format!("line {number} is not text")))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line itself is never put in an error: it may be a key.
            let key = parse_identity(line).map_err(|why| bad(format!("line {number}: {why}")))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(bad("it holds no secret key".into()));
        }
        Ok(AgeIdentities { keys })
    }

    /// Decrypts what [`AgeRecipients::encrypt`] (or `age -r`) made, if one
    /// of these identities is among its recipients.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let damaged = |error: DecryptError| CryptoError::AgeDamaged {
            detail: describe(&error, sealed),
        };
        let decryptor = Decryptor::new_buffered(sealed).map_err(damaged)?;
        let identities = self.keys.iter().map(|key| key as &dyn ::age::Identity);
        let mut reader = decryptor.decrypt(identities).map_err(|error| match error {
            DecryptError::NoMatchingKeys => CryptoError::WrongIdentity,
            other => damaged(other),
        })?;
        let mut plain = Vec::with_capacity(sealed.len());
        reader
            .read_to_end(&mut plain)
            .map_err(|error| CryptoError::AgeDamaged {
                detail: match error.kind() {
                    std::io::ErrorKind::UnexpectedEof => "it is truncated".into(),
                    std::io::ErrorKind::InvalidData => "its payload does not authenticate".into(),
                    _ => error.to_string(),
                },
            })?;
        Ok(plain)
    }
}

/// Why `text` is not an age identity, or the identity it is.
fn parse_identity(text: &str) -> Result<x25519::Identity, &'static str> {
    if text.starts_with("AGE-PLUGIN-") {
        return Err("plugin identities are not supported");
    }
    if text.starts_with("-----BEGIN") {
        return Err("SSH keys are not supported: make an age key with age-keygen");
    }
    text.parse::<x25519::Identity>()
        .map_err(|_| "it is not an age secret key (AGE-SECRET-KEY-1...)")
}

/// All of `file` (at most one byte past [`MAX_IDENTITY_FILE`]), in a buffer
/// wiped when dropped; `size_hint` sizes it so that it is never moved.
fn read_secret(file: File, size_hint: u64) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let capacity = size_hint.min(MAX_IDENTITY_FILE) as usize + 1;
    let mut text = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_IDENTITY_FILE + 1).read_to_end(&mut text)?;
    Ok(text)
}

/// What was wrong with the age file `sealed`, said for a user.
fn describe(error: &DecryptError, sealed: &[u8]) -> String {
    match error {
        _ if sealed.is_empty() => "it is empty".into(),
        _ if !looks_age_encrypted(sealed) => {
            "it does not begin as an age file does (age-encryption.org/v1)".into()
        }
        DecryptError::InvalidHeader | DecryptError::UnknownFormat => {
            "its header does not parse".into()
        }
        DecryptError::InvalidMac => "its header's MAC does not match".into(),
        DecryptError::DecryptionFailed => "its payload does not authenticate".into(),
        DecryptError::KeyDecryptionFailed => "its file key does not decrypt".into(),
        DecryptError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it is truncated".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
