//! A batch of numbered events as it is written: each history channel's share of it (appended
//! to its history), what of it goes to `cluster_events`, and where its publications went.
//! Shared by the writer's plain batches and the transactional writes (`transaction.rs`).

use std::borrow::Cow;
use std::collections::HashMap;

use super::{Event, EventDocument};
use crate::channels::HistoryOptions;
use crate::store::{Append, StreamTop};

/// One history channel's share of a batch: where its publications sit, in batch order.
pub struct Appends {
    channel: String,
    options: HistoryOptions,
    /// (document index, stream index within the document).
    places: Vec<(usize, usize)>,
}

/// Each history channel's share of `documents` (whose streams have `options`), in order.
pub fn gather_appends(
    documents: &[EventDocument],
    options: &[Vec<HistoryOptions>],
) -> Vec<Appends> {
    let mut appends: Vec<Appends> = Vec::new();
    let mut by_channel: HashMap<&str, usize> = HashMap::new();
    for (d, (document, options)) in documents.iter().zip(options).enumerate() {
        for (s, (stream, options)) in document.event.streams().iter().zip(options).enumerate() {
            let index = *by_channel.entry(&stream.channel).or_insert_with(|| {
                appends.push(Appends {
                    channel: stream.channel.clone(),
                    options: *options,
                    places: Vec::new(),
                });
                appends.len() - 1
            });
            appends[index].places.push((d, s));
        }
    }
    appends
}

/// The history appends of `appends`, with the data of `documents`.
pub fn appends_of<'a>(documents: &'a [EventDocument], appends: &'a [Appends]) -> Vec<Append<'a>> {
    appends
        .iter()
        .map(|append| Append {
            channel: &append.channel,
            options: append.options,
            data: append
                .places
                .iter()
                .map(|&(d, _)| match &documents[d].event {
                    Event::Publications { data, .. } => data.as_str(),
                    _ => "null",
                })
                .collect(),
        })
        .collect()
}

/// What of an event goes to `cluster_events`: all but a publication's history channels,
/// which their histories' change events carry. A publication only into history channels has
/// nothing left.
pub fn for_cluster_events(document: &EventDocument) -> Option<Cow<'_, EventDocument>> {
    match &document.event {
        Event::Publications { channels, data, .. } if !document.event.streams().is_empty() => {
            if channels.is_empty() {
                return None;
            }
            let plain = EventDocument {
                event: Event::Publications {
                    channels: channels.clone(),
                    streams: Vec::new(),
                    data: data.clone(),
                },
                partitions: document.partitions.clone(),
                id: document.id,
                node: document.node.clone(),
                n: document.n,
                created_at: document.created_at,
            };
            Some(Cow::Owned(plain))
        }
        _ => Some(Cow::Borrowed(document)),
    }
}

/// Fills in each publication's offset and epoch in its history channels.
pub fn place(documents: &mut [EventDocument], appends: &[Appends], placed: Vec<Vec<StreamTop>>) {
    for (append, tops) in appends.iter().zip(placed) {
        for (&(d, s), top) in append.places.iter().zip(tops) {
            if let Event::Publications { streams, .. } = &mut documents[d].event {
                streams[s].offset = top.offset;
                streams[s].epoch = top.epoch;
            }
        }
    }
}
