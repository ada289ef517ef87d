//! Client side: turning the keys under an etcd prefix into endpoint changes.

mod decode;
mod diff;
mod engine;
mod hub;
mod status;

pub use status::DiscoveryStatus;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tower::discover::Change;

use crate::backoff::Retry;
use crate::format::{EtcdNaming, Format, Instance};
use crate::{Backoff, Error};
use decode::Decoder;
use diff::{Entries, RawChange};
use engine::EngineConfig;
use hub::{Hub, Message, Subscription};

/// Turns an instance into a [`Endpoint`]: a hook to set timeouts, TLS and the like.
type EndpointHook = Arc<dyn Fn(Endpoint, &Instance) -> Endpoint + Send + Sync>;

type ChangeStream = Pin<Box<dyn Stream<Item = Result<Change<String, Discovered>, Error>> + Send>>;

/// A decoded instance and the endpoint built for it.
#[derive(Debug, Clone)]
pub(crate) struct Discovered {
    pub(crate) endpoint: Endpoint,
    pub(crate) instance: Instance,
}

/// A [`tower::discover::Discover`] of the servers registered under an etcd prefix.
///
/// It lists the prefix, remembers the revision, then watches `<prefix>/` from the next
/// revision, so servers registered before the client started are found and no change in
/// between is missed. Each item is a [`Change`] keyed by the etcd key:
///
/// - a new key, or a put that changes a key's value, is an [`Change::Insert`] with that key
///   (an update is never a remove followed by an insert);
/// - a deleted key is a [`Change::Remove`];
/// - a put with an unchanged value, or a repeated event, yields nothing;
/// - a value that does not decode is skipped with a `warn!` that names the key, and the
///   endpoint the key had before, if any, stays.
///
/// Transient etcd failures never become items, because an `Err` poisons a tower balancer
/// for good. Discovery retries them with jittered backoff, resumes the watch from the last
/// applied revision, re-lists and diffs after a compaction, and keeps the last known
/// endpoints meanwhile. It reports what it is doing through [`EtcdDiscover::status`]. Only
/// a permanent error ([`Error::is_permanent`]: permission denied, bad credentials, an empty
/// prefix) is yielded, as the last item.
///
/// Building one does no I/O; that starts on the first poll.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tonic_etcd::EtcdDiscover;
///
/// let client = tonic_etcd::etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
/// let (channel, discovery) = EtcdDiscover::new(client, "services/greeter").balance_channel();
/// // `channel` is a tonic `Channel`: hand it to any generated client.
/// # drop((channel, discovery));
/// # Ok(())
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct EtcdDiscover {
    service: String,
    inner: Inner,
    status: watch::Receiver<DiscoveryStatus>,
}

enum Inner {
    /// Not polled yet: the configuration, still open to the setters.
    Idle(Box<Config>),
    Running(ChangeStream),
}

pub(crate) struct Config {
    pub(crate) client: etcd_client::Client,
    service: String,
    format: Arc<dyn Format>,
    endpoint_hook: Option<EndpointHook>,
    pub(crate) backoff: Backoff,
    pub(crate) request_timeout: Duration,
    pub(crate) progress_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) healthy_after: Duration,
    pub(crate) status: Arc<watch::Sender<DiscoveryStatus>>,
}

impl EtcdDiscover {
    /// Discovers the instances of `service`, in the default [`EtcdNaming`] format: the keys
    /// under `<service>/`. A trailing slash on `service` is ignored; `services/greeter`
    /// never matches `services/greeter-admin/...`.
    pub fn new(client: etcd_client::Client, service: impl Into<String>) -> Self {
        let (status, receiver) = watch::channel(DiscoveryStatus::Syncing);
        let service = service.into();
        let config = Config {
            client,
            service: service.clone(),
            format: Arc::new(EtcdNaming),
            endpoint_hook: None,
            backoff: Backoff::default().max(Duration::from_secs(5)),
            request_timeout: Duration::from_secs(5),
            progress_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            healthy_after: Duration::from_secs(10),
            status: Arc::new(status),
        };
        EtcdDiscover {
            service,
            inner: Inner::Idle(Box::new(config)),
            status: receiver,
        }
    }

    /// The wire format of the registry. Default: [`EtcdNaming`].
    pub fn format(self, format: impl Format) -> Self {
        self.configure(|c| c.format = Arc::new(format))
    }

    /// A hook that adjusts the [`Endpoint`] built for each instance: timeouts, TLS, HTTP/2
    /// settings. It receives the endpoint for `http://<addr>` (or `https://` when the
    /// instance asks for TLS), with a connect timeout of 5 s. Default: none.
    ///
    /// ```no_run
    /// # fn f(client: tonic_etcd::etcd_client::Client) {
    /// use std::time::Duration;
    /// let discover = tonic_etcd::EtcdDiscover::new(client, "services/greeter")
    ///     .endpoint(|endpoint, _instance| endpoint.timeout(Duration::from_secs(2)));
    /// # drop(discover);
    /// # }
    /// ```
    pub fn endpoint<F>(self, hook: F) -> Self
    where
        F: Fn(Endpoint, &Instance) -> Endpoint + Send + Sync + 'static,
    {
        self.configure(|c| c.endpoint_hook = Some(Arc::new(hook)))
    }

    /// The backoff between retries while etcd fails. Default: 100 ms doubling to 5 s, with
    /// jitter.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.configure(|c| c.backoff = backoff)
    }

    /// How long a list or a watch request to etcd may take. Default: 5 s.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.configure(|c| c.request_timeout = timeout)
    }

    /// How often an idle watch asks etcd for a progress notification. Default: 5 s.
    pub fn progress_interval(self, interval: Duration) -> Self {
        self.configure(|c| c.progress_interval = interval.max(Duration::from_millis(10)))
    }

    /// How long a watch may stay silent, progress notifications included, before it is
    /// taken for dead, dropped and resumed. Default: 15 s.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.configure(|c| c.idle_timeout = timeout)
    }

    /// A receiver of the discovery status, updated as it syncs, retries or fails.
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match &mut self.inner {
            Inner::Idle(config) => f(config),
            Inner::Running(_) => {
                tracing::warn!("discovery is already running: configuration change ignored")
            }
        }
        self
    }
}

impl Config {
    /// The configuration of a new shared engine, with its own status channel.
    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            client: self.client.clone(),
            backoff: self.backoff,
            request_timeout: self.request_timeout,
            progress_interval: self.progress_interval,
            idle_timeout: self.idle_timeout,
            healthy_after: self.healthy_after,
            status: watch::Sender::new(DiscoveryStatus::Syncing),
        }
    }
}

/// Starts a subscriber: validates the prefix, finds the cluster, joins (or starts) the
/// shared engine of its prefix, then turns the engine's raw changes into endpoint changes.
fn run(config: Config) -> ChangeStream {
    let prefix = config.format.prefix(&config.service);
    if prefix.trim_matches('/').is_empty() {
        let error = Error::InvalidPrefix {
            prefix: config.service.clone(),
            reason: "it is empty",
        };
        config.status.send_replace(DiscoveryStatus::Failed {
            error: error.clone(),
        });
        return Box::pin(futures_util::stream::iter([Err(error)]));
    }
    let subscriber = Subscriber {
        decoder: Decoder::new(config.format.clone(), config.endpoint_hook.clone()),
        retry: Retry::new(config.backoff),
        config,
        prefix,
        endpoints: Arc::default(),
    };
    let steps = futures_util::stream::unfold(
        (subscriber, Step::Join),
        |(mut subscriber, mut step)| async move {
            loop {
                if matches!(step, Step::Done) {
                    return None;
                }
                let (output, next) = subscriber.step(step).await;
                match output {
                    Ok(changes) if changes.is_empty() => step = next,
                    output => return Some((output, (subscriber, next))),
                }
            }
        },
    );
    Box::pin(steps.flat_map(|output| {
        let items: Vec<_> = match output {
            Ok(changes) => changes.into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        futures_util::stream::iter(items)
    }))
}

type Output = Result<Vec<Change<String, Discovered>>, Error>;

enum Step {
    /// Find the cluster, and join the engine watching the prefix there.
    Join,
    /// Follow the engine; `seen` is every raw entry received.
    Follow {
        subscription: Subscription,
        seen: Entries,
    },
    Done,
}

struct Subscriber {
    config: Config,
    prefix: String,
    decoder: Decoder,
    retry: Retry,
    /// How many endpoints this subscriber has announced, for its status.
    endpoints: Arc<AtomicUsize>,
}

impl Subscriber {
    async fn step(&mut self, step: Step) -> (Output, Step) {
        match step {
            Step::Join => self.join().await,
            Step::Follow { subscription, seen } => self.follow(subscription, seen).await,
            Step::Done => (Ok(Vec::new()), Step::Done),
        }
    }

    /// Asks etcd which cluster it is (a count-only get of the prefix, which also checks
    /// the permission to read it), then joins the engine for that cluster and prefix.
    async fn join(&mut self) -> (Output, Step) {
        let mut kv = self.config.client.kv_client();
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let after = self.config.request_timeout;
        let get = tokio::time::timeout(after, kv.get(self.prefix.as_str(), Some(options)));
        let error = match get.await {
            Ok(Ok(response)) => {
                let cluster_id = response.header().map_or(0, |h| h.cluster_id());
                let subscription =
                    Hub::join(cluster_id, &self.prefix, || self.config.engine_config());
                let seen = subscription.snapshot.clone();
                let changes = seen
                    .iter()
                    .map(|(k, v)| RawChange::Put(k.clone(), v.clone()))
                    .filter_map(|c| self.decoder.apply(c))
                    .collect();
                self.endpoints.store(self.decoder.len(), Ordering::Release);
                let to = self.config.status.clone();
                let status = forward_status(subscription.hub.status(), to, self.endpoints.clone());
                tokio::spawn(status);
                return (Ok(changes), Step::Follow { subscription, seen });
            }
            Ok(Err(source)) => Error::List {
                prefix: self.prefix.clone(),
                source: Arc::new(source),
            },
            Err(_) => Error::Timeout {
                operation: "reaching etcd",
                after,
            },
        };
        self.retry_join(error).await
    }

    async fn retry_join(&mut self, error: Error) -> (Output, Step) {
        if error.is_permanent() {
            let failed = DiscoveryStatus::Failed {
                error: error.clone(),
            };
            self.config.status.send_replace(failed);
            return (Err(error), Step::Done);
        }
        let delay = self.retry.next_delay();
        let attempt = self.retry.attempt();
        tracing::debug!(prefix = %self.prefix, attempt, ?delay, error = %crate::error::Chain(&error), "retrying");
        self.config.status.send_replace(DiscoveryStatus::Retrying {
            attempt,
            error,
            endpoints: 0,
        });
        tokio::time::sleep(delay).await;
        (Ok(Vec::new()), Step::Join)
    }

    async fn follow(
        &mut self,
        mut subscription: Subscription,
        mut seen: Entries,
    ) -> (Output, Step) {
        use tokio::sync::broadcast::error::RecvError;
        let raw: Vec<RawChange> = match subscription.changes.recv().await {
            Ok(message) => match &*message {
                Message::Batch(changes) => changes.clone(),
                Message::Failed(error) => return (Err(error.clone()), Step::Done),
            },
            Err(RecvError::Lagged(missed)) => {
                // Fell behind the engine: catch up from its snapshot, by diff.
                tracing::debug!(prefix = %self.prefix, missed, "subscriber lagged, resyncing");
                let published = subscription.hub.lock();
                diff::diff(&seen, &published.entries)
                    .into_changes()
                    .collect()
            }
            Err(RecvError::Closed) => return (Ok(Vec::new()), Step::Done),
        };
        let mut changes = Vec::with_capacity(raw.len());
        for change in raw {
            match &change {
                RawChange::Put(key, value) => {
                    seen.insert(key.clone(), value.clone());
                }
                RawChange::Delete(key) => {
                    seen.remove(key);
                }
            }
            changes.extend(self.decoder.apply(change));
        }
        let endpoints = self.decoder.len();
        if self.endpoints.swap(endpoints, Ordering::AcqRel) != endpoints {
            self.config
                .status
                .send_modify(|status| set_endpoints(status, endpoints));
        }
        (Ok(changes), Step::Follow { subscription, seen })
    }
}

fn set_endpoints(status: &mut DiscoveryStatus, count: usize) {
    match status {
        DiscoveryStatus::Synced { endpoints, .. } | DiscoveryStatus::Retrying { endpoints, .. } => {
            *endpoints = count
        }
        DiscoveryStatus::Syncing | DiscoveryStatus::Failed { .. } => {}
    }
}

/// Copies the shared engine's status to one subscriber's, with the subscriber's own count
/// of endpoints (values that do not decode in its format are not endpoints), until either
/// side is gone.
async fn forward_status(
    mut from: watch::Receiver<DiscoveryStatus>,
    to: Arc<watch::Sender<DiscoveryStatus>>,
    endpoints: Arc<AtomicUsize>,
) {
    loop {
        let mut status = from.borrow_and_update().clone();
        set_endpoints(&mut status, endpoints.load(Ordering::Acquire));
        to.send_replace(status);
        tokio::select! {
            changed = from.changed() => if changed.is_err() { return },
            _ = to.closed() => return,
        }
    }
}

impl EtcdDiscover {
    /// The service this discovers, as given.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Polls for the next change, with the decoded instance: what the crate's own balancer
    /// needs for weights and zones.
    pub(crate) fn poll_discovered(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Change<String, Discovered>, Error>>> {
        if let Inner::Idle(_) = self.inner {
            let placeholder = Inner::Running(Box::pin(futures_util::stream::empty()));
            if let Inner::Idle(config) = std::mem::replace(&mut self.inner, placeholder) {
                self.inner = Inner::Running(run(*config));
            }
        }
        match &mut self.inner {
            Inner::Running(stream) => stream.as_mut().poll_next(cx),
            Inner::Idle(_) => unreachable!("started above"),
        }
    }

    /// The next change, with the decoded instance.
    pub(crate) async fn next_discovered(
        &mut self,
    ) -> Option<Result<Change<String, Discovered>, Error>> {
        std::future::poll_fn(|cx| self.poll_discovered(cx)).await
    }
}

impl Stream for EtcdDiscover {
    type Item = Result<Change<String, Endpoint>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_discovered(cx).map(|item| {
            item.map(|result| {
                result.map(|change| match change {
                    Change::Insert(key, discovered) => Change::Insert(key, discovered.endpoint),
                    Change::Remove(key) => Change::Remove(key),
                })
            })
        })
    }
}

impl fmt::Debug for EtcdDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EtcdDiscover");
        if let Inner::Idle(config) = &self.inner {
            d.field("service", &config.service)
                .field("format", &config.format);
        }
        d.field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}
