//! Prints every publication of some channels as one JSON line on stdout, reconnecting and
//! recovering as the client does, until interrupted (Ctrl-C) or the gateway ends the client
//! (4400, 4401, 4403). Logs go to stderr.
//!
//!   TICKETGATE_JWT=<jwt> cargo run -p ticketgate-client --example tail -- <base_url> <channel>…

use futures_util::StreamExt;
use futures_util::stream::select_all;
use serde_json::json;
use ticketgate_client::Client;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(base_url), channels) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: tail <base_url> <channel>… (the JWT in TICKETGATE_JWT)");
        return std::process::ExitCode::from(2);
    };
    if channels.is_empty() {
        eprintln!("usage: tail <base_url> <channel>… (the JWT in TICKETGATE_JWT)");
        return std::process::ExitCode::from(2);
    }
    let client = Client::builder(base_url)
        .jwt(|| async {
            std::env::var("TICKETGATE_JWT")
                .map_err(|_| "set TICKETGATE_JWT to the user's JWT".into())
        })
        .connect()
        .await;
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            eprintln!("tail: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!(
        "tail: connected as {}",
        client.user_id().unwrap_or_default()
    );
    let mut subscriptions = Vec::new();
    for channel in &channels {
        let mut subscription = client.subscribe(channel.as_str());
        if let Err(e) = subscription.ready().await {
            eprintln!("tail: {channel}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        eprintln!("tail: subscribed to {channel}");
        subscriptions.push(subscription);
    }
    let mut publications = select_all(subscriptions);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                return std::process::ExitCode::SUCCESS;
            }
            next = publications.next() => match next {
                Some(Ok(p)) => println!(
                    "{}",
                    json!({"channel": p.channel, "offset": p.offset, "epoch": p.epoch, "data": p.data})
                ),
                Some(Err(e)) => {
                    eprintln!("tail: {e}");
                    return std::process::ExitCode::FAILURE;
                }
                None => return std::process::ExitCode::SUCCESS,
            },
        }
    }
}
