//! Which provisioning `zeroblk attach` brings up: what this host's flags
//! ask for, over what the volume remembers (`provision.json` beside its
//! superblock), remembered in turn when it changed.
//!
//! What the volume remembers is untrusted (whoever can write the bucket
//! writes it): it is checked like the flags, and its NFS export is applied
//! only when this host's flags repeat it. btrfs mount options are
//! remembered (a `--mount-options` that names any replaces them); the
//! `suid` and `dev` it lifts are this host's alone and never remembered.

use std::path::PathBuf;

use super::AttachError;
use crate::engine;
use crate::provision::{
    BtrfsCompression, BtrfsOptions, Filesystem, MountOptions, NfsExport, PROVISION_FILE, Provision,
};
use crate::store::Store;

/// The provisioning flags of one `zeroblk attach`.
#[derive(Debug, Default, Clone)]
pub struct ProvisionFlags {
    pub mount_point: Option<PathBuf>,
    pub filesystem: Option<Filesystem>,
    pub compress: Option<BtrfsCompression>,
    pub nfs_options: Option<NfsExport>,
    pub mount_options: Option<MountOptions>,
}

impl ProvisionFlags {
    /// Whether any flag that the volume remembers was given.
    fn given(&self) -> bool {
        self.mount_point.is_some()
            || self.filesystem.is_some()
            || self.compression().is_some()
            || self.nfs_options.is_some()
            || self.btrfs_options().is_some()
    }

    /// The compression asked for: `--compress`, or `compress=` in
    /// `--mount-options`.
    fn compression(&self) -> Option<&BtrfsCompression> {
        let in_mount_options = self.mount_options.as_ref();
        self.compress
            .as_ref()
            .or_else(|| in_mount_options.and_then(|m| m.compress.as_ref()))
    }

    /// The btrfs options of `--mount-options`, if it names any.
    fn btrfs_options(&self) -> Option<&BtrfsOptions> {
        self.mount_options.as_ref().and_then(|m| m.btrfs.as_ref())
    }
}

/// The provisioning to bring up for volume `name`, if any.
pub async fn resolve(
    store: &Store,
    name: &str,
    flags: &ProvisionFlags,
) -> Result<Option<Provision>, AttachError> {
    let stored = stored(store, name, flags).await?;
    let wanted = match flags.given() {
        true => from_flags(store, name, flags, stored.as_ref()).await?,
        false => stored,
    };
    Ok(wanted.map(|provision| applied_on_this_host(name, provision, flags)))
}

/// What volume `name` remembers, checked; when it fails the check, an
/// error, unless the flags give a mount point to replace it.
async fn stored(
    store: &Store,
    name: &str,
    flags: &ProvisionFlags,
) -> Result<Option<Provision>, AttachError> {
    let Some(bytes) = engine::read_volume_file(store, name, PROVISION_FILE).await? else {
        return Ok(None);
    };
    match checked(&bytes) {
        Ok(provision) => Ok(Some(provision)),
        Err(why) if flags.mount_point.is_some() => {
            tracing::warn!(volume = name, %why, "replacing the stored provisioning settings with the flags");
            Ok(None)
        }
        Err(why) => Err(AttachError::Provision(format!(
            "the provisioning settings stored with volume {name} ({PROVISION_FILE}) are refused: {why}; attach it with --mount-point DIR and the other options to replace them"
        ))),
    }
}

/// Stored provisioning settings, parsed and checked.
fn checked(bytes: &[u8]) -> Result<Provision, String> {
    let provision = serde_json::from_slice::<Provision>(bytes).map_err(|e| e.to_string())?;
    provision.check().map_err(|e| e.to_string())?;
    Ok(provision)
}

/// The provisioning the flags ask for, over `stored`; remembered with the
/// volume when it changed.
async fn from_flags(
    store: &Store,
    name: &str,
    flags: &ProvisionFlags,
    stored: Option<&Provision>,
) -> Result<Option<Provision>, AttachError> {
    let Some(provision) = merged(flags, stored)? else {
        if stored.is_some() {
            engine::write_volume_file(store, name, PROVISION_FILE, None).await?;
        }
        return Ok(None);
    };
    if stored != Some(&provision) {
        let json = serde_json::to_vec_pretty(&provision).expect("provision settings serialize");
        engine::write_volume_file(store, name, PROVISION_FILE, Some(json.into())).await?;
    }
    Ok(Some(provision))
}

/// The flags over `stored`: `None` for a raw device.
fn merged(
    flags: &ProvisionFlags,
    stored: Option<&Provision>,
) -> Result<Option<Provision>, AttachError> {
    let refused = |why: &str| Err(AttachError::Provision(why.to_string()));
    if flags.filesystem == Some(Filesystem::None) {
        if flags.mount_point.is_some()
            || flags.compress.is_some()
            || flags.nfs_options.is_some()
            || flags.mount_options.is_some()
        {
            return refused(
                "--filesystem none leaves the device raw: leave out --mount-point, --compress, --nfs-options and --mount-options",
            );
        }
        return Ok(None);
    }
    check_compression_given_once(flags, stored)?;
    let Some(mount_point) = flags
        .mount_point
        .clone()
        .or_else(|| stored.map(|p| p.mount_point.clone()))
    else {
        return refused(
            "a filesystem needs a place to mount it: give --mount-point DIR (e.g. /mnt/NAME)",
        );
    };
    let provision = Provision {
        filesystem: Filesystem::Btrfs,
        compress: flags
            .compression()
            .cloned()
            .or_else(|| stored.map(|p| p.compress.clone()))
            .unwrap_or_default(),
        mount_point,
        nfs: flags
            .nfs_options
            .clone()
            .or_else(|| stored.and_then(|p| p.nfs.clone())),
        mount_options: flags
            .btrfs_options()
            .cloned()
            .or_else(|| stored.map(|p| p.mount_options.clone()))
            .unwrap_or_default(),
        lifted: Default::default(),
    };
    provision
        .check()
        .map_err(|e| AttachError::Provision(e.to_string()))?;
    Ok(Some(provision))
}

/// Refuses two answers to how btrfs compresses: `--compress` and
/// `compress=` in `--mount-options` that differ, or `--compress` while
/// the mount options (given or remembered) say `compress-force=`, which
/// would win.
fn check_compression_given_once(
    flags: &ProvisionFlags,
    stored: Option<&Provision>,
) -> Result<(), AttachError> {
    let in_mount_options = flags
        .mount_options
        .as_ref()
        .and_then(|m| m.compress.as_ref());
    if let (Some(flag), Some(option)) = (&flags.compress, in_mount_options)
        && flag != option
    {
        return Err(AttachError::Provision(format!(
            "--compress {flag} and compress={option} in --mount-options ask for two compressions: give one"
        )));
    }
    let forced = match flags.btrfs_options() {
        Some(options) => options.set_compression().then_some("--mount-options"),
        None => stored
            .is_some_and(|p| p.mount_options.set_compression())
            .then_some("the mount options the volume remembers"),
    };
    if let (Some(flag), Some(forced)) = (flags.compression(), forced) {
        return Err(AttachError::Provision(format!(
            "compress-force= in {forced} says how btrfs compresses, so compression {flag} would not apply: give the compression once, as compress-force=CODEC in --mount-options, or as --compress {flag} with --mount-options that leave compress-force out"
        )));
    }
    Ok(())
}

/// `provision` as this host applies it: its NFS export only when the
/// flags give one, and the `suid` and `dev` the flags lift.
fn applied_on_this_host(name: &str, mut provision: Provision, flags: &ProvisionFlags) -> Provision {
    if flags.nfs_options.is_none()
        && let Some(export) = provision.nfs.take()
    {
        tracing::warn!(
            volume = name,
            "the volume remembers the NFS export `{export}`, which is not applied: a host shares a volume only when its own flags say so; pass --nfs-options '{export}' to share it"
        );
    }
    provision.lifted = flags
        .mount_options
        .as_ref()
        .map(|m| m.lifted)
        .unwrap_or_default();
    provision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NewVolume;
    use crate::format::Compression;
    use std::path::Path;

    fn remembered() -> Provision {
        Provision {
            filesystem: Filesystem::Btrfs,
            compress: BtrfsCompression::default(),
            mount_point: "/mnt/data".into(),
            nfs: Some("rw,sync,no_subtree_check,10.0.0.0/24".parse().unwrap()),
            mount_options: "ssd".parse().unwrap(),
            lifted: Default::default(),
        }
    }

    #[test]
    fn flags_override_what_the_volume_remembers_field_by_field() {
        let flags = ProvisionFlags {
            compress: Some("zstd:9".parse().unwrap()),
            ..ProvisionFlags::default()
        };
        let merged = merged(&flags, Some(&remembered())).unwrap().unwrap();
        assert_eq!(merged.mount_point, PathBuf::from("/mnt/data"));
        assert_eq!(merged.compress, "zstd:9".parse().unwrap());
        assert_eq!(merged.nfs, remembered().nfs);
    }

    #[test]
    fn a_raw_device_takes_no_filesystem_flags_and_btrfs_needs_a_mount_point() {
        let raw = ProvisionFlags {
            filesystem: Some(Filesystem::None),
            ..ProvisionFlags::default()
        };
        assert!(merged(&raw, Some(&remembered())).unwrap().is_none());
        let contradictory = ProvisionFlags {
            mount_point: Some("/mnt/x".into()),
            ..raw
        };
        assert!(merged(&contradictory, None).is_err());
        let btrfs = ProvisionFlags {
            filesystem: Some(Filesystem::Btrfs),
            ..ProvisionFlags::default()
        };
        let error = merged(&btrfs, None).unwrap_err().to_string();
        assert!(error.contains("--mount-point"), "{error}");
    }

    #[test]
    fn remembered_settings_are_checked_like_flags() {
        assert!(checked(b"not json").is_err());
        let mut bad = remembered();
        bad.mount_point = "relative/dir".into();
        let json = serde_json::to_vec(&bad).unwrap();
        assert!(checked(&json).is_err(), "a relative mount point");
        assert!(checked(&serde_json::to_vec(&remembered()).unwrap()).is_ok());
    }

    /// A volume `v` in a memory store that remembers `stored` as its
    /// provisioning, as if a bucket writer had put it there.
    async fn volume_remembering(stored: &str) -> Store {
        let store = Store::memory();
        let new = NewVolume {
            name: "v".into(),
            size: 1 << 30,
            chunk_size: 1 << 20,
            compression: Compression::default(),
            encrypt_with: None,
        };
        engine::create(&store, &new).await.unwrap();
        let bytes = bytes::Bytes::from(stored.to_string());
        engine::write_volume_file(&store, "v", PROVISION_FILE, Some(bytes))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn a_stored_mount_point_in_the_system_is_refused_until_the_flags_replace_it() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/etc"}"#,
        )
        .await;
        let refused = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("are refused: mount point /etc is a system directory"),
            "{refused}"
        );
        let flags = ProvisionFlags {
            mount_point: Some("/mnt/v".into()),
            ..ProvisionFlags::default()
        };
        let replaced = resolve(&store, "v", &flags).await.unwrap().unwrap();
        assert_eq!(replaced.mount_point, Path::new("/mnt/v"));
        let again = resolve(&store, "v", &ProvisionFlags::default()).await;
        assert_eq!(again.unwrap().unwrap().mount_point, Path::new("/mnt/v"));
    }

    #[tokio::test]
    async fn a_stored_nfs_export_is_applied_only_when_the_flags_repeat_it() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v", "nfs": "rw,*"}"#,
        )
        .await;
        let applied = resolve(&store, "v", &ProvisionFlags::default()).await;
        let applied = applied.unwrap().unwrap();
        assert_eq!(applied.nfs, None);
        assert_eq!(applied.lifted, Default::default(), "nosuid and nodev");
        let compress_only = ProvisionFlags {
            compress: Some("zstd:1".parse().unwrap()),
            ..ProvisionFlags::default()
        };
        let applied = resolve(&store, "v", &compress_only).await;
        assert_eq!(applied.unwrap().unwrap().nfs, None);
        let flags = ProvisionFlags {
            nfs_options: Some("rw,10.0.0.0/24".parse().unwrap()),
            ..ProvisionFlags::default()
        };
        let applied = resolve(&store, "v", &flags).await.unwrap().unwrap();
        assert_eq!(applied.nfs, Some("rw,10.0.0.0/24".parse().unwrap()));
    }

    fn with_mount_options(options: &str) -> ProvisionFlags {
        ProvisionFlags {
            mount_options: Some(options.parse().unwrap()),
            ..ProvisionFlags::default()
        }
    }

    #[tokio::test]
    async fn btrfs_mount_options_are_remembered_until_others_replace_them() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v"}"#,
        )
        .await;
        let options = |provision: Option<Provision>| provision.unwrap().mount_options.to_string();
        let flags = with_mount_options("ssd,commit=120,space_cache=v2");
        let given = resolve(&store, "v", &flags).await.unwrap();
        assert_eq!(options(given), "ssd,commit=120,space_cache=v2");
        let again = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap();
        assert_eq!(options(again), "ssd,commit=120,space_cache=v2");

        let flags = with_mount_options("suid");
        let lifted = resolve(&store, "v", &flags).await.unwrap().unwrap();
        assert_eq!(
            lifted.mount_options.to_string(),
            "ssd,commit=120,space_cache=v2"
        );
        assert_eq!(lifted.lifted, "suid".parse().unwrap());
        let again = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap();
        assert_eq!(
            again.unwrap().lifted,
            Default::default(),
            "lifts are never remembered"
        );

        let flags = with_mount_options("nossd,commit=30");
        let other = resolve(&store, "v", &flags).await.unwrap();
        assert_eq!(options(other), "nossd,commit=30");
        let again = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap();
        assert_eq!(options(again), "nossd,commit=30");
        let flags = with_mount_options("defaults");
        let forgotten = resolve(&store, "v", &flags).await.unwrap();
        assert_eq!(options(forgotten), "");
        let again = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap();
        assert_eq!(options(again), "");
    }

    #[tokio::test]
    async fn compress_in_mount_options_is_the_compress_flag() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v"}"#,
        )
        .await;
        let flags = with_mount_options("compress=lzo");
        let given = resolve(&store, "v", &flags).await.unwrap().unwrap();
        assert_eq!(given.compress, "lzo".parse().unwrap());
        assert!(given.mount_options.is_empty());
        let again = resolve(&store, "v", &ProvisionFlags::default())
            .await
            .unwrap();
        assert_eq!(again.unwrap().compress, "lzo".parse().unwrap());
    }

    #[test]
    fn two_answers_to_how_btrfs_compresses_are_refused() {
        let both = ProvisionFlags {
            compress: Some("zstd:9".parse().unwrap()),
            ..with_mount_options("compress=lzo")
        };
        let error = merged(&both, Some(&remembered())).unwrap_err().to_string();
        assert!(error.contains("ask for two compressions"), "{error}");
        let same = ProvisionFlags {
            compress: Some("lzo".parse().unwrap()),
            ..with_mount_options("compress=lzo")
        };
        assert!(merged(&same, Some(&remembered())).is_ok());
        let forced = ProvisionFlags {
            compress: Some("zstd:9".parse().unwrap()),
            ..with_mount_options("compress-force=zstd:1")
        };
        let error = merged(&forced, Some(&remembered()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("compress-force= in --mount-options"),
            "{error}"
        );
        let mut forcing = remembered();
        forcing.mount_options = "compress-force=zstd:1".parse().unwrap();
        let compress = ProvisionFlags {
            compress: Some("zstd:9".parse().unwrap()),
            ..ProvisionFlags::default()
        };
        let error = merged(&compress, Some(&forcing)).unwrap_err().to_string();
        assert!(
            error.contains("the mount options the volume remembers"),
            "{error}"
        );
    }

    #[test]
    fn a_raw_device_takes_no_mount_options() {
        let raw = ProvisionFlags {
            filesystem: Some(Filesystem::None),
            ..with_mount_options("ssd")
        };
        let error = merged(&raw, None).unwrap_err().to_string();
        assert!(error.contains("--mount-options"), "{error}");
    }
}
