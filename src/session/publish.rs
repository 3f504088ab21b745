//! A client's publication: `{"type":"publish","channel","data","id"}`. Allowed in a namespace
//! with `client_publish` when the connection's JWT's `publish` claim covers the channel, or,
//! with `publish_proxy`, when the app's backend says so (possibly replacing the data). It then
//! goes out exactly as one from the server API: through the bus, numbered in a history
//! namespace. A connection's publications are handled one at a time, in the order sent.

use serde_json::value::RawValue;

use super::channels::{Messages, checked};
use super::{Authenticated, SessionContext};
use crate::bus::Command;
use crate::channels::ClientPublish;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::upstream::UpstreamError;
use crate::upstream::publish::Verdict;

impl Authenticated {
    pub(super) async fn publish(
        &mut self,
        ctx: &SessionContext,
        channel: &str,
        data: &RawValue,
        id: Option<&RawValue>,
    ) -> Messages {
        let refuse = |code: ErrorCode, detail: Option<&RawValue>| {
            ctx.metrics
                .client_publications
                .with_label_values(&[code.as_str()])
                .inc();
            vec![
                ServerMessage::Error {
                    error: code,
                    channel: Some(channel),
                    id,
                    message: code.message(),
                    detail,
                }
                .encode(),
            ]
        };
        let (name, options) = match checked(&ctx.channels.namespaces, channel) {
            Ok(checked) => checked,
            Err(code) => return refuse(code, None),
        };
        let granted = self.publish_grants.allows(name.as_str());
        let verdict = match options.client_publish {
            ClientPublish::Off => return refuse(ErrorCode::PermissionDenied, None),
            _ if granted => Verdict::Allow,
            ClientPublish::Granted => return refuse(ErrorCode::PermissionDenied, None),
            ClientPublish::GrantedOrProxied => {
                let caller = self.caller(ctx);
                match ctx
                    .upstream
                    .judge_publication(&caller, name.as_str(), data)
                    .await
                {
                    Ok(verdict) => verdict,
                    Err(UpstreamError::Timeout) => {
                        return refuse(ErrorCode::UpstreamTimeout, None);
                    }
                    Err(UpstreamError::Unavailable(_) | UpstreamError::Disabled) => {
                        return refuse(ErrorCode::UpstreamUnavailable, None);
                    }
                }
            }
        };
        let data = match verdict {
            Verdict::Allow => data.to_owned(),
            Verdict::AllowWith(replaced) => replaced,
            Verdict::Refuse(error) => return refuse(ErrorCode::PermissionDenied, Some(&error)),
        };
        if let Some(history) = options.history
            && data.get().len() > history.max_publication_bytes()
        {
            return refuse(ErrorCode::PublicationTooLarge, None);
        }
        let receipt = match ctx
            .bus
            .send(Command::publish([(name.clone(), options)], data))
            .await
        {
            Ok(receipt) => receipt,
            Err(e) => {
                log::warn!("publishing a client's publication: {e}");
                return refuse(ErrorCode::Unavailable, None);
            }
        };
        ctx.metrics
            .client_publications
            .with_label_values(&["published"])
            .inc();
        let stream = receipt.streams.into_iter().next();
        vec![
            ServerMessage::Published {
                channel: name.as_str(),
                id,
                offset: stream.as_ref().map(|s| s.offset),
                epoch: stream.as_ref().map(|s| s.epoch.as_str()),
            }
            .encode(),
        ]
    }
}
