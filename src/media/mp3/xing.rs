//! The Xing/Info frame and its LAME extension: read, and rewritten for a clip.

use super::frame::FrameHeader;

const FRAMES_FLAG: u32 = 1;
const BYTES_FLAG: u32 = 2;
const TOC_FLAG: u32 = 4;
const QUALITY_FLAG: u32 = 8;
pub const TOC_LEN: usize = 100;
/// The LAME extension's length, and where in it the fields a clip changes are.
const LAME_LEN: usize = 36;
const LAME_DELAY_AT: usize = 21;
const LAME_MUSIC_LENGTH_AT: usize = 28;
const LAME_MUSIC_CRC_AT: usize = 32;
const LAME_TAG_CRC_AT: usize = 34;

/// A Xing ("Xing": VBR) or Info (CBR) tag frame, and where its fields sit in it.
#[derive(Clone, Debug)]
pub struct XingTag {
    /// The whole tag frame as the original has it.
    pub frame: Vec<u8>,
    pub vbr: bool,
    pub frames: Option<u32>,
    pub bytes: Option<u32>,
    pub toc: Option<[u8; TOC_LEN]>,
    fields: Fields,
}

#[derive(Clone, Copy, Debug, Default)]
struct Fields {
    frames: Option<usize>,
    bytes: Option<usize>,
    toc: Option<usize>,
    lame: Option<usize>,
}

/// What a clip's tag frame says.
pub struct ClipTag<'a> {
    pub frames: u32,
    /// The clip's audio bytes, this tag frame included.
    pub bytes: u32,
    pub toc: &'a [u8; TOC_LEN],
    /// The encoder delay and padding, where the clip keeps the original's first or last frame.
    pub keeps_first: bool,
    pub keeps_last: bool,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl XingTag {
    /// The tag in `frame` (one whole frame with header `header`), if it has one.
    pub fn parse(frame: &[u8], header: &FrameHeader) -> Option<XingTag> {
        let at = header.side_info_end();
        let vbr = match frame.get(at..at + 4)? {
            b"Xing" => true,
            b"Info" => false,
            _ => return None,
        };
        let flags = u32_at(frame, at + 4)?;
        let mut fields = Fields::default();
        let mut pos = at + 8;
        for (flag, len, slot) in [
            (FRAMES_FLAG, 4, &mut fields.frames),
            (BYTES_FLAG, 4, &mut fields.bytes),
            (TOC_FLAG, TOC_LEN, &mut fields.toc),
            (QUALITY_FLAG, 4, &mut None),
        ] {
            if flags & flag != 0 {
                *slot = Some(pos);
                pos += len;
            }
        }
        if pos > frame.len() {
            return None;
        }
        fields.lame = frame
            .get(pos..pos + LAME_LEN)
            .filter(|lame| lame[..4].iter().all(u8::is_ascii_alphanumeric))
            .map(|_| pos);
        let toc = fields
            .toc
            .and_then(|at| frame.get(at..at + TOC_LEN)?.try_into().ok());
        Some(XingTag {
            frames: fields.frames.and_then(|at| u32_at(frame, at)),
            bytes: fields.bytes.and_then(|at| u32_at(frame, at)),
            toc,
            frame: frame.to_vec(),
            vbr,
            fields,
        })
    }

    /// The LAME extension's encoder delay and padding, in samples, where there is one.
    pub fn delay_padding(&self) -> Option<(u32, u32)> {
        let at = self.fields.lame? + LAME_DELAY_AT;
        let bytes = self.frame.get(at..at + 3)?;
        let packed = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        Some((packed >> 12, packed & 0xFFF))
    }

    /// Where the LAME extension's tag CRC is, which covers the frame's bytes before it.
    pub fn lame_crc_at(&self) -> Option<usize> {
        Some(self.fields.lame? + LAME_TAG_CRC_AT)
    }

    /// The byte offset, from the tag frame's start, of the point `fraction` (0 to 1) of the
    /// way through the stream's time, by the table of contents.
    pub fn seek(&self, fraction: f64) -> Option<u64> {
        let (toc, bytes) = (self.toc.as_ref()?, self.bytes?);
        let percent = (fraction * 100.0).clamp(0.0, 99.999);
        let index = percent as usize;
        let here = f64::from(toc[index]);
        let next = toc.get(index + 1).map_or(256.0, |&b| f64::from(b));
        let scaled = here + (next - here) * (percent - index as f64);
        Some((scaled / 256.0 * f64::from(bytes)) as u64)
    }

    /// The tag frame rewritten for a clip: counts, table of contents, and the LAME
    /// extension's delay and padding where they still apply, its lengths and CRCs.
    pub fn for_clip(&self, clip: &ClipTag) -> Vec<u8> {
        let mut frame = self.frame.clone();
        let put = |frame: &mut Vec<u8>, at: Option<usize>, value: &[u8]| {
            if let Some(at) = at {
                frame[at..at + value.len()].copy_from_slice(value);
            }
        };
        put(&mut frame, self.fields.frames, &clip.frames.to_be_bytes());
        put(&mut frame, self.fields.bytes, &clip.bytes.to_be_bytes());
        put(&mut frame, self.fields.toc, clip.toc);
        if let Some(lame) = self.fields.lame {
            rewrite_lame(&mut frame, lame, clip);
        }
        frame
    }
}

fn rewrite_lame(frame: &mut [u8], lame: usize, clip: &ClipTag) {
    let at = lame + LAME_DELAY_AT;
    let delay_padding = u32::from_be_bytes([0, frame[at], frame[at + 1], frame[at + 2]]);
    let delay = if clip.keeps_first {
        delay_padding >> 12
    } else {
        0
    };
    let padding = if clip.keeps_last {
        delay_padding & 0xFFF
    } else {
        0
    };
    let packed = ((delay << 12) | padding).to_be_bytes();
    frame[at..at + 3].copy_from_slice(&packed[1..]);
    let at = lame + LAME_MUSIC_LENGTH_AT;
    frame[at..at + 4].copy_from_slice(&clip.bytes.to_be_bytes());
    // The music CRC covers every audio byte of the clip, which a view never reads to make
    // its header: zero says "not given", as encoders that skip it write.
    let at = lame + LAME_MUSIC_CRC_AT;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let at = lame + LAME_TAG_CRC_AT;
    let crc = crc16_arc(&frame[..at]);
    frame[at..at + 2].copy_from_slice(&crc.to_be_bytes());
}

/// CRC-16/ARC (reflected 0x8005, initial 0), the LAME tag's checksum.
fn crc16_arc(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ u16::from(byte), |crc, _| match crc & 1 {
            1 => (crc >> 1) ^ 0xA001,
            _ => crc >> 1,
        })
    })
}

/// A table of contents for a clip from the offsets (from the tag frame's start) of its
/// frames: entry `i` is the byte position, in 256ths, of the frame `i` percent in.
pub fn toc_of(frame_offsets: &[u64], total_bytes: u64) -> [u8; TOC_LEN] {
    let mut toc = [0u8; TOC_LEN];
    let count = frame_offsets.len();
    if count == 0 || total_bytes == 0 {
        return linear_toc();
    }
    for (i, entry) in toc.iter_mut().enumerate() {
        let offset = frame_offsets[(i * count / TOC_LEN).min(count - 1)];
        *entry = (offset.saturating_mul(256) / total_bytes).min(255) as u8;
    }
    toc
}

/// The table of contents of a constant-bitrate stream.
pub fn linear_toc() -> [u8; TOC_LEN] {
    std::array::from_fn(|i| (i * 256 / TOC_LEN) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lame_checksum_is_crc16_arc() {
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
    }

    #[test]
    fn tables_of_contents_rise_with_the_offsets() {
        let offsets: Vec<u64> = (0..1000).map(|i| i * 100).collect();
        let toc = toc_of(&offsets, 100_000);
        assert_eq!(toc[0], 0);
        assert_eq!(toc[50], 128);
        assert!(toc.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(linear_toc()[50], 128);
    }
}
