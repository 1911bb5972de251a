//! The FUSE INIT exchange as bytes: what the kernel offered and what the daemon accepted.
//!
//! A process that takes over a live connection replays the INIT request it saved to fuser
//! (see `service::handover`), but the kernel keeps what was accepted the first time, so the
//! features come from the saved reply. Also the one notification fuser 0.18 cannot send:
//! `FUSE_NOTIFY_RESEND`.

use fuser::InitFlags;

use super::fs::KernelFeatures;

/// `FUSE_INIT` opcode.
const OPCODE_INIT: u32 = 26;
/// `sizeof(struct fuse_in_header)`.
const IN_HEADER_LEN: usize = 40;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER_LEN: usize = 16;
/// `FUSE_NOTIFY_RESEND` (kernel 6.9, protocol 7.40).
const NOTIFY_RESEND: i32 = 7;

/// What one INIT request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitRequest {
    pub major: u32,
    pub minor: u32,
    /// The kernel's capabilities: `flags | flags2 << 32`.
    pub flags: u64,
}

impl InitRequest {
    /// Parses a whole INIT request as read from `/dev/fuse`; `None` if it is not one.
    pub fn parse(bytes: &[u8]) -> Option<InitRequest> {
        let word = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let len = word(0)? as usize;
        if len != bytes.len() || word(4)? != OPCODE_INIT {
            return None;
        }
        let body = IN_HEADER_LEN;
        let (major, minor, flags) = (word(body)?, word(body + 4)?, word(body + 12)?);
        // flags2 exists from protocol 7.36 on (FUSE_INIT_EXT).
        let flags2 = match minor >= 36 {
            true => word(body + 16).unwrap_or(0),
            false => 0,
        };
        Some(InitRequest {
            major,
            minor,
            flags: u64::from(flags) | (u64::from(flags2) << 32),
        })
    }

    /// Whether the kernel can requeue the requests a dead daemon had read (Linux 6.9+).
    /// Without it, a reader whose request died with the daemon waits forever.
    pub fn can_resend(&self) -> bool {
        self.flags & InitFlags::FUSE_HAS_RESEND.bits() != 0
    }
}

/// What an INIT reply accepted, as the file system uses it; `None` if it is not a reply
/// that accepted the connection.
pub fn accepted_features(reply: &[u8]) -> Option<KernelFeatures> {
    let word = |at: usize| -> Option<u32> {
        let b = reply.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let error = word(4)?;
    if word(0)? as usize != reply.len() || error != 0 {
        return None;
    }
    let body = OUT_HEADER_LEN;
    let flags = word(body + 12)?;
    let flags2 = word(body + 32).unwrap_or(0);
    let accepted = u64::from(flags) | (u64::from(flags2) << 32);
    let has = |flag: InitFlags| accepted & flag.bits() != 0;
    Some(KernelFeatures {
        passthrough: has(InitFlags::FUSE_PASSTHROUGH),
        direct_io_mmap: has(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP),
    })
}

/// The `FUSE_NOTIFY_RESEND` message: a bare `fuse_out_header` with the notify code as error.
pub fn resend_notification() -> [u8; 16] {
    let mut message = [0u8; 16];
    message[0..4].copy_from_slice(&16u32.to_le_bytes());
    message[4..8].copy_from_slice(&NOTIFY_RESEND.to_le_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(minor: u32, flags: u32, flags2: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; IN_HEADER_LEN + 64];
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..8].copy_from_slice(&OPCODE_INIT.to_le_bytes());
        bytes[40..44].copy_from_slice(&7u32.to_le_bytes());
        bytes[44..48].copy_from_slice(&minor.to_le_bytes());
        bytes[52..56].copy_from_slice(&flags.to_le_bytes());
        bytes[56..60].copy_from_slice(&flags2.to_le_bytes());
        bytes
    }

    #[test]
    fn resend_support_is_read_from_flags2() {
        // FUSE_HAS_RESEND is bit 39: bit 7 of flags2.
        let offered = InitRequest::parse(&request(45, 0, 1 << 7)).unwrap();
        assert!(offered.can_resend());
        assert_eq!((offered.major, offered.minor), (7, 45));
        assert!(!InitRequest::parse(&request(45, u32::MAX, 0))
            .unwrap()
            .can_resend());
        // Before 7.36 there is no flags2, whatever the bytes say.
        assert!(!InitRequest::parse(&request(35, 0, 1 << 7))
            .unwrap()
            .can_resend());
    }

    #[test]
    fn anything_but_a_whole_init_request_is_refused() {
        let good = request(45, 0, 0);
        assert!(
            InitRequest::parse(&good[..good.len() - 1]).is_none(),
            "length lies"
        );
        let mut other = good.clone();
        other[4] = 1; // LOOKUP
        assert!(InitRequest::parse(&other).is_none());
        assert!(InitRequest::parse(&[]).is_none());
    }

    #[test]
    fn features_come_from_the_accepted_reply() {
        let mut reply = vec![0u8; OUT_HEADER_LEN + 64];
        let len = reply.len() as u32;
        reply[0..4].copy_from_slice(&len.to_le_bytes());
        // FUSE_PASSTHROUGH is bit 37 (flags2 bit 5), DIRECT_IO_ALLOW_MMAP bit 36 (bit 4).
        reply[48..52].copy_from_slice(&(1u32 << 5).to_le_bytes());
        let features = accepted_features(&reply).unwrap();
        assert!(features.passthrough && !features.direct_io_mmap);
        reply[48..52].copy_from_slice(&(1u32 << 4).to_le_bytes());
        let features = accepted_features(&reply).unwrap();
        assert!(!features.passthrough && features.direct_io_mmap);
        reply[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(
            accepted_features(&reply).is_none(),
            "an error reply accepts nothing"
        );
    }

    #[test]
    fn the_resend_notification_is_a_bare_header() {
        let message = resend_notification();
        assert_eq!(u32::from_le_bytes(message[0..4].try_into().unwrap()), 16);
        assert_eq!(i32::from_le_bytes(message[4..8].try_into().unwrap()), 7);
        assert_eq!(&message[8..], &[0u8; 8]);
    }
}
