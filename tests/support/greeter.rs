//! Greeter servers for the tests: in process ([`TestServer`]) or as the `greeter_server`
//! example in a child process ([`ServerProcess`]), so that `kill -9` is real.
//!
//! Both reply `Hello, <name>! (from <addr>)`; [`backend_of`] reads the address back.

mod server_process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::pb::greeter_server::GreeterServer;
use super::pb::{HelloReply, HelloRequest};
use super::wait_for;

pub use self::server_process::{READY_DEADLINE, ServerProcess};
pub use super::binaries::example_binary;

/// The reply a greeter at `addr` sends to `name`.
pub fn greeting(name: &str, addr: SocketAddr) -> String {
    format!("Hello, {name}! (from {addr})")
}

/// The address of the server that sent the greeting `message`.
///
/// # Panics
///
/// Panics if `message` does not end with `(from <addr>)`.
pub fn backend_of(message: &str) -> SocketAddr {
    message
        .rsplit_once("(from ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("greeting {message:?} does not name its server"))
}

/// The greeter service behind [`TestServer`].
#[derive(Debug, Clone)]
struct Greeter {
    addr: SocketAddr,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    first_call: Arc<OnceLock<std::time::Instant>>,
    failing: Failing,
}

/// Which calls a [`TestServer`] fails, and with what code.
#[derive(Debug, Clone, Copy)]
pub struct Failing {
    /// The status code of a failed call.
    pub code: tonic::Code,
    /// Fails every `every`-th call: 1 fails them all, 2 every other one, 0 none.
    pub every: usize,
}

impl Failing {
    /// Fails no call.
    pub const NEVER: Failing = Failing {
        code: tonic::Code::Ok,
        every: 0,
    };

    /// Fails every call with `code`, at once.
    pub fn always(code: tonic::Code) -> Failing {
        Failing { code, every: 1 }
    }

    fn fails(&self, call: usize) -> bool {
        self.every > 0 && call.is_multiple_of(self.every)
    }
}

#[tonic::async_trait]
impl super::pb::greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.first_call.get_or_init(std::time::Instant::now);
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.failing.fails(call) {
            return Err(Status::new(self.failing.code, "failing on purpose"));
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let message = greeting(&request.into_inner().name, self.addr);
        Ok(Response::new(HelloReply { message }))
    }
}

/// An in-process greeter server on a loopback port.
///
/// `Drop` only signals shutdown; [`TestServer::shutdown`] also waits for it.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    first_call: Arc<OnceLock<std::time::Instant>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` that replies at once.
    pub async fn start() -> TestServer {
        Self::start_on(loopback_any(), Duration::ZERO).await
    }

    /// Starts a server on `127.0.0.1:0` that fails the calls `failing` says, at once, and
    /// replies to the others at once.
    pub async fn start_failing(failing: Failing) -> TestServer {
        Self::serve_failing(loopback_any(), Duration::ZERO, Server::builder(), failing).await
    }

    /// Starts a server on `127.0.0.1:0` that waits `delay` before each reply.
    pub async fn start_with_delay(delay: Duration) -> TestServer {
        Self::start_on(loopback_any(), delay).await
    }

    /// Starts a server on a known `addr`, for example the address of a server that has
    /// been shut down. Retries the bind for up to 5 s while the old socket goes away.
    pub async fn start_at(addr: SocketAddr) -> TestServer {
        Self::start_on(addr, Duration::ZERO).await
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many calls the server has received.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// When the server received its first call, if it has: a `std` instant, comparable
    /// across runtimes.
    pub fn first_call_at(&self) -> Option<std::time::Instant> {
        self.first_call.get().copied()
    }

    /// Signals shutdown and waits until the server has stopped: the listener is closed and
    /// accepted connections are drained.
    pub async fn shutdown(mut self) {
        self.signal();
        if let Some(task) = self.task.take() {
            let served = task.await.expect("the greeter server task does not panic");
            served.expect("the greeter server serves until shutdown");
        }
    }

    /// Starts a server on `127.0.0.1:0` that serves TLS with `pki`'s server certificate
    /// (valid for `127.0.0.1` and `localhost`) and replies at once.
    #[cfg(feature = "tls")]
    pub async fn start_tls(pki: &super::tls::TestPki) -> TestServer {
        use tonic::transport::{Identity, ServerTlsConfig};
        let identity = Identity::from_pem(&pki.server.cert_pem, &pki.server.key_pem);
        let builder = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .expect("the test server certificate is valid");
        Self::serve(loopback_any(), Duration::ZERO, builder).await
    }

    /// Starts a server like [`TestServer::start_tls`] that also requires a client
    /// certificate signed by `pki`'s CA (mutual TLS).
    #[cfg(feature = "tls")]
    pub async fn start_mutual_tls(pki: &super::tls::TestPki) -> TestServer {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let identity = Identity::from_pem(&pki.server.cert_pem, &pki.server.key_pem);
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let builder = Server::builder()
            .tls_config(tls)
            .expect("the test server certificate is valid");
        Self::serve(loopback_any(), Duration::ZERO, builder).await
    }

    /// Binds `addr` and serves a [`Greeter`] on it in a task.
    async fn start_on(addr: SocketAddr, delay: Duration) -> TestServer {
        Self::serve(addr, delay, Server::builder()).await
    }

    /// Binds `addr` and serves a [`Greeter`] on it in a task, with `builder`'s settings.
    async fn serve(addr: SocketAddr, delay: Duration, builder: Server) -> TestServer {
        Self::serve_failing(addr, delay, builder, Failing::NEVER).await
    }

    /// [`TestServer::serve`], failing the calls `failing` says.
    async fn serve_failing(
        addr: SocketAddr,
        delay: Duration,
        mut builder: Server,
        failing: Failing,
    ) -> TestServer {
        let incoming = wait_for(&format!("bind {addr}"), Duration::from_secs(5), || async {
            TcpIncoming::bind(addr)
                .ok()
                .map(|i| i.with_nodelay(Some(true)))
        })
        .await;
        let addr = incoming
            .local_addr()
            .expect("local address of a bound listener");
        let calls = Arc::new(AtomicUsize::new(0));
        let first_call = Arc::new(OnceLock::new());
        let greeter = Greeter {
            addr,
            delay,
            calls: calls.clone(),
            first_call: first_call.clone(),
            failing,
        };
        let (tx, rx) = oneshot::channel::<()>();
        // A dropped sender also means shutdown, so the result of `rx` does not matter.
        let signal = async {
            let _ = rx.await;
        };
        let serve = builder
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming_shutdown(incoming, signal);
        TestServer {
            addr,
            calls,
            first_call,
            shutdown: Some(tx),
            task: Some(tokio::spawn(serve)),
        }
    }

    /// Tells the server task to stop, once.
    fn signal(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The task may have ended already; then there is nobody left to tell.
            let _ = tx.send(());
        }
    }
}

impl Drop for TestServer {
    /// Signals shutdown; the task stops on its own.
    fn drop(&mut self) {
        self.signal();
    }
}

/// `127.0.0.1:0`.
fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
