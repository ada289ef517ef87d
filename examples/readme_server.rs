//! The README's server, verbatim (`tests/readme.rs` checks that they match, and that SIGTERM
//! removes its key): a greeter registered in etcd as `greeter`, deregistered on SIGTERM or
//! SIGINT.
//!
//! ```text
//! ETCD_ENDPOINTS=http://127.0.0.1:2379 LISTEN_ADDR=127.0.0.1:50051 cargo run --example readme_server
//! ```

use std::time::Duration;

use hello_world::greeter_server::{Greeter, GreeterServer};
use hello_world::{HelloReply, HelloRequest};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_etcd::{EtcdConfig, Registrar};
use tracing_subscriber::EnvFilter;

struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello, {}!", request.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The crate reports through `tracing`: INFO and above unless RUST_LOG says otherwise
    // (`fmt::init()` alone would show only errors when RUST_LOG is unset).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let etcd_urls = std::env::var("ETCD_ENDPOINTS").unwrap_or("http://127.0.0.1:2379".into());
    // The address clients dial: a real one (0.0.0.0 would be refused), port 0 for any.
    let addr = std::env::var("LISTEN_ADDR").unwrap_or("127.0.0.1:50051".into());
    // Listen for both signals before registering: one that comes in between would
    // otherwise end the process at once, its key left in etcd for the TTL.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // `report()`: the error and its causes on one line, in place of `?`'s Debug dump.
    let etcd = EtcdConfig::new(etcd_urls.split(',')).connect().await;
    let etcd = etcd.map_err(|e| e.report().to_string())?;
    let incoming = TcpIncoming::bind(addr.parse()?)?.with_nodelay(Some(true));
    let registration = Registrar::new(etcd)
        .ttl(Duration::from_secs(10)) // a crashed server's key lives this long
        .register("greeter", incoming.local_addr()?) // the bound address, so port 0 works
        .await
        .map_err(|e| e.report().to_string())?;
    let server = tokio::spawn(
        Server::builder()
            .layer(registration.layer()) // counts calls in flight, for the drain
            .add_service(GreeterServer::new(MyGreeter))
            .serve_with_incoming_shutdown(incoming, registration.stop_signal()),
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    // Deregister (the key goes at once), wait the grace period, stop accepting, drain.
    let drained = registration.shutdown().await;
    drained.map_err(|e| e.report().to_string())?;
    server.await??;
    Ok(())
}
