//! The kernel's NBD client, driven directly: the only module that issues
//! NBD ioctls.
//!
//! [`NbdDevice::connect`] hands the kernel one end of a socket pair and
//! configures `/dev/nbdN` (block size, size, flags, timeout); the caller
//! serves the other end with zeroblk's NBD transmission phase. The kernel
//! speaks the transmission phase only (no negotiation) with simple
//! replies. `NBD_DO_IT` blocks until the device is disconnected, so it
//! runs on a thread of its own.
//!
//! A connected device grows with `NBD_SET_SIZE_BLOCKS` ([`NbdDevice::grow`]):
//! the driver takes the ioctl while `NBD_DO_IT` waits (it does not hold
//! the device's configuration lock meanwhile), and on a running device it
//! sets the disk's capacity and tells the block layer at once.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

mod ioctls {
    // _IO(0xab, n): the NBD ioctls take an integer argument, or none.
    nix::ioctl_write_int_bad!(set_sock, 0xab00);
    nix::ioctl_write_int_bad!(set_blksize, 0xab01);
    nix::ioctl_none_bad!(do_it, 0xab03);
    nix::ioctl_none_bad!(clear_sock, 0xab04);
    nix::ioctl_write_int_bad!(set_size_blocks, 0xab07);
    nix::ioctl_none_bad!(disconnect, 0xab08);
    nix::ioctl_write_int_bad!(set_timeout, 0xab09);
    nix::ioctl_write_int_bad!(set_flags, 0xab0a);
}

/// What the kernel needs to know about the export.
#[derive(Debug, Clone, Copy)]
pub struct DeviceConfig {
    pub size: u64,
    pub block_size: u64,
    /// Transmission flags, as the NBD handshake would advertise them.
    pub flags: u16,
    /// Seconds before the kernel gives up on a request.
    pub timeout_secs: u32,
}

/// A connected `/dev/nbdN`.
pub struct NbdDevice {
    path: PathBuf,
    control: File,
    block_size: u64,
    worker: Option<JoinHandle<io::Result<()>>>,
}

/// The first `/dev/nbdN` that no one uses, if the nbd driver is loaded.
pub fn find_free_device() -> Option<PathBuf> {
    (0..256)
        .map(|n| PathBuf::from(format!("/dev/nbd{n}")))
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            path.exists()
                && !Path::new(&format!("/sys/block/{name}/pid")).exists()
                && size_is_zero(name)
        })
}

fn size_is_zero(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/block/{name}/size")).is_ok_and(|s| s.trim() == "0")
}

/// Whether the kernel has the NBD driver (`/dev/nbd0`).
pub fn available() -> bool {
    Path::new("/dev/nbd0").exists()
}

impl NbdDevice {
    /// Configures `path` to talk over `socket`, and starts the kernel's
    /// request loop. Returns once the device has its size.
    pub fn connect(path: &Path, socket: OwnedFd, config: DeviceConfig) -> io::Result<NbdDevice> {
        let control = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = control.as_raw_fd();
        let blocks = config.size / config.block_size;
        // SAFETY: each call passes an open /dev/nbdN descriptor and an
        // integer argument, which is all these ioctls read.
        unsafe {
            ioctls::set_blksize(fd, ioctl_int(config.block_size)?)?;
            ioctls::set_size_blocks(fd, ioctl_int(blocks)?)?;
            ioctls::set_flags(fd, libc::c_int::from(config.flags))?;
            ioctls::set_timeout(fd, config.timeout_secs as libc::c_int)?;
            ioctls::set_sock(fd, socket.as_raw_fd())?;
        }
        let worker_control = control.try_clone()?;
        let worker = std::thread::Builder::new()
            .name("nbd-do-it".into())
            .spawn(move || {
                let _socket = socket;
                // SAFETY: NBD_DO_IT takes no argument; it blocks until the
                // device is disconnected, on a descriptor this thread owns.
                unsafe { ioctls::do_it(worker_control.as_raw_fd()) }
                    .map(drop)
                    .map_err(io::Error::from)
            })?;
        Ok(NbdDevice {
            path: path.to_path_buf(),
            control,
            block_size: config.block_size,
            worker: Some(worker),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Grows the connected device to `new_size` bytes (a multiple of its
    /// block size): the export must have that size already, since the
    /// kernel sends requests up to it at once.
    pub fn grow(&self, new_size: u64) -> io::Result<()> {
        let blocks = ioctl_int(new_size / self.block_size)?;
        // SAFETY: NBD_SET_SIZE_BLOCKS reads only its integer argument, on
        // an open /dev/nbdN descriptor.
        unsafe { ioctls::set_size_blocks(self.control.as_raw_fd(), blocks) }?;
        Ok(())
    }

    /// Asks the kernel to disconnect (it sends NBD_CMD_DISC after the
    /// requests in flight) and waits for its request loop to end.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.request_disconnect();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        // SAFETY: NBD_CLEAR_SOCK takes no argument.
        unsafe { ioctls::clear_sock(self.control.as_raw_fd()) }.map_err(io::Error::from)?;
        Ok(())
    }

    fn request_disconnect(&self) {
        // SAFETY: NBD_DISCONNECT takes no argument.
        if let Err(error) = unsafe { ioctls::disconnect(self.control.as_raw_fd()) } {
            tracing::warn!(device = %self.path.display(), %error, "NBD disconnect failed");
        }
    }
}

/// `value` as the integer argument of an NBD ioctl.
fn ioctl_int(value: u64) -> io::Result<libc::c_int> {
    libc::c_int::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.request_disconnect();
        }
    }
}
