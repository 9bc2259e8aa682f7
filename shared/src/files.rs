//! Reading a file named by someone who may not be trusted: only regular files,
//! never more than a stated size, and never blocking on a FIFO or a device.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most any configuration file may hold.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The most a certificate chain, key, CA bundle or token file may hold.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads `path` whole, refusing anything that is not a regular file (a FIFO, a
/// device such as `/dev/zero`, a socket, a directory) or that holds more than
/// `max` bytes. The open itself cannot block: `O_NONBLOCK` makes opening a FIFO
/// return at once, and the file type is checked on the opened descriptor, so a
/// path swapped between a check and the open gains nothing.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (FIFOs, devices, sockets and directories are refused)",
        ));
    }
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes is more than the {max} bytes allowed", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file grew past the {max} bytes allowed while it was read"),
        ));
    }
    Ok(bytes)
}

/// [`read_regular`] for text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        assert!(read_regular(Path::new("/dev/zero"), 100).is_err());
        assert!(read_regular(Path::new("/tmp"), 100).is_err());
        let dir = std::env::temp_dir().join(format!("sy-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = read_regular(&fifo, 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        assert!(read_regular(&big, 100).is_err());
        assert_eq!(read_regular(&big, 101).unwrap().len(), 101);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
