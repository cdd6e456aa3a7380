//! A password, read from where the user keeps it and wiped from memory
//! when dropped.

use std::path::Path;

use zeroize::Zeroizing;

use super::CryptoError;

/// A volume password: not empty, never printed.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(text: String) -> Result<Password, CryptoError> {
        let text = Zeroizing::new(text);
        if text.is_empty() {
            return Err(CryptoError::BadPassword(
                "the password is empty: give one of at least one character".into(),
            ));
        }
        Ok(Password(text))
    }

    /// The first line of `path`, which must be this user's (or root's) and
    /// not readable by others.
    pub fn from_file(path: &Path) -> Result<Password, CryptoError> {
        use std::os::unix::fs::MetadataExt;
        let bad = |why: String| CryptoError::BadPassword(format!("{}: {why}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(bad(format!(
                "it belongs to user {}, who could change it: keep the password in a file of your own",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "others may read it (mode {:o}): run `chmod 600 {}`",
                meta.mode() & 0o777,
                path.display()
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?,
        );
        let line = text.lines().next().unwrap_or_default();
        Password::new(line.to_string()).map_err(|_| bad("its first line is empty".into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Compared as the config file is: never in a way that matters for timing.
impl PartialEq for Password {
    fn eq(&self, other: &Password) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// From a config file: a string, not empty. Anything else is refused
/// without its value in the message (it may be the password).
impl<'de> serde::Deserialize<'de> for Password {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Password, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Password;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a password in quotes")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Password, E> {
                Password::new(text.to_string()).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text).map_err(|_| {
            serde::de::Error::custom("the password must be a string in quotes, not empty")
        })
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_password_file_is_private_and_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Password::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Password::from_file(&path).unwrap().as_bytes(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(Password::from_file(&path).is_err(), "empty");
        assert!(Password::new(String::new()).is_err());
        assert_eq!(
            format!("{:?}", Password::new("x".into()).unwrap()),
            "Password(..)"
        );
    }
}
