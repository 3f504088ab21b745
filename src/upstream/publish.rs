//! The publish proxy: a client's publication into a namespace with `publish_proxy = true`,
//! not granted by its JWT's `publish` claim, is put to `POST {UPSTREAM_URL}/publish`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Caller, Upstream, UpstreamError};

/// What the gateway posts to `/publish`.
#[derive(Serialize)]
struct PublishCall<'a> {
    channel: &'a str,
    data: &'a RawValue,
    #[serde(flatten)]
    caller: &'a Caller,
}

/// What the backend decided about a publication.
#[derive(Debug)]
pub enum Verdict {
    /// `{"result": {}}`: published as the client wrote it.
    Allow,
    /// `{"result": {"data": X}}`: published with X instead.
    AllowWith(Box<RawValue>),
    /// `{"error": {…}}`: refused; the object goes to the client under `detail`.
    Refuse(Box<RawValue>),
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Allowed>,
    #[serde(default)]
    error: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Allowed {
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

impl Upstream {
    pub async fn judge_publication(
        &self,
        caller: &Caller,
        channel: &str,
        data: &RawValue,
    ) -> Result<Verdict, UpstreamError> {
        let call = PublishCall {
            channel,
            data,
            caller,
        };
        self.ask("/publish", &call, parse_verdict).await
    }
}

pub fn parse_verdict(body: &[u8]) -> Result<Verdict, String> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not the documented JSON: {e}"))?;
    match answer {
        Answer {
            error: Some(error), ..
        } if error.get().starts_with('{') => Ok(Verdict::Refuse(error)),
        Answer { error: Some(_), .. } => Err("an error must be an object".into()),
        Answer {
            result: Some(Allowed { data: Some(data) }),
            ..
        } => Ok(Verdict::AllowWith(data)),
        Answer {
            result: Some(Allowed { data: None }),
            ..
        } => Ok(Verdict::Allow),
        Answer { result: None, .. } => Err("the answer has neither result nor error".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_as_documented() {
        let parse = |json: &str| parse_verdict(json.as_bytes());
        assert!(matches!(parse(r#"{"result": {}}"#), Ok(Verdict::Allow)));
        let Ok(Verdict::AllowWith(data)) = parse(r#"{"result": {"data": {"clean": true}}}"#) else {
            panic!("replaced data");
        };
        assert_eq!(data.get(), r#"{"clean": true}"#);
        let Ok(Verdict::Refuse(error)) = parse(r#"{"error": {"code": 403, "message": "muted"}}"#)
        else {
            panic!("a refusal");
        };
        assert_eq!(error.get(), r#"{"code": 403, "message": "muted"}"#);
        for bad in ["", "{}", "[]", r#"{"result": 1}"#, r#"{"error": "no"}"#] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
