//! Which provisioning `zeroblk attach` brings up: what this host's flags
//! ask for, over what the volume remembers (`provision.json` beside its
//! superblock), remembered in turn when it changed.
//!
//! What the volume remembers is untrusted (whoever can write the bucket
//! writes it): it is checked like the flags, and its NFS export is applied
//! only when this host's flags repeat it. Mount options (`suid`, `dev`)
//! are this host's alone and never remembered.

use std::path::PathBuf;

use super::AttachError;
use crate::engine;
use crate::provision::{
    BtrfsCompression, Filesystem, MountOptions, NfsExport, PROVISION_FILE, Provision,
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
            || self.compress.is_some()
            || self.nfs_options.is_some()
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
        if flags.mount_point.is_some() || flags.compress.is_some() || flags.nfs_options.is_some() {
            return refused(
                "--filesystem none leaves the device raw: leave out --mount-point, --compress and --nfs-options",
            );
        }
        return Ok(None);
    }
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
            .compress
            .clone()
            .or_else(|| stored.map(|p| p.compress.clone()))
            .unwrap_or_default(),
        mount_point,
        nfs: flags
            .nfs_options
            .clone()
            .or_else(|| stored.and_then(|p| p.nfs.clone())),
        mount: MountOptions::default(),
    };
    provision
        .check()
        .map_err(|e| AttachError::Provision(e.to_string()))?;
    Ok(Some(provision))
}

/// `provision` as this host applies it: its NFS export only when the
/// flags give one, and the mount options of the flags.
fn applied_on_this_host(name: &str, mut provision: Provision, flags: &ProvisionFlags) -> Provision {
    if flags.nfs_options.is_none()
        && let Some(export) = provision.nfs.take()
    {
        tracing::warn!(
            volume = name,
            "the volume remembers the NFS export `{export}`, which is not applied: a host shares a volume only when its own flags say so; pass --nfs-options '{export}' to share it"
        );
    }
    provision.mount = flags.mount_options.unwrap_or_default();
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
            mount: MountOptions::default(),
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
        assert_eq!(applied.mount, MountOptions::default(), "nosuid and nodev");
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
}
