//! The gateway's WebSocketCodec after a valid handshake: client frames, raw or built
//! from fuzzer-chosen fields (opcodes, RSV bits, masks, length encodings, lengths that
//! lie, fragments, control frames between them, close codes), under a fuzzer-chosen
//! `max_message`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tethernet_fuzz::{max_length, split_config, ws, Chunking};

#[derive(Debug, Arbitrary)]
struct Config {
    max_message: u8,
    structured: bool,
    chunking: Chunking,
}

#[derive(Debug, Arbitrary)]
struct Frame {
    fin: bool,
    /// RSV bits, set one time in eight.
    rsv: u8,
    opcode: u8,
    /// `None`: unmasked, which a server must refuse.
    mask: Option<[u8; 4]>,
    /// 0: shortest length form, 1: 16-bit, 2: 64-bit, 3: 64-bit with the top bit.
    length_form: u8,
    /// A length other than the payload's, claimed in the header.
    claimed: Option<u64>,
    payload: Payload,
}

#[derive(Debug, Arbitrary)]
enum Payload {
    Bytes(Vec<u8>),
    Text(String),
    Close(u16, String),
}

impl Frame {
    fn write(&self, out: &mut Vec<u8>) {
        let payload = match &self.payload {
            Payload::Bytes(bytes) => bytes.clone(),
            Payload::Text(text) => text.as_bytes().to_vec(),
            Payload::Close(code, reason) => [&code.to_be_bytes()[..], reason.as_bytes()].concat(),
        };
        let rsv = if self.rsv.is_multiple_of(8) {
            self.rsv & 0x70
        } else {
            0
        };
        // Mostly the opcodes that exist.
        let opcode = match self.opcode {
            o @ 0..=223 => [0x0, 0x1, 0x2, 0x8, 0x9, 0xA][usize::from(o) % 6],
            o => o & 0x0F,
        };
        out.push(u8::from(self.fin) << 7 | rsv | opcode);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let length = self.claimed.unwrap_or(payload.len() as u64);
        match (self.length_form % 4, length) {
            (0, n) if n < 126 => out.push(mask_bit | n as u8),
            (0 | 1, n) if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            (3, n) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n | 1 << 63).to_be_bytes());
            }
            (_, n) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        let mask = self.mask.unwrap_or_default();
        if self.mask.is_some() {
            out.extend_from_slice(&mask);
        }
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let max_message = max_length(config.max_message);
    let mut stream = ws::REQUEST.to_vec();
    if config.structured {
        let Ok(frames) = Unstructured::new(input).arbitrary_take_rest_iter::<Frame>() else {
            return;
        };
        for frame in frames {
            let Ok(frame) = frame else { return };
            frame.write(&mut stream);
        }
    } else {
        stream.extend_from_slice(input);
    }
    ws::run(&stream, config.chunking, max_message, 8 * 1024);
});
