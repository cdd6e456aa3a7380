use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ::age::secrecy::ExposeSecret;

use super::*;

/// A fresh identity in a file of `dir` (mode 600, as age-keygen writes
/// it), and its recipient.
fn new_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let path = dir.join(name);
    let text = format!(
        "# created: by a test\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    write_private(&path, text.as_bytes());
    (path, recipient)
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn recipients(keys: &[&str]) -> AgeRecipients {
    let args: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
    AgeRecipients::parse(&args).unwrap()
}

fn identities(path: &Path) -> AgeIdentities {
    AgeIdentities::from_file(path).unwrap()
}

/// Bytes that span several of age's 64 KiB chunks, and do not repeat.
fn plaintext(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Where the payload starts: after the header's MAC line and the nonce.
fn payload_start(sealed: &[u8]) -> usize {
    let mac_line = sealed
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("an age header ends with its MAC line");
    let header_end = mac_line
        + 1
        + sealed[mac_line + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap();
    header_end + 1 + 16
}

#[test]
fn the_handles_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    fn cloned<T: Clone>() {}
    shared::<AgeRecipients>();
    cloned::<AgeRecipients>();
    shared::<AgeIdentities>();
}

#[test]
fn one_recipient_round_trips_and_hides_the_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = new_identity(dir.path(), "key.txt");
    let to = recipients(&[&recipient]);
    assert_eq!((to.len(), to.is_empty()), (1, false));
    let plain = b"a known pattern, repeated: a known pattern".repeat(4000);
    let sealed = to.encrypt(&plain).unwrap();
    assert!(looks_age_encrypted(&sealed));
    assert!(!sealed.windows(15).any(|w| w == b"a known pattern"));
    assert_eq!(identities(&key_file).decrypt(&sealed).unwrap(), plain);
    assert_ne!(sealed, to.encrypt(&plain).unwrap(), "a fresh file key");
    let empty = to.encrypt(b"").unwrap();
    assert_eq!(identities(&key_file).decrypt(&empty).unwrap(), b"");
}

#[test]
fn each_of_several_recipients_opens_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (0..3)
        .map(|i| new_identity(dir.path(), &format!("key{i}.txt")))
        .collect();
    let to = recipients(&keys.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>());
    assert_eq!(to.len(), 3);
    let plain = plaintext(150_000);
    let sealed = to.encrypt(&plain).unwrap();
    for (key_file, _) in &keys {
        assert_eq!(identities(key_file).decrypt(&sealed).unwrap(), plain);
    }
}

#[test]
fn an_identity_that_is_no_recipient_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = new_identity(dir.path(), "theirs.txt");
    let (mine, _) = new_identity(dir.path(), "mine.txt");
    let sealed = recipients(&[&recipient]).encrypt(b"secret").unwrap();
    let error = identities(&mine).decrypt(&sealed).unwrap_err();
    assert!(matches!(error, CryptoError::WrongIdentity), "{error}");
    assert!(
        error.to_string().contains("does not open this backup"),
        "{error}"
    );
}

#[test]
fn a_changed_or_truncated_file_is_damaged_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = new_identity(dir.path(), "key.txt");
    let key = identities(&key_file);
    let sealed = recipients(&[&recipient])
        .encrypt(&plaintext(150_000))
        .unwrap();
    let payload = payload_start(&sealed);
    let damaged = |bytes: &[u8], what: &str| match key.decrypt(bytes) {
        Err(CryptoError::AgeDamaged { detail }) => detail,
        Err(other) => panic!("{what}: {other}"),
        Ok(_) => panic!("{what}: gave data"),
    };
    let mac = payload - 16 - 3;
    for at in [
        mac,
        payload - 16,
        payload,
        payload + 70_000,
        sealed.len() - 1,
    ] {
        let mut flipped = sealed.clone();
        flipped[at] ^= 0x04;
        damaged(&flipped, &format!("a flip at {at}"));
    }
    let one_chunk = payload + 64 * 1024 + 16;
    for len in [0, 10, payload - 17, payload - 16, payload, sealed.len() - 1] {
        damaged(&sealed[..len], &format!("truncated to {len}"));
    }
    // Cut where a chunk ends: every byte left authenticates.
    let detail = damaged(&sealed[..one_chunk], "truncated after a chunk");
    assert_eq!(detail, "it is truncated");
    let mut longer = sealed.clone();
    longer.push(0);
    damaged(&longer, "a byte appended");
    let detail = damaged(b"not an age file at all", "plain bytes");
    assert!(detail.contains("age-encryption.org/v1"), "{detail}");
    let error = key.decrypt(&sealed[..one_chunk]).unwrap_err().to_string();
    assert!(error.contains("changed or damaged"), "{error}");
}

#[test]
fn recipients_files_are_read_as_age_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..3)
        .map(|i| new_identity(dir.path(), &format!("k{i}")).1)
        .collect();
    let file = dir.path().join("recipients.txt");
    let text = format!(
        "# the backup's readers\n\n{}\r\n   \n  {}  \n# done\n",
        keys[0], keys[1]
    );
    std::fs::write(&file, text).unwrap();
    let args = vec![file.display().to_string(), keys[2].clone()];
    let to = AgeRecipients::parse(&args).unwrap();
    assert_eq!(to.len(), 3);

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, format!("{}\n# fine\nnot-a-key\n", keys[0])).unwrap();
    let error = AgeRecipients::parse(&[bad.display().to_string()]).unwrap_err();
    assert!(
        matches!(&error, CryptoError::BadRecipientLine { line: 3, text, .. } if text == "not-a-key"),
        "{error}"
    );
    assert!(error.to_string().contains("age-keygen -y"), "{error}");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nobody yet\n\n").unwrap();
    let error = AgeRecipients::parse(&[empty.display().to_string()]).unwrap_err();
    assert!(
        matches!(error, CryptoError::NoRecipientsInFile { .. }),
        "{error}"
    );
}

#[test]
fn a_bad_recipient_names_itself_and_says_what_one_looks_like() {
    let cases = [
        ("age1notakey", "age1notakey"),
        ("/no/such/recipients", "neither"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "SSH"),
        (
            "age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t",
            "plugin",
        ),
    ];
    for (arg, says) in cases {
        let error = AgeRecipients::parse(&[arg.to_string()]).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, CryptoError::BadRecipient { .. }), "{text}");
        assert!(text.contains(arg) && text.contains(says), "{text}");
        assert!(text.contains("age-keygen -y"), "{text}");
    }
    let none = AgeRecipients::parse(&[]).unwrap();
    assert!(none.is_empty());
    let error = none.encrypt(b"x").unwrap_err();
    assert!(matches!(error, CryptoError::NoRecipients), "{error}");
}

#[test]
fn identity_files_say_what_is_wrong_without_quoting_keys() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let error = AgeIdentities::from_file(&missing).unwrap_err().to_string();
    assert!(
        error.contains("missing.txt") && error.contains("age-keygen"),
        "{error}"
    );

    let (key_file, _) = new_identity(dir.path(), "key.txt");
    let good = std::fs::read_to_string(&key_file).unwrap();
    let secret = good.lines().last().unwrap();
    let garbled = dir.path().join("garbled.txt");
    write_private(
        &garbled,
        format!("{secret}\n{}X\n", &secret[..40]).as_bytes(),
    );
    let error = AgeIdentities::from_file(&garbled).unwrap_err().to_string();
    assert!(error.contains("line 2"), "{error}");
    assert!(!error.contains(&secret[..20]), "a key in an error: {error}");

    let empty = dir.path().join("empty.txt");
    write_private(&empty, b"# nothing\n");
    let error = AgeIdentities::from_file(&empty).unwrap_err().to_string();
    assert!(error.contains("no secret key"), "{error}");

    let encrypted = dir.path().join("encrypted.txt");
    let (_, recipient) = new_identity(dir.path(), "other.txt");
    let sealed = recipients(&[&recipient]).encrypt(good.as_bytes()).unwrap();
    write_private(&encrypted, &sealed);
    let error = AgeIdentities::from_file(&encrypted)
        .unwrap_err()
        .to_string();
    assert!(error.contains("itself age-encrypted"), "{error}");
}

/// What tracing said while `f` ran.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (result, text)
}

#[test]
fn an_identity_file_others_may_read_is_used_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = new_identity(dir.path(), "key.txt");
    let sealed = recipients(&[&recipient]).encrypt(b"data").unwrap();
    let (key, quiet) = logged(|| AgeIdentities::from_file(&key_file));
    assert_eq!(key.unwrap().decrypt(&sealed).unwrap(), b"data");
    assert!(!quiet.contains("WARN"), "{quiet}");
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let (key, warned) = logged(|| AgeIdentities::from_file(&key_file));
        assert_eq!(key.unwrap().decrypt(&sealed).unwrap(), b"data");
        assert!(
            warned.contains("WARN") && warned.contains("chmod 600"),
            "mode {mode:o}: {warned}"
        );
    }
}

#[test]
fn only_age_files_look_age_encrypted() {
    assert!(looks_age_encrypted(b"age-encryption.org/v1\n-> X25519"));
    for not in [
        &b""[..],
        b"age-encryption.org/v1",
        b"age-encryption.org/v2\n",
        b"-----BEGIN AGE ENCRYPTED FILE-----\n",
        b"\x28\xb5\x2f\xfd zstd",
    ] {
        assert!(!looks_age_encrypted(not), "{not:?}");
    }
}

/// Runs the age tool `tool` with `args`, and what it printed. A missing
/// tool fails the test, naming its package.
fn age_tool(tool: &str, args: &[&OsStr]) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install the `age` apt package (scripts/test.sh does)")
    });
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// An identity file made by the real age-keygen, and its recipient.
fn age_keygen(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("age-keygen.txt");
    age_tool("age-keygen", &["-o".as_ref(), path.as_os_str()]);
    let recipient = age_tool("age-keygen", &["-y".as_ref(), path.as_os_str()]);
    (path, recipient.trim().to_string())
}

#[test]
fn the_age_cli_opens_what_we_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = age_keygen(dir.path());
    let (_, other) = new_identity(dir.path(), "other.txt");
    let plain = plaintext(100_000);
    let sealed = dir.path().join("sealed.age");
    std::fs::write(
        &sealed,
        recipients(&[&other, &recipient]).encrypt(&plain).unwrap(),
    )
    .unwrap();
    let opened = dir.path().join("opened");
    let args: [&OsStr; 6] = [
        "-d".as_ref(),
        "-i".as_ref(),
        key_file.as_os_str(),
        "-o".as_ref(),
        opened.as_os_str(),
        sealed.as_os_str(),
    ];
    age_tool("age", &args);
    assert!(std::fs::read(&opened).unwrap() == plain);
}

#[test]
fn we_open_what_the_age_cli_encrypts() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, recipient) = age_keygen(dir.path());
    let plain = plaintext(100_000);
    let input = dir.path().join("plain");
    std::fs::write(&input, &plain).unwrap();
    let sealed = dir.path().join("sealed.age");
    let args: [&OsStr; 5] = [
        "-r".as_ref(),
        recipient.as_ref(),
        "-o".as_ref(),
        sealed.as_os_str(),
        input.as_os_str(),
    ];
    age_tool("age", &args);
    let sealed = std::fs::read(&sealed).unwrap();
    assert!(looks_age_encrypted(&sealed));
    let (key, log) = logged(|| AgeIdentities::from_file(&key_file));
    assert!(!log.contains("WARN"), "age-keygen's file is private: {log}");
    assert!(key.unwrap().decrypt(&sealed).unwrap() == plain);
    // And a recipients file of what `age-keygen -y` printed.
    let file = dir.path().join("recipients.txt");
    std::fs::write(&file, format!("# from age-keygen -y\n{recipient}\n")).unwrap();
    let to = AgeRecipients::parse(&[file.display().to_string()]).unwrap();
    let ours = to.encrypt(b"both ways").unwrap();
    assert_eq!(identities(&key_file).decrypt(&ours).unwrap(), b"both ways");
}

#[test]
fn a_secret_key_given_as_a_recipient_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = new_identity(dir.path(), "identity");
    let secret = std::fs::read_to_string(&identity).unwrap();
    let secret_line = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    // The identity file as a recipients file, and its key as an argument.
    for arg in [identity.display().to_string(), secret_line.to_string()] {
        let error = AgeRecipients::parse(&[arg]).err().unwrap().to_string();
        assert!(
            !error.contains(&secret_line[20..]),
            "the secret leaked: {error}"
        );
        assert!(error.contains("secret key"), "{error}");
    }
}

#[test]
fn a_recipients_file_that_never_ends_or_blocks_is_refused() {
    for path in ["/dev/zero", "/dev/null"] {
        let error = AgeRecipients::parse(&[path.to_string()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not a regular file"), "{path}: {error}");
    }
    let error = AgeIdentities::from_file(Path::new("/tmp"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not a regular file"), "{error}");
}
