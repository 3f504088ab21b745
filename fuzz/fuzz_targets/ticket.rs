//! The ticket parser, fed as the query string it arrives in: never panics, and whatever it
//! accepts is exactly the canonical 68-character form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ticketgate::ticket::{PresentedTicket, TICKET_LEN};

fuzz_target!(|data: &[u8]| {
    for (key, value) in url::form_urlencoded::parse(data) {
        if key == "token" && PresentedTicket::parse(&value).is_ok() {
            assert_eq!(value.len(), TICKET_LEN);
            assert_eq!(value.as_bytes()[24], b'.');
            assert!(value[..24].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
});
