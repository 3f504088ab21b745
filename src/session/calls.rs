//! A connection's RPCs while they wait for the backend. They run inside the connection's own
//! task, beside its reads and writes, so answers go out as they come (in any order, matched by
//! `id`), and a connection that closes drops its waiting calls: the backend's late answers go
//! nowhere.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde_json::value::RawValue;

use super::{CloseReason, SessionContext};
use crate::protocol::{RpcFailure, RpcFailureCode, ServerMessage};
use crate::upstream::rpc::RpcAnswer;
use crate::upstream::{Caller, Upstream, UpstreamError};

/// The calls waiting; allocated at a connection's first RPC only.
#[derive(Default)]
pub struct Calls {
    waiting: Option<Box<FuturesUnordered<BoxFuture<'static, Finished>>>>,
}

/// One call's end.
pub struct Finished {
    id: Box<RawValue>,
    outcome: Result<RpcAnswer, UpstreamError>,
}

/// What the connection does with an answer.
pub enum Answered {
    Reply(String),
    Close(CloseReason),
}

impl Calls {
    /// How many calls are waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.as_ref().map_or(0, |waiting| waiting.len())
    }

    /// Calls the backend for `caller`; the answer comes out of [`Calls::next`].
    pub fn start(
        &mut self,
        upstream: &Arc<Upstream>,
        caller: Caller,
        method: &str,
        data: &RawValue,
        id: &RawValue,
    ) {
        let (upstream, method, data, id) = (
            Arc::clone(upstream),
            method.to_owned(),
            data.to_owned(),
            id.to_owned(),
        );
        let call = async move {
            let outcome = upstream.rpc(&caller, &method, &data).await;
            Finished { id, outcome }
        };
        self.waiting
            .get_or_insert_with(Default::default)
            .push(Box::pin(call));
    }

    /// The next call to finish; never resolves while none is waiting.
    pub async fn next(&mut self) -> Finished {
        match self.waiting.as_mut() {
            Some(waiting) if !waiting.is_empty() => {
                waiting.next().await.expect("a call is waiting")
            }
            _ => std::future::pending().await,
        }
    }
}

impl Finished {
    /// The message for the client, or the close the backend asked for.
    pub fn answer(self, ctx: &SessionContext) -> Answered {
        let id = &*self.id;
        let (result, reply) = match &self.outcome {
            Ok(RpcAnswer::Result(result)) => {
                ("result", ServerMessage::RpcResult { id, result }.encode())
            }
            Ok(RpcAnswer::Error(error)) => (
                "error",
                ServerMessage::RpcError {
                    id,
                    error: RpcFailure::Backend(error),
                }
                .encode(),
            ),
            Ok(RpcAnswer::Disconnect { code, reason }) => {
                ctx.metrics.rpcs.with_label_values(&["disconnect"]).inc();
                return Answered::Close(CloseReason::ByBackend {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            Err(UpstreamError::Timeout) => failed(id, RpcFailureCode::UpstreamTimeout),
            // Disabled cannot happen here: the session answers `upstream_disabled` itself.
            Err(UpstreamError::Unavailable(_) | UpstreamError::Disabled) => {
                failed(id, RpcFailureCode::UpstreamUnavailable)
            }
        };
        ctx.metrics.rpcs.with_label_values(&[result]).inc();
        Answered::Reply(reply)
    }
}

/// The gateway's own `rpc_error`, with its metric label.
pub fn failed(id: &RawValue, code: RpcFailureCode) -> (&'static str, String) {
    (
        code.as_str(),
        ServerMessage::RpcError {
            id,
            error: code.failure(),
        }
        .encode(),
    )
}
