//! The configuration file, in the shape users know from zerofs.toml, and
//! the defaults that apply without one. Parsed and checked once.
//!
//! ```toml
//! [storage]
//! url = "s3://my-bucket/zeroblk"        # or gs://, az://, file:///var/lib/zeroblk/store
//! s3_endpoint = "http://127.0.0.1:3900" # optional, like AWS_ENDPOINT_URL
//! encryption_password = "..."           # optional: encrypts new volumes, opens encrypted ones
//!
//! [cache]
//! dir = "/var/cache/zeroblk"
//! disk_size_gb = 10
//! memory_size_gb = 0.5
//!
//! [servers.nbd]
//! addresses = ["127.0.0.1:10809"]
//!
//! [servers.metrics]                     # optional: Prometheus's /metrics
//! addresses = ["127.0.0.1:9100"]
//! ```
//!
//! Command-line flags override the file; the file overrides the defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::Password;

/// A file holding a password must be the owner's alone.
fn refuse_if_others_may_read(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "it holds encryption_password and others may read it (mode {:o}): run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ),
        });
    }
    Ok(())
}

/// The most a configuration file may hold: a real one is a few hundred
/// bytes, and `-c /dev/zero` must not read until memory runs out.
const LONGEST_CONFIG: u64 = 1 << 20;

/// The text of the configuration file at `path`: a regular file of at
/// most [`LONGEST_CONFIG`] bytes.
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() || meta.len() > LONGEST_CONFIG {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "a configuration file is a regular file of at most {LONGEST_CONFIG} bytes (TOML, see the README): name one with -c FILE"
            ),
        });
    }
    let mut text = String::new();
    file.take(LONGEST_CONFIG)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    Ok(text)
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {} is not valid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The file as written; every key optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub servers: ServersSection,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub url: Option<String>,
    pub s3_endpoint: Option<String>,
    /// The password of encrypted volumes; the file must then be private.
    pub encryption_password: Option<Password>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: Option<PathBuf>,
    pub disk_size_gb: Option<f64>,
    pub memory_size_gb: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServersSection {
    #[serde(default)]
    pub nbd: NbdSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// The Prometheus metrics endpoint of `attach` and `serve`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// HOST:PORT to serve `/metrics` on.
    pub addresses: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NbdSection {
    pub addresses: Option<Vec<String>>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = read_bounded(path)?;
        let config: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: where_and_why(&text, &e),
        })?;
        config.validate(path)?;
        if config.storage.encryption_password.is_some() {
            refuse_if_others_may_read(path)?;
        }
        Ok(config)
    }

    /// The file at `path`, or at the default place when `path` is `None`
    /// (and then only if there is one).
    pub fn load_or_default(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        match path {
            Some(path) => ConfigFile::load(path),
            None => match default_config_path().filter(|p| p.exists()) {
                Some(path) => ConfigFile::load(&path),
                None => Ok(ConfigFile::default()),
            },
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        for (key, value) in [
            ("cache.disk_size_gb", self.cache.disk_size_gb),
            ("cache.memory_size_gb", self.cache.memory_size_gb),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(invalid(format!(
                    "{key} must be a number of GiB, 0 or more, not {value}"
                )));
            }
        }
        Ok(())
    }
}

/// A parse error in one line: the line it is on (an unknown key's own
/// line, so the section it is under shows), then toml's words.
fn where_and_why(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

/// Gibibytes, as the file writes them, in bytes.
pub fn gib_to_bytes(gib: f64) -> u64 {
    (gib * (1u64 << 30) as f64) as u64
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home_dir(xdg_var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(xdg_var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The embedded default store: a directory on this machine.
pub fn default_store_url() -> String {
    let dir = if is_root() {
        PathBuf::from("/var/lib/zeroblk/store")
    } else {
        home_dir("XDG_DATA_HOME", ".local/share").join("zeroblk/store")
    };
    format!("file://{}", dir.display())
}

/// Where write-back logs and cached chunks live by default.
pub fn default_cache_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/cache/zeroblk")
    } else {
        home_dir("XDG_CACHE_HOME", ".cache").join("zeroblk")
    }
}

pub fn default_config_path() -> Option<PathBuf> {
    Some(if is_root() {
        PathBuf::from("/etc/zeroblk/zeroblk.toml")
    } else {
        home_dir("XDG_CONFIG_HOME", ".config").join("zeroblk/zeroblk.toml")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn reads_the_zerofs_shape() {
        let file = write(
            r#"
            [storage]
            url = "s3://bucket/prefix"
            [cache]
            dir = "/tmp/c"
            disk_size_gb = 2
            memory_size_gb = 0.5
            [servers.nbd]
            addresses = ["127.0.0.1:10809", "unix:/run/zb.sock"]
            [servers.metrics]
            addresses = ["127.0.0.1:9100"]
            "#,
        );
        let config = ConfigFile::load(file.path()).unwrap();
        assert_eq!(config.storage.url.as_deref(), Some("s3://bucket/prefix"));
        assert_eq!(config.cache.memory_size_gb, Some(0.5));
        assert_eq!(gib_to_bytes(0.5), 512 << 20);
        assert_eq!(config.servers.nbd.addresses.unwrap().len(), 2);
        assert_eq!(
            config.servers.metrics.addresses,
            Some(vec!["127.0.0.1:9100".to_string()])
        );
    }

    /// The production configuration of ZeroFS's guide to btrfs on a
    /// network block device, word for word.
    const ZEROFS_GUIDE: &str = r#"[storage]
url = "s3://production-bucket/zerofs"
encryption_password = "secure-password"

[cache]
dir = "/var/cache/zerofs"
disk_size_gb = 100.0

[servers.nbd]
addresses = ["0.0.0.0:10809"]
"#;

    #[test]
    fn the_zerofs_guides_production_configuration_loads_as_it_is() {
        use std::os::unix::fs::PermissionsExt;
        let file = write(ZEROFS_GUIDE);
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = ConfigFile::load(file.path()).unwrap();
        assert_eq!(
            config.storage.url.as_deref(),
            Some("s3://production-bucket/zerofs")
        );
        let password = config.storage.encryption_password.as_ref().unwrap();
        assert_eq!(password.as_bytes(), b"secure-password");
        assert_eq!(config.cache.dir, Some(PathBuf::from("/var/cache/zerofs")));
        assert_eq!(config.cache.disk_size_gb, Some(100.0));
        assert_eq!(gib_to_bytes(100.0), 100 << 30);
        assert_eq!(
            config.servers.nbd.addresses,
            Some(vec!["0.0.0.0:10809".to_string()])
        );
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = ConfigFile::load(file.path()).unwrap_err().to_string();
        assert!(
            refused.contains("encryption_password") && refused.contains("chmod 600"),
            "{refused}"
        );
    }

    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let refused = ConfigFile::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("regular file"), "{refused}");
        let dir = tempfile::tempdir().unwrap();
        let refused = ConfigFile::load(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("regular file"), "{refused}");
        let big = write(&"# padding\n".repeat(200_000));
        let refused = ConfigFile::load(big.path()).unwrap_err().to_string();
        assert!(refused.contains("at most"), "{refused}");
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let file = write("[storage]\nurll = \"x\"\n");
        let error = ConfigFile::load(file.path()).unwrap_err().to_string();
        assert!(
            error.contains("line 2: unknown field `urll`")
                && error.contains(&file.path().display().to_string()),
            "{error}"
        );
        let file = write("[cache]\ndir = \"/c\"\n\n[servers.http]\nlisten = \"x\"\n");
        let error = ConfigFile::load(file.path()).unwrap_err().to_string();
        assert!(error.contains("line 4: unknown field `http`"), "{error}");
        let file = write("[servers.metrics]\nlisten = \"x\"\n");
        let error = ConfigFile::load(file.path()).unwrap_err().to_string();
        assert!(error.contains("line 2: unknown field `listen`"), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
        let file = write("[cache]\ndisk_size_gb = -1\n");
        assert!(
            ConfigFile::load(file.path())
                .unwrap_err()
                .to_string()
                .contains("disk_size_gb")
        );
        let missing = ConfigFile::load(Path::new("/nonexistent/zeroblk.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/zeroblk.toml"));
    }
}
