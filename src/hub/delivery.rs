//! A server message on its way to connections: encoded once per node (JSON text), and the
//! forms the transports write it in, each made at most once per node, by the first connection
//! that needs it, and shared by the others (a `Bytes` clone is a reference-count bump). The
//! hub names the forms; only the transports know how to make them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use bytestring::ByteString;
use tokio::time::Instant;

/// A form a transport writes messages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A WebSocket text frame (unmasked, so the same bytes serve every connection).
    WebSocketText = 0,
    /// A WebSocket text frame compressed with permessage-deflate.
    WebSocketDeflate = 1,
    /// A Server-Sent Events event: one `data:` line, then a blank line.
    ServerSentEvent = 2,
}

const FORMS: usize = 3;

/// One server message for any number of connections. Cloning it is two reference-count bumps.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message as JSON text: what every transport carries.
    pub message: ByteString,
    /// For live fan-out: when it was published, for the fan-out latency metric.
    pub published_at: Option<Instant>,
    forms: Arc<[OnceLock<Bytes>; FORMS]>,
}

impl Delivery {
    pub fn new(message: ByteString, published_at: Option<Instant>) -> Self {
        Delivery {
            message,
            published_at,
            forms: Arc::default(),
        }
    }

    /// The message in `form`, made by `make` if no connection of this node made it yet.
    pub fn form(&self, form: Form, make: impl FnOnce(&str) -> Bytes) -> &Bytes {
        self.forms[form as usize].get_or_init(|| make(&self.message))
    }

    /// A copy for a recovering subscriber: not counted in the live fan-out latency.
    pub fn recovered(&self) -> Delivery {
        Delivery {
            published_at: None,
            ..self.clone()
        }
    }
}

/// Two deliveries are the same message, at the same time; the forms made of it do not count.
impl PartialEq for Delivery {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.published_at == other.published_at
    }
}

impl Eq for Delivery {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_made_once_and_shared_by_every_clone() {
        let delivery = Delivery::new(ByteString::from_static("{}"), None);
        let copy = delivery.clone();
        let made = std::cell::Cell::new(0);
        let make = |text: &str| {
            made.set(made.get() + 1);
            Bytes::from(format!("<{text}>"))
        };
        assert_eq!(&delivery.form(Form::WebSocketText, make)[..], b"<{}>");
        assert_eq!(&copy.form(Form::WebSocketText, make)[..], b"<{}>");
        assert_eq!(made.get(), 1);
        let recovered = copy.recovered();
        assert_eq!(&recovered.form(Form::WebSocketDeflate, make)[..], b"<{}>");
        assert_eq!(made.get(), 2, "another form is made on its own");
    }
}
