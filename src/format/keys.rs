//! Where each object lives in the store (relative to the store's prefix).

use super::ObjectId;

pub const VOLUMES_DIR: &str = "volumes";

pub fn chunk(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{hex}", &hex[..2])
}

pub fn pack(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}", &hex[..2])
}

pub fn page(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("pages/{}/{hex}", &hex[..2])
}

pub fn volume_dir(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}")
}

pub fn superblock(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}/superblock.json")
}

pub fn head(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}/head")
}

/// A named settings file of a volume, e.g. `provision.json`.
pub fn volume_file(name: &str, file: &str) -> String {
    format!("{VOLUMES_DIR}/{name}/{file}")
}

/// The lease of whoever runs `zeroblk gc`: one at a time per store.
pub const GC_LEASE: &str = "gc/lease";

pub fn root(name: &str, generation: u64) -> String {
    format!("{VOLUMES_DIR}/{name}/roots/{generation:020}")
}

pub fn snapshots_dir(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}/snapshots/")
}

pub fn snapshot(name: &str, snapshot: &str) -> String {
    format!("{VOLUMES_DIR}/{name}/snapshots/{snapshot}")
}

/// Checks a volume name: it becomes part of object keys and file names.
pub fn validate_volume_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(ok_char)
        || name.starts_with('.')
        || name.starts_with('-')
    {
        return Err(format!(
            "`{name}` is not a volume name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// Checks a snapshot name: the same rules as a volume's.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    validate_volume_name(name).map_err(|_| {
        format!(
            "`{name}` is not a snapshot name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        let id = ObjectId([0xab; 32]);
        assert!(chunk(&id).starts_with("chunks/ab/abab"));
        assert!(pack(&id).starts_with("packs/ab/abab"));
        assert_eq!(root("v", 7), "volumes/v/roots/00000000000000000007");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_volume_name("default").is_ok());
        assert!(validate_volume_name("db-01.data_x").is_ok());
        for bad in ["", "a/b", "..", "-x", "x y", &"n".repeat(65)] {
            assert!(validate_volume_name(bad).is_err(), "{bad}");
        }
    }
}
