//! The `tonic-etcd` command (crates/cli) against a real etcd and real greeter servers: `ls`,
//! `probe` and `watch`, their output and their exit codes.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use support::binaries::command_binary;
use support::{Etcd, ServerProcess, lock, process, wait_until_quietly};

const SERVICE: &str = "cli/greeter";
const DEADLINE: Duration = Duration::from_secs(20);

/// The `tonic-etcd` binary, built once per test binary as the suite builds it
/// ([`command_binary`]).
fn cli() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| command_binary("tonic-etcd"))
}

/// Runs `tonic-etcd --etcd <endpoint> <args...>` to the end, off the runtime's thread.
async fn run(endpoint: &str, args: &[&str]) -> Output {
    let mut command = Command::new(cli());
    command.args(["--etcd", endpoint]).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("run tonic-etcd"))
        .await
        .expect("the tonic-etcd run does not panic")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Vec<Value> {
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| panic!("not a JSON array: {}", stdout(output)))
}

fn row<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row for {key} in {rows:?}"))
}

async fn server(etcd: &Etcd, extra: &[&str]) -> ServerProcess {
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    ServerProcess::spawn_with(&etcd.endpoint(), SERVICE, 10, any, &extra).await
}

#[tokio::test]
async fn ls_shows_each_instance_and_flags_bad_values_and_shared_addresses() {
    let etcd = Etcd::start().await;
    let weighted = server(&etcd, &["--weight", "3", "--zone", "eu-1"]).await;
    let plain = server(&etcd, &[]).await;
    let weighted_key = format!("{SERVICE}/{}", weighted.addr());
    let plain_key = format!("{SERVICE}/{}", plain.addr());

    let output = run(&etcd.endpoint(), &["ls", SERVICE]).await;
    let table = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{table}");
    for text in [
        weighted_key.as_str(),
        plain_key.as_str(),
        "eu-1",
        "WEIGHT",
        "TTL",
    ] {
        assert!(table.contains(text), "{text:?} missing from\n{table}");
    }

    // A value that does not decode, and a second key carrying the plain server's address.
    let mut client = etcd.client().await;
    let bad_key = format!("{SERVICE}/broken");
    let dup_key = format!("{SERVICE}/copy");
    client
        .put(bad_key.as_str(), "{\"Addr\":", None)
        .await
        .expect("put");
    let value = format!(
        "{{\"Op\":0,\"Addr\":\"{}\",\"Metadata\":null}}",
        plain.addr()
    );
    client
        .put(dup_key.as_str(), value, None)
        .await
        .expect("put");

    let output = run(&etcd.endpoint(), &["ls", SERVICE, "-o", "json"]).await;
    assert_eq!(output.status.code(), Some(1), "flags make ls exit 1");
    let rows = json(&output);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let weighted_row = row(&rows, &weighted_key);
    assert_eq!(weighted_row["addr"], weighted.addr().to_string());
    assert_eq!(weighted_row["weight"], 3);
    assert_eq!(weighted_row["zone"], "eu-1");
    assert_eq!(weighted_row["problem"], Value::Null);
    let ttl = weighted_row["ttl_secs"].as_i64().expect("a lease's TTL");
    assert!((1..=10).contains(&ttl), "ttl {ttl}");
    assert_ne!(weighted_row["lease_id"], 0);
    let bad = row(&rows, &bad_key)["problem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(bad.starts_with("does not decode"), "{bad}");
    let shared = row(&rows, &plain_key)["problem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(shared, format!("address also under {dup_key}"));
    assert_eq!(
        row(&rows, &dup_key)["ttl_secs"],
        Value::Null,
        "no lease, no TTL"
    );

    let output = run(&etcd.endpoint(), &["ls", SERVICE]).await;
    let table = stdout(&output);
    assert!(table.contains("does not decode"), "{table}");
    assert!(table.contains("address also under"), "{table}");
}

#[tokio::test]
async fn probe_reports_serving_instances_and_an_unreachable_one() {
    let etcd = Etcd::start().await;
    let live = server(&etcd, &[]).await;
    let mut dead = server(&etcd, &[]).await;
    let output = run(&etcd.endpoint(), &["probe", SERVICE]).await;
    let table = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{table}");
    assert_eq!(table.matches("SERVING").count(), 2, "{table}");
    assert!(table.contains(" ms"), "latency column: {table}");

    dead.kill9(); // its key stays until the lease expires
    let output = run(&etcd.endpoint(), &["probe", SERVICE, "-o", "json"]).await;
    assert_eq!(output.status.code(), Some(1), "an instance is down");
    let rows = json(&output);
    let live_row = row(&rows, &format!("{SERVICE}/{}", live.addr()));
    assert_eq!(live_row["status"], "SERVING");
    assert!(live_row["latency_ms"].as_f64().is_some(), "{live_row}");
    let dead_row = row(&rows, &format!("{SERVICE}/{}", dead.addr()));
    let status = dead_row["status"].as_str().unwrap_or_default();
    assert!(status.starts_with("error: unreachable"), "{status}");
    assert_eq!(dead_row["latency_ms"], Value::Null);
}

#[tokio::test]
async fn watch_prints_the_listing_then_each_change_and_exits_0_on_sigterm() {
    let etcd = Etcd::start().await;
    let first = server(&etcd, &[]).await;
    let mut child = KillOnDrop(
        Command::new(cli())
            .args(["--etcd", &etcd.endpoint(), "watch", SERVICE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tonic-etcd watch"),
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.0.stdout.take().expect("piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lock(&sink).push(line);
        }
    });
    let saw = |what: &'static str, addr: SocketAddr| {
        let lines = lines.clone();
        async move {
            let found = wait_until_quietly(DEADLINE, || {
                lock(&lines).iter().any(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    fields.get(1) == Some(&what) && fields.get(2) == Some(&&*addr.to_string())
                })
            })
            .await;
            assert!(found, "no `{what} {addr}` line in {:?}", lock(&lines));
        }
    };

    saw("present", first.addr()).await;
    let mut second = server(&etcd, &[]).await;
    saw("added", second.addr()).await;
    second.terminate(); // deregisters
    saw("removed", second.addr()).await;
    let line = lock(&lines)[0].clone();
    let time = line.split_whitespace().next().unwrap_or_default();
    assert!(
        humantime_like(time),
        "the line starts with an RFC 3339 time: {line}"
    );

    process::send_signal(child.0.id(), "TERM");
    let status = process::wait_exit_blocking(&mut child.0, DEADLINE).expect("watch exits");
    assert_eq!(status.code(), Some(0));
}

/// A child process killed with SIGKILL when a failed test unwinds.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process::exited(&mut self.0).is_none() {
            process::kill9(&mut self.0);
        }
    }
}

/// `2026-11-30T21:31:21.783Z`.
fn humantime_like(text: &str) -> bool {
    text.len() == 24 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

#[tokio::test]
async fn exits_2_on_bad_usage_and_when_etcd_is_unreachable() {
    let etcd = Etcd::start().await;
    let output = run(&etcd.endpoint(), &["ls", "/"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("names no service"));

    let port = process::free_ports(1)[0];
    let output = run(&format!("http://127.0.0.1:{port}"), &["ls", SERVICE]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&port.to_string()),
        "the message names etcd: {stderr}"
    );

    let output = run(&etcd.endpoint(), &["ls"]).await;
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
}
