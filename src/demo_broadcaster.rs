//! The demo broadcaster: with BROADCAST_INTERVAL_SECS > 0, publishes `{"counter": n}` to every
//! authenticated connection at that interval, so a new deployment shows traffic at once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::{MissedTickBehavior, interval_at};

use crate::hub::Hub;

pub async fn run(hub: Arc<Hub>, every: Duration) {
    let mut ticks = interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for counter in 1u64.. {
        ticks.tick().await;
        let data =
            RawValue::from_string(format!(r#"{{"counter":{counter}}}"#)).expect("valid JSON");
        hub.publish(&data);
    }
}
