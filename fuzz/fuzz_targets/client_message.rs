//! The client-message parser: any text must parse or be refused, never panic, and a parsed
//! echo must carry its data back byte for byte, as JSON by the same grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use ticketgate::protocol::{ClientMessage, Request, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Request { message: ClientMessage::Echo { data }, .. }) = ClientMessage::parse(text) {
        let reply = ServerMessage::Echo { data, id: None }.encode();
        // Syntax, not f64 range: numbers are echoed as written (found by this target).
        let reply: Box<RawValue> = serde_json::from_str(&reply).expect("an echo reply is JSON");
        assert!(reply.get().ends_with(&format!("{}}}", data.get())));
    }
});
