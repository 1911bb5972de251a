//! Box headers and a small editable tree of the moov: leaves borrow the original bytes, sizes are recomputed on write.

use std::borrow::Cow;

use super::bits::{fourcc_at, header_len, put_header, show, u32_at, u64_at, FourCC};
use super::error::Mp4Error;
use super::Limits;

/// A parsed box header. `size` includes the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: FourCC,
    pub header_len: u64,
    pub size: u64,
}

/// Parses the header at the start of `bytes`; `room` is how many bytes the box may span (to the end
/// of its parent or file). `Ok(None)` means `bytes` is too short to tell, although `room` allows it.
pub(crate) fn parse_header(bytes: &[u8], room: u64) -> Result<Option<Header>, String> {
    if room < 8 {
        return Err(format!(
            "{room} trailing bytes are too few for a box header"
        ));
    }
    let (Some(size32), Some(kind)) = (u32_at(bytes, 0), fourcc_at(bytes, 4)) else {
        return Ok(None);
    };
    let (header_len, size) = match size32 {
        0 => (8, room),
        1 => {
            if room < 16 {
                return Err(format!("box '{}' has a truncated 64-bit size", show(kind)));
            }
            match u64_at(bytes, 8) {
                Some(large) => (16, large),
                None => return Ok(None),
            }
        }
        n => (8, u64::from(n)),
    };
    if size < header_len {
        return Err(format!("box '{}' has impossible size {size}", show(kind)));
    }
    if size > room {
        return Err(format!(
            "box '{}' of {size} bytes overruns its {room}-byte container",
            show(kind)
        ));
    }
    Ok(Some(Header {
        kind,
        header_len,
        size,
    }))
}

/// Boxes whose children we may need to edit; everything else stays an opaque leaf.
const CONTAINERS: [FourCC; 6] = [*b"moov", *b"trak", *b"mdia", *b"minf", *b"stbl", *b"edts"];

/// One box of the moov tree.
#[derive(Clone, Debug)]
pub(crate) enum Node<'a> {
    Leaf {
        kind: FourCC,
        payload: Cow<'a, [u8]>,
    },
    Container {
        kind: FourCC,
        children: Vec<Node<'a>>,
    },
}

impl<'a> Node<'a> {
    pub(crate) fn leaf(kind: FourCC, payload: Vec<u8>) -> Self {
        Node::Leaf {
            kind,
            payload: Cow::Owned(payload),
        }
    }

    pub(crate) fn kind(&self) -> FourCC {
        match self {
            Node::Leaf { kind, .. } | Node::Container { kind, .. } => *kind,
        }
    }

    pub(crate) fn children(&self) -> &[Node<'a>] {
        match self {
            Node::Container { children, .. } => children,
            Node::Leaf { .. } => &[],
        }
    }

    pub(crate) fn child(&self, kind: &FourCC) -> Option<&Node<'a>> {
        self.children().iter().find(|c| &c.kind() == kind)
    }

    /// The payload of a leaf; containers have none.
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        match self {
            Node::Leaf { payload, .. } => Some(payload),
            Node::Container { .. } => None,
        }
    }

    /// Follows a path of child kinds, e.g. `[mdia, minf, stbl]`.
    pub(crate) fn path(&self, kinds: &[&FourCC]) -> Option<&Node<'a>> {
        kinds.iter().try_fold(self, |node, kind| node.child(kind))
    }

    fn payload_len(&self) -> u64 {
        match self {
            Node::Leaf { payload, .. } => payload.len() as u64,
            Node::Container { children, .. } => children
                .iter()
                .fold(0u64, |acc, c| acc.saturating_add(c.size())),
        }
    }

    /// Serialized size including the header.
    pub(crate) fn size(&self) -> u64 {
        let len = self.payload_len();
        len.saturating_add(header_len(len))
    }

    fn write(&self, out: &mut Vec<u8>) {
        put_header(out, self.kind(), self.payload_len());
        match self {
            Node::Leaf { payload, .. } => out.extend_from_slice(payload),
            Node::Container { children, .. } => children.iter().for_each(|c| c.write(out)),
        }
    }

    /// Serializes the box, refusing sizes that do not fit in memory.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, Mp4Error> {
        let size = usize::try_from(self.size())
            .map_err(|_| Mp4Error::Unsupported("rewritten moov does not fit in memory".into()))?;
        let mut out = Vec::with_capacity(size);
        self.write(&mut out);
        Ok(out)
    }

    /// Visits chunk-offset tables (stco/co64) in depth-first order.
    pub(crate) fn chunk_tables_mut<'n>(&'n mut self, out: &mut Vec<&'n mut Node<'a>>) {
        match self {
            Node::Container { children, .. } => {
                children.iter_mut().for_each(|c| c.chunk_tables_mut(out));
            }
            Node::Leaf { kind, .. } => {
                if kind == b"stco" || kind == b"co64" {
                    out.push(self);
                }
            }
        }
    }
}

/// Parses a whole moov box (header included).
pub(crate) fn parse_moov<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Node<'a>, Mp4Error> {
    let header = parse_header(bytes, bytes.len() as u64)
        .map_err(Mp4Error::Malformed)?
        .ok_or(Mp4Error::Truncated("moov header"))?;
    if &header.kind != b"moov" {
        return Err(Mp4Error::BadArgument(format!(
            "moov bytes start with '{}'",
            show(header.kind)
        )));
    }
    if header.size != bytes.len() as u64 {
        return Err(Mp4Error::BadArgument(
            "moov bytes do not match the moov box size".into(),
        ));
    }
    let body = bytes
        .get(8usize.max(header.header_len as usize)..)
        .unwrap_or(&[]);
    let mut budget = limits.max_moov_boxes;
    Ok(Node::Container {
        kind: header.kind,
        children: parse_children(body, 0, &mut budget, limits)?,
    })
}

fn parse_children<'a>(
    mut rest: &'a [u8],
    depth: usize,
    budget: &mut usize,
    limits: &Limits,
) -> Result<Vec<Node<'a>>, Mp4Error> {
    let mut out = Vec::new();
    // QuickTime may end a container with a 4-byte zero terminator; such tails are dropped.
    while rest.len() >= 8 {
        *budget = budget.checked_sub(1).ok_or(Mp4Error::TooLarge {
            what: "box count in moov",
            value: (limits.max_moov_boxes as u64).saturating_add(1),
            limit: limits.max_moov_boxes as u64,
        })?;
        let header = parse_header(rest, rest.len() as u64)
            .map_err(Mp4Error::Malformed)?
            .ok_or(Mp4Error::Truncated("box header"))?;
        let (this, tail) = rest
            .split_at_checked(header.size as usize)
            .ok_or(Mp4Error::Truncated("box"))?;
        let body = this.get(header.header_len as usize..).unwrap_or(&[]);
        out.push(parse_node(header.kind, body, depth + 1, budget, limits)?);
        rest = tail;
    }
    Ok(out)
}

fn parse_node<'a>(
    kind: FourCC,
    body: &'a [u8],
    depth: usize,
    budget: &mut usize,
    limits: &Limits,
) -> Result<Node<'a>, Mp4Error> {
    if CONTAINERS.contains(&kind) && depth < CONTAINERS.len() {
        let children = parse_children(body, depth, budget, limits)?;
        return Ok(Node::Container { kind, children });
    }
    Ok(Node::Leaf {
        kind,
        payload: Cow::Borrowed(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_variants() {
        let h = parse_header(&[0, 0, 0, 8, b'f', b'r', b'e', b'e'], 100).unwrap();
        assert_eq!(h.unwrap().size, 8);
        let h = parse_header(&[0, 0, 0, 0, b'm', b'd', b'a', b't'], 100).unwrap();
        assert_eq!(h.unwrap().size, 100);
        let big = [0, 0, 0, 1, b'm', b'd', b'a', b't', 0, 0, 0, 0, 0, 0, 0, 20];
        assert_eq!(parse_header(&big, 20).unwrap().unwrap().header_len, 16);
        assert_eq!(parse_header(&big[..12], 20).unwrap(), None);
        assert!(parse_header(&big, 19).is_err());
        assert!(parse_header(&[0, 0, 0, 7, b'a', b'b', b'c', b'd'], 9).is_err());
        assert!(parse_header(&[], 7).is_err());
    }

    #[test]
    fn moov_round_trips_and_shrinks_64_bit_headers() {
        let mut moov = vec![0, 0, 0, 0, b'm', b'o', b'o', b'v'];
        moov.extend_from_slice(&[
            0, 0, 0, 1, b'u', b'd', b't', b'a', 0, 0, 0, 0, 0, 0, 0, 18, 7, 7,
        ]);
        moov.extend_from_slice(&[0, 0, 0, 0]);
        let n = moov.len() as u32;
        moov[..4].copy_from_slice(&n.to_be_bytes());
        let tree = parse_moov(&moov, &Limits::default()).unwrap();
        let out = tree.encode().unwrap();
        assert_eq!(
            out,
            [0, 0, 0, 18, b'm', b'o', b'o', b'v', 0, 0, 0, 10, b'u', b'd', b't', b'a', 7, 7]
        );
    }
}
