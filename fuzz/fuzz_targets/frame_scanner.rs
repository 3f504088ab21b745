//! The frame-header scanner that guards the WebSocket byte stream: never panics on any bytes
//! at any limit, however they are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticketgate::session::frame_guard::FrameScanner;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let limit = u64::from(split) * 512;
    let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
    let mut scanner = FrameScanner::default();
    if scanner.scan(first, limit).is_ok() {
        let _ = scanner.scan(second, limit);
    }
});
