//! Incremental walk over top-level boxes: the caller fetches, the scan says which bytes it needs next.

use std::ops::Range;

use super::bits::{show, FourCC};
use super::tree::{parse_header, Header};
use super::Limits;

/// Bytes asked for when only the next box header is needed: one small read.
const HEADER_WINDOW: u64 = 64 * 1024;

/// A top-level box and its absolute byte range in the original file (header included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopBox {
    /// Box type, e.g. `*b"mdat"`.
    pub kind: [u8; 4],
    /// Absolute byte range of the whole box.
    pub range: Range<u64>,
}

/// What kind of MP4 the file is, as far as the views are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// moov before mdat: serve unchanged; still trimmable with these boxes.
    FastStart {
        /// Every top-level box, in file order, tiling the file.
        boxes: Vec<TopBox>,
        /// Absolute range of the moov box.
        moov: Range<u64>,
    },
    /// Has movie fragments (moof): serve unchanged.
    Fragmented,
    /// moov after mdat: needs [`super::faststart`].
    MoovAtEnd {
        /// Every top-level box, in file order, tiling the file.
        boxes: Vec<TopBox>,
        /// Absolute range of the moov box.
        moov: Range<u64>,
    },
    /// Not an MP4 we handle; the reason fits one log line.
    Unsupported(String),
}

impl Layout {
    /// Box list and moov range for any layout that has them (faststart or not).
    pub fn moov(&self) -> Option<(&[TopBox], Range<u64>)> {
        match self {
            Layout::FastStart { boxes, moov } | Layout::MoovAtEnd { boxes, moov } => {
                Some((boxes, moov.clone()))
            }
            Layout::Fragmented | Layout::Unsupported(_) => None,
        }
    }
}

/// What the caller should do after a [`TopLevelScan::feed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStep {
    /// Fetch at least these bytes and feed them (feeding a larger range is fine).
    Need(Range<u64>),
    /// The scan is over.
    Done(Layout),
}

/// Incremental scan of the top-level boxes of one file.
#[derive(Clone, Debug)]
pub struct TopLevelScan {
    file_size: u64,
    limits: Limits,
    pos: u64,
    boxes: Vec<TopBox>,
    done: Option<Layout>,
}

impl TopLevelScan {
    /// Starts a scan of a file of `file_size` bytes.
    pub fn new(file_size: u64, limits: &Limits) -> Self {
        TopLevelScan {
            file_size,
            limits: limits.clone(),
            pos: 0,
            boxes: Vec::new(),
            done: None,
        }
    }

    /// The first range to fetch (any larger prefix of the file works too).
    pub fn first_request(&self) -> Range<u64> {
        0..self.file_size.min(HEADER_WINDOW)
    }

    /// Feeds bytes that start at `offset` in the file and says what to do next.
    pub fn feed(&mut self, offset: u64, bytes: &[u8]) -> ScanStep {
        if let Some(layout) = &self.done {
            return ScanStep::Done(layout.clone());
        }
        let step = self.advance(offset, bytes);
        if let ScanStep::Done(layout) = &step {
            self.done = Some(layout.clone());
        }
        step
    }

    fn advance(&mut self, offset: u64, bytes: &[u8]) -> ScanStep {
        loop {
            if self.pos >= self.file_size {
                return ScanStep::Done(self.classify());
            }
            let room = self.file_size - self.pos;
            let window = window_at(offset, bytes, self.pos);
            match parse_header(window, room) {
                Err(reason) => return self.unsupported(reason),
                Ok(None) => return ScanStep::Need(self.request()),
                Ok(Some(header)) => {
                    if let Some(layout) = self.accept(header) {
                        return ScanStep::Done(layout);
                    }
                }
            }
        }
    }

    fn unsupported(&self, reason: String) -> ScanStep {
        ScanStep::Done(Layout::Unsupported(format!(
            "at byte {}: {reason}",
            self.pos
        )))
    }

    /// Records one box; returns a final layout when the box decides it.
    fn accept(&mut self, h: Header) -> Option<Layout> {
        if !h.kind.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Some(Layout::Unsupported(format!(
                "not an MP4: box type '{}' at byte {}",
                show(h.kind),
                self.pos
            )));
        }
        if self.boxes.is_empty() && !FIRST_BOXES.contains(&h.kind) {
            return Some(Layout::Unsupported(format!(
                "not an MP4: first box is '{}'",
                show(h.kind)
            )));
        }
        if FRAGMENT_BOXES.contains(&h.kind) {
            return Some(Layout::Fragmented);
        }
        if let Some(reason) = self.refuse(&h) {
            return Some(Layout::Unsupported(reason));
        }
        let end = self.pos + h.size;
        self.boxes.push(TopBox {
            kind: h.kind,
            range: self.pos..end,
        });
        self.pos = end;
        None
    }

    fn refuse(&self, h: &Header) -> Option<String> {
        if self.boxes.len() >= self.limits.max_top_level_boxes {
            return Some(format!(
                "more than {} top-level boxes",
                self.limits.max_top_level_boxes
            ));
        }
        if &h.kind == b"moov" {
            if self.boxes.iter().any(|b| &b.kind == b"moov") {
                return Some("two moov boxes".into());
            }
            if h.size > self.limits.max_moov_size {
                return Some(format!(
                    "moov is {} bytes, above the limit of {}",
                    h.size, self.limits.max_moov_size
                ));
            }
        }
        None
    }

    /// Right after an mdat with no moov seen yet, the moov is probably the tail: ask for all of it.
    fn request(&self) -> Range<u64> {
        let after_mdat = self.boxes.last().is_some_and(|b| &b.kind == b"mdat");
        let seen_moov = self.boxes.iter().any(|b| &b.kind == b"moov");
        let room = self.file_size - self.pos;
        let tail_fits = room <= self.limits.max_moov_size.saturating_add(HEADER_WINDOW);
        if after_mdat && !seen_moov && tail_fits {
            return self.pos..self.file_size;
        }
        self.pos..self.file_size.min(self.pos.saturating_add(HEADER_WINDOW))
    }

    fn classify(&self) -> Layout {
        let index = |kind: &FourCC| self.boxes.iter().position(|b| &b.kind == kind);
        let (Some(moov_at), Some(mdat_at)) = (index(b"moov"), index(b"mdat")) else {
            let missing = if index(b"moov").is_none() {
                "moov"
            } else {
                "mdat"
            };
            return Layout::Unsupported(format!("no {missing} box"));
        };
        let boxes = self.boxes.clone();
        let moov = boxes.get(moov_at).map_or(0..0, |b| b.range.clone());
        if moov_at < mdat_at {
            Layout::FastStart { boxes, moov }
        } else {
            Layout::MoovAtEnd { boxes, moov }
        }
    }
}

/// Box types a plausible MP4/QuickTime file may start with.
const FIRST_BOXES: [FourCC; 8] = [
    *b"ftyp", *b"free", *b"skip", *b"wide", *b"pdin", *b"uuid", *b"moov", *b"mdat",
];

/// Top-level boxes that only fragmented files have.
const FRAGMENT_BOXES: [FourCC; 4] = [*b"moof", *b"styp", *b"sidx", *b"mfra"];

/// The part of `bytes` (which starts at file offset `offset`) from `pos` on; empty if not covered.
fn window_at(offset: u64, bytes: &[u8], pos: u64) -> &[u8] {
    pos.checked_sub(offset)
        .and_then(|skip| usize::try_from(skip).ok())
        .and_then(|skip| bytes.get(skip..))
        .unwrap_or(&[])
}

/// Checks that caller-supplied boxes tile the file and agree with the moov range and bytes.
pub(crate) fn check_layout(
    boxes: &[TopBox],
    moov: &Range<u64>,
    moov_bytes: &[u8],
    file_size: u64,
    limits: &Limits,
) -> Result<(), super::Mp4Error> {
    use super::Mp4Error::{BadArgument, TooLarge};
    if boxes.len() > limits.max_top_level_boxes {
        return Err(TooLarge {
            what: "top-level box count",
            value: boxes.len() as u64,
            limit: limits.max_top_level_boxes as u64,
        });
    }
    let mut pos = 0;
    for b in boxes {
        if b.range.start != pos || b.range.end <= b.range.start {
            return Err(BadArgument("top-level boxes do not tile the file".into()));
        }
        pos = b.range.end;
    }
    if pos != file_size {
        return Err(BadArgument(
            "top-level boxes do not end at the file size".into(),
        ));
    }
    if !boxes.iter().any(|b| &b.kind == b"moov" && &b.range == moov) {
        return Err(BadArgument("moov range is not a top-level moov box".into()));
    }
    let len = moov.end - moov.start;
    if len > limits.max_moov_size {
        return Err(TooLarge {
            what: "moov size",
            value: len,
            limit: limits.max_moov_size,
        });
    }
    if moov_bytes.len() as u64 != len {
        return Err(BadArgument("moov bytes do not match the moov range".into()));
    }
    Ok(())
}
