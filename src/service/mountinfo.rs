//! The kernel's table of mounts (`/proc/self/mountinfo`), read and decoded.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One line of mountinfo: what is mounted where.
pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Every mount, in mountinfo's order (later lines stack on earlier ones).
pub fn mounts() -> Vec<MountEntry> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let device = fields.nth(2)?.to_string();
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.nth(1)?)));
    let fstype = after.split(' ').next()?.to_string();
    Some(MountEntry {
        device,
        mount_point,
        fstype,
    })
}

/// Whether something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

/// Whether a FUSE file system is mounted exactly at `path`.
pub fn is_fuse_mount_point(path: &Path) -> bool {
    mounts()
        .iter()
        .any(|m| m.mount_point == path && m.fstype.starts_with("fuse"))
}

/// The `major:minor` of the topmost mount at `path`.
pub fn mount_device(path: &Path) -> Option<String> {
    let wanted = path.as_os_str().as_bytes();
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.as_os_str().as_bytes() == wanted)
        .map(|m| m.device)
        .next_back()
}

/// The ston-fs mount that contains `path` (an absolute path): the longest mount point.
pub fn ston_fs_mount_of(path: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype == "fuse.ston-fs" && path.starts_with(&m.mount_point))
        .map(|m| m.mount_point)
        .max_by_key(|p| p.as_os_str().len())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape("/plain"), b"/plain");
    }

    #[test]
    fn lines_are_parsed() {
        let line = "36 35 0:52 / /mnt/a\\040b rw,nosuid - fuse.ston-fs http://x rw,user_id=0";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.device, "0:52");
        assert_eq!(entry.mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(entry.fstype, "fuse.ston-fs");
    }
}
