//! What crosses nodes: the cluster events (messages for clients already encoded, by
//! `crate::protocol`'s encoders) and their stored form in the `cluster_events` collection.

use bson::DateTime;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::NodeId;
use super::forward::Post;
use crate::channels::{ChannelName, HistoryOptions, NamespaceOptions, partition_of};
use crate::hub::{Control, Hub, Kick, Posted};
use crate::protocol::{self, EncodedMessage, PresenceClient};

/// What the server API (or the demo broadcaster) asks the bus to do.
#[derive(Debug)]
pub enum Command {
    Broadcast(Box<RawValue>),
    Message {
        user_id: String,
        data: Box<RawValue>,
    },
    Disconnect {
        user_id: String,
    },
    Revoke {
        jti: String,
    },
    /// The same data to each channel's subscribers: `channels` without history, `streams`
    /// in history namespaces (numbered and kept).
    Publish {
        channels: Vec<ChannelName>,
        streams: Vec<(ChannelName, HistoryOptions)>,
        data: Box<RawValue>,
    },
    /// A subscriber came (`joined`) or went, in a namespace with `join_leave`.
    JoinLeave {
        channel: ChannelName,
        client: PresenceClient,
        joined: bool,
    },
    /// Server-side subscription of a user's connections.
    Subscribe {
        user_id: String,
        channel: ChannelName,
    },
    Unsubscribe {
        user_id: String,
        channel: ChannelName,
    },
    /// A client's request for a connection held by node `to` (`crate::bus::forward`).
    Post {
        to: String,
        request: u64,
        post: Post,
    },
    /// Node `to`'s request number `request` was applied so.
    PostAnswer {
        to: String,
        request: u64,
        posted: Posted,
    },
}

/// A command stamped by its node: messages for clients are encoded once, when it is stamped
/// (by `crate::protocol`), and every node delivers the same text. Field names are the stored form (docs/PROTOCOL.md); the encoded
/// message is stored as `frame`, its name from before it was clear that it is not one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Broadcast {
        #[serde(rename = "frame")]
        message: String,
    },
    Message {
        user_id: String,
        #[serde(rename = "frame")]
        message: String,
    },
    Disconnect {
        user_id: String,
    },
    Revoke {
        jti: String,
    },
    /// The data is encoded once, as JSON text; each node frames a publication only for the
    /// channels it has subscribers in (or, for a history channel, a window on it).
    Publications {
        channels: Vec<String>,
        /// The history channels, each with the offset and epoch the publication got there.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        streams: Vec<StreamPublication>,
        data: String,
    },
    /// A message for one channel's subscribers, encoded once (join and leave).
    ChannelMessage {
        channel: String,
        #[serde(rename = "frame")]
        message: String,
    },
    Subscribe {
        user_id: String,
        channel: String,
    },
    Unsubscribe {
        user_id: String,
        channel: String,
    },
    /// Handled by `crate::bus::forward` before delivery: a client's request for the inbox of
    /// session `session` on node `to`, from node `from`.
    Post {
        to: String,
        from: String,
        request: u64,
        session: String,
        seq: u64,
        messages: Vec<String>,
        body_bytes: u64,
    },
    /// Handled by `crate::bus::forward` before delivery: the answer to node `to`'s request.
    PostAnswer {
        to: String,
        request: u64,
        posted: Posted,
    },
}

impl Command {
    /// A publication of `data` to each channel, numbered and kept in those whose namespace
    /// has history.
    pub fn publish(
        channels: impl IntoIterator<Item = (ChannelName, NamespaceOptions)>,
        data: Box<RawValue>,
    ) -> Command {
        let (mut plain, mut streams) = (Vec::new(), Vec::new());
        for (channel, options) in channels {
            match options.history {
                Some(history) => streams.push((channel, history)),
                None => plain.push(channel),
            }
        }
        Command::Publish {
            channels: plain,
            streams,
            data,
        }
    }

    /// The history options of each stream a publication goes to, in order (empty for other
    /// commands).
    pub fn history_options(&self) -> Vec<HistoryOptions> {
        match self {
            Command::Publish { streams, .. } => streams.iter().map(|(_, o)| *o).collect(),
            _ => Vec::new(),
        }
    }
}

impl Event {
    /// The history channels a publication goes to (empty for other events).
    pub fn streams(&self) -> &[StreamPublication] {
        match self {
            Event::Publications { streams, .. } => streams,
            _ => &[],
        }
    }

    /// Gives each history channel of a publication its offset and epoch: `append(channel,
    /// options, data)` records the data there and answers where it went.
    pub fn number_streams(
        &mut self,
        options: &[HistoryOptions],
        mut append: impl FnMut(&str, HistoryOptions, &str) -> crate::store::StreamTop,
    ) {
        if let Event::Publications { streams, data, .. } = self {
            for (stream, options) in streams.iter_mut().zip(options) {
                let top = append(&stream.channel, *options, data);
                stream.offset = top.offset;
                stream.epoch = top.epoch;
            }
        }
    }

    /// The partitions of the channels a channel event goes to through `cluster_events` (a
    /// publication's plain channels; join and leave); None for events every node takes.
    pub fn partitions(&self) -> Option<Vec<i32>> {
        let channels: Vec<&str> = match self {
            Event::Publications { channels, .. } => channels.iter().map(String::as_str).collect(),
            Event::ChannelMessage { channel, .. } => vec![channel.as_str()],
            _ => return None,
        };
        let mut partitions: Vec<i32> = channels
            .into_iter()
            .map(|channel| partition_of(channel) as i32)
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        Some(partitions)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Broadcast { .. } => "broadcast",
            Event::Message { .. } => "message",
            Event::Disconnect { .. } => "disconnect",
            Event::Revoke { .. } => "revoke",
            Event::Publications { .. } => "publications",
            Event::ChannelMessage { .. } => "channel_message",
            Event::Subscribe { .. } => "subscribe",
            Event::Unsubscribe { .. } => "unsubscribe",
            Event::Post { .. } => "post",
            Event::PostAnswer { .. } => "post_answer",
        }
    }

    /// Delivers the event to this node's connections; returns how many it reached.
    pub fn deliver(self, hub: &Hub) -> usize {
        match self {
            Event::Broadcast { message } => hub.broadcast(&EncodedMessage::from(message)),
            Event::Message { user_id, message } => {
                hub.send_to_user(&user_id, &EncodedMessage::from(message))
            }
            Event::Disconnect { user_id } => hub.kick_user(&user_id, Kick::Disconnected),
            Event::Revoke { jti } => {
                hub.kick_jti(&jti, Kick::Revoked) + hub.revoke_subscription_token(&jti)
            }
            Event::Publications {
                channels,
                streams,
                data,
            } => {
                let Ok(data) = RawValue::from_string(data) else {
                    log::warn!("a stored publication's data is not JSON; skipped");
                    return 0;
                };
                let plain: usize = channels
                    .iter()
                    .map(|channel| {
                        hub.publish_with(channel, || protocol::publication(channel, None, &data))
                    })
                    .sum();
                let numbered: usize = streams
                    .iter()
                    .map(|stream| {
                        let position = Some((stream.offset, stream.epoch.as_str()));
                        hub.publish_stream(&stream.channel, stream.offset, &stream.epoch, || {
                            protocol::publication(&stream.channel, position, &data)
                        })
                    })
                    .sum();
                plain + numbered
            }
            Event::ChannelMessage { channel, message } => {
                hub.publish_with(&channel, || EncodedMessage::from(message))
            }
            Event::Subscribe { user_id, channel } => match ChannelName::parse(&channel) {
                Ok(channel) => hub.control_user(&user_id, &Control::Subscribe(channel)),
                Err(_) => 0,
            },
            Event::Unsubscribe { user_id, channel } => match ChannelName::parse(&channel) {
                Ok(channel) => hub.control_user(&user_id, &Control::Unsubscribe(channel)),
                Err(_) => 0,
            },
            // Forwarding's own (`Forwarding::intercept`), never delivered to connections.
            Event::Post { .. } | Event::PostAnswer { .. } => 0,
        }
    }
}

pub use crate::store::StreamPublication;

/// Numbers a node's commands. `seq` counts broadcasts only, so a client can tell a gap in one
/// node's broadcasts from messages it was never meant to see; `n` counts every event, so
/// receivers can drop anything a node sent that they already delivered.
#[derive(Debug)]
pub struct Sequencer {
    node: NodeId,
    last_seq: u64,
    last_event: u64,
}

/// A command with its numbers and encoded message.
#[derive(Debug)]
pub struct Stamped {
    pub n: u64,
    /// Broadcasts only.
    pub seq: Option<u64>,
    pub event: Event,
}

impl Sequencer {
    pub fn new(node: NodeId) -> Self {
        Sequencer {
            node,
            last_seq: 0,
            last_event: 0,
        }
    }

    pub fn stamp(&mut self, command: Command) -> Stamped {
        self.last_event += 1;
        let mut seq = None;
        let event = match command {
            Command::Broadcast(data) => {
                self.last_seq += 1;
                seq = Some(self.last_seq);
                Event::Broadcast {
                    message: protocol::broadcast(self.last_seq, self.node.as_str(), &data),
                }
            }
            Command::Message { user_id, data } => Event::Message {
                message: protocol::user_message(&data),
                user_id,
            },
            Command::Disconnect { user_id } => Event::Disconnect { user_id },
            Command::Revoke { jti } => Event::Revoke { jti },
            // The streams' offsets are the history's to give: the writer fills them in.
            Command::Publish {
                channels,
                streams,
                data,
            } => Event::Publications {
                channels: channels.iter().map(|c| c.as_str().to_owned()).collect(),
                streams: streams
                    .iter()
                    .map(|(channel, _)| StreamPublication {
                        channel: channel.as_str().to_owned(),
                        offset: 0,
                        epoch: String::new(),
                    })
                    .collect(),
                data: data.get().to_owned(),
            },
            Command::JoinLeave {
                channel,
                client,
                joined,
            } => Event::ChannelMessage {
                message: protocol::presence_change(channel.as_str(), &client, joined),
                channel: channel.as_str().to_owned(),
            },
            Command::Subscribe { user_id, channel } => Event::Subscribe {
                user_id,
                channel: channel.as_str().to_owned(),
            },
            Command::Unsubscribe { user_id, channel } => Event::Unsubscribe {
                user_id,
                channel: channel.as_str().to_owned(),
            },
            Command::Post { to, request, post } => Event::Post {
                to,
                from: self.node.as_str().to_owned(),
                request,
                session: post.session,
                seq: post.seq,
                messages: post.messages.iter().map(|m| m.to_string()).collect(),
                body_bytes: post.body_bytes as u64,
            },
            Command::PostAnswer {
                to,
                request,
                posted,
            } => Event::PostAnswer {
                to,
                request,
                posted,
            },
        };
        Stamped {
            n: self.last_event,
            seq,
            event,
        }
    }
}

/// One document of `cluster_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The publishing node's id.
    pub node: String,
    /// The publishing node's event number (see [`Sequencer`]).
    pub n: i64,
    /// The TTL index is on this field; also the start of the cross-node latency metric.
    pub created_at: DateTime,
    /// A channel event's partitions (`crate::bus::interest`): only nodes with subscribers in
    /// one of them take it from the stream. Absent on events for every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<i32>>,
    #[serde(flatten)]
    pub event: Event,
}

impl EventDocument {
    pub fn new(node: &NodeId, stamped: Stamped) -> Self {
        EventDocument {
            id: ObjectId::new(),
            node: node.as_str().to_owned(),
            n: i64::try_from(stamped.n).unwrap_or(i64::MAX),
            created_at: DateTime::now(),
            partitions: stamped.event.partitions(),
            event: stamped.event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn broadcasts_carry_seq_and_node_and_messages_neither() {
        let mut sequencer = Sequencer::new(NodeId::from("gw-1"));
        let first = sequencer.stamp(Command::Broadcast(raw(r#"{"a":1}"#)));
        let message = sequencer.stamp(Command::Message {
            user_id: "alice".into(),
            data: raw(r#""hi""#),
        });
        let second = sequencer.stamp(Command::Broadcast(raw("2")));
        assert_eq!((first.n, first.seq), (1, Some(1)));
        assert_eq!((message.n, message.seq), (2, None));
        assert_eq!((second.n, second.seq), (3, Some(2)));
        assert_eq!(
            first.event,
            Event::Broadcast {
                message: r#"{"type":"broadcast","seq":1,"node":"gw-1","data":{"a":1}}"#.into()
            }
        );
        assert_eq!(
            message.event,
            Event::Message {
                user_id: "alice".into(),
                message: r#"{"type":"message","data":"hi"}"#.into()
            }
        );
    }

    #[test]
    fn the_stored_form_round_trips_through_bson() {
        let node = NodeId::from("gw-1");
        let mut sequencer = Sequencer::new(node.clone());
        for command in [
            Command::Broadcast(raw("[1,2]")),
            Command::Message {
                user_id: "u".into(),
                data: raw("{}"),
            },
            Command::Disconnect {
                user_id: "u".into(),
            },
            Command::Revoke { jti: "j".into() },
        ] {
            let document = EventDocument::new(&node, sequencer.stamp(command));
            let stored = bson::to_document(&document).unwrap();
            assert_eq!(stored.get_str("kind").unwrap(), document.event.kind());
            assert_eq!(
                bson::from_document::<EventDocument>(stored).unwrap(),
                document
            );
        }
    }
}
