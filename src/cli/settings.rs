//! Flags, configuration file and defaults, merged once into [`Settings`].

use std::path::PathBuf;

use anyhow::Context;

use super::GlobalArgs;
use crate::config::{self, ConfigFile, gib_to_bytes};
use crate::crypto::Password;
use crate::engine::{Durability, EngineOptions};
use crate::size::ByteSize;
use crate::store::{Store, StoreOptions};

/// More read-ahead than this only holds chunks the memory cache may evict
/// before the reader gets to them.
const MAX_READAHEAD_CHUNKS: u64 = 256;

/// The password from the first place that has one.
fn resolve_password(global: &GlobalArgs, config: &ConfigFile) -> anyhow::Result<Option<Password>> {
    if let Some(file) = &global.password_file {
        return Ok(Some(Password::from_file(file)?));
    }
    if let Ok(text) = std::env::var("ZEROBLK_PASSWORD") {
        let password = Password::new(text)
            .context("ZEROBLK_PASSWORD is set but empty: unset it, or give the password")?;
        return Ok(Some(password));
    }
    Ok(config.storage.encryption_password.clone())
}

/// Options of commands that open a volume for I/O.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct EngineArgs {
    /// Memory for chunks: cached ones, and those in flight to and from the store [default: 512M, or [cache] memory_size_gb]
    #[arg(long, value_name = "SIZE")]
    pub memory_cache: Option<ByteSize>,
    /// Disk for cached chunks, in the cache dir [default: 10G, or [cache] disk_size_gb]
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<ByteSize>,
    /// What a flush waits for: local (the log is fsynced) or remote (committed to the store)
    #[arg(long, value_name = "MODE", default_value = "local")]
    pub durability: Durability,
    /// Written bytes not yet uploaded past which writes wait (log records
    /// not yet committed take at most four times this on disk, the log's
    /// files seven times) [default: 1G]
    #[arg(long, value_name = "SIZE")]
    pub max_dirty: Option<ByteSize>,
    /// How often written data is committed to the store, at the first pause
    /// in the writes (at the latest after four times this) [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub commit_interval: Option<humantime::Duration>,
    /// Chunks fetched from the store ahead of a sequential reader, half a
    /// window at a time (0: none) [default: 32]
    #[arg(long, value_name = "CHUNKS")]
    pub readahead: Option<u64>,
    /// Take the volume over from a writer on another host that crashed (its
    /// lease may not have run out; that writer, if alive, stops), or from
    /// one that died here whose write-back log is lost (its flushed writes
    /// with it)
    #[arg(long)]
    pub force: bool,
}

/// Everything a command needs to know about where things are.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_url: String,
    pub store_options: StoreOptions,
    pub cache_dir: PathBuf,
    pub config: ConfigFile,
    /// The password of encrypted volumes, if one was given.
    password: Option<Password>,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Settings> {
        let config = ConfigFile::load_or_default(global.config.as_deref())?;
        anyhow::ensure!(
            !global.store_timeout.is_zero(),
            "--store-timeout must be longer than zero, e.g. 30s"
        );
        let store_url = global
            .store
            .clone()
            .or_else(|| config.storage.url.clone())
            .unwrap_or_else(config::default_store_url);
        let store_options = StoreOptions {
            s3_endpoint: global
                .s3_endpoint
                .clone()
                .or_else(|| config.storage.s3_endpoint.clone()),
            s3_settings: Vec::new(),
            request_timeout: Some(global.store_timeout.into()),
        };
        let cache_dir = global
            .cache_dir
            .clone()
            .or_else(|| config.cache.dir.clone())
            .unwrap_or_else(config::default_cache_dir);
        let password = resolve_password(global, &config)?;
        Ok(Settings {
            store_url,
            store_options,
            cache_dir,
            config,
            password,
        })
    }

    /// The password of encrypted volumes: `--password-file`, else
    /// `ZEROBLK_PASSWORD`, else the config file's.
    pub fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    /// The password a new volume is encrypted with: given a password,
    /// volumes are encrypted (a user who configured one never gets a
    /// volume in the clear by leaving out a flag); `--encrypt` requires one.
    pub fn password_for_new_volume(&self, encrypt: bool) -> anyhow::Result<Option<Password>> {
        anyhow::ensure!(
            !encrypt || self.password.is_some(),
            "--encrypt needs a password: give it with --password-file FILE, ZEROBLK_PASSWORD, or encryption_password under [storage] in the config file"
        );
        Ok(self.password.clone())
    }

    pub fn open_store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.store_url, &self.store_options)?)
    }

    pub fn engine_options(&self, args: &EngineArgs) -> anyhow::Result<EngineOptions> {
        std::fs::create_dir_all(&self.cache_dir).with_context(|| {
            format!(
                "cannot create the cache directory {} (choose another with --cache-dir)",
                self.cache_dir.display()
            )
        })?;
        check_cache_dir_is_private(&self.cache_dir)?;
        let mut options = EngineOptions::new(&self.cache_dir);
        options.password = self.password.clone();
        if let Some(bytes) = args
            .memory_cache
            .map(ByteSize::bytes)
            .or_else(|| self.config.cache.memory_size_gb.map(gib_to_bytes))
        {
            options.memory_cache_bytes = bytes;
        }
        if let Some(bytes) = args
            .cache_size
            .map(ByteSize::bytes)
            .or_else(|| self.config.cache.disk_size_gb.map(gib_to_bytes))
        {
            options.disk_cache_bytes = bytes;
        }
        if let Some(max_dirty) = args.max_dirty {
            anyhow::ensure!(
                max_dirty.bytes() >= 1 << 20,
                "--max-dirty {max_dirty} is too small: give at least 1M"
            );
            options.max_dirty_bytes = max_dirty.bytes();
        }
        if let Some(interval) = args.commit_interval {
            anyhow::ensure!(
                !interval.is_zero(),
                "--commit-interval must be longer than zero, e.g. 2s"
            );
            options.commit_interval = interval.into();
        }
        if let Some(chunks) = args.readahead {
            anyhow::ensure!(
                chunks <= MAX_READAHEAD_CHUNKS,
                "--readahead {chunks} is too many chunks: give at most {MAX_READAHEAD_CHUNKS}"
            );
            options.readahead_chunks = chunks;
        }
        options.durability = args.durability;
        options.take_over = args.force;
        self.check_within_this_machine(args, &options)?;
        Ok(options)
    }

    /// Refuses sizes and intervals no machine could honour, with one line
    /// naming the largest that would do: a memory cache larger than this
    /// machine's memory, a disk cache or log larger than any disk
    /// ([`MAX_DISK_BYTES`]), commits more than a day apart. Only values
    /// given (flags, config file) are checked; the defaults are modest,
    /// and the disk cache and log adapt to the room they find.
    fn check_within_this_machine(
        &self,
        args: &EngineArgs,
        options: &EngineOptions,
    ) -> anyhow::Result<()> {
        let cache = &self.config.cache;
        let memory_flag = match (args.memory_cache, cache.memory_size_gb) {
            (Some(_), _) => Some("--memory-cache"),
            (None, Some(_)) => Some("[cache] memory_size_gb"),
            (None, None) => None,
        };
        if let (Some(flag), Some(memory)) = (memory_flag, physical_memory()) {
            anyhow::ensure!(
                options.memory_cache_bytes <= memory,
                "{flag} {} is more than this machine's memory ({}): give at most {}",
                shown(options.memory_cache_bytes),
                shown(memory),
                shown(memory)
            );
        }
        let disk_flag = match (args.cache_size, cache.disk_size_gb) {
            (Some(_), _) => Some("--cache-size"),
            (None, Some(_)) => Some("[cache] disk_size_gb"),
            (None, None) => None,
        };
        if let Some(flag) = disk_flag {
            anyhow::ensure!(
                options.disk_cache_bytes <= MAX_DISK_BYTES,
                "{flag} {} is more than any disk holds: give at most {}",
                shown(options.disk_cache_bytes),
                shown(MAX_DISK_BYTES)
            );
        }
        if args.max_dirty.is_some() {
            // The log takes at most seven times --max-dirty on disk.
            anyhow::ensure!(
                options.log_disk_bytes() <= MAX_DISK_BYTES,
                "--max-dirty {} lets the write-back log take more than any disk holds ({} and more): give at most {}",
                shown(options.max_dirty_bytes),
                shown(MAX_DISK_BYTES),
                shown(MAX_DISK_BYTES / 8)
            );
        }
        anyhow::ensure!(
            options.commit_interval <= MAX_COMMIT_INTERVAL,
            "--commit-interval {} is longer than a day, and written data waits that long for the store: give at most 1d",
            humantime::format_duration(options.commit_interval)
        );
        Ok(())
    }
}

/// More local disk than any cache dir has: 1 PiB.
const MAX_DISK_BYTES: u64 = 1 << 50;

/// Refuses a cache dir that another user owns or can write (unless it is
/// sticky): they could swap the volume's folder or its log for a symlink
/// and have this process write volume data, as this user, wherever they
/// like.
fn check_cache_dir_is_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the cache directory {}", dir.display()))?;
    // Sticky (like /tmp): others may add entries but never replace ours,
    // and the volume's folder must be ours (the engine checks).
    let sticky = meta.mode() & 0o1000 != 0;
    anyhow::ensure!(
        crate::process::is_own_dir(&meta) && (meta.mode() & 0o022 == 0 || sticky),
        "the cache directory {} is owned by user {} or writable by others, who could redirect the volume's log: choose a directory of your own with --cache-dir, or `chown` it and `chmod go-w` it",
        dir.display(),
        meta.uid()
    );
    Ok(())
}

/// The longest `--commit-interval`.
const MAX_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `bytes` for a message: whole MiB below what it says, or past
/// anything a machine has.
fn shown(bytes: u64) -> String {
    match bytes {
        u64::MAX => "more than 16E".to_string(),
        _ => ByteSize((bytes >> 20) << 20).to_string(),
    }
}

/// This machine's memory, if the kernel says.
fn physical_memory() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok()??;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    Some(
        u64::try_from(pages)
            .ok()?
            .saturating_mul(u64::try_from(page).ok()?),
    )
}
