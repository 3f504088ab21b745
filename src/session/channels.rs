//! An authenticated connection's channel requests and the server's decisions about its
//! subscriptions: subscribe, unsubscribe and presence; server-side subscriptions, revoked and
//! expiring subscription tokens, and grants lost at a refresh (docs/PROTOCOL.md, "Channels").
//! Every decision answers with messages; the session loop only writes them.

use crate::lifecycle::EventKind;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::expiry::{Expiry, ExpiryEvent};
use super::recovery::{HistorySource, Joined, subscribe_stream};
use super::{Authenticated, CloseReason, SessionContext};
use crate::bus::Command;
pub use crate::channels::ChannelPolicy;
use crate::channels::{
    ChannelName, ClaimGrants, Grant, HistoryOptions, NamespaceOptions, Namespaces, TokenGrant,
    grant_without_token,
};
use crate::db::Unavailable;
use crate::hub::{ConnectionId, Control, Recover};
use crate::protocol::{
    ClientMessage, ErrorCode, PresenceClient, ServerMessage, StreamPosition, UnsubscribeReason,
};

/// The subscriptions held by subscription tokens, each with its own expiry.
#[derive(Debug, Default)]
pub struct TokenExpiries {
    expiries: HashMap<ChannelName, Expiry>,
}

impl TokenExpiries {
    /// The earliest deadline, if any subscription is held by a token.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiries.values().map(Expiry::next_deadline).min()
    }

    /// The deadlines that passed: each channel's event, its state moved on.
    pub fn fire(&mut self, now: Instant) -> Vec<(ChannelName, ExpiryEvent)> {
        let mut fired = Vec::new();
        for (channel, expiry) in &mut self.expiries {
            if expiry.next_deadline() <= now {
                let (event, next) = expiry.fire();
                *expiry = next;
                fired.push((channel.clone(), event));
            }
        }
        fired
    }

    fn set(&mut self, channel: ChannelName, expiry: Expiry) {
        self.expiries.insert(channel, expiry);
    }

    fn remove(&mut self, channel: &str) {
        self.expiries.remove(channel);
    }
}

/// Encoded replies and notices to write, in order.
pub type Messages = Vec<String>;

impl Authenticated {
    /// A `subscribe`, `unsubscribe`, `presence` or `publish` from the client.
    pub async fn on_request(
        &mut self,
        ctx: &SessionContext,
        request: ClientMessage<'_>,
        id: Option<&RawValue>,
    ) -> Messages {
        let error = |code: ErrorCode, channel: &str| {
            ctx.metrics
                .channel_requests_refused
                .with_label_values(&[code.as_str()])
                .inc();
            vec![ServerMessage::error(code, Some(channel), id).encode()]
        };
        match request {
            ClientMessage::Subscribe {
                channel,
                token,
                since,
            } => {
                let (name, options) = match checked(&ctx.channels.namespaces, &channel) {
                    Ok(checked) => checked,
                    Err(code) => return error(code, &channel),
                };
                let recover = match since {
                    Some(since) => Recover::From {
                        epoch: since.epoch.into_owned(),
                        offset: since.offset,
                    },
                    None => Recover::No,
                };
                self.subscribe(ctx, name, options, token.as_deref(), recover, id)
                    .await
                    .unwrap_or_else(|code| error(code, &channel))
            }
            ClientMessage::Unsubscribe { channel } => {
                let Ok(name) = ChannelName::parse(&channel) else {
                    return error(ErrorCode::InvalidChannel, &channel);
                };
                if !self.leave(ctx, &name).await {
                    return error(ErrorCode::NotSubscribed, &channel);
                }
                vec![
                    ServerMessage::Unsubscribed {
                        channel: name.as_str(),
                        id,
                        reason: None,
                    }
                    .encode(),
                ]
            }
            ClientMessage::Presence { channel } => {
                let (name, options) = match checked(&ctx.channels.namespaces, &channel) {
                    Ok(checked) => checked,
                    Err(code) => return error(code, &channel),
                };
                if !options.presence {
                    return error(ErrorCode::PresenceDisabled, &channel);
                }
                if self.membership.subscription(name.as_str()).is_none() {
                    return error(ErrorCode::NotSubscribed, &channel);
                }
                let clients = match Box::pin(ctx.presence(&name)).await {
                    Ok(clients) => clients,
                    Err(e) => {
                        log::warn!("listing presence: {e}");
                        return error(ErrorCode::Unavailable, &channel);
                    }
                };
                vec![
                    ServerMessage::Presence {
                        channel: name.as_str(),
                        id,
                        clients: &clients,
                    }
                    .encode(),
                ]
            }
            // The session routes only channel requests here.
            ClientMessage::Publish { channel, data } => {
                Box::pin(self.publish(ctx, &channel, data, id)).await
            }
            ClientMessage::Jwt { .. }
            | ClientMessage::Ping
            | ClientMessage::Echo { .. }
            | ClientMessage::Rpc { .. } => {
                vec![ServerMessage::error(ErrorCode::BadMessage, None, id).encode()]
            }
        }
    }

    async fn subscribe(
        &mut self,
        ctx: &SessionContext,
        name: ChannelName,
        options: NamespaceOptions,
        token: Option<&str>,
        recover: Recover,
        id: Option<&RawValue>,
    ) -> Result<Messages, ErrorCode> {
        let grant = match (token, self.resubscribable.get(name.as_str())) {
            (Some(token), _) => self.token_grant(ctx, &name, token).await?,
            (None, Some(lost)) => lost.clone(),
            (None, None) => grant_without_token(options, &self.claims, &name)
                .ok_or(ErrorCode::PermissionDenied)?,
        };
        let held = self.membership.subscription(name.as_str()).cloned();
        let refreshed = token.is_some() && held.is_some();
        let grant = match held {
            // Held already: idempotent, even at the limit; a fresh token replaces the grant
            // unless the subscription has a lasting one (server-made or public).
            Some(held @ (Grant::Server | Grant::Public)) => held,
            Some(held) if token.is_none() => held,
            Some(_) => grant,
            None if self.membership.subscription_count() >= ctx.channels.max_subscriptions => {
                return Err(ErrorCode::TooManySubscriptions);
            }
            None => grant,
        };
        let position = self.hold(ctx, &name, grant, options, recover).await?;
        self.resubscribable.remove(name.as_str());
        Ok(vec![subscribed(
            &name,
            id,
            refreshed,
            false,
            position.as_ref(),
        )])
    }

    /// A subscription token for this user and exactly this channel, not revoked.
    async fn token_grant(
        &self,
        ctx: &SessionContext,
        name: &ChannelName,
        token: &str,
    ) -> Result<Grant, ErrorCode> {
        let verified = ctx
            .jwt
            .verify_subscription(token)
            .map_err(|_| ErrorCode::PermissionDenied)?;
        if verified.sub != self.user_id || verified.channel != name.as_str() {
            return Err(ErrorCode::PermissionDenied);
        }
        // Boxed: a MongoDB query's state would otherwise size every connection's task.
        Box::pin(ctx.not_revoked(verified.jti.as_deref()))
            .await
            .map_err(|reason| match reason {
                // The revocations could not be asked: try again, rather than "denied".
                CloseReason::DatabaseUnavailable => ErrorCode::Unavailable,
                _ => ErrorCode::PermissionDenied,
            })?;
        Ok(Grant::Token(Box::new(TokenGrant {
            jti: verified.jti.map(Into::into),
            expires_at: verified.expires_at,
        })))
    }

    /// Holds `name` with `grant` (new or replacing), keeping the token timers and the
    /// join announcement in step; in a history namespace, recovers from `recover` and
    /// answers where the channel stands. A new subscription in a presence namespace that
    /// MongoDB cannot record is undone (`unavailable`): presence never leaves a subscriber
    /// out.
    async fn hold(
        &mut self,
        ctx: &SessionContext,
        name: &ChannelName,
        grant: Grant,
        options: NamespaceOptions,
        recover: Recover,
    ) -> Result<Option<Position>, ErrorCode> {
        // Joins the hub only once this node's stream carries the channel (`bus::interest`);
        // held until joined. Boxed: the wait would otherwise size every connection's task.
        let _covering = if self.membership.holds(name.as_str()) {
            None
        } else {
            let covering = Box::pin(ctx.bus.cover(name)).await.map_err(|e| {
                log::warn!(
                    connection_id:% = self.connection, channel = name.as_str();
                    "subscribing: {e}"
                );
                ErrorCode::Unavailable
            })?;
            Some(covering)
        };
        let (new, position) = match options.history {
            None => (self.membership.subscribe(name, grant.clone()).1, None),
            Some(history) => {
                let asked = recover != Recover::No;
                // Boxed: a MongoDB read's state would otherwise size every connection's task.
                let source = (history, options.deliver_latest);
                let joined = Box::pin(self.join_stream(ctx, name, grant.clone(), recover, source))
                    .await
                    .map_err(|e| {
                        log::warn!(
                            connection_id:% = self.connection, channel = name.as_str();
                            "subscribing to a history channel: {e}"
                        );
                        ErrorCode::Unavailable
                    })?;
                let (joined, new) = joined;
                ctx.metrics.history_reads.inc_by(u64::from(joined.reads));
                if asked && new {
                    let result = if joined.recovered == Some(true) {
                        "recovered"
                    } else {
                        "failed"
                    };
                    ctx.metrics.recoveries.with_label_values(&[result]).inc();
                }
                let position = joined.position.map(|(epoch, offset)| Position {
                    epoch,
                    offset,
                    recovered: joined.recovered,
                });
                (new, position)
            }
        };
        match &grant {
            Grant::Token(token) => self
                .tokens
                .set(name.clone(), ctx.timing.expiry_of(token.expires_at)),
            _ => self.tokens.remove(name.as_str()),
        }
        if !new {
            return Ok(position);
        }
        if options.presence {
            let client = ctx.presence_client(self.connection, &self.user_id);
            // Boxed: a MongoDB write's state would otherwise size every connection's task.
            if let Err(e) = Box::pin(ctx.presence.add(name, &client)).await {
                log::warn!(
                    connection_id = client.connection_id.as_str(), channel = name.as_str();
                    "recording presence: {e}"
                );
                self.membership.unsubscribe(name.as_str());
                self.tokens.remove(name.as_str());
                return Err(ErrorCode::Unavailable);
            }
        }
        if options.join_leave {
            self.announce(ctx, name, true).await;
        }
        ctx.lifecycle.emit(
            ctx.subject(self.connection, &self.user_id),
            EventKind::Subscribe {
                channel: name.as_str().to_owned(),
            },
        );
        Ok(position)
    }

    async fn join_stream(
        &mut self,
        ctx: &SessionContext,
        name: &ChannelName,
        grant: Grant,
        recover: Recover,
        (options, deliver_latest): (HistoryOptions, bool),
    ) -> Result<(Joined, bool), Unavailable> {
        let store = ctx.bus.history()?;
        let source = HistorySource {
            store: &store,
            options,
            deliver_latest,
        };
        subscribe_stream(&mut self.membership, name, grant, recover, &source).await
    }

    /// Leaves `name`: the hub's table, the token timer, presence and, where the namespace
    /// has them, a leave announcement. False when the connection did not hold it.
    async fn leave(&mut self, ctx: &SessionContext, name: &ChannelName) -> bool {
        if self.membership.unsubscribe(name.as_str()).is_none() {
            return false;
        }
        self.tokens.remove(name.as_str());
        let options = ctx.channels.namespaces.options(name).unwrap_or_default();
        if options.presence {
            let connection_id = ctx
                .presence_client(self.connection, &self.user_id)
                .connection_id;
            if let Err(e) = Box::pin(ctx.presence.remove(name, &connection_id)).await {
                log::warn!(
                    connection_id = connection_id.as_str(), channel = name.as_str();
                    "removing presence: {e}"
                );
            }
        }
        if options.join_leave {
            self.announce(ctx, name, false).await;
        }
        ctx.lifecycle.emit(
            ctx.subject(self.connection, &self.user_id),
            EventKind::Unsubscribe {
                channel: name.as_str().to_owned(),
            },
        );
        true
    }

    /// Ends a subscription the server decided to end.
    async fn end(
        &mut self,
        ctx: &SessionContext,
        name: &ChannelName,
        reason: UnsubscribeReason,
    ) -> Option<String> {
        if !self.leave(ctx, name).await {
            return None;
        }
        Some(
            ServerMessage::Unsubscribed {
                channel: name.as_str(),
                id: None,
                reason: Some(reason),
            }
            .encode(),
        )
    }

    /// A server request from the mailbox.
    pub async fn on_control(&mut self, ctx: &SessionContext, control: Control) -> Messages {
        match control {
            Control::Subscribe(name) => {
                let Ok(options) = ctx.channels.namespaces.options(&name) else {
                    return Vec::new();
                };
                let position = match self
                    .hold(ctx, &name, Grant::Server, options, Recover::No)
                    .await
                {
                    Ok(position) => position,
                    Err(code) => {
                        log::warn!(
                            connection_id:% = self.connection, channel = name.as_str(), code = code.as_str();
                            "a server-side subscription failed: {}", code.as_str()
                        );
                        return Vec::new();
                    }
                };
                vec![subscribed(&name, None, false, true, position.as_ref())]
            }
            Control::Unsubscribe(name) => self
                .end(ctx, &name, UnsubscribeReason::Server)
                .await
                .into_iter()
                .collect(),
            Control::TokenRevoked(jti) => {
                self.resubscribable
                    .retain(|_, grant| grant.token_jti() != Some(&jti));
                let revoked: Vec<ChannelName> = self
                    .membership
                    .subscriptions()
                    .filter(|(_, grant)| grant.token_jti() == Some(&jti))
                    .map(|(name, _)| name.clone())
                    .collect();
                let mut messages = Vec::new();
                for name in revoked {
                    messages.extend(self.end(ctx, &name, UnsubscribeReason::Revoked).await);
                }
                messages
            }
            Control::StreamLost => self.on_stream_lost(ctx).await,
        }
    }

    /// This node's cluster stream lost its place (docs/PROTOCOL.md, "When a node loses its
    /// place"): each channel with history ends with `resubscribe`, so the client subscribes
    /// again with `since` and recovery fills the gap from MongoDB; then one `missed` names
    /// the channels without history, since what they carried (and broadcasts and user
    /// messages) cannot be had again.
    async fn on_stream_lost(&mut self, ctx: &SessionContext) -> Messages {
        let (with_history, without): (Vec<ChannelName>, Vec<ChannelName>) = self
            .membership
            .subscriptions()
            .map(|(name, _)| name.clone())
            .partition(|name| {
                ctx.channels
                    .namespaces
                    .options(name)
                    .is_ok_and(|options| options.history.is_some())
            });
        let mut messages = Vec::new();
        self.resubscribable.clear();
        for name in with_history {
            // A claim or a public namespace grants it again; a server-made or token-held
            // subscription is kept to be taken back as it was.
            if let Some(grant @ (Grant::Server | Grant::Token(_))) =
                self.membership.subscription(name.as_str())
            {
                self.resubscribable.insert(name.clone(), grant.clone());
            }
            messages.extend(self.end(ctx, &name, UnsubscribeReason::Resubscribe).await);
            ctx.metrics
                .bus_loss_notices
                .with_label_values(&["resubscribe"])
                .inc();
        }
        let mut channels: Vec<&str> = without.iter().map(ChannelName::as_str).collect();
        channels.sort_unstable();
        messages.push(
            ServerMessage::Missed {
                channels: &channels,
            }
            .encode(),
        );
        ctx.metrics
            .bus_loss_notices
            .with_label_values(&["missed"])
            .inc();
        messages
    }

    /// After an in-band refresh: the new JWT's claims replace the old, and subscriptions
    /// only the old claims allowed end.
    pub async fn on_refresh(&mut self, ctx: &SessionContext, claims: ClaimGrants) -> Messages {
        self.claims = claims;
        let lost: Vec<ChannelName> = self
            .membership
            .subscriptions()
            .filter(|(name, grant)| **grant == Grant::Claim && !self.claims.allows(name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        let mut messages = Vec::new();
        for name in lost {
            messages.extend(
                self.end(ctx, &name, UnsubscribeReason::PermissionLost)
                    .await,
            );
        }
        messages
    }

    /// A subscription token's notice or end came due.
    pub async fn on_token_deadline(&mut self, ctx: &SessionContext) -> Messages {
        let mut messages = Vec::new();
        for (name, event) in self.tokens.fire(Instant::now()) {
            match event {
                ExpiryEvent::Notice { expires_at } => messages.push(
                    ServerMessage::SubscriptionExpiring {
                        channel: name.as_str(),
                        expires_at,
                    }
                    .encode(),
                ),
                ExpiryEvent::Expired => {
                    messages.extend(self.end(ctx, &name, UnsubscribeReason::TokenExpired).await);
                }
            }
        }
        messages
    }

    /// The connection is closing: it leaves every channel's table now; its presence entries
    /// and leave announcements are done by a task of their own, so a slow MongoDB never holds
    /// up the close.
    pub fn leave_all(&mut self, ctx: &SessionContext) {
        let held: Vec<ChannelName> = self
            .membership
            .subscriptions()
            .map(|(name, _)| name.clone())
            .collect();
        let client = ctx.presence_client(self.connection, &self.user_id);
        let mut gone = Vec::new();
        for name in held {
            self.membership.unsubscribe(name.as_str());
            let options = ctx.channels.namespaces.options(&name).unwrap_or_default();
            if options.presence || options.join_leave {
                gone.push((name, options));
            }
        }
        if gone.is_empty() {
            return;
        }
        let (bus, presence) = (Arc::clone(&ctx.bus), Arc::clone(&ctx.presence));
        tokio::spawn(async move {
            for (channel, options) in gone {
                if options.presence
                    && let Err(e) = presence.remove(&channel, &client.connection_id).await
                {
                    log::warn!("removing presence: {e}");
                }
                if options.join_leave {
                    let leave = Command::JoinLeave {
                        channel,
                        client: client.clone(),
                        joined: false,
                    };
                    if let Err(e) = bus.send(leave).await {
                        log::warn!("announcing a leave: {e}");
                    }
                }
            }
        });
    }

    /// Tells the channel's subscribers, on every node, that this connection came or went
    /// (namespaces with `join_leave` only).
    async fn announce(&self, ctx: &SessionContext, name: &ChannelName, joined: bool) {
        if !ctx
            .channels
            .namespaces
            .options(name)
            .is_ok_and(|options| options.join_leave)
        {
            return;
        }
        let command = Command::JoinLeave {
            channel: name.clone(),
            client: ctx.presence_client(self.connection, &self.user_id),
            joined,
        };
        if let Err(e) = ctx.bus.send(command).await {
            log::warn!(
                "announcing a {}: {e}",
                if joined { "join" } else { "leave" }
            );
        }
    }
}

/// A history channel's position as a subscribe found it.
pub struct Position {
    epoch: Arc<str>,
    offset: u64,
    recovered: Option<bool>,
}

/// The `subscribed` reply.
fn subscribed(
    name: &ChannelName,
    id: Option<&RawValue>,
    refreshed: bool,
    server: bool,
    position: Option<&Position>,
) -> String {
    ServerMessage::Subscribed {
        channel: name.as_str(),
        id,
        refreshed,
        server,
        stream: position.map(|p| StreamPosition {
            recovered: p.recovered,
            offset: p.offset,
            epoch: &p.epoch,
        }),
    }
    .encode()
}

/// A valid name in a declared namespace, with the namespace's options.
pub(super) fn checked(
    namespaces: &Namespaces,
    channel: &str,
) -> Result<(ChannelName, NamespaceOptions), ErrorCode> {
    let name = ChannelName::parse(channel).map_err(|_| ErrorCode::InvalidChannel)?;
    let options = namespaces
        .options(&name)
        .map_err(|_| ErrorCode::UnknownNamespace)?;
    Ok((name, options))
}

impl SessionContext {
    /// How this connection appears in presence and join/leave: its id is unique in the
    /// cluster.
    pub fn presence_client(&self, connection: ConnectionId, user_id: &str) -> PresenceClient {
        PresenceClient {
            user_id: user_id.to_owned(),
            connection_id: format!("{connection}@{}", self.bus.node().id),
            node: self.bus.node().id.to_string(),
        }
    }

    /// Who is subscribed to `channel`, on every node: from MongoDB in a cluster, from this
    /// node's hub on its own.
    pub async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceClient>, Unavailable> {
        if let Some(clients) = self.presence.list(channel).await? {
            return Ok(clients);
        }
        let mut clients: Vec<PresenceClient> = self
            .hub
            .subscribers(channel.as_str())
            .into_iter()
            .map(|(connection, user)| self.presence_client(connection, &user))
            .collect();
        clients.sort();
        Ok(clients)
    }
}
