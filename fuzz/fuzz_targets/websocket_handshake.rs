//! The gateway's WebSocketCodec from its first byte: the HTTP request head (parsed into
//! an `HttpRequest`, then judged by `websocket_accept`) under fuzzer-chosen `max_header`,
//! the answer, and whatever follows.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tethernet_fuzz::{max_length, split_config, ws, Chunking};

#[derive(Debug, Arbitrary)]
struct Config {
    max_header: u8,
    max_message: u8,
    /// Start from a valid request with the input spliced in at this line (so that the
    /// fuzzer need not find `\r\n\r\n` and the upgrade headers by itself).
    template: Option<u8>,
    chunking: Chunking,
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let max_header = match config.max_header % 4 {
        0 => 8 * 1024,
        _ => max_length(config.max_header).max(1),
    };
    let max_message = max_length(config.max_message);
    let stream = match config.template {
        None => input.to_vec(),
        Some(line) => {
            // After the request line and the given number of header lines.
            let lines: Vec<&[u8]> = ws::REQUEST.split_inclusive(|&b| b == b'\n').collect();
            let at = 1 + usize::from(line) % (lines.len() - 1);
            [&lines[..at].concat(), input, &lines[at..].concat()].concat()
        }
    };
    ws::run(&stream, config.chunking, max_message, max_header);
});
