//! An SSE client on a raw socket, reading the stream the way the tests need: the response head
//! as sent, events one by one, heartbeat comments seen, and client messages posted with `seq`
//! numbers to any node.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::*;

pub struct SseClient {
    reader: BufReader<TcpStream>,
    /// The body comes in chunks (a proxy re-framed the stream: nginx does for HTTP/1.1).
    chunked: bool,
    /// Decoded body bytes not yet read as lines.
    pending: Vec<u8>,
    /// The response head, lower-cased header names as sent.
    pub head: String,
    /// The session id from the first event.
    pub session: String,
    /// The base URL POSTs go to (`http://127.0.0.1:<port>`).
    pub post_base: String,
    /// The next request's `seq`.
    pub next_seq: u64,
    /// Heartbeat comments seen so far.
    pub comments: usize,
    http: reqwest::Client,
}

/// What the stream carried next.
#[derive(Debug, PartialEq)]
pub enum SseItem {
    Event(Value),
    /// The response ended.
    End,
}

/// Opens `GET /sse?token=<ticket>` on `port` with extra header lines; on refusal, the status
/// and JSON body.
pub async fn open_sse(
    port: u16,
    ticket: &str,
    extra_headers: &str,
) -> Result<SseClient, (u16, Value)> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET /sse?token={ticket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra_headers}\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(socket);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(n > 0, "the connection ended inside the head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head[9..12].parse().unwrap();
    if status != 200 {
        let length: usize = header_value(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        return Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    let chunked = header_value(&head, "transfer-encoding") == Some("chunked");
    let mut client = SseClient {
        reader,
        chunked,
        pending: Vec::new(),
        head,
        session: String::new(),
        post_base: format!("http://127.0.0.1:{port}"),
        next_seq: 1,
        comments: 0,
        http: reqwest::Client::new(),
    };
    let first = client.next_json().await;
    assert_eq!(first["type"], "session", "{first}");
    client.session = first["session"].as_str().unwrap().to_owned();
    Ok(client)
}

/// A header's value in a response head (names compared case-insensitively).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl SseClient {
    /// One line of the body, its line feed included (0: the body ended).
    async fn read_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        if !self.chunked {
            return self.reader.read_line(line).await;
        }
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(end + 1);
                let taken = std::mem::replace(&mut self.pending, rest);
                line.push_str(&String::from_utf8_lossy(&taken));
                return Ok(taken.len());
            }
            let mut size = String::new();
            if self.reader.read_line(&mut size).await? == 0 {
                return Ok(0);
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                return Ok(0);
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            self.pending.extend_from_slice(&chunk);
        }
    }

    /// The next event or the end, within `patience`; comments are counted and skipped. Every
    /// event must be one `data:` line and a blank line.
    pub async fn next_item_within(&mut self, patience: Duration) -> SseItem {
        loop {
            let mut line = String::new();
            let n = match tokio::time::timeout(patience, self.read_line(&mut line)).await {
                Err(_) => panic!("nothing on the stream within {patience:?}"),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                return SseItem::End;
            }
            if line.starts_with(':') {
                self.comments += 1;
                let mut blank = String::new();
                self.read_line(&mut blank).await.unwrap();
                assert_eq!(blank, "\n", "a comment is followed by a blank line here");
                continue;
            }
            let data = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("an event is one data: line, got {line:?}"));
            let mut blank = String::new();
            self.read_line(&mut blank).await.unwrap();
            assert_eq!(
                blank, "\n",
                "one data: line per event, got {blank:?} after {line:?}"
            );
            return SseItem::Event(serde_json::from_str(data.trim_end_matches('\n')).unwrap());
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_item_within(PATIENCE).await {
            SseItem::Event(value) => value,
            SseItem::End => panic!("the stream ended"),
        }
    }

    /// The next event whose `type` is `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let event = self.next_json().await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// Asserts the stream ends with a close event carrying `code`, then ends; the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        loop {
            match self.next_item_within(PATIENCE).await {
                SseItem::Event(event) if event["type"] == "close" => {
                    assert_eq!(event["code"], code, "{event}");
                    assert_eq!(
                        self.next_item_within(PATIENCE).await,
                        SseItem::End,
                        "the response ends after the close event"
                    );
                    return event["reason"].as_str().unwrap().to_owned();
                }
                SseItem::Event(_) => continue,
                SseItem::End => panic!("the stream ended without a close event"),
            }
        }
    }

    /// Posts `messages` with the next `seq` to this client's node; the status.
    pub async fn post(&mut self, messages: &[Value]) -> u16 {
        let seq = self.next_seq;
        let (status, body) = self.post_raw(&self.post_base.clone(), seq, messages).await;
        assert!(status == 204 || status >= 400, "{status} {body}");
        if status == 204 {
            self.next_seq += 1;
        }
        status
    }

    /// Posts with an explicit `seq` to `base` (any node): the status and JSON body.
    pub async fn post_raw(&self, base: &str, seq: u64, messages: &[Value]) -> (u16, Value) {
        let body = json!({"session": self.session, "seq": seq, "messages": messages});
        post_body(&self.http, base, &body.to_string()).await
    }

    /// Authenticates as `sub`: the `authenticated` event.
    pub async fn authenticate(&mut self, sub: &str) -> Value {
        assert_eq!(
            self.post(&[json!({"type": "jwt", "token": jwt(sub)})])
                .await,
            204
        );
        let answer = self.next_json().await;
        assert_eq!(answer["type"], "authenticated", "{answer}");
        answer
    }
}

/// `POST /sse/messages` with a raw JSON body: the status and JSON body.
pub async fn post_body(http: &reqwest::Client, base: &str, body: &str) -> (u16, Value) {
    let response = http
        .post(format!("{base}/sse/messages"))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
