//! The authenticated loop, as a table of contents: one handler per thing it waits on (the
//! client, its deliveries, the backend's RPC answers, a kick, the clock). Each handler says
//! whether the connection goes on; the loop's value is the close reason.

use tokio::time::{Instant, sleep_until};

use super::calls::{Answered, Finished};
use super::expiry::ExpiryEvent;
use super::heartbeat::Beat;
use super::rules::{self, Reply};
use super::transport::{ClientEvent, MAX_BATCH, Transport};
use super::{Authenticated, CloseReason, Closing, Connection, Lost, SessionContext};
use crate::channels::ClaimGrants;
use crate::hub::{Control, Delivery, Fell, Inbound};
use crate::protocol::ServerMessage;
use crate::upstream::Caller;

/// What to do after handling one event.
enum Next {
    Continue,
    Close(CloseReason),
}

impl From<Result<(), Lost>> for Next {
    fn from(written: Result<(), Lost>) -> Self {
        match written {
            Ok(()) => Next::Continue,
            Err(Lost) => Next::Close(CloseReason::ConnectionLost),
        }
    }
}

impl<T: Transport> Connection<Authenticated, T> {
    /// The authenticated loop, until one of its handlers ends it: the reason why.
    pub async fn serve(&mut self, ctx: &SessionContext) -> CloseReason {
        // One timer for everything on the clock: the heartbeat, the JWT's expiry and the
        // subscription tokens' deadlines, set to whichever comes first.
        let clock = sleep_until(self.state.next_deadline());
        tokio::pin!(clock);
        loop {
            let next = tokio::select! {
                // Boxed: client messages are rare next to the connection's lifetime, and
                // handling one (a refresh queries MongoDB) needs the most state.
                event = self.transport.next_event(ctx.max_message_bytes) => {
                    Box::pin(self.on_client_event(ctx, event)).await
                }
                inbound = self.state.membership.next() => self.on_inbound(ctx, inbound).await,
                // Boxed, as the rarer handlers are: the task every connection keeps is then
                // sized by the hot ones (a delivery) alone.
                finished = self.state.calls.next() => {
                    Box::pin(self.on_rpc_answer(ctx, finished)).await
                }
                kick = self.open.kicked() => Next::Close(CloseReason::Kicked(kick)),
                () = &mut clock => Box::pin(self.on_clock(ctx)).await,
            };
            if let Next::Close(reason) = next {
                return reason;
            }
            let deadline = self.state.next_deadline();
            if clock.deadline() != deadline {
                clock.as_mut().reset(deadline);
            }
        }
    }

    /// Leaves every channel and the pipelines (by dropping the membership): what is left is
    /// the means to tell the client why.
    pub fn leave(mut self, ctx: &SessionContext, reason: CloseReason) -> Closing<T> {
        log::debug!(
            "{} (user {}) leaving: {reason:?}",
            self.id(),
            self.state.user_id
        );
        self.state.leave_all(ctx);
        // Leaving the broadcast pipeline happens here, by dropping the membership.
        let Connection {
            open,
            transport,
            state,
        } = self;
        drop(state);
        Closing {
            open,
            transport,
            reason,
        }
    }

    /// The client did something: it and whatever else the transport already holds are
    /// handled together, their replies written at once. A client that pipelines requests (a
    /// page subscribing to its channels) costs one write, not one per request.
    async fn on_client_event(
        &mut self,
        ctx: &SessionContext,
        event: Result<ClientEvent, CloseReason>,
    ) -> Next {
        self.state.heartbeat.seen(Instant::now());
        let event = match event {
            Ok(event) => event,
            Err(reason) => return Next::Close(reason),
        };
        let mut replies = Vec::new();
        let mut next = self.handle(event, ctx, &mut replies).await;
        while matches!(next, Next::Continue) && replies.len() < MAX_BATCH {
            match self.transport.buffered_event(ctx.max_message_bytes) {
                Some(Ok(event)) => next = self.handle(event, ctx, &mut replies).await,
                Some(Err(reason)) => next = Next::Close(reason),
                None => break,
            }
        }
        if let Next::Close(reason) = self.send_messages(ctx, &replies).await {
            return Next::Close(reason);
        }
        next
    }

    /// Something for this connection from the hub: deliveries (with whatever else is already
    /// waiting, in one write), a recovery, or the server's request.
    async fn on_inbound(&mut self, ctx: &SessionContext, inbound: Result<Inbound, Fell>) -> Next {
        match inbound {
            Err(fell) => Next::Close(fell.into()),
            Ok(Inbound::Control(control)) => Box::pin(self.on_control(ctx, control)).await,
            Ok(Inbound::Recovered(recovered)) => Box::pin(self.on_recovered(ctx, recovered)).await,
            Ok(Inbound::Delivery(first)) => {
                // Under load, one system call then carries several messages.
                let batch = match self.state.membership.with_waiting(first, MAX_BATCH) {
                    Ok(batch) => batch,
                    Err(fell) => return Next::Close(fell.into()),
                };
                let next = self.deliver(ctx, &batch).await;
                for published_at in batch.iter().filter_map(|d| d.published_at) {
                    ctx.metrics
                        .broadcast_fanout_seconds
                        .observe(published_at.elapsed().as_secs_f64());
                }
                next
            }
        }
    }

    /// The server asked something of this connection (a server-side subscription, a revoked
    /// subscription token).
    async fn on_control(&mut self, ctx: &SessionContext, control: Control) -> Next {
        let replies = self.state.on_control(ctx, control).await;
        self.send_messages(ctx, &replies).await
    }

    /// What a subscribe recovered, written before anything that came after, in writes of at
    /// most MAX_BATCH.
    async fn on_recovered(&mut self, ctx: &SessionContext, recovered: Vec<Delivery>) -> Next {
        for chunk in recovered.chunks(MAX_BATCH) {
            if let Next::Close(reason) = self.deliver(ctx, chunk).await {
                return Next::Close(reason);
            }
        }
        Next::Continue
    }

    /// The backend answered an RPC.
    async fn on_rpc_answer(&mut self, ctx: &SessionContext, finished: Finished) -> Next {
        match finished.answer(ctx) {
            Answered::Reply(reply) => self.send_messages(ctx, &[reply]).await,
            Answered::Close(reason) => Next::Close(reason),
        }
    }

    /// A deadline passed: the heartbeat's, the JWT's, or a subscription token's.
    async fn on_clock(&mut self, ctx: &SessionContext) -> Next {
        let now = Instant::now();
        let timing = &ctx.timing;
        if self
            .state
            .heartbeat
            .next_deadline()
            .is_some_and(|at| at <= now)
        {
            let heartbeat = self.state.heartbeat;
            let (beat, next) =
                heartbeat.fire(now, timing.heartbeat_interval, timing.client_timeout);
            self.state.heartbeat = next;
            match beat {
                Beat::Silent => return Next::Close(CloseReason::HeartbeatTimeout),
                Beat::Probe => {
                    if ctx.written(self.transport.probe()).await.is_err() {
                        return Next::Close(CloseReason::ConnectionLost);
                    }
                    if !T::PROBE_ANSWERED {
                        self.state.heartbeat.seen(Instant::now());
                    }
                }
            }
        }
        if self.state.expiry.next_deadline() <= now {
            let (event, next) = self.state.expiry.fire();
            self.state.expiry = next;
            match event {
                ExpiryEvent::Expired => return Next::Close(CloseReason::TokenExpired),
                ExpiryEvent::Notice { expires_at } => {
                    let notice = ServerMessage::TokenExpiring { expires_at }.encode();
                    if let Next::Close(reason) = self.send_messages(ctx, &[notice]).await {
                        return Next::Close(reason);
                    }
                }
            }
        }
        if self
            .state
            .tokens
            .next_deadline()
            .is_some_and(|at| at <= now)
        {
            let notices = self.state.on_token_deadline(ctx).await;
            return self.send_messages(ctx, &notices).await;
        }
        Next::Continue
    }

    /// Handles one client message; its replies go to `out`, written by the caller.
    async fn handle(
        &mut self,
        event: ClientEvent,
        ctx: &SessionContext,
        out: &mut Vec<String>,
    ) -> Next {
        if matches!(event, ClientEvent::Text(_) | ClientEvent::Binary) {
            ctx.metrics.messages_in.inc();
        }
        match rules::reply_to(&event) {
            Reply::Text(text) => out.push(text),
            Reply::Channel { request, id } => {
                out.extend(self.state.on_request(ctx, request, id).await);
            }
            Reply::Refresh { token, id } => {
                let verified = match rules::check_jwt(&token, &ctx.jwt, &self.state.user_id) {
                    Err(reason) => return Next::Close(reason),
                    Ok(verified) => verified,
                };
                self.state.expiry = ctx.timing.expiry_of(verified.expires_at);
                self.state.membership.set_jti(verified.jti.as_deref());
                self.state.jti.clone_from(&verified.jti);
                self.state.publish_grants = ClaimGrants::from_claim(&verified.publish);
                // Boxed for the same reason as the authentication phase: refreshes are rare,
                // and the MongoDB query's state would size every connection.
                let revocation = Box::pin(ctx.not_revoked(verified.jti.as_deref()));
                if let Err(reason) = revocation.await {
                    return Next::Close(reason);
                }
                log::info!(
                    connection_id:% = self.id(), user_id = verified.sub.as_str();
                    "{} refreshed, now valid until {}",
                    self.id(),
                    verified.expires_at
                );
                let welcome = ServerMessage::Authenticated {
                    user_id: &verified.sub,
                    expires_at: verified.expires_at,
                    id,
                };
                out.push(welcome.encode());
                let claims = ClaimGrants::from_claim(&verified.channels);
                out.extend(self.state.on_refresh(ctx, claims).await);
            }
            Reply::Rpc { method, data, id } => {
                // Taken out for the call, so the caller (made only for a call that starts)
                // can be read off the state beside it.
                let mut calls = std::mem::take(&mut self.state.calls);
                out.extend(calls.call(ctx, || self.state.caller(ctx), &method, data, id));
                self.state.calls = calls;
            }
            Reply::Nothing => {}
            Reply::Close(reason) => return Next::Close(reason),
        }
        Next::Continue
    }

    /// Writes messages for this connection alone (and whatever the transport owes), in one
    /// write.
    async fn send_messages(&mut self, ctx: &SessionContext, messages: &[String]) -> Next {
        let texts: Vec<&str> = messages.iter().map(String::as_str).collect();
        ctx.send(&mut self.transport, &texts).await.into()
    }

    /// Writes deliveries (at most MAX_BATCH) in the transport's shared form, in one write.
    async fn deliver(&mut self, ctx: &SessionContext, deliveries: &[Delivery]) -> Next {
        let written = ctx.written(self.transport.deliver(deliveries)).await;
        if written.is_ok() {
            ctx.metrics.messages_out.inc_by(deliveries.len() as u64);
        }
        written.into()
    }
}

impl Authenticated {
    /// The next deadline on the clock: the heartbeat's, the JWT's or a subscription token's.
    fn next_deadline(&self) -> Instant {
        [
            self.heartbeat.next_deadline(),
            Some(self.expiry.next_deadline()),
            self.tokens.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| self.expiry.next_deadline())
    }

    /// Who asks, as every call to the app's backend says.
    pub(super) fn caller(&self, ctx: &SessionContext) -> Caller {
        Caller {
            user_id: self.user_id.clone(),
            connection_id: format!("{}@{}", self.connection, ctx.bus.node().id),
            node: ctx.bus.node().id.to_string(),
            jti: self.jti.clone(),
            client_ip: self.client_ip,
        }
    }
}
