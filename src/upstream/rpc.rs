//! Client RPC: `{"type":"rpc","id":…,"method":…,"data":…}` becomes `POST {UPSTREAM_URL}/rpc`,
//! and the backend's answer becomes `rpc_result`, `rpc_error`, or a close with its code.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{Caller, Upstream, UpstreamError};

/// What the gateway posts to `/rpc`.
#[derive(Serialize)]
struct RpcCall<'a> {
    method: &'a str,
    data: &'a RawValue,
    #[serde(flatten)]
    caller: &'a Caller,
}

/// What the backend decided.
#[derive(Debug)]
pub enum RpcAnswer {
    /// `{"result": X}`: X goes to the client as `rpc_result`.
    Result(Box<RawValue>),
    /// `{"error": {"code", "message", …}}`: the object goes to the client as `rpc_error`.
    Error(Box<RawValue>),
    /// `{"disconnect": {"code": 4000..=4999, "reason"}}`: the connection closes so.
    Disconnect { code: u16, reason: String },
}

/// The answer as the backend writes it; exactly one field matters, in this order:
/// `disconnect`, `error`, `result`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Box<RawValue>>,
    #[serde(default)]
    disconnect: Option<Disconnect>,
}

#[derive(Deserialize)]
struct Disconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// An error object's required fields; others go to the client as they are.
#[derive(Deserialize)]
struct ErrorShape {
    code: Code,
    #[allow(dead_code)] // checked to be a string, passed on inside the raw object
    message: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Code {
    #[allow(dead_code)]
    Number(i64),
    #[allow(dead_code)]
    Text(String),
}

/// `"result": null` is a result (null), not a missing field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// The close reason's room in a close frame (125 bytes, 2 of them the code).
const MAX_REASON_BYTES: usize = 123;

impl Upstream {
    pub async fn rpc(
        &self,
        caller: &Caller,
        method: &str,
        data: &RawValue,
    ) -> Result<RpcAnswer, UpstreamError> {
        let call = RpcCall {
            method,
            data,
            caller,
        };
        self.ask("/rpc", &call, parse_answer).await
    }
}

/// The backend's answer, or what is wrong with it.
pub fn parse_answer(body: &[u8]) -> Result<RpcAnswer, String> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not the documented JSON: {e}"))?;
    if let Some(Disconnect { code, reason }) = answer.disconnect {
        if !(4000..=4999).contains(&code) {
            return Err(format!("disconnect code {code} is not within 4000 to 4999"));
        }
        return Ok(RpcAnswer::Disconnect {
            code,
            reason: truncate(reason, MAX_REASON_BYTES),
        });
    }
    if let Some(error) = answer.error {
        let shape: Result<ErrorShape, _> = serde_json::from_str(error.get());
        return match shape {
            Ok(ErrorShape {
                code: Code::Number(_) | Code::Text(_),
                ..
            }) => Ok(RpcAnswer::Error(error)),
            Err(_) => Err(
                "an error must be an object with a code (number or string) and a message (string)"
                    .into(),
            ),
        };
    }
    match answer.result {
        Some(result) => Ok(RpcAnswer::Result(result)),
        None => Err("the answer has none of result, error or disconnect".into()),
    }
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RpcAnswer, String> {
        parse_answer(json.as_bytes())
    }

    #[test]
    fn results_errors_and_disconnects_are_read_as_documented() {
        let Ok(RpcAnswer::Result(result)) = parse(r#"{"result": {"a": [1, 2]}}"#) else {
            panic!("a result");
        };
        assert_eq!(result.get(), r#"{"a": [1, 2]}"#);
        let Ok(RpcAnswer::Result(null)) = parse(r#"{"result": null}"#) else {
            panic!("null is a result");
        };
        assert_eq!(null.get(), "null");
        let Ok(RpcAnswer::Error(error)) =
            parse(r#"{"error": {"code": 42, "message": "no", "retry": true}}"#)
        else {
            panic!("an error");
        };
        assert_eq!(
            error.get(),
            r#"{"code": 42, "message": "no", "retry": true}"#
        );
        assert!(matches!(
            parse(r#"{"error": {"code": "busy", "message": "later"}}"#),
            Ok(RpcAnswer::Error(_))
        ));
        assert!(matches!(
            parse(r#"{"disconnect": {"code": 4100, "reason": "bye"}, "result": 1}"#),
            Ok(RpcAnswer::Disconnect { code: 4100, reason }) if reason == "bye"
        ));
    }

    #[test]
    fn anything_else_is_a_backend_fault() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"error": "just text"}"#,
            r#"{"error": {"code": 1.5, "message": "x"}}"#,
            r#"{"error": {"code": 1}}"#,
            r#"{"disconnect": {"code": 1000}}"#,
            r#"{"disconnect": {"code": 5000}}"#,
            r#"{"disconnect": {"code": 70000}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_long_reason_is_cut_to_fit_a_close_frame_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let Ok(RpcAnswer::Disconnect { reason, .. }) = parse(&format!(
            r#"{{"disconnect": {{"code": 4000, "reason": "{reason}"}}}}"#
        )) else {
            panic!("a disconnect");
        };
        assert_eq!(reason.len(), 122);
    }
}
