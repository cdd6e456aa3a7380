//! How the daemon provisions its device: it runs `zeroblk provision-hook`
//! (this same binary) in the host's mount namespace, so that the mount is
//! the user's and never the daemon's own (see [`super::namespace`]).

use std::path::Path;

use super::AttachError;
use super::namespace::host_command;
use crate::provision::Provision;

/// Formats (only if empty), mounts, makes the subvolumes and exports.
pub async fn bring_up(device: &str, name: &str, provision: &Provision) -> Result<(), AttachError> {
    let spec = serde_json::to_string(provision).expect("a provision serializes");
    run(vec![
        "up".into(),
        "--device".into(),
        device.into(),
        "--label".into(),
        name.into(),
        "--spec".into(),
        spec,
        // Not part of the spec, which is what the volume remembers.
        "--lift".into(),
        provision.lifted.to_string(),
    ])
    .await
}

/// Unexports and unmounts, and checks nothing else mounts the device.
pub async fn bring_down(device: &str, provision: Option<&Provision>) -> Result<(), AttachError> {
    let mut args = vec!["down".to_string(), "--device".into(), device.into()];
    if let Some(provision) = provision {
        args.push("--spec".into());
        args.push(serde_json::to_string(provision).expect("a provision serializes"));
    }
    run(args).await
}

/// Grows the filesystem mounted at `mount_point` to fill its device,
/// which just grew.
pub async fn grow_filesystem(mount_point: &Path) -> Result<(), AttachError> {
    run(vec![
        "grow".into(),
        "--mount-point".into(),
        mount_point.display().to_string(),
    ])
    .await
}

async fn run(args: Vec<String>) -> Result<(), AttachError> {
    let exe = std::env::current_exe().map_err(|source| AttachError::Io {
        what: "finding the zeroblk binary".into(),
        source,
    })?;
    let output = crate::blocking::run(move || {
        host_command(&exe)
            .arg("provision-hook")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .map_err(|source| AttachError::Io {
        what: "running zeroblk provision-hook".into(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!("provision: {line}");
    }
    if output.status.success() {
        return Ok(());
    }
    let reason = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("it failed without a message")
        .trim_start_matches("zeroblk: ");
    Err(AttachError::Provision(reason.to_string()))
}
