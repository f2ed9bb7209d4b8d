//! A bounded reader over a byte slice. Every read is checked: running off the end means the
//! input is incomplete, never an out-of-bounds index.

/// The input ended before the value being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short;

/// Why a hand-written parser stopped: the shared control flow of the line and tag sniffers.
#[derive(Debug)]
pub enum Stop {
    /// The input ended first: need more bytes.
    Short,
    /// The bytes rule this protocol out.
    NotThis,
    Bad(super::Malformed),
}

impl From<Short> for Stop {
    fn from(_: Short) -> Self {
        Stop::Short
    }
}

/// Stops with a malformed-input reason.
pub fn bad<T>(reason: &'static str) -> Result<T, Stop> {
    Err(Stop::Bad(super::Malformed(reason)))
}

#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n).ok_or(Short)?;
        let out = self.buf.get(self.pos..end).ok_or(Short)?;
        self.pos = end;
        Ok(out)
    }

    /// Reads `n` bytes, or fewer when the input ends first: for using the part of a block that
    /// has arrived so far.
    pub fn take_up_to(&mut self, n: usize) -> &'a [u8] {
        let (out, _) = self.rest().split_at(n.min(self.remaining()));
        self.pos += out.len();
        out
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Short> {
        self.take(n).map(|_| ())
    }

    /// The next byte, without consuming it.
    pub fn peek(&self) -> Result<u8, Short> {
        self.buf.get(self.pos).copied().ok_or(Short)
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self) -> Result<u32, Short> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a length-prefixed (u8) block and returns a cursor over it.
    pub fn block8(&mut self) -> Result<Cursor<'a>, Short> {
        let len = self.u8()?;
        Ok(Cursor::new(self.take(usize::from(len))?))
    }

    /// Reads a length-prefixed (u16) block and returns a cursor over it.
    pub fn block16(&mut self) -> Result<Cursor<'a>, Short> {
        let len = self.u16()?;
        Ok(Cursor::new(self.take(usize::from(len))?))
    }

    /// The unread rest of the input.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut c = Cursor::new(&[1, 0, 2, 9]);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(2));
        assert_eq!(c.u16(), Err(Short));
        assert_eq!(c.position(), 3);
        assert_eq!(c.take(usize::MAX), Err(Short));
        assert_eq!(c.rest(), &[9]);
    }

    #[test]
    fn take_up_to_stops_at_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.take_up_to(2), &[1, 2]);
        assert_eq!(c.take_up_to(usize::MAX), &[3]);
        assert_eq!(c.take_up_to(1), &[] as &[u8]);
        assert!(c.is_empty());
    }

    #[test]
    fn blocks_do_not_read_past_their_length() {
        let mut c = Cursor::new(&[2, 7, 8, 9]);
        let mut inner = c.block8().unwrap();
        assert_eq!(inner.take(2), Ok(&[7u8, 8][..]));
        assert_eq!(inner.u8(), Err(Short));
        assert_eq!(c.u8(), Ok(9));
    }
}
