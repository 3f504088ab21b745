//! The gateway's frame decoding (src/wire/reader.rs): the header check in front of
//! actix-http's codec never panics on any bytes at any limit, however they are split.
#![no_main]

use actix_http::ws::Codec;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ticketgate::wire::reader::decode_frame;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let limit = usize::from(split) * 512;
    let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
    let mut codec = Codec::new().max_size(usize::MAX);
    let mut buffer = BytesMut::new();
    for chunk in [first, second] {
        buffer.extend_from_slice(chunk);
        while let Ok(Some(_frame)) = decode_frame(&mut codec, &mut buffer, limit) {}
    }
});
