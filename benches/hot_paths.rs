//! Micro-benchmarks of the gateway's hot pieces: ticket format, JWT validation, client-message
//! parsing, broadcast encoding, and the frame-header scan. `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretBox;
use serde_json::value::RawValue;
use ticketgate::bus::{Command, NodeId, Sequencer};
use ticketgate::hub::Hub;
use ticketgate::jwt::{JwtSettings, JwtSigner, JwtVerifier};
use ticketgate::limits::ConnectionLimits;
use ticketgate::protocol::{ClientMessage, Request, ServerMessage};
use ticketgate::ticket::{NewTicket, PresentedTicket};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";

fn tickets(c: &mut Criterion) {
    c.bench_function("ticket: generate and format", |b| {
        b.iter(|| black_box(NewTicket::generate()).to_string())
    });
    let ticket = NewTicket::generate();
    let text = ticket.to_string();
    let hash = ticket.secret_hash();
    c.bench_function("ticket: parse (and hash the secret)", |b| {
        b.iter(|| PresentedTicket::parse(black_box(&text)).unwrap())
    });
    let presented = PresentedTicket::parse(&text).unwrap();
    c.bench_function("ticket: constant-time compare", |b| {
        b.iter(|| presented.matches(black_box(&hash)))
    });
}

fn jwt(c: &mut Criterion) {
    let verifier = JwtVerifier::new(&JwtSettings {
        hs256_secret: Some(SecretBox::new(Box::new(SECRET.to_vec()))),
        public_keys: Vec::new(),
        dev_mode: false,
        leeway_secs: 0,
        issuer: None,
        audience: None,
    });
    let token = JwtSigner::hs256(SECRET).mint("user-123", 3600);
    c.bench_function("jwt: verify HS256", |b| {
        b.iter(|| verifier.verify(black_box(&token)).unwrap())
    });
}

fn messages(c: &mut Criterion) {
    c.bench_function("message: parse ping", |b| {
        b.iter(|| ClientMessage::parse(black_box(r#"{"type":"ping"}"#)).unwrap())
    });
    let echo = format!(
        r#"{{"type":"echo","data":{{"text":"{}","n":[1,2,3]}}}}"#,
        "x".repeat(100)
    );
    c.bench_function("message: parse and answer an echo (~130 B)", |b| {
        b.iter(|| match ClientMessage::parse(black_box(&echo)).unwrap() {
            Request {
                message: ClientMessage::Echo { data },
                id,
            } => ServerMessage::Echo { data, id }.encode(),
            _ => unreachable!(),
        })
    });
}

fn broadcast(c: &mut Criterion) {
    let hub = Hub::new(ConnectionLimits::UNLIMITED);
    let mut sequencer = Sequencer::new(NodeId::from("bench-node"));
    let data = RawValue::from_string(format!(r#"{{"pad":"{}"}}"#, "x".repeat(100))).unwrap();
    c.bench_function("broadcast: number, encode once and deliver (100 B)", |b| {
        b.iter(|| {
            let stamped = sequencer.stamp(Command::Broadcast(black_box(data.clone())));
            stamped.event.deliver(&hub)
        })
    });
}

fn frames(c: &mut Criterion) {
    // 100 masked text frames of 100 bytes each, as a client would send them.
    let mut bytes = Vec::new();
    for _ in 0..100 {
        bytes.extend_from_slice(&[0x81, 0x80 | 100, 1, 2, 3, 4]);
        bytes.extend(std::iter::repeat_n(b'x', 100));
    }
    c.bench_function("frames: decode 100 client frames (10.6 KB)", |b| {
        b.iter(|| {
            let mut buffer = bytes::BytesMut::from(black_box(&bytes[..]));
            let mut codec = actix_http::ws::Codec::new();
            let mut frames = 0;
            while let Some(_frame) = actix_codec::Decoder::decode(&mut codec, &mut buffer).unwrap()
            {
                frames += 1;
            }
            frames
        })
    });
    let text = "x".repeat(100);
    c.bench_function("frames: encode one 100 B server text frame", |b| {
        b.iter(|| ticketgate::wire::text_frame(black_box(&text)))
    });
}

/// permessage-deflate: what compressing one broadcast costs (once per broadcast, shared by
/// every compressing connection), and what inflating a client message costs.
fn compression(c: &mut Criterion) {
    let message = format!(
        r#"{{"type":"broadcast","seq":1,"node":"gw-1","data":{{"items":[{}]}}}}"#,
        (0..40)
            .map(|i| format!(r#"{{"id":{i},"name":"item {i}","price":{}.5}}"#, i * 3))
            .collect::<Vec<_>>()
            .join(",")
    );
    let frame = ticketgate::wire::deflate::compressed_text_frame(message.as_bytes());
    let payload = frame[ticketgate::wire::frame_header_len(&frame)..].to_vec();
    c.bench_function(
        &format!(
            "deflate: compress a {} B broadcast once (to {} B)",
            message.len(),
            payload.len()
        ),
        |b| {
            b.iter(|| {
                ticketgate::wire::deflate::compressed_text_frame(black_box(message.as_bytes()))
            })
        },
    );
    let negotiated = ticketgate::wire::deflate::Negotiated {
        client_no_context_takeover: true,
        server_max_window_bits: false,
    };
    c.bench_function("deflate: inflate the same message", |b| {
        b.iter(|| {
            ticketgate::wire::deflate::Inflater::new(negotiated)
                .inflate(black_box(&payload), 1 << 20)
                .unwrap()
        })
    });
}

criterion_group!(
    benches,
    tickets,
    jwt,
    messages,
    broadcast,
    frames,
    compression
);
criterion_main!(benches);
