//! AMF0, the encoding of FLV script tags: read with bounds on depth and count, and written back.

use crate::media::clip_error::ClipError;

/// Nesting accepted in a script tag; real metadata nests two or three deep.
const MAX_DEPTH: usize = 16;
/// Values accepted in one script tag, all levels together.
pub const MAX_VALUES: usize = 1 << 19;
const OBJECT_END: [u8; 3] = [0, 0, 9];

/// One AMF0 value.
#[derive(Clone, Debug, PartialEq)]
pub enum Amf {
    Number(f64),
    Bool(bool),
    String(Vec<u8>),
    Object(Vec<(Vec<u8>, Amf)>),
    Null,
    Undefined,
    /// An associative array: a count hint, then named values like an object.
    EcmaArray(Vec<(Vec<u8>, Amf)>),
    StrictArray(Vec<Amf>),
    Date(f64, i16),
    LongString(Vec<u8>),
}

impl Amf {
    /// The named member of an object or associative array.
    pub fn get(&self, name: &str) -> Option<&Amf> {
        self.members()?
            .iter()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Amf> {
        self.members_mut()?
            .iter_mut()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value)
    }

    fn members(&self) -> Option<&Vec<(Vec<u8>, Amf)>> {
        match self {
            Amf::Object(members) | Amf::EcmaArray(members) => Some(members),
            _ => None,
        }
    }

    fn members_mut(&mut self) -> Option<&mut Vec<(Vec<u8>, Amf)>> {
        match self {
            Amf::Object(members) | Amf::EcmaArray(members) => Some(members),
            _ => None,
        }
    }

    pub fn number(&self) -> Option<f64> {
        match self {
            Amf::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Sets a member that is a number, leaving out members the original does not have.
    pub fn set_number(&mut self, name: &str, value: f64) {
        if let Some(Amf::Number(n)) = self.get_mut(name) {
            *n = value;
        }
    }
}

/// Reads AMF0 values from a script tag's body.
pub struct AmfReader<'a> {
    data: &'a [u8],
    pos: usize,
    values: usize,
}

fn truncated() -> ClipError {
    ClipError::malformed("FLV script tag: truncated AMF0")
}

impl<'a> AmfReader<'a> {
    pub fn new(data: &'a [u8]) -> AmfReader<'a> {
        AmfReader {
            data,
            pos: 0,
            values: 0,
        }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ClipError> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.data.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<usize, ClipError> {
        let b = self.bytes(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<usize, ClipError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn f64(&mut self) -> Result<f64, ClipError> {
        let b: [u8; 8] = self.bytes(8)?.try_into().map_err(|_| truncated())?;
        Ok(f64::from_be_bytes(b))
    }

    /// The next value; counts and lengths are checked against the bytes left before use.
    pub fn value(&mut self, depth: usize) -> Result<Amf, ClipError> {
        self.values += 1;
        ClipError::check("AMF0 values", self.values as u64, MAX_VALUES as u64)?;
        ClipError::check("AMF0 nesting", depth as u64, MAX_DEPTH as u64)?;
        let marker = self.bytes(1)?[0];
        Ok(match marker {
            0 => Amf::Number(self.f64()?),
            1 => Amf::Bool(self.bytes(1)?[0] != 0),
            2 => {
                let len = self.u16()?;
                Amf::String(self.bytes(len)?.to_vec())
            }
            3 => Amf::Object(self.members(depth)?),
            5 => Amf::Null,
            6 => Amf::Undefined,
            8 => {
                self.u32()?; // a hint only: the members end with the end marker
                Amf::EcmaArray(self.members(depth)?)
            }
            10 => self.strict_array(depth)?,
            11 => Amf::Date(self.f64()?, self.u16()? as i16),
            12 => {
                let len = self.u32()?;
                Amf::LongString(self.bytes(len)?.to_vec())
            }
            other => {
                return Err(ClipError::malformed(format!(
                    "AMF0 type {other} in a script tag"
                )))
            }
        })
    }

    fn members(&mut self, depth: usize) -> Result<Vec<(Vec<u8>, Amf)>, ClipError> {
        let mut members = Vec::new();
        loop {
            if self.data.get(self.pos..self.pos + 3) == Some(&OBJECT_END[..]) {
                self.pos += 3;
                return Ok(members);
            }
            let len = self.u16()?;
            let name = self.bytes(len)?.to_vec();
            members.push((name, self.value(depth + 1)?));
        }
    }

    fn strict_array(&mut self, depth: usize) -> Result<Amf, ClipError> {
        let count = self.u32()?;
        // Every value takes at least one byte: a count above the bytes left is a lie.
        if count > self.data.len() - self.pos {
            return Err(truncated());
        }
        // Grown as values are read, never sized by the count: nested arrays that each claim
        // the bytes left would otherwise reserve them all at once.
        let mut values = Vec::new();
        for _ in 0..count {
            values.push(self.value(depth + 1)?);
        }
        Ok(Amf::StrictArray(values))
    }
}

/// Appends `value`'s AMF0 encoding to `out`.
pub fn write(value: &Amf, out: &mut Vec<u8>) {
    match value {
        Amf::Number(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Amf::String(s) => {
            out.push(2);
            write_short(s, out);
        }
        Amf::Object(members) => {
            out.push(3);
            write_members(members, out);
        }
        Amf::Null => out.push(5),
        Amf::Undefined => out.push(6),
        Amf::EcmaArray(members) => {
            out.push(8);
            out.extend_from_slice(&(members.len() as u32).to_be_bytes());
            write_members(members, out);
        }
        Amf::StrictArray(values) => {
            out.push(10);
            out.extend_from_slice(&(values.len() as u32).to_be_bytes());
            values.iter().for_each(|v| write(v, out));
        }
        Amf::Date(ms, zone) => {
            out.push(11);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&zone.to_be_bytes());
        }
        Amf::LongString(s) => {
            out.push(12);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s);
        }
    }
}

/// A short string's length and bytes; its length came from a u16, so it fits one.
fn write_short(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn write_members(members: &[(Vec<u8>, Amf)], out: &mut Vec<u8>) {
    for (name, value) in members {
        write_short(name, out);
        write(value, out);
    }
    out.extend_from_slice(&OBJECT_END);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let value = Amf::EcmaArray(vec![
            (b"duration".to_vec(), Amf::Number(10.5)),
            (b"stereo".to_vec(), Amf::Bool(true)),
            (b"encoder".to_vec(), Amf::String(b"Lavf".to_vec())),
            (
                b"keyframes".to_vec(),
                Amf::Object(vec![(
                    b"times".to_vec(),
                    Amf::StrictArray(vec![Amf::Number(0.0), Amf::Number(2.0)]),
                )]),
            ),
            (b"when".to_vec(), Amf::Date(1.0, -60)),
            (b"nothing".to_vec(), Amf::Null),
        ]);
        let mut bytes = Vec::new();
        write(&value, &mut bytes);
        let read = AmfReader::new(&bytes).value(0).unwrap();
        assert_eq!(read, value);
        assert_eq!(read.get("duration").and_then(Amf::number), Some(10.5));
    }

    #[test]
    fn lying_counts_and_deep_nesting_are_refused() {
        let huge = [10, 0xFF, 0xFF, 0xFF, 0xFF, 0];
        assert!(AmfReader::new(&huge).value(0).is_err());
        let deep: Vec<u8> = std::iter::repeat_n([10u8, 0, 0, 0, 1], 64)
            .flatten()
            .collect();
        assert!(AmfReader::new(&deep).value(0).is_err());
        assert!(AmfReader::new(&[2, 0, 9, b'a']).value(0).is_err());
        assert!(AmfReader::new(&[3, 0, 1, b'a']).value(0).is_err());
    }
}
