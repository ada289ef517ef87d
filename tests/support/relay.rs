//! A loopback TCP relay in front of a server, such as etcd's client port, that can cut the
//! network without touching the server.
//!
//! While closed, the relay drops every relayed connection and every new one at once: behind
//! it the server looks down, while the server itself stays up (etcd, for one, goes on
//! expiring the leases it no longer hears about), and the test can still reach it directly.
//! Frozen, it stops relaying bytes but keeps the connections open, as a network partition
//! does, and drops new ones.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP relay on a free loopback port. It owns its connections; `Drop` closes them all.
#[derive(Debug)]
pub struct Relay {
    url: String,
    open: watch::Sender<bool>,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts an open relay to `target`, given as `http://<ip>:<port>` or `<ip>:<port>`.
    ///
    /// # Panics
    ///
    /// Panics if `target` is not an `ip:port`, or if no loopback port can be bound.
    pub async fn start(target: &str) -> Relay {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("the relay target {target:?} is not http://ip:port: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("local address of the relay");
        let (open, gate) = watch::channel(true);
        let (frozen, ice) = watch::channel(false);
        let task = tokio::spawn(serve(listener, target, gate, ice));
        Relay {
            url: format!("http://{addr}"),
            open,
            frozen,
            task,
        }
    }

    /// The URL to give a client instead of the target's: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Relays new connections again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Stops relaying bytes on every connection, keeping them open, and drops new ones.
    #[allow(dead_code)] // Not every test binary freezes a relay.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// The relay's address: `127.0.0.1:<port>`.
    #[allow(dead_code)] // Not every test binary needs it.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("the relay's own address")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The connections are owned by the task, and go with it.
        self.task.abort();
    }
}

/// Accepts connections and relays each while the gate is open.
async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    gate: watch::Receiver<bool>,
    ice: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        if !*gate.borrow() || *ice.borrow() {
            // Closed or frozen: the connection is dropped at once.
            continue;
        }
        connections.spawn(relay(inbound, target, gate.clone(), ice.clone()));
    }
}

/// Copies bytes both ways until either side closes or the gate closes.
async fn relay(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut gate: watch::Receiver<bool>,
    mut ice: watch::Receiver<bool>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let frozen = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = gate.wait_for(|open| !*open) => false,
        _ = ice.wait_for(|frozen| *frozen) => true,
    };
    if frozen {
        // Both sockets stay open, and nothing moves, until the relay closes.
        let _ = gate.wait_for(|open| !*open).await;
    }
}
