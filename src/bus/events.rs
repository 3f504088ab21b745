//! What crosses nodes: the cluster events, their encoding for clients and their stored form
//! in the `cluster_events` collection.

use bson::DateTime;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::NodeId;
use crate::hub::{Hub, Kick, Message};

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
}

/// A command stamped by its node: client frames are encoded once, here, and every node
/// delivers the same bytes. Field names are the stored form (docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Broadcast { frame: String },
    Message { user_id: String, frame: String },
    Disconnect { user_id: String },
    Revoke { jti: String },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Broadcast { .. } => "broadcast",
            Event::Message { .. } => "message",
            Event::Disconnect { .. } => "disconnect",
            Event::Revoke { .. } => "revoke",
        }
    }

    /// Delivers the event to this node's connections; returns how many it reached.
    pub fn deliver(self, hub: &Hub) -> usize {
        match self {
            Event::Broadcast { frame } => hub.broadcast(&Message::from(frame)),
            Event::Message { user_id, frame } => hub.send_to_user(&user_id, &Message::from(frame)),
            Event::Disconnect { user_id } => hub.kick_user(&user_id, Kick::Disconnected),
            Event::Revoke { jti } => hub.kick_jti(&jti, Kick::Revoked),
        }
    }
}

/// Numbers a node's commands. `seq` counts broadcasts only, so a client can tell a gap in one
/// node's broadcasts from messages it was never meant to see; `n` counts every event, so
/// receivers can drop anything a node sent that they already delivered.
#[derive(Debug)]
pub struct Sequencer {
    node: NodeId,
    last_seq: u64,
    last_event: u64,
}

/// A command with its numbers and encoded frame.
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
                    frame: encode(&Envelope {
                        kind: "broadcast",
                        seq,
                        node: Some(self.node.as_str()),
                        data: &data,
                    }),
                }
            }
            Command::Message { user_id, data } => Event::Message {
                frame: encode(&Envelope {
                    kind: "message",
                    seq: None,
                    node: None,
                    data: &data,
                }),
                user_id,
            },
            Command::Disconnect { user_id } => Event::Disconnect { user_id },
            Command::Revoke { jti } => Event::Revoke { jti },
        };
        Stamped {
            n: self.last_event,
            seq,
            event,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    data: &'a RawValue,
}

fn encode(envelope: &Envelope<'_>) -> String {
    serde_json::to_string(envelope).expect("serializing a RawValue cannot fail")
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
                frame: r#"{"type":"broadcast","seq":1,"node":"gw-1","data":{"a":1}}"#.into()
            }
        );
        assert_eq!(
            message.event,
            Event::Message {
                user_id: "alice".into(),
                frame: r#"{"type":"message","data":"hi"}"#.into()
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
