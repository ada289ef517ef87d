//! One etcd member process: its command line, its lifecycle and its health probe.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::super::process;
use super::STOP_DEADLINE;

/// How long one health probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The key a health probe reads with a linearizable get.
const PROBE_KEY: &str = "tonic-etcd-test/health";

/// Everything needed to (re)start one member, and its process while it runs.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) name: String,
    pub(super) client_port: u16,
    pub(super) peer_port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
    /// `n0=http://127.0.0.1:<peer port>,...`
    pub(super) initial_cluster: String,
    pub(super) token: String,
    /// TLS on the client URL, if any; peers always talk plain HTTP on loopback.
    pub(super) tls: Option<MemberTls>,
    pub(super) child: Option<Child>,
}

/// The files and PEM text a member serving TLS to its clients needs, and its probes too.
#[derive(Debug, Clone)]
pub(super) struct MemberTls {
    pub(super) ca_file: PathBuf,
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    /// Whether clients must present a certificate signed by the CA.
    pub(super) client_cert_auth: bool,
    /// The CA, and the client certificate and key the probes present.
    pub(super) ca_pem: String,
    pub(super) client_cert_pem: String,
    pub(super) client_key_pem: String,
}

impl Member {
    /// The client URL: `https://` when the member serves TLS.
    pub(super) fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL.
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Whether the process has been spawned and not yet found dead or stopped.
    pub(super) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns etcd with stdout and stderr appended to the member's log.
    ///
    /// On a data directory that already holds a member, etcd ignores the `--initial-*` flags,
    /// so the same command line serves both the first start and a restart.
    pub(super) fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd member {} already runs",
            self.name
        );
        let mut command = Command::new("etcd");
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(self.tls_args())
            .stdout(process::append_log(&self.log))
            .stderr(process::append_log(&self.log));
        // etcd reads any ETCD_* variable as a flag; keep the caller's environment out.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd (is /usr/bin/etcd installed?): {e}"));
        self.child = Some(child);
    }

    /// The command-line flags for TLS on the client URL, if any.
    fn tls_args(&self) -> Vec<std::ffi::OsString> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cert-file".into(),
            tls.cert_file.clone().into(),
            "--key-file".into(),
            tls.key_file.clone().into(),
            "--trusted-ca-file".into(),
            tls.ca_file.clone().into(),
        ];
        if tls.client_cert_auth {
            args.push("--client-cert-auth".into());
        }
        args
    }

    /// Kills the process with SIGKILL and reaps it, if it runs (a frozen one too).
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    /// Freezes the process with SIGSTOP, if it runs: its sockets stay open, and nothing
    /// answers on them.
    pub(super) fn freeze(&self) {
        if let Some(child) = &self.child {
            process::send_signal(child.id(), "STOP");
        }
    }

    /// Lets a frozen process run again with SIGCONT, if it runs.
    pub(super) fn thaw(&self) {
        if let Some(child) = &self.child {
            process::send_signal(child.id(), "CONT");
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit, if it runs.
    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, STOP_DEADLINE);
        }
    }

    /// Checks that a running member has not exited. An exited member is spawned again if
    /// `respawn` (its port may have been taken for a moment), and is an error otherwise.
    pub(super) fn check_alive(&mut self, respawn: bool) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let Some(status) = process::exited(child) else {
            return Ok(());
        };
        self.child = None;
        if !respawn {
            return Err(format!(
                "etcd member {} exited: {status}\n{}",
                self.name,
                self.log_tail()
            ));
        }
        self.spawn();
        Ok(())
    }

    /// Whether the member has a leader and serves a linearizable read, within
    /// [`PROBE_TIMEOUT`].
    pub(super) async fn is_healthy(&self) -> bool {
        let probe = async {
            let mut client = self.probe_client().await?;
            let status = client.status().await.ok()?;
            if status.leader() == 0 {
                return None;
            }
            client.get(PROBE_KEY, None).await.ok()
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Some(_))
        )
    }

    /// Whether this member reports itself as the leader, within [`PROBE_TIMEOUT`].
    pub(super) async fn is_leader(&self) -> bool {
        let probe = async {
            let mut client = self.probe_client().await?;
            let status = client.status().await.ok()?;
            let me = status.header()?.member_id();
            Some(status.leader() == me)
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Some(true))
        )
    }

    /// The last lines of the member's log, headed by its name.
    pub(super) fn log_tail(&self) -> String {
        let tail = process::log_tail(&self.log, process::LOG_TAIL_LINES);
        format!(
            "--- etcd {} log ({}) ---\n{tail}\n",
            self.name,
            self.log.display()
        )
    }

    /// A client to this member only, with short timeouts, for probes.
    async fn probe_client(&self) -> Option<Client> {
        let options = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT);
        let options = with_tls(options, self.tls.as_ref());
        Client::connect([self.endpoint()], Some(options)).await.ok()
    }
}

/// Adds the member's CA and client certificate to `options` when it serves TLS.
#[cfg(feature = "tls")]
pub(super) fn with_tls(options: ConnectOptions, tls: Option<&MemberTls>) -> ConnectOptions {
    use etcd_client::{Certificate, Identity, TlsOptions};
    match tls {
        Some(tls) => options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(
                    &tls.client_cert_pem,
                    &tls.client_key_pem,
                )),
        ),
        None => options,
    }
}

/// Without the `tls` feature no member serves TLS, so there is nothing to add.
#[cfg(not(feature = "tls"))]
pub(super) fn with_tls(options: ConnectOptions, _tls: Option<&MemberTls>) -> ConnectOptions {
    options
}
