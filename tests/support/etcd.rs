//! A real etcd for the tests: one member ([`Etcd`]) or three ([`EtcdCluster`]).
//!
//! Every member listens on free loopback ports, keeps its data in a private temporary
//! directory and writes its log next to it. A member that does not become healthy within
//! [`HEALTH_DEADLINE`] fails the test with the tail of its log. `Drop` kills every member
//! with SIGKILL, then removes the directory.

mod auth;
mod group;
mod member;

use std::time::Duration;

use etcd_client::{Client, CompactionOptions, ConnectOptions};

use self::group::Group;
use self::member::{Member, MemberTls};
use super::tls::TestPki;
use super::wait_for;

/// How long a member may take to become healthy after it is spawned.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(20);

/// How long `stop` waits for a member to exit after SIGTERM before it sends SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The key read to learn the current revision.
const REVISION_KEY: &str = "tonic-etcd-test/revision";

/// A single-member etcd, owned by the test.
#[derive(Debug)]
pub struct Etcd {
    group: Group,
}

impl Etcd {
    /// Starts etcd on free loopback ports with a fresh data directory and waits until it is
    /// healthy (it has a leader and serves a linearizable read).
    ///
    /// # Panics
    ///
    /// Panics with the tail of the etcd log if it does not become healthy in time.
    pub async fn start() -> Etcd {
        Etcd {
            group: Group::start(1).await,
        }
    }

    /// Starts etcd like [`Etcd::start`], but serving TLS on its client URL with `pki`'s server
    /// certificate, and requiring a client certificate signed by `pki`'s CA. The harness's
    /// own clients ([`Etcd::client`], the health probes) present `pki.client`.
    #[cfg(feature = "tls")]
    pub async fn start_tls(pki: &TestPki) -> Etcd {
        let tls = MemberTls {
            ca_file: pki.ca_file.clone(),
            cert_file: pki.server.cert_file.clone(),
            key_file: pki.server.key_file.clone(),
            client_cert_auth: true,
            ca_pem: pki.ca_pem.clone(),
            client_cert_pem: pki.client.cert_pem.clone(),
            client_key_pem: pki.client.key_pem.clone(),
        };
        Etcd {
            group: Group::start_with(1, Some(tls)).await,
        }
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` after [`Etcd::start_tls`]).
    pub fn endpoint(&self) -> String {
        self.group.members[0].endpoint()
    }

    /// A new client connected to this etcd.
    pub async fn client(&self) -> Client {
        connect(&[self.endpoint()], self.group.members[0].tls.as_ref()).await
    }

    /// Kills etcd with SIGKILL and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.group.members[0].kill();
    }

    /// Stops etcd with SIGTERM and waits for it to exit (SIGKILL after [`STOP_DEADLINE`]).
    /// Blocks the current thread while it waits, usually for well under a second.
    pub fn stop(&mut self) {
        self.group.members[0].stop();
    }

    /// Starts etcd again on the same data directory and ports, and waits until it is healthy.
    /// Stops it first if it is still running.
    ///
    /// If a port has been taken meanwhile, etcd exits and is spawned again until the
    /// [`HEALTH_DEADLINE`] passes.
    pub async fn restart(&mut self) {
        self.group.restart(0).await;
    }

    /// Stops etcd, removes its data directory and starts it again on the same address and
    /// flags, and waits until it is healthy: an etcd that lost its data (or was restored from
    /// an older snapshot) goes back in time, to revision 1, with the same cluster id.
    pub async fn restart_wiped(&mut self) {
        self.group.restart_wiped(0).await;
    }

    /// The current revision of the key-value store.
    pub async fn revision(&self) -> i64 {
        revision(self.client().await).await
    }

    /// Compacts the history at the current revision, physically, and returns that revision.
    /// A revision that is already compacted is not an error.
    pub async fn compact(&self) -> i64 {
        compact(self.client().await).await
    }
}

/// A fault on one member of a healthy cluster, which the other two outlive as a quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFault {
    /// Killed with SIGKILL: its port refuses connections.
    Dead,
    /// Frozen with SIGSTOP: its port accepts connections and nothing answers.
    Frozen,
}

/// A three-member etcd cluster (`n0`, `n1`, `n2`), owned by the test.
#[derive(Debug)]
pub struct EtcdCluster {
    group: Group,
}

impl EtcdCluster {
    /// The number of members.
    pub const SIZE: usize = 3;

    /// Starts three members on free loopback ports with a unique cluster token, and waits
    /// until every member is healthy.
    ///
    /// # Panics
    ///
    /// Panics with the log tails if the cluster does not become healthy in time.
    pub async fn start() -> EtcdCluster {
        EtcdCluster {
            group: Group::start(Self::SIZE).await,
        }
    }

    /// Starts a cluster, then puts `fault` on a follower (so that no election follows),
    /// and returns the cluster with the index of that member.
    pub async fn start_with_fault(fault: MemberFault) -> (EtcdCluster, usize) {
        let mut cluster = EtcdCluster::start().await;
        let faulty = cluster.follower_index().await;
        match fault {
            MemberFault::Dead => cluster.kill(faulty),
            MemberFault::Frozen => cluster.freeze(faulty),
        }
        (cluster, faulty)
    }

    /// The client URLs of all members, comma-separated, as the examples' `--etcd` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// A new client connected to every member but `i`, for the test's own reads while
    /// member `i` is faulty.
    pub async fn client_without(&self, i: usize) -> Client {
        let others: Vec<String> = (0..Self::SIZE)
            .filter(|&j| j != i)
            .map(|j| self.endpoint(j))
            .collect();
        connect(&others, None).await
    }

    /// The client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.group.members.iter().map(Member::endpoint).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.group.members[i].endpoint()
    }

    /// A new client connected to all three members.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints(), None).await
    }

    /// A new client connected to member `i` only.
    pub async fn member_client(&self, i: usize) -> Client {
        connect(&[self.endpoint(i)], None).await
    }

    /// The index of the current leader, waiting up to [`HEALTH_DEADLINE`] for an election.
    ///
    /// Each running member is asked for its status; the leader is the member whose own id
    /// (`header.member_id`) equals the leader id it reports.
    pub async fn leader_index(&self) -> usize {
        wait_for("an etcd cluster leader", HEALTH_DEADLINE, || {
            self.find_leader()
        })
        .await
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.group.members[i].kill();
    }

    /// Freezes member `i` with SIGSTOP: its ports stay open and it answers nothing, like a
    /// hung machine. [`EtcdCluster::thaw`] undoes it; `Drop` kills it all the same.
    pub fn freeze(&self, i: usize) {
        self.group.members[i].freeze();
    }

    /// Lets member `i` run again after [`EtcdCluster::freeze`].
    pub fn thaw(&self, i: usize) {
        self.group.members[i].thaw();
    }

    /// The index of a running member that is not the leader.
    pub async fn follower_index(&self) -> usize {
        let leader = self.leader_index().await;
        (0..Self::SIZE)
            .find(|&i| i != leader && self.group.members[i].is_running())
            .expect("a running follower")
    }

    /// Stops member `i` with SIGTERM and waits for it to exit (SIGKILL after
    /// [`STOP_DEADLINE`]), blocking the current thread.
    pub fn stop(&mut self, i: usize) {
        self.group.members[i].stop();
    }

    /// Starts member `i` again on its data directory and ports, and waits until it is
    /// healthy. Stops it first if it is still running.
    pub async fn restart(&mut self, i: usize) {
        self.group.restart(i).await;
    }

    /// The current revision of the key-value store.
    pub async fn revision(&self) -> i64 {
        revision(self.client().await).await
    }

    /// Compacts the history at the current revision, physically, and returns that revision.
    pub async fn compact(&self) -> i64 {
        compact(self.client().await).await
    }

    /// Asks each running member whether it is the leader.
    async fn find_leader(&self) -> Option<usize> {
        for (i, member) in self.group.members.iter().enumerate() {
            if member.is_running() && member.is_leader().await {
                return Some(i);
            }
        }
        None
    }
}

/// Connects a client to `endpoints`, presenting the test client certificate if they serve
/// TLS. Connecting does no I/O, so this fails only on a bad URL.
async fn connect(endpoints: &[String], tls: Option<&MemberTls>) -> Client {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    let options = member::with_tls(options, tls);
    Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect an etcd client to {endpoints:?}: {e}"))
}

/// The current revision, read from the header of a get.
async fn revision(mut client: Client) -> i64 {
    let response = client
        .get(REVISION_KEY, None)
        .await
        .unwrap_or_else(|e| panic!("get {REVISION_KEY} to read the revision: {e}"));
    response
        .header()
        .expect("a get response has a header")
        .revision()
}

/// Compacts physically at the current revision and returns it.
async fn compact(mut client: Client) -> i64 {
    let rev = revision(client.clone()).await;
    let options = CompactionOptions::new().with_physical();
    match client.compact(rev, Some(options)).await {
        Ok(_) => rev,
        Err(e) if e.to_string().contains("compacted") => rev,
        Err(e) => panic!("compact at revision {rev}: {e}"),
    }
}
