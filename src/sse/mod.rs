//! The Server-Sent Events transport: server messages as events on a long HTTP response, client
//! messages by `POST /sse/messages` into the connection's inbox (`crate::hub::inbox`), on
//! whichever node the POST lands. [`ServerSentEvents`] is the session's transport on the
//! response's socket, which the HTTP dispatcher hands over once the head is written
//! (`crate::wire::socket`). The routes are `crate::routes::sse`.

mod session_id;
mod transport;

use bytes::{Bytes, BytesMut};

pub use session_id::SessionId;
pub use transport::ServerSentEvents;

/// One unnamed event carrying `json` on one `data:` line. JSON text can hold a raw line break
/// only as whitespace between tokens (inside a string it must be escaped), so turning each into
/// a space keeps the value and puts the event on one line.
pub fn event(json: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    if json.contains(['\n', '\r']) {
        out.extend(
            json.bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(json.as_bytes());
    }
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// The heartbeat: a comment line, which EventSource ignores and proxies see as traffic.
pub const HEARTBEAT: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_with_the_same_json_value() {
        assert_eq!(&event(r#"{"a":1}"#)[..], b"data: {\"a\":1}\n\n");
        let pretty = "{\n  \"type\": \"echo\",\r\n  \"data\": [1,\n 2]\n}";
        let sent = event(pretty);
        let line = std::str::from_utf8(&sent).unwrap();
        assert_eq!(line.matches('\n').count(), 2, "{line:?}");
        assert!(!line.contains('\r'));
        let json = line.strip_prefix("data: ").unwrap().trim_end();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(pretty).unwrap()
        );
    }
}
