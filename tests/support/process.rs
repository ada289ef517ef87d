//! Child process helpers: free loopback ports, signals, waits with deadlines and log tails.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::wait_until_blocking;

/// How many log lines a failure message shows.
pub const LOG_TAIL_LINES: usize = 40;

/// Returns `n` distinct free loopback ports.
///
/// Each port comes from binding `127.0.0.1:0`. All listeners stay open until every port has
/// been read, so the ports are distinct, and are then closed for the caller to bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local address of a bound listener")
                .port()
        })
        .collect()
}

/// Opens `path` for appending (creating it), for a child's stdout or stderr.
pub fn append_log(path: &Path) -> Stdio {
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", path.display()));
    Stdio::from(file)
}

/// Returns the last `lines` lines of the log at `path`, or a note if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to the process `pid` with the `kill`
/// command. A process that has already exited is not an error.
pub fn send_signal(pid: u32, signal: &str) {
    // A non-zero exit status means the process no longer exists, which is fine.
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("run the kill command");
}

/// Returns the exit status of `child` if it has exited, without blocking.
pub fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().expect("query child process status")
}

/// Waits up to `deadline` for `child` to exit, blocking the current thread.
pub fn wait_exit_blocking(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until_blocking(deadline, || {
        status = exited(child);
        status.is_some()
    });
    status
}

/// Sends SIGKILL to `child` and reaps it.
pub fn kill9(child: &mut Child) -> ExitStatus {
    // `kill` fails only when the child has already been reaped, and `wait` then reports it.
    let _ = child.kill();
    child.wait().expect("wait for a killed child process")
}

/// Sends SIGTERM to `child` and waits up to `deadline` for it to exit; sends SIGKILL if it
/// does not. Returns the exit status.
pub fn terminate(child: &mut Child, deadline: Duration) -> ExitStatus {
    if let Some(status) = exited(child) {
        return status;
    }
    send_signal(child.id(), "TERM");
    match wait_exit_blocking(child, deadline) {
        Some(status) => status,
        None => kill9(child),
    }
}
