//! The `greeter_server` example as a child process, so that `kill -9` is real.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::oneshot;

use super::super::binaries::example_binary;
use super::super::{process, wait_for};
use super::loopback_any;

/// How long [`ServerProcess::spawn`] waits for the ready line.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The `greeter_server` example running as a child process, registered in etcd.
///
/// Its stdout is drained by a thread that ends with the process; its stderr goes to a log
/// file shown by [`ServerProcess::stderr_tail`]. `Drop` kills it with SIGKILL.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    _dir: TempDir,
}

impl ServerProcess {
    /// Runs `greeter_server --etcd <etcd_endpoints> --service <service> --addr 127.0.0.1:0
    /// --ttl <ttl_secs>` and waits up to [`READY_DEADLINE`] for its ready line
    /// (`... listening on <ip:port> ...`). Builds the example first, once per test binary.
    pub async fn spawn(etcd_endpoints: &str, service: &str, ttl_secs: u64) -> ServerProcess {
        Self::spawn_at(etcd_endpoints, service, ttl_secs, loopback_any()).await
    }

    /// Like [`ServerProcess::spawn`], but listens on `addr`.
    pub async fn spawn_at(
        etcd_endpoints: &str,
        service: &str,
        ttl_secs: u64,
        addr: SocketAddr,
    ) -> ServerProcess {
        Self::spawn_with(etcd_endpoints, service, ttl_secs, addr, &[]).await
    }

    /// Like [`ServerProcess::spawn_at`], with `extra` arguments after the others, such as
    /// `--etcd-ca <file>` or `--tls-cert <file>`.
    pub async fn spawn_with(
        etcd_endpoints: &str,
        service: &str,
        ttl_secs: u64,
        addr: SocketAddr,
        extra: &[&std::ffi::OsStr],
    ) -> ServerProcess {
        let dir = TempDir::new().expect("create a temporary directory for greeter_server");
        let stderr = dir.path().join("greeter_server.stderr.log");
        let mut child = Command::new(greeter_server_binary())
            .args(["--etcd", etcd_endpoints, "--service", service])
            .args(["--addr", &addr.to_string(), "--ttl", &ttl_secs.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(process::append_log(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn greeter_server: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().expect("greeter_server stdout is piped");
        let ready = drain_stdout(pipe, stdout.clone());
        let mut server = ServerProcess {
            child,
            addr: loopback_any(),
            stdout,
            stderr,
            _dir: dir,
        };
        match tokio::time::timeout(READY_DEADLINE, ready).await {
            Ok(Ok(addr)) => server.addr = addr,
            Ok(Err(_)) => server.fail("exited before its ready line"),
            Err(_) => server.fail(&format!("printed no ready line in {READY_DEADLINE:?}")),
        }
        server
    }

    /// The address the server listens on, from its ready line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and reaps it: no deregistration, no drain.
    pub fn kill9(&mut self) {
        process::kill9(&mut self.child);
    }

    /// Sends SIGTERM and returns at once; see [`ServerProcess::wait_exit`].
    pub fn terminate(&mut self) {
        if process::exited(&mut self.child).is_none() {
            process::send_signal(self.child.id(), "TERM");
        }
    }

    /// Waits up to `deadline` for the process to exit and returns its status.
    ///
    /// # Panics
    ///
    /// Panics if the process is still running at the deadline.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for("greeter_server to exit", deadline, || {
            let status = process::exited(child);
            async move { status }
        })
        .await
    }

    /// Every line the process has printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines lock").clone()
    }

    /// The last lines the process has printed on stderr.
    pub fn stderr_tail(&self) -> String {
        process::log_tail(&self.stderr, process::LOG_TAIL_LINES)
    }

    /// Kills the process and panics with what it printed.
    fn fail(&mut self, what: &str) -> ! {
        self.kill9();
        panic!(
            "greeter_server {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout_lines().join("\n"),
            self.stderr_tail()
        );
    }
}

impl Drop for ServerProcess {
    /// Kills the process with SIGKILL, so that no server outlives its test.
    fn drop(&mut self) {
        process::kill9(&mut self.child);
    }
}

/// Reads `pipe` line by line on a thread until the process closes it, keeping every line in
/// `lines`. The receiver gets the address of the first `listening on <addr>` line.
fn drain_stdout(
    pipe: ChildStdout,
    lines: Arc<Mutex<Vec<String>>>,
) -> oneshot::Receiver<SocketAddr> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut ready = Some(tx);
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let addr = if line.contains("listening on") {
                first_addr(&line)
            } else {
                None
            };
            // Kept before the signal, so `stdout_lines` has it once `spawn` has returned.
            lines.lock().expect("stdout lines lock").push(line);
            if let Some(addr) = addr
                && let Some(tx) = ready.take()
            {
                // The test may have given up waiting; the line is kept all the same.
                let _ = tx.send(addr);
            }
        }
    });
    rx
}

/// The first token of `line` that parses as a socket address, ignoring surrounding
/// punctuation and `key=` prefixes.
fn first_addr(line: &str) -> Option<SocketAddr> {
    line.split(|c: char| c.is_whitespace() || c == '=')
        .map(|token| token.trim_matches(|c: char| ",;\"'()<>{}".contains(c)))
        .find_map(|token| token.parse().ok())
}

/// The path of the `greeter_server` example, built once per test binary ([`example_binary`]).
fn greeter_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| example_binary("greeter_server"))
}
