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
use crate::protocol::{ErrorCode, RpcFailure, RpcFailureCode, ServerMessage};
use crate::upstream::rpc::RpcAnswer;
use crate::upstream::{Caller, UpstreamError};

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

/// How one `rpc` ends: what the client is told, counted once in `ticketgate_rpcs_total` by
/// [`RpcEnd::answer`], the only place an `rpc_result` or `rpc_error` is made.
enum RpcEnd<'a> {
    /// The backend's `result`.
    Result(&'a RawValue),
    /// The backend's own error object.
    BackendError(&'a RawValue),
    /// The gateway's `rpc_error`: the call failed, or was refused before it started.
    Failed(RpcFailureCode),
    /// No backend is configured: the plain `error` `upstream_disabled`.
    Disabled,
    /// The backend asked to close the connection.
    Disconnect { code: u16, reason: &'a str },
}

impl RpcEnd<'_> {
    /// The metric's `result` label.
    fn label(&self) -> &'static str {
        match self {
            RpcEnd::Result(_) => "result",
            RpcEnd::BackendError(_) => "error",
            RpcEnd::Failed(code) => code.as_str(),
            RpcEnd::Disabled => "upstream_disabled",
            RpcEnd::Disconnect { .. } => "disconnect",
        }
    }

    fn answer(self, ctx: &SessionContext, id: &RawValue) -> Answered {
        ctx.metrics.rpcs.with_label_values(&[self.label()]).inc();
        let error = match self {
            RpcEnd::Result(result) => {
                return Answered::Reply(ServerMessage::RpcResult { id, result }.encode());
            }
            RpcEnd::Disabled => {
                let refusal = ServerMessage::error(ErrorCode::UpstreamDisabled, None, Some(id));
                return Answered::Reply(refusal.encode());
            }
            RpcEnd::Disconnect { code, reason } => {
                return Answered::Close(CloseReason::ByBackend {
                    code,
                    reason: reason.to_owned(),
                });
            }
            RpcEnd::BackendError(error) => RpcFailure::Backend(error),
            RpcEnd::Failed(code) => code.failure(),
        };
        Answered::Reply(ServerMessage::RpcError { id, error }.encode())
    }
}

impl Calls {
    /// How many calls are waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.as_ref().map_or(0, |waiting| waiting.len())
    }

    /// Calls the backend for an `rpc` by `caller`, whose answer comes out of [`Calls::next`];
    /// or refuses it at once (no backend, too many calls waiting), with the refusal to send.
    pub fn call(
        &mut self,
        ctx: &SessionContext,
        caller: impl FnOnce() -> Caller,
        method: &str,
        data: &RawValue,
        id: &RawValue,
    ) -> Option<String> {
        let refused = if !ctx.upstream.is_enabled() {
            Some(RpcEnd::Disabled)
        } else if self.waiting() >= ctx.upstream.max_rpc_per_connection {
            Some(RpcEnd::Failed(RpcFailureCode::TooManyRequests))
        } else {
            None
        };
        if let Some(end) = refused {
            return match end.answer(ctx, id) {
                Answered::Reply(refusal) => Some(refusal),
                Answered::Close(_) => None,
            };
        }
        let (upstream, caller, method, data, id) = (
            Arc::clone(&ctx.upstream),
            caller(),
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
        None
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
        let end = match &self.outcome {
            Ok(RpcAnswer::Result(result)) => RpcEnd::Result(result),
            Ok(RpcAnswer::Error(error)) => RpcEnd::BackendError(error),
            Ok(RpcAnswer::Disconnect { code, reason }) => RpcEnd::Disconnect {
                code: *code,
                reason,
            },
            Err(UpstreamError::Timeout) => RpcEnd::Failed(RpcFailureCode::UpstreamTimeout),
            // Disabled cannot happen here: `Calls::call` answers `upstream_disabled` itself.
            Err(UpstreamError::Unavailable(_) | UpstreamError::Disabled) => {
                RpcEnd::Failed(RpcFailureCode::UpstreamUnavailable)
            }
        };
        end.answer(ctx, &self.id)
    }
}
