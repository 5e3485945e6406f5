//! Connect protocol envelope framing: `[flags u8][len u32 big-endian][payload]`.
//!
//! This module owns the byte layout of server-streaming Connect messages, in both directions,
//! for the E2B client and the emulator alike. It never interprets payloads beyond the
//! end-of-stream flag and never performs I/O; callers feed it bytes and get whole frames back.

use bytes::{Buf, BytesMut};

/// Set on the final frame of a stream, whose payload is the `EndStreamResponse` JSON.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Set when the payload is compressed; we never ask for compression, so we refuse it.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// A frame larger than this is treated as a protocol error rather than buffered without bound.
pub const MAX_FRAME: usize = 16 << 20;

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Encode one envelope.
pub fn encode(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Incremental decoder: push chunks as they arrive, pop whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "connect frame of {len} bytes exceeds the {MAX_FRAME} byte limit"
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err("connect frame is compressed, which was not negotiated".to_string());
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).to_vec();
        Ok(Some(Frame { flags, payload }))
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_arbitrary_chunking() {
        let mut wire = encode(0, br#"{"a":1}"#);
        wire.extend(encode(FLAG_END_STREAM, b"{}"));
        for split in 0..wire.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].payload, br#"{"a":1}"#);
            assert!(got[1].is_end_stream());
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_compressed_frames_are_refused() {
        let mut d = Decoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::new();
        d.push(&encode(FLAG_COMPRESSED, b"x"));
        assert!(d.next_frame().is_err());
    }
}
