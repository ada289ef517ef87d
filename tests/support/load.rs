//! Greeter calls kept flowing through a channel and counted as they go: the load under which
//! a test kills, cuts or restarts something, and then asserts that no call failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::greeter::backend_of;
use super::lock;
use super::pb::HelloRequest;
use super::pb::greeter_client::GreeterClient;

/// How many errors a [`Tally`] keeps.
const KEPT_ERRORS: usize = 10;

/// Callers that each call the greeter back to back through one channel until stopped.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// What the callers count as they go.
#[derive(Debug, Default)]
struct Shared {
    ok: AtomicUsize,
    failed: AtomicUsize,
    backends: Mutex<BTreeMap<SocketAddr, usize>>,
    errors: Mutex<Vec<String>>,
}

/// What a [`Load`] counted, once stopped.
#[derive(Debug)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    /// Calls answered, by the server that answered.
    pub backends: BTreeMap<SocketAddr, usize>,
    /// The first few errors.
    pub errors: Vec<String>,
}

impl Load {
    /// Starts `callers` tasks calling through `channel`. A call that takes longer than
    /// `call_timeout` counts as failed.
    pub fn start(channel: Channel, callers: usize, call_timeout: Duration) -> Load {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let mut tasks = JoinSet::new();
        for i in 0..callers {
            let client = GreeterClient::new(channel.clone());
            let caller =
                call_until_stopped(i, client, call_timeout, shared.clone(), stopped.clone());
            tasks.spawn(caller);
        }
        Load {
            stop,
            shared,
            tasks,
        }
    }

    /// How many calls `addr` has answered so far.
    pub fn calls_to(&self, addr: SocketAddr) -> usize {
        lock(&self.shared.backends).get(&addr).copied().unwrap_or(0)
    }

    /// How many calls have failed so far.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Lets every caller finish its call, and returns the counts.
    pub async fn stop(mut self) -> Tally {
        self.stop.send_replace(true);
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("a caller does not panic");
        }
        Tally {
            ok: self.shared.ok.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            backends: lock(&self.shared.backends).clone(),
            errors: lock(&self.shared.errors).clone(),
        }
    }
}

async fn call_until_stopped(
    caller: usize,
    mut client: GreeterClient<Channel>,
    call_timeout: Duration,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let request = HelloRequest {
            name: format!("caller-{caller}"),
        };
        let error = match tokio::time::timeout(call_timeout, client.say_hello(request)).await {
            Ok(Ok(reply)) => {
                let backend = backend_of(&reply.into_inner().message);
                *lock(&shared.backends).entry(backend).or_default() += 1;
                shared.ok.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => format!("no reply within {call_timeout:?}"),
        };
        shared.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = lock(&shared.errors);
        if errors.len() < KEPT_ERRORS {
            errors.push(error);
        }
    }
}
