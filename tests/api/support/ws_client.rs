//! A WebSocket client that reads the way the tests need.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use ticketgate_client::protocol::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Closed {
        code: u16,
        reason: String,
    },
    /// No close frame: the socket was cut.
    Dropped,
}

impl WsClient {
    pub async fn send_json(&mut self, value: &Value) {
        self.stream
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    /// Sends a protocol message, written by the client crate.
    pub async fn send_message(&mut self, message: &ClientMessage) {
        self.send_text(&message.to_text()).await;
    }

    /// A `subscribe` to `channel`, recovering after `since` (offset, epoch) when given.
    pub async fn send_subscribe(&mut self, channel: &str, since: Option<(u64, &str)>) {
        let since = since.map(|(offset, epoch)| ticketgate_client::protocol::Position {
            offset,
            epoch: epoch.to_owned(),
        });
        self.send_message(&ClientMessage::Subscribe {
            id: None,
            channel: channel.to_owned(),
            since,
            token: None,
        })
        .await;
    }

    /// The first message: `token` as the JWT; asserts the answer is `authenticated` and
    /// returns the user it names.
    pub async fn authenticate(&mut self, token: &str) -> String {
        self.send_message(&ClientMessage::Jwt {
            token: token.to_owned(),
        })
        .await;
        let welcome = self.next_json().await;
        match ServerMessage::<Value>::parse(&welcome.to_string()) {
            Ok(ServerMessage::Authenticated { user_id, .. }) => user_id,
            _ => panic!("expected authenticated, got {welcome}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// Closes with `code` and waits for the server's answering close.
    pub async fn close(&mut self, code: u16) {
        self.send(Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: "".into(),
        })))
        .await;
        assert!(
            matches!(self.ending().await, Ending::Closed { code: got, .. } if got == code),
            "the server answers a close with the same code"
        );
    }

    /// The next frame of any kind, within `PATIENCE`.
    pub async fn next_frame(&mut self) -> Option<Message> {
        self.next_frame_within(PATIENCE).await
    }

    /// The next frame of any kind, within `limit`.
    pub async fn next_frame_within(&mut self, limit: Duration) -> Option<Message> {
        match tokio::time::timeout(limit, self.stream.next()).await {
            Err(_) => panic!("no frame within {limit:?}"),
            Ok(None) => None,
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(_))) => None,
        }
    }

    /// The next text message as JSON, skipping control frames.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(PATIENCE).await
    }

    /// The next text message as JSON, each frame within `limit`, skipping control frames.
    pub async fn next_json_within(&mut self, limit: Duration) -> Value {
        loop {
            match self.next_frame_within(limit).await {
                Some(Message::Text(text)) => return serde_json::from_str(&text).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends, skipping anything else.
    pub async fn ending(&mut self) -> Ending {
        self.ending_within(PATIENCE).await
    }

    /// Like [`ending`](Self::ending), waiting up to `patience` for each frame.
    pub async fn ending_within(&mut self, patience: Duration) -> Ending {
        loop {
            let frame = match tokio::time::timeout(patience, self.stream.next()).await {
                Err(_) => panic!("the connection did not end within {patience:?}"),
                Ok(Some(Ok(message))) => Some(message),
                Ok(_) => None,
            };
            match frame {
                Some(Message::Close(frame)) => {
                    let CloseFrame { code, reason } = frame.unwrap_or(CloseFrame {
                        code: 1005.into(),
                        reason: "".into(),
                    });
                    return Ending::Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    };
                }
                Some(_) => continue,
                None => return Ending::Dropped,
            }
        }
    }

    /// Asserts the connection ends with `code`; returns the reason text.
    pub async fn expect_close(&mut self, code: u16) -> String {
        match self.ending().await {
            Ending::Closed { code: got, reason } if got == code => reason,
            other => panic!("expected close code {code}, got {other:?}"),
        }
    }

    /// The data of the next `n` publications, skipping other messages, and then nothing
    /// for a moment: a repeat or a stray publication after them fails.
    pub async fn publications_then_silence(&mut self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            let message = self.next_json().await;
            if message["type"] == "publication" {
                got.push(message["data"].clone());
            }
        }
        self.expect_silence(Duration::from_millis(300)).await;
        got
    }

    /// Asserts that not a single frame (not even a Ping) arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        if let Ok(frame) = tokio::time::timeout(duration, self.stream.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}
