//! The demo broadcaster: with BROADCAST_INTERVAL_SECS > 0, publishes `{"counter": n}` to every
//! authenticated connection at that interval, so a new deployment shows traffic at once, and
//! the same into the channel `demo:lobby` when the `demo` namespace exists (dev mode declares
//! it). It goes through the bus like any broadcast, so in a cluster every node's counter
//! reaches every connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::{MissedTickBehavior, interval_at};

use crate::bus::{Bus, Command};
use crate::channels::{ChannelName, NamespaceOptions};

pub async fn run(bus: Arc<Bus>, every: Duration, channel: Option<(ChannelName, NamespaceOptions)>) {
    let mut ticks = interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for counter in 1u64.. {
        ticks.tick().await;
        let data =
            RawValue::from_string(format!(r#"{{"counter":{counter}}}"#)).expect("valid JSON");
        if let Some(channel) = &channel {
            let publish = Command::publish([channel.clone()], data.clone());
            if let Err(e) = bus.send(publish).await {
                log::debug!("demo publication {counter}: {e}");
            }
        }
        if let Err(e) = bus.send(Command::Broadcast(data)).await {
            log::debug!("demo broadcast {counter}: {e}");
        }
    }
}
