//! A simulated client on the SSE transport: the event stream on a raw socket (read as a
//! browser's EventSource reads it), client messages by `POST /sse/messages` with rising `seq`s,
//! to the stream's node or to another (`--post-url`: no sticky sessions).

use serde::de::IgnoredAny;
use ticketgate_client::protocol::ServerMessage;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct SseSocket {
    reader: BufReader<TcpStream>,
    session: String,
    seq: u64,
    http: reqwest::Client,
    messages_url: String,
}

impl SseSocket {
    /// Sends `GET <path>` on `stream`, reads the head and the `session` event.
    pub async fn open(
        stream: TcpStream,
        host: &str,
        path: &str,
        http: reqwest::Client,
        post_base: &str,
    ) -> Result<Self, String> {
        let mut stream = stream;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("stream request: {e}"))?;
        // Small reads, as a browser tab's: events are short.
        let mut reader = BufReader::with_capacity(4096, stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .await
            .map_err(|e| format!("stream head: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("stream refused: {}", status.trim()));
        }
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("stream head: {e}"))?;
            if n == 0 || line == "\r\n" {
                break;
            }
        }
        let mut socket = SseSocket {
            reader,
            session: String::new(),
            seq: 0,
            http,
            messages_url: format!("{post_base}/sse/messages"),
        };
        let first = socket
            .next()
            .await?
            .ok_or("the stream ended before its session event")?;
        match ServerMessage::<IgnoredAny>::parse(&first) {
            Ok(ServerMessage::Session { session }) => socket.session = session,
            _ => return Err(format!("expected the session event, got {first}")),
        }
        Ok(socket)
    }

    /// Posts `texts` (JSON objects) as one request with the next `seq`.
    pub async fn send_all(&mut self, texts: &[String]) -> Result<(), String> {
        self.seq += 1;
        let body = format!(
            r#"{{"session":"{}","seq":{},"messages":[{}]}}"#,
            self.session,
            self.seq,
            texts.join(",")
        );
        let response = self
            .http
            .post(&self.messages_url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("post: {e}"))?;
        match response.status().as_u16() {
            204 => Ok(()),
            status => Err(format!(
                "post refused: {status} {}",
                response.text().await.unwrap_or_default()
            )),
        }
    }

    /// The next event's data (`Ok(None)` when the stream ended); comments are skipped, and a
    /// close event is an error, as a WebSocket close is.
    pub async fn next(&mut self) -> Result<Option<String>, String> {
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let data = data.trim_end_matches('\n');
            if data.starts_with(r#"{"type":"close""#) {
                return Err(format!("closed: {data}"));
            }
            return Ok(Some(data.to_owned()));
        }
    }
}
