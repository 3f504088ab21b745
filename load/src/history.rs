//! History and recovery scenarios (docs/BENCHMARKS.md, "History and recovery"):
//! - `history-publish`: publications into history channels through the API, as fast as the
//!   publishers go or at a set rate: publications/s and publish latency.
//! - `jitter`: subscribers whose connections are cut every ~15 s for ~2 s while publications
//!   flow, resubscribing with `since` (after AnyCable's nodejs-websocket-bench): how many got
//!   every publication, and the replay latency from the cut to the recovered publication.
//! - `restart-storm`: subscribers on one node, the node killed, publications made meanwhile
//!   through another, the node started again, every subscriber reconnecting with the browser
//!   client's backoff: time until all have recovered, and MongoDB reads per recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use ticketgate_client::Backoff;
use ticketgate_client::protocol::{ClientMessage, Position, ServerMessage};
use tokio::sync::Mutex;

use crate::Target;
use crate::client::{CHANNEL_PREFIX, Clients, Socket};
use crate::measure::{CpuWatch, percentiles_ms};
use crate::scenarios::{Report, clients, word_padding};

/// A small xorshift generator: cut times and backoff jitter, the same every run.
struct Dice(u64);

impl Dice {
    fn new(seed: usize) -> Self {
        Dice(0x9e37_79b9_7f4a_7c15 ^ (seed as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }

    /// A number in [0, 1).
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn channel_of(k: usize, channels: usize) -> String {
    format!("{CHANNEL_PREFIX}{}", k % channels.max(1))
}

/// Subscribes, from `since` when given; the `subscribed` reply's position and `recovered`.
async fn subscribe(
    socket: &mut Socket,
    channel: &str,
    since: Option<&Position>,
) -> Result<(Position, Option<bool>), String> {
    let request = ClientMessage::Subscribe {
        id: None,
        channel: channel.to_owned(),
        since: since.cloned(),
        token: None,
    };
    socket.send_text(request.to_text()).await?;
    loop {
        let (message, text) =
            match tokio::time::timeout(Duration::from_secs(30), socket.next_message()).await {
                Ok(Ok(Some(read))) => read,
                Ok(Ok(None)) => return Err("the connection ended while subscribing".into()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("no subscribed within 30 s".into()),
            };
        match message {
            ServerMessage::Subscribed {
                epoch,
                offset,
                recovered,
                ..
            } => {
                let position = Position {
                    epoch: epoch
                        .ok_or("subscribed without an epoch: is the namespace's history on?")?,
                    offset: offset.unwrap_or(0),
                };
                return Ok((position, recovered));
            }
            ServerMessage::Error { .. } => return Err(format!("subscribe refused: {text}")),
            _ => {}
        }
    }
}

/// Opens `count` connections, `concurrency` at a time, each subscribed to its channel: each
/// with its index (its user and channel; they complete in any order) and its position.
async fn open_subscribed(
    clients: &Arc<Clients>,
    count: usize,
    concurrency: usize,
) -> Result<Vec<(usize, Socket, Position)>, String> {
    stream::iter(0..count)
        .map(|k| {
            let clients = Arc::clone(clients);
            async move {
                let (mut socket, _) = clients.authenticate(k).await.map_err(|e| e.to_string())?;
                let (position, _) =
                    subscribe(&mut socket, &channel_of(k, clients.channels), None).await?;
                Ok((k, socket, position))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// What one subscriber saw of its channel.
#[derive(Default, Debug)]
struct Seen {
    last: Option<Position>,
    gaps: u64,
    repeats: u64,
}

impl Seen {
    /// Takes a publication; true when it is new.
    fn take(&mut self, offset: u64, epoch: &str) -> bool {
        if let Some(last) = &self.last
            && last.epoch == epoch
        {
            if offset <= last.offset {
                self.repeats += 1;
                return false;
            }
            if offset != last.offset + 1 {
                self.gaps += 1;
            }
        }
        self.last = Some(Position {
            epoch: epoch.to_owned(),
            offset,
        });
        true
    }

    fn offset(&self) -> u64 {
        self.last.as_ref().map_or(0, |p| p.offset)
    }
}

/// Publishes one publication into `channel`; its position.
async fn publish(
    clients: &Clients,
    base_url: &str,
    api_key: &str,
    channel: &str,
    data: Value,
) -> Result<Position, String> {
    let response = clients
        .http
        .post(format!("{base_url}/api/channels/{channel}/publish"))
        .bearer_auth(api_key)
        .json(&json!({ "data": data }))
        .send()
        .await
        .map_err(|e| format!("publishing: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("publish answer: {e}"))?;
    match (
        status.as_u16(),
        body["offset"].as_u64(),
        body["epoch"].as_str(),
    ) {
        (202, Some(offset), Some(epoch)) => Ok(Position {
            epoch: epoch.to_owned(),
            offset,
        }),
        _ => Err(format!(
            "publishing: {status} {body} (is the namespace's history on?)"
        )),
    }
}

fn publish_url(target: &Target, given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| target.urls[0].clone())
        .trim_end_matches('/')
        .to_owned()
}

/// `history-publish`'s parameters.
#[derive(clap::Args)]
pub struct PublishPlan {
    /// Publications per second in all; 0: as fast as the publishers go.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub publishers: usize,
    /// Bytes of padding (words) in each publication's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    #[arg(long)]
    pub publish_url: Option<String>,
}

pub async fn history_publish(
    target: &Target,
    secret: &str,
    plan: PublishPlan,
) -> Result<Report, String> {
    let clients = clients(target, secret)?;
    let url = publish_url(target, &plan.publish_url);
    let padding = word_padding(plan.size);
    let cpu = CpuWatch::start(&target.gateway_pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(plan.duration_secs);
    let publishers = plan.publishers.max(1);
    let interval =
        (plan.rate > 0.0).then(|| Duration::from_secs_f64(publishers as f64 / plan.rate));
    let failures = AtomicU64::new(0);
    let tasks = (0..publishers).map(|p| {
        let (clients, url, padding, plan, failures) = (&clients, &url, &padding, &plan, &failures);
        async move {
            let mut latencies = Vec::new();
            // Each publisher's ticks start at its own phase, so together they publish at an
            // even pace rather than all at once every interval.
            let mut ticks = interval.map(|every| {
                let phase = every.mul_f64(p as f64 / publishers as f64);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticks
            });
            let mut i = p;
            while Instant::now() < deadline {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                let channel = channel_of(i, clients.channels);
                let sent = Instant::now();
                match publish(
                    clients,
                    url,
                    &plan.api_key,
                    &channel,
                    json!({"i": i, "pad": padding}),
                )
                .await
                {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(why) => {
                        // The first few reasons, so a failed run says what failed.
                        if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("history-publish: {channel}: {why}");
                        }
                    }
                }
                i += publishers;
            }
            latencies
        }
    });
    let mut latencies: Vec<Duration> = futures_util::future::join_all(tasks).await.concat();
    let wall = started.elapsed().as_secs_f64();
    let (gateway_cpu, own_cpu) = cpu.elapsed();
    let published = latencies.len();
    let rate = published as f64 / wall;
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    let failures = failures.into_inner();
    Ok(Report {
        summary: format!(
            "history-publish: {published} publications over {} channels in {wall:.1}s = {rate:.0}/s \
             ({} asked); latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; {failures} failed; \
             gateway CPU {}",
            clients.channels,
            if plan.rate > 0.0 {
                format!("{:.0}/s", plan.rate)
            } else {
                "as fast as it goes".into()
            },
            gateway_cpu.map_or("?".into(), |c| format!("{c:.1}s")),
        ),
        json: json!({
            "scenario": "history-publish", "channels": clients.channels, "publishers": publishers,
            "rate_asked": plan.rate, "published": published, "failures": failures,
            "seconds": wall, "publications_per_second": rate,
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "gateway_cpu_seconds": gateway_cpu, "generator_cpu_seconds": own_cpu,
        }),
    })
}

/// `jitter`'s parameters.
#[derive(clap::Args)]
pub struct JitterPlan {
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Publications per second in all, over --channels channels in turn.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Each connection is cut after a random 0.5 to 1.5 times this.
    #[arg(long, default_value_t = 15.0)]
    pub cut_every_secs: f64,
    /// How long a cut connection stays away.
    #[arg(long, default_value_t = 2.0)]
    pub cut_for_secs: f64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    #[arg(long)]
    pub publish_url: Option<String>,
}

/// One jitter subscriber's record.
#[derive(Default)]
struct JitterOutcome {
    seen: Seen,
    cuts: u64,
    not_recovered: u64,
    errors: Vec<String>,
    replays: Vec<Duration>,
}

pub async fn jitter(target: &Target, secret: &str, plan: JitterPlan) -> Result<Report, String> {
    let clients = Arc::new(clients(target, secret)?);
    let plan = Arc::new(plan);
    let url = publish_url(target, &plan.publish_url);
    let publishing = Arc::new(AtomicBool::new(true));
    // The channels' latest offsets once publishing stopped: every subscriber reads up to it.
    let final_tops: Arc<Mutex<Option<HashMap<String, u64>>>> = Arc::default();

    // Everyone subscribed first, so the publications all have an audience.
    let mut subscribers = Vec::new();
    for (k, socket, position) in
        open_subscribed(&clients, plan.connections, plan.concurrency).await?
    {
        let (clients, plan, publishing, final_tops) = (
            Arc::clone(&clients),
            Arc::clone(&plan),
            Arc::clone(&publishing),
            Arc::clone(&final_tops),
        );
        subscribers.push(tokio::spawn(async move {
            jitter_subscriber(
                k,
                socket,
                position,
                &clients,
                &plan,
                &publishing,
                &final_tops,
            )
            .await
        }));
    }

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tops: HashMap<String, u64> = HashMap::new();
    let padding = word_padding(plan.size);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(plan.duration_secs) {
        ticks.tick().await;
        let channel = channel_of(i, clients.channels);
        let position = publish(
            &clients,
            &url,
            &plan.api_key,
            &channel,
            json!({"i": i, "pad": padding}),
        )
        .await?;
        tops.insert(channel, position.offset);
        i += 1;
    }
    let published = i;
    *final_tops.lock().await = Some(tops);
    publishing.store(false, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for subscriber in subscribers {
        outcomes.push(subscriber.await.map_err(|e| e.to_string())?);
    }
    let complete = outcomes
        .iter()
        .filter(|o| o.seen.gaps == 0 && o.not_recovered == 0 && o.errors.is_empty())
        .count();
    let (gaps, repeats, not_recovered, cuts) = outcomes.iter().fold((0, 0, 0, 0), |acc, o| {
        (
            acc.0 + o.seen.gaps,
            acc.1 + o.seen.repeats,
            acc.2 + o.not_recovered,
            acc.3 + o.cuts,
        )
    });
    let first_error = outcomes
        .iter()
        .flat_map(|o| o.errors.first())
        .next()
        .cloned();
    let mut replays: Vec<Duration> = outcomes
        .iter()
        .flat_map(|o| o.replays.iter().copied())
        .collect();
    let replayed = replays.len();
    let (p50, p99, max) = percentiles_ms(&mut replays);
    Ok(Report {
        summary: format!(
            "jitter: {} subscribers, {published} publications over {} channels, {cuts} cuts: \
             {complete} got every publication ({:.1}%); gaps {gaps}, repeats {repeats}, not recovered \
             {not_recovered}; replay (cut to recovered) p50 {:.2} s, p99 {:.2} s, max {:.2} s over {replayed} replays{}",
            plan.connections,
            clients.channels,
            100.0 * complete as f64 / plan.connections.max(1) as f64,
            p50 / 1000.0,
            p99 / 1000.0,
            max / 1000.0,
            first_error
                .as_ref()
                .map_or(String::new(), |e| format!("; first error: {e}")),
        ),
        json: json!({
            "scenario": "jitter", "subscribers": plan.connections, "channels": clients.channels,
            "publications": published, "rate": plan.rate, "cuts": cuts,
            "cut_every_secs": plan.cut_every_secs, "cut_for_secs": plan.cut_for_secs,
            "complete_subscribers": complete, "gaps": gaps, "repeats": repeats,
            "not_recovered": not_recovered, "first_error": first_error,
            "replay_ms": {"p50": p50, "p99": p99, "max": max, "count": replayed},
        }),
    })
}

async fn jitter_subscriber(
    k: usize,
    socket: Socket,
    position: Position,
    clients: &Clients,
    plan: &JitterPlan,
    publishing: &AtomicBool,
    final_tops: &Mutex<Option<HashMap<String, u64>>>,
) -> JitterOutcome {
    let channel = channel_of(k, clients.channels);
    let mut dice = Dice::new(k);
    let mut outcome = JitterOutcome::default();
    outcome.seen.last = Some(position);
    let mut socket = Some(socket);
    // When the connection was cut, and the offset that the resubscribe found latest.
    let mut replay: Option<(Instant, u64)> = None;
    let mut cut_at: Option<Instant> = None;
    loop {
        let mut live = match socket.take() {
            Some(live) => live,
            None => {
                let reconnected = async {
                    let (mut socket, _) =
                        clients.authenticate(k).await.map_err(|e| e.to_string())?;
                    let since = outcome.seen.last.clone();
                    let reply = subscribe(&mut socket, &channel, since.as_ref()).await?;
                    Ok::<_, String>((socket, reply))
                };
                match reconnected.await {
                    Ok((socket, (latest, recovered))) => {
                        if recovered != Some(true) {
                            outcome.not_recovered += 1;
                            outcome.seen.last = Some(latest.clone());
                        }
                        if let Some(cut) = cut_at.take() {
                            replay = Some((cut, latest.offset));
                        }
                        socket
                    }
                    Err(e) => {
                        outcome.errors.push(e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        };
        if let Some((cut, target)) = replay
            && outcome.seen.offset() >= target
        {
            outcome.replays.push(cut.elapsed());
            replay = None;
        }
        let next_cut =
            Instant::now() + Duration::from_secs_f64(plan.cut_every_secs * (0.5 + dice.roll()));
        // Once publishing stopped: how long this subscriber may still wait for the last ones.
        let mut patience: Option<Instant> = None;
        loop {
            let still_publishing = publishing.load(Ordering::Relaxed);
            if !still_publishing {
                let done = final_tops
                    .lock()
                    .await
                    .as_ref()
                    .map(|tops| tops.get(&channel).copied().unwrap_or(0));
                if done.is_some_and(|top| outcome.seen.offset() >= top) {
                    return outcome;
                }
                let deadline =
                    *patience.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                if Instant::now() > deadline {
                    outcome.errors.push(format!(
                        "the last publications never came (had {})",
                        outcome.seen.offset()
                    ));
                    return outcome;
                }
            } else if Instant::now() >= next_cut {
                break;
            }
            // Short waits, so the cut and the end are both noticed on time.
            let wait = if still_publishing {
                next_cut
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500))
            } else {
                Duration::from_millis(500)
            };
            let message = match tokio::time::timeout(wait, live.next_message()).await {
                Err(_) => continue,
                Ok(Ok(Some((message, _)))) => message,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    outcome
                        .errors
                        .push("the gateway ended the connection".into());
                    break;
                }
            };
            if let ServerMessage::Publication::<IgnoredAny> {
                offset: Some(offset),
                epoch: Some(epoch),
                ..
            } = message
            {
                outcome.seen.take(offset, &epoch);
                if let Some((cut, target)) = replay
                    && offset >= target
                {
                    outcome.replays.push(cut.elapsed());
                    replay = None;
                }
            }
        }
        // The cut: the TCP connection goes, without a WebSocket close, for a while.
        drop(live);
        outcome.cuts += 1;
        cut_at = Some(Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(plan.cut_for_secs)).await;
    }
}

/// `restart-storm`'s parameters.
#[derive(clap::Args)]
pub struct StormPlan {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Publications into each channel while the node is down.
    #[arg(long, default_value_t = 10)]
    pub missed: usize,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Another node, alive throughout: the missed publications go through it.
    #[arg(long)]
    pub publish_url: String,
    /// A shell command that starts the node again on the same address (it is killed with
    /// SIGKILL through --gateway-pid first).
    #[arg(long)]
    pub restart_command: String,
}

/// The clients' reconnect delays (`ticketgate_client::Backoff`, the browser client's rules):
/// 0.5 s doubling to 30 s, each delay between half and all of that; a refused ticket's
/// `Retry-After` replaces the backoff (that long plus up to half again) without growing it.
/// The draws come from the client's dice, so a run is the same every time.
struct Reconnect {
    step: u32,
    backoff: Backoff,
}

impl Reconnect {
    fn new() -> Self {
        Reconnect {
            step: 0,
            backoff: Backoff::default(),
        }
    }

    fn delay(&mut self, retry_after: Option<Duration>, dice: &mut Dice) -> Duration {
        if let Some(asked) = retry_after {
            return self.backoff.after_retry_after(asked, dice.roll());
        }
        self.step += 1;
        self.backoff.delay_rolled(self.step - 1, dice.roll())
    }
}

pub async fn restart_storm(
    target: &Target,
    secret: &str,
    plan: StormPlan,
) -> Result<Report, String> {
    let clients = Arc::new(clients(target, secret)?);
    let &[pid] = target.gateway_pids.as_slice() else {
        return Err("restart-storm needs the node's --gateway-pid (one node)".into());
    };
    let node_url = clients.gateways[0].base_url.clone();
    let sockets = open_subscribed(&clients, plan.connections, plan.concurrency).await?;
    eprintln!(
        "restart-storm: {} subscribed; killing the node",
        sockets.len()
    );
    // SAFETY: kill(2) with a pid and a signal number; nothing else is touched.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    // Each client notices its connection is gone and starts reconnecting with backoff, as
    // the browser client does, while the missed publications are made through the other node.
    let tops: Arc<tokio::sync::OnceCell<HashMap<String, u64>>> = Arc::default();
    let restarted: Arc<tokio::sync::OnceCell<Instant>> = Arc::default();
    let refusals: Arc<Refusals> = Arc::default();
    let mut recoveries = Vec::new();
    for (k, mut socket, position) in sockets {
        let (clients, tops, restarted, refusals) = (
            Arc::clone(&clients),
            Arc::clone(&tops),
            Arc::clone(&restarted),
            Arc::clone(&refusals),
        );
        recoveries.push(tokio::spawn(async move {
            while let Ok(Some(_)) = socket.next_text().await {}
            drop(socket);
            storm_subscriber(k, position, &clients, &tops, &restarted, &refusals).await
        }));
    }
    let url = plan.publish_url.trim_end_matches('/').to_owned();
    let mut latest = HashMap::new();
    let publications: Vec<Result<Position, String>> =
        stream::iter(0..clients.channels * plan.missed)
            .map(|i| {
                let (clients, url, api_key) = (&clients, &url, &plan.api_key);
                async move {
                    publish(
                        clients,
                        url,
                        api_key,
                        &channel_of(i, clients.channels),
                        json!({"missed": i}),
                    )
                    .await
                }
            })
            .buffered(16)
            .collect()
            .await;
    for (i, publication) in publications.into_iter().enumerate() {
        let position = publication?;
        let top = latest.entry(channel_of(i, clients.channels)).or_insert(0);
        *top = position.offset.max(*top);
    }
    let _ = tops.set(latest);
    let started = Instant::now();
    let _ = restarted.set(started);
    eprintln!(
        "restart-storm: {} publications made; starting the node",
        clients.channels * plan.missed
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(&plan.restart_command)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("the restart command: {e}"))?;

    let mut done = Vec::new();
    let mut failures = Vec::new();
    // The recovered clients' sockets, held until the figures are read.
    let mut back = Vec::new();
    let mut attempts = 0;
    for recovery in recoveries {
        match recovery.await.map_err(|e| e.to_string())? {
            Ok((at, tries, socket)) => {
                done.push(at.saturating_duration_since(started));
                attempts += tries;
                back.push(socket);
            }
            Err(e) => failures.push(e),
        }
    }
    let all = done.iter().max().copied().unwrap_or_default();
    let recovered = done.len();
    let (p50, p99, _) = percentiles_ms(&mut done);
    let metrics = clients
        .http
        .get(format!("{node_url}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let reads = metric("ticketgate_history_reads_total");
    let counted = metric("ticketgate_recoveries_total{result=\"recovered\"}");
    drop(back);
    Ok(Report {
        summary: format!(
            "restart-storm: {recovered}/{} subscribers over {} channels recovered {} missed publications each; \
             all recovered {:.2} s after the restart began (p50 {:.2} s, p99 {:.2} s), {attempts} connection attempts; \
             the node read history {reads:.0} times for {counted:.0} recoveries ({:.4} reads per recovery); \
             failed attempts: {}{}",
            plan.connections,
            clients.channels,
            plan.missed,
            all.as_secs_f64(),
            p50 / 1000.0,
            p99 / 1000.0,
            reads / counted.max(1.0),
            refusals.summary(),
            failures.first().map_or(String::new(), |e| format!(
                "; {} failed, first: {e}",
                failures.len()
            )),
        ),
        json: json!({
            "scenario": "restart-storm", "subscribers": plan.connections, "channels": clients.channels,
            "missed_per_channel": plan.missed, "recovered": recovered, "failures": failures.len(),
            "first_failure": failures.first(), "seconds_until_all_recovered": all.as_secs_f64(),
            "recovered_after_ms": {"p50": p50, "p99": p99}, "connection_attempts": attempts,
            "history_reads": reads, "recoveries_counted": counted,
            "reads_per_recovery": reads / counted.max(1.0),
        }),
    })
}

/// Why the storm's connection attempts failed, by kind, for the report.
#[derive(Default)]
struct Refusals(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Refusals {
    fn count(&self, error: &ticketgate_client::Error) {
        let kind = match error {
            // "ticket refused: 503 store_unavailable"
            ticketgate_client::Error::Ticket { status, code, .. } => {
                format!("ticket refused: {status} {code}")
            }
            // Without the URL, which differs per request.
            other => other
                .to_string()
                .split(" for url (")
                .map(|part| part.split_once("): ").map_or(part, |(_, rest)| rest))
                .collect::<Vec<_>>()
                .join(": ")
                .chars()
                .take(160)
                .collect(),
        };
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn summary(&self) -> String {
        let tally = self.0.lock().unwrap();
        tally
            .iter()
            .map(|(kind, n)| format!("{n} × {kind}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Reconnects with backoff until the node is back, resubscribes with `since`, and reads up to
/// the channel's latest offset: when that happened, and how many connection attempts it took.
async fn storm_subscriber(
    k: usize,
    since: Position,
    clients: &Clients,
    tops: &tokio::sync::OnceCell<HashMap<String, u64>>,
    restarted: &tokio::sync::OnceCell<Instant>,
    refusals: &Refusals,
) -> Result<(Instant, u32, Socket), String> {
    let channel = channel_of(k, clients.channels);
    let mut dice = Dice::new(k);
    let mut attempt = 0;
    let mut reconnect = Reconnect::new();
    let mut retry_after = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut socket = loop {
        tokio::time::sleep(reconnect.delay(retry_after, &mut dice)).await;
        attempt += 1;
        // Before the restart began, an attempt can only fail: skip the work, keep the timing.
        if restarted.get().is_none() {
            continue;
        }
        match clients.authenticate(k).await {
            Ok((socket, _)) => break socket,
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(e) => {
                refusals.count(&e);
                retry_after = match e {
                    ticketgate_client::Error::Ticket { retry_after, .. } => retry_after,
                    _ => None,
                };
            }
        }
    };
    // A subscribe refused as `unavailable` (MongoDB busy) is asked again, as a client would.
    let mut tries = 0;
    let mut reconnect = Reconnect::new();
    let (now, recovered) = loop {
        match subscribe(&mut socket, &channel, Some(&since)).await {
            Err(e) if e.contains(r#""error":"unavailable""#) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(reconnect.delay(None, &mut dice)).await;
            }
            other => break other?,
        }
    };
    if recovered != Some(true) {
        return Err(format!(
            "{channel}: not recovered from {since:?}: {now:?}, {recovered:?}"
        ));
    }
    let top = tops
        .get()
        .and_then(|tops| tops.get(&channel).copied())
        .unwrap_or(0);
    let mut seen = Seen {
        last: Some(since),
        ..Seen::default()
    };
    while seen.offset() < top {
        let message =
            match tokio::time::timeout(Duration::from_secs(30), socket.next_message()).await {
                Ok(Ok(Some((message, _)))) => message,
                _ => {
                    return Err(format!(
                        "{channel}: the recovered publications stopped at {}",
                        seen.offset()
                    ));
                }
            };
        if let ServerMessage::Publication {
            offset: Some(offset),
            epoch: Some(epoch),
            ..
        } = message
        {
            seen.take(offset, &epoch);
        }
    }
    if seen.gaps > 0 || seen.repeats > 0 {
        return Err(format!(
            "{channel}: {} gaps, {} repeats",
            seen.gaps, seen.repeats
        ));
    }
    // Still subscribed afterwards, as a reconnected client stays.
    Ok((Instant::now(), attempt, socket))
}
