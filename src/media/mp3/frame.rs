//! MPEG-1/2/2.5 Layer III frame headers, and finding a run of frames in bytes.

/// Frames in a row, each where the one before says, that make a sync trustworthy: a stray
/// `FF Fx` inside audio data rarely chains this far.
const CHAIN: usize = 3;

const MPEG1_KBPS: [u32; 15] = [
    0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
const MPEG2_KBPS: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
const MPEG1_RATES: [u32; 3] = [44100, 48000, 32000];

/// Which MPEG audio version a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Mpeg1,
    Mpeg2,
    Mpeg25,
}

/// One Layer III frame header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: Version,
    pub bitrate_kbps: u32,
    pub sample_rate: u32,
    pub padding: bool,
    pub mono: bool,
    /// A CRC-16 follows the four header bytes.
    pub protected: bool,
}

impl FrameHeader {
    /// Decodes four header bytes; `None` for anything but a Layer III header with a known
    /// bitrate (free format has no length in its header) and sample rate.
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let &[b0, b1, b2, b3, ..] = bytes else {
            return None;
        };
        if b0 != 0xFF || b1 & 0xE0 != 0xE0 || (b1 >> 1) & 3 != 1 {
            return None;
        }
        let version = match (b1 >> 3) & 3 {
            0 => Version::Mpeg25,
            2 => Version::Mpeg2,
            3 => Version::Mpeg1,
            _ => return None,
        };
        let (bitrate_index, rate_index) = ((b2 >> 4) as usize, ((b2 >> 2) & 3) as usize);
        if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
            return None;
        }
        let (kbps, divisor) = match version {
            Version::Mpeg1 => (MPEG1_KBPS[bitrate_index], 1),
            Version::Mpeg2 => (MPEG2_KBPS[bitrate_index], 2),
            Version::Mpeg25 => (MPEG2_KBPS[bitrate_index], 4),
        };
        Some(FrameHeader {
            version,
            bitrate_kbps: kbps,
            sample_rate: MPEG1_RATES[rate_index] / divisor,
            padding: (b2 >> 1) & 1 == 1,
            mono: b3 >> 6 == 3,
            protected: b1 & 1 == 0,
        })
    }

    /// Decoded samples per channel in one frame.
    pub fn samples(&self) -> u32 {
        match self.version {
            Version::Mpeg1 => 1152,
            Version::Mpeg2 | Version::Mpeg25 => 576,
        }
    }

    /// The whole frame's length in bytes, header included.
    pub fn frame_len(&self) -> usize {
        let bytes_per_frame = self.samples() / 8 * self.bitrate_kbps * 1000 / self.sample_rate;
        bytes_per_frame as usize + usize::from(self.padding)
    }

    /// Where a Xing/Info tag starts in this frame: after the header, its CRC and side info.
    pub fn side_info_end(&self) -> usize {
        let side_info = match (self.version, self.mono) {
            (Version::Mpeg1, true) => 17,
            (Version::Mpeg1, false) => 32,
            (_, true) => 9,
            (_, false) => 17,
        };
        4 + if self.protected { 2 } else { 0 } + side_info
    }

    /// Whether `other` can belong to the same stream: a stream keeps its version, sample
    /// rate and channel count while its bitrate and padding change frame to frame.
    pub fn same_stream(&self, other: &FrameHeader) -> bool {
        self.version == other.version
            && self.sample_rate == other.sample_rate
            && self.mono == other.mono
    }
}

/// The first offset at or after `from` in `bytes` where a frame of `stream` starts and
/// `CHAIN` frames follow one another (see [`chains`]), or run to `bytes`' end when `at_end` says that is the
/// end of the audio. Scans at most `bytes.len()` offsets: the caller bounds the window.
pub fn find_sync(bytes: &[u8], from: usize, stream: &FrameHeader, at_end: bool) -> Option<usize> {
    (from..bytes.len()).find(|&at| chains(bytes, at, stream, at_end))
}

pub fn chains(bytes: &[u8], mut at: usize, stream: &FrameHeader, at_end: bool) -> bool {
    for _ in 0..CHAIN {
        let Some(header) = bytes.get(at..).and_then(FrameHeader::parse) else {
            return at_end && at == bytes.len();
        };
        if !header.same_stream(stream) {
            return false;
        }
        at += header.frame_len();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_decode_with_their_lengths() {
        // MPEG-1 Layer III, 128 kb/s, 44.1 kHz, no CRC, joint stereo.
        let h = FrameHeader::parse(&[0xFF, 0xFB, 0x90, 0x64]).unwrap();
        assert_eq!(
            (h.version, h.bitrate_kbps, h.sample_rate),
            (Version::Mpeg1, 128, 44100)
        );
        assert_eq!(h.frame_len(), 417);
        assert_eq!(h.side_info_end(), 36);
        let padded = FrameHeader::parse(&[0xFF, 0xFB, 0x92, 0x64]).unwrap();
        assert_eq!(padded.frame_len(), 418);
        // MPEG-2 Layer III, 64 kb/s, 22.05 kHz, mono.
        let h = FrameHeader::parse(&[0xFF, 0xF3, 0x80, 0xC4]).unwrap();
        assert_eq!(
            (h.version, h.sample_rate, h.samples()),
            (Version::Mpeg2, 22050, 576)
        );
        assert_eq!(h.frame_len(), 208);
        assert_eq!(h.side_info_end(), 13);
        // MPEG-2.5 at 8 kHz, 8 kb/s.
        let h = FrameHeader::parse(&[0xFF, 0xE3, 0x18, 0xC4]).unwrap();
        assert_eq!(
            (h.version, h.sample_rate, h.frame_len()),
            (Version::Mpeg25, 8000, 72)
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        for bytes in [
            [0xFF, 0xFB, 0x00, 0x64], // free format
            [0xFF, 0xFB, 0xF0, 0x64], // bad bitrate
            [0xFF, 0xFB, 0x9C, 0x64], // reserved sample rate
            [0xFF, 0xFD, 0x90, 0x64], // layer II
            [0xFF, 0xEB, 0x90, 0x64], // reserved version
            [0xFE, 0xFB, 0x90, 0x64],
        ] {
            assert!(FrameHeader::parse(&bytes).is_none(), "{bytes:x?}");
        }
        assert!(FrameHeader::parse(&[0xFF, 0xFB]).is_none());
    }

    #[test]
    fn a_sync_needs_a_chain_of_frames() {
        let header = [0xFF, 0xFB, 0x90, 0x64];
        let stream = FrameHeader::parse(&header).unwrap();
        let mut bytes = vec![0u8; 10];
        bytes.extend_from_slice(&[0xFF, 0xFB, 0x90]); // a stray sync
        let start = bytes.len();
        for _ in 0..3 {
            bytes.extend_from_slice(&header);
            bytes.resize(bytes.len() + 413, 0);
        }
        assert_eq!(find_sync(&bytes, 0, &stream, false), Some(start));
        assert_eq!(find_sync(&bytes, start + 1, &stream, false), None);
        assert_eq!(
            find_sync(&bytes, start + 417, &stream, true),
            Some(start + 417)
        );
    }
}
