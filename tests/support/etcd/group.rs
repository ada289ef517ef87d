//! The members of one etcd cluster and the directory that holds them.

use std::time::Duration;

use tempfile::TempDir;

use super::super::process;
use super::HEALTH_DEADLINE;
use super::member::{Member, MemberTls};

/// How many times `start` tries fresh ports when a member exits at once (port taken).
const START_ATTEMPTS: usize = 3;

/// The members of one cluster and the directory that holds their data and logs.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) members: Vec<Member>,
    /// Holds every member's data directory and log; removed on drop, after the kills.
    dir: TempDir,
}

impl Group {
    /// Starts an `n`-member cluster, with fresh ports and directory on each attempt.
    pub(super) async fn start(n: usize) -> Group {
        Group::start_with(n, None).await
    }

    /// Like [`Group::start`], with TLS on every member's client URL if `tls` is given.
    pub(super) async fn start_with(n: usize, tls: Option<MemberTls>) -> Group {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut group = Group::plan(n, tls.clone());
            group.members.iter_mut().for_each(Member::spawn);
            match group.wait_healthy(false).await {
                Ok(()) => return group,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// Chooses ports, names and paths for `n` members. Spawns nothing.
    fn plan(n: usize, tls: Option<MemberTls>) -> Group {
        let dir = tempfile::Builder::new()
            .prefix("tonic-etcd-test-")
            .tempdir()
            .expect("create a temporary directory for etcd");
        let ports = process::free_ports(2 * n);
        let token = format!("tonic-etcd-test-{}", dir.path().display());
        let peers: Vec<(String, u16)> = (0..n)
            .map(|i| (format!("n{i}"), ports[2 * i + 1]))
            .collect();
        let initial_cluster = peers
            .iter()
            .map(|(name, port)| format!("{name}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = peers
            .into_iter()
            .enumerate()
            .map(|(i, (name, peer_port))| Member {
                client_port: ports[2 * i],
                peer_port,
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                tls: tls.clone(),
                name,
                child: None,
            })
            .collect();
        Group { members, dir }
    }

    /// Starts member `i` again and waits until it is healthy.
    pub(super) async fn restart(&mut self, i: usize) {
        self.members[i].stop();
        self.members[i].spawn();
        if let Err(e) = self.wait_healthy(true).await {
            panic!("etcd member {i} did not come back: {e}");
        }
    }

    /// Stops member `i`, removes its data directory, starts it again on the same ports with
    /// the same flags (so the same member and cluster ids) and waits until it is healthy: an
    /// etcd that has lost its data, back at revision 1.
    pub(super) async fn restart_wiped(&mut self, i: usize) {
        self.members[i].stop();
        let dir = &self.members[i].data_dir;
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        self.members[i].spawn();
        if let Err(e) = self.wait_healthy(true).await {
            panic!("etcd member {i} did not come back wiped: {e}");
        }
    }

    /// Waits until every running member is healthy. A member that exits is spawned again
    /// if `respawn`, and fails the wait otherwise.
    async fn wait_healthy(&mut self, respawn: bool) -> Result<(), String> {
        let end = tokio::time::Instant::now() + HEALTH_DEADLINE;
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            for member in &mut self.members {
                member.check_alive(respawn)?;
            }
            if self.all_healthy().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                return Err(format!(
                    "not healthy within {HEALTH_DEADLINE:?}\n{}",
                    self.log_tails()
                ));
            }
        }
    }

    /// Whether every running member passes its health probe.
    async fn all_healthy(&self) -> bool {
        for member in self.members.iter().filter(|m| m.is_running()) {
            if !member.is_healthy().await {
                return false;
            }
        }
        true
    }

    /// The log tails of all members, for a failure message.
    fn log_tails(&self) -> String {
        self.members.iter().map(Member::log_tail).collect()
    }
}

impl Drop for Group {
    /// Kills every member, so that no etcd outlives the test; the directory goes next.
    fn drop(&mut self) {
        self.members.iter_mut().for_each(Member::kill);
    }
}
