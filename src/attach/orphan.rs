//! Devices whose daemon died: taking one back (`attach --recover`), or
//! removing it (`detach`). With ublk's user recovery, the kernel holds a
//! dead daemon's requests until a new daemon takes the device back; until
//! then, anything that touches the device waits. The registry record says
//! which device a volume had.

use std::path::Path;

use super::AttachError;
use super::registry::{self, Access, AttachRecord};

/// The ublk device id the dead daemon of `name` attached as `access` left
/// behind, to be taken back by a new daemon.
pub fn device_to_recover(dir: &Path, name: &str, access: Access) -> Result<u32, AttachError> {
    let record = registry::find(dir, &registry::key(name, access))
        .map_err(|source| AttachError::Io {
            what: format!("reading the registry in {}", dir.display()),
            source,
        })?
        .ok_or_else(|| AttachError::NothingToRecover(name.to_string()))?;
    if record.daemon_alive() {
        return Err(AttachError::RecoverLive {
            name: record.name,
            pid: record.pid,
        });
    }
    crate::ublk::device_id(&record.device).ok_or(AttachError::RecoverNotUblk(record.device))
}

/// Removes what a dead daemon left: its ublk device (whose requests would
/// otherwise wait forever for `attach --recover`) and its record. Writes it
/// acknowledged are in the cache's write-back log; the next attach replays
/// them.
pub fn remove_dead(dir: &Path, record: &AttachRecord) -> Result<(), AttachError> {
    if let Some(dev_id) = crate::ublk::device_id(&record.device) {
        crate::ublk::remove_orphan(dev_id).map_err(|failure| AttachError::OrphanStays {
            name: record.name.clone(),
            pid: record.pid,
            device: record.device.clone(),
            failure,
        })?;
    }
    registry::remove(dir, &record.key());
    Ok(())
}
