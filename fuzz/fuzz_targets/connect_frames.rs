//! The Connect envelope decoder and the envd process-event stream on arbitrary bytes, cut into
//! arbitrary chunks.
//!
//! Input layout: two bytes seeding the chunk sizes, one byte setting the output cap (in units
//! of 4 bytes), then the wire bytes. However the bytes are cut, the decoder yields the same
//! frames (which re-encode to exactly the bytes consumed) and the process stream the same
//! result; output never exceeds the cap.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sandwarden::provider::e2b::ProcessStream;
use sandwarden::provider::e2b::connect::{Decoder, encode};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let seed = u16::from_le_bytes([data[0], data[1]]);
    let cap = usize::from(data[2]) * 4;
    let wire = &data[3..];
    let chunks = cut(wire, seed);

    let (decoded, outcome, pending) = frames(&[wire]);
    let (decoded_chunked, outcome_chunked, _) = frames(&chunks);
    assert_eq!(decoded, decoded_chunked, "chunking changed the frames");
    assert_eq!(outcome, outcome_chunked, "chunking changed the outcome");
    let reencoded: Vec<u8> = decoded.iter().flat_map(|(f, p)| encode(*f, p)).collect();
    assert_eq!(
        &wire[..reencoded.len()],
        &reencoded[..],
        "frames re-encode to the input"
    );
    if outcome.is_ok() {
        assert_eq!(pending, wire.len() - reencoded.len());
    }

    let one = run(&[wire], cap);
    let many = run(&chunks, cap);
    assert_eq!(one, many, "chunking changed the command's result");
    if let Ok((stdout, stderr)) = one {
        assert!(
            stdout <= cap && stderr <= cap,
            "{stdout}/{stderr} bytes kept, cap {cap}"
        );
    }
});

/// Cut `wire` into chunks of 0 to 63 bytes from a xorshift sequence.
fn cut(wire: &[u8], seed: u16) -> Vec<&[u8]> {
    let mut x = u32::from(seed) | 1;
    let mut rest = wire;
    let mut out = Vec::new();
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x as usize % 64).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

type Decoded = (Vec<(u8, Vec<u8>)>, Result<(), String>, usize);

fn frames(chunks: &[&[u8]]) -> Decoded {
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for chunk in chunks {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => got.push((f.flags, f.payload)),
                Ok(None) => break,
                Err(e) => return (got, Err(e), d.pending()),
            }
        }
    }
    (got, Ok(()), d.pending())
}

/// The result as comparable text: output sizes, or the error.
fn run(chunks: &[&[u8]], cap: usize) -> Result<(usize, usize), String> {
    let mut stream = ProcessStream::new(cap, Duration::from_secs(1));
    let result = chunks
        .iter()
        .find_map(|chunk| stream.push(chunk))
        .unwrap_or_else(|| stream.closed());
    match result {
        Ok(out) => Ok((out.stdout.len(), out.stderr.len())),
        Err(e) => Err(format!("{e:?}")),
    }
}
