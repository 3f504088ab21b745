//! The gateway as a separate process, for what only a process shows: its file descriptors,
//! memory, log output and exit code.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ticketgate_client::protocol;

use super::*;

/// The gateway: src/main.rs, built by this package (tests/Cargo.toml) from the same source.
pub const BIN: &str = env!("CARGO_BIN_EXE_ticketgate-under-test");

/// The load generator: load/src/main.rs, built the same way.
pub const LOAD_BIN: &str = env!("CARGO_BIN_EXE_ticketgate-load-under-test");

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
                let line = log_message(line);
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
            if Instant::now() >= deadline {
                // Not yet a GatewayProcess, whose drop would end it: end it here.
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ticketgate did not start:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
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

    /// Waits until the log holds `needle`, and returns the log. The log is read from a pipe by a
    /// thread, so a line can reach the test after a metric or a message that followed it did.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    ///
    /// A 408 is asked again, as RFC 9110 lets a client: on a starved test machine the
    /// request-head timer can fire before the worker reads a head that had arrived.
    pub async fn ticket(&self, http: &reqwest::Client, sub: &str) -> String {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match protocol::request_ticket(http, &self.url("/token/ws"), &jwt(sub)).await {
                Ok(ticket) => return ticket,
                Err(ticketgate_client::Error::Ticket { status: 408, .. }) if attempts < 3 => {}
                Err(e) => panic!("a ticket for {sub}: {e}"),
            }
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log line's message: the line itself in text, its `message` in JSON (LOG_FORMAT=json).
fn log_message(line: &str) -> String {
    if line.starts_with('{')
        && let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line)
        && let Some(serde_json::Value::String(message)) = fields.get("message")
    {
        return message.clone();
    }
    line.to_owned()
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
