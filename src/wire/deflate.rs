//! permessage-deflate (RFC 7692), opt-in with WS_COMPRESSION: the negotiation, and compressing
//! and inflating one message. The server always takes `server_no_context_takeover`, so every
//! message it sends is compressed on its own: a broadcast is compressed once and its bytes
//! shared, and an idle connection keeps no compression state. A client's messages are
//! inflated with a context of their own only when the client keeps one
//! (no `client_no_context_takeover`), created with its first compressed message.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::ReadError;

/// What was agreed with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The client compresses each message on its own, so none needs a context here.
    pub client_no_context_takeover: bool,
    /// The offer named `server_max_window_bits` (15, the only value taken), which the answer
    /// must then name too (RFC 7692 §7.1.2.1).
    pub server_max_window_bits: bool,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value of the 101: every parameter RFC 7692 asks the
    /// answer to carry for this offer.
    pub fn response(&self) -> String {
        let mut response = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits {
            response.push_str("; server_max_window_bits=15");
        }
        response
    }
}

/// The first permessage-deflate offer (of `Sec-WebSocket-Extensions` values) this server can
/// take: parameters it does not know, repeated ones, or a server window under 15 bits (the
/// compressor here always uses 15) make it skip an offer.
pub fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<Negotiated> {
    offers.flat_map(|value| value.split(',')).find_map(|offer| {
        let mut params = offer.split(';').map(str::trim);
        if params.next()? != "permessage-deflate" {
            return None;
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut client_no_context_takeover = false;
        let mut server_max_window_bits = false;
        for param in params.filter(|p| !p.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            if seen.contains(&name) {
                return None;
            }
            seen.push(name);
            match (name, value) {
                ("server_no_context_takeover", None) => {}
                ("client_no_context_takeover", None) => client_no_context_takeover = true,
                ("client_max_window_bits", None) => {}
                ("client_max_window_bits", Some(bits)) if window_bits(bits).is_some() => {}
                ("server_max_window_bits", Some("15")) => server_max_window_bits = true,
                _ => return None,
            }
        }
        Some(Negotiated {
            client_no_context_takeover,
            server_max_window_bits,
        })
    })
}

fn window_bits(text: &str) -> Option<u8> {
    text.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// The tail a sync flush leaves, which RFC 7692 §7.2.1 has the sender remove.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `payload` compressed on its own, as a whole server text frame with RSV1 set.
pub fn compressed_text_frame(payload: &[u8]) -> Bytes {
    let mut compress = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = compress.total_in() as usize;
        out.reserve(payload.len() / 2 + 64);
        let status = compress
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflating in memory cannot fail");
        if compress.total_in() as usize == payload.len()
            && out.len() < out.capacity()
            && status == Status::Ok
        {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    let mut frame = BytesMut::with_capacity(out.len() + 10);
    // FIN, RSV1 (compressed), text.
    frame.put_u8(0xc1);
    match out.len() {
        len @ 0..=125 => frame.put_u8(len as u8),
        len @ 126..=65535 => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.extend_from_slice(&out);
    frame.freeze()
}

/// Inflates a client's compressed messages.
pub struct Inflater {
    /// Kept between messages when the client keeps its compression context.
    context: Option<Decompress>,
    keep_context: bool,
}

impl Inflater {
    pub fn new(negotiated: Negotiated) -> Self {
        Inflater {
            context: None,
            keep_context: !negotiated.client_no_context_takeover,
        }
    }

    /// One compressed message, inflated to at most `limit` bytes (past that: too big, however
    /// small it was on the wire, so a compression bomb costs nothing).
    pub fn inflate(&mut self, payload: &[u8], limit: usize) -> Result<Bytes, ReadError> {
        let mut fresh = None;
        let decompress = match (self.keep_context, &mut self.context) {
            (true, Some(context)) => context,
            (true, context @ None) => context.insert(Decompress::new(false)),
            (false, _) => fresh.insert(Decompress::new(false)),
        };
        let mut input = Vec::with_capacity(payload.len() + TAIL.len());
        input.extend_from_slice(payload);
        input.extend_from_slice(&TAIL);
        let start_in = decompress.total_in();
        let start_out = decompress.total_out();
        let mut out: Vec<u8> = Vec::with_capacity((payload.len() * 4).min(limit + 1).max(64));
        loop {
            let consumed = (decompress.total_in() - start_in) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.len().max(1024));
            }
            decompress
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| ReadError::Protocol("invalid compressed data".into()))?;
            if (decompress.total_out() - start_out) as usize > limit {
                return Err(ReadError::TooBig { limit });
            }
            let consumed = (decompress.total_in() - start_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(frame: &[u8]) -> &[u8] {
        match frame[1] & 0x7f {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    /// What compression adds to every connection, used or not (docs/BENCHMARKS.md).
    #[test]
    fn the_per_connection_cost_is_a_few_bytes() {
        let inflater = std::mem::size_of::<Option<Inflater>>();
        let threshold = std::mem::size_of::<Option<usize>>();
        println!("per connection: Option<Inflater> {inflater} B, Option<usize> {threshold} B");
        assert!(inflater + threshold <= 64, "{inflater} + {threshold}");
    }

    #[test]
    fn takes_the_offers_browsers_make_and_refuses_what_it_cannot_honour() {
        let take = |offer: &str| negotiate(std::iter::once(offer));
        let plain = Some(Negotiated {
            client_no_context_takeover: false,
            server_max_window_bits: false,
        });
        assert_eq!(take("permessage-deflate; client_max_window_bits"), plain);
        assert_eq!(take("permessage-deflate"), plain);
        assert_eq!(
            take("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
            Some(Negotiated {
                client_no_context_takeover: true,
                server_max_window_bits: false,
            })
        );
        // An offer that names the server's window is answered with it (RFC 7692 §7.1.2.1).
        let window = take("permessage-deflate; server_max_window_bits=15; client_max_window_bits");
        assert_eq!(
            window.map(|n| n.response()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15")
        );
        assert_eq!(
            plain.map(|n| n.response()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(take("permessage-deflate; server_max_window_bits=10"), None);
        assert_eq!(take("permessage-deflate; unknown_param"), None);
        assert_eq!(
            take("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None
        );
        assert_eq!(take("x-webkit-deflate-frame"), None);
        // The first acceptable one of several.
        assert_eq!(
            take("permessage-deflate; server_max_window_bits=9, permessage-deflate"),
            plain
        );
    }

    #[test]
    fn what_is_compressed_inflates_back_and_a_bomb_is_too_big() {
        let text = r#"{"type":"broadcast","seq":1,"data":"hello hello hello hello hello"}"#;
        let frame = compressed_text_frame(text.as_bytes());
        assert_eq!(frame[0], 0xc1);
        let negotiated = Negotiated {
            client_no_context_takeover: true,
            server_max_window_bits: false,
        };
        let inflated = Inflater::new(negotiated)
            .inflate(payload_of(&frame), 1 << 20)
            .unwrap();
        assert_eq!(&inflated[..], text.as_bytes());

        let zeros = vec![b'0'; 1 << 20];
        let bomb = compressed_text_frame(&zeros);
        assert!(bomb.len() < 10_000, "{}", bomb.len());
        assert!(matches!(
            Inflater::new(negotiated).inflate(payload_of(&bomb), 64 * 1024),
            Err(ReadError::TooBig { .. })
        ));
        assert!(matches!(
            Inflater::new(negotiated).inflate(b"\xff\xff\xff garbage", 1024),
            Err(ReadError::Protocol(_))
        ));
    }
}
