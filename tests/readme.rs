//! The README's server snippet: it is `examples/readme_server.rs` verbatim, and that program
//! deregisters on SIGTERM and on SIGINT. (The README's snippets compile as doctests: see
//! `ReadmeDoctests` in src/lib.rs.)

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::greeter::example_binary;
use support::{Etcd, process, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// The Rust code blocks of `markdown`, in order.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.starts_with("```rust") => current = Some(String::new()),
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_readme_server_is_the_readme_server_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("read README.md");
    let example = std::fs::read_to_string(format!("{root}/examples/readme_server.rs"))
        .expect("read examples/readme_server.rs");
    let code: String = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .skip_while(|l| l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let blocks = rust_blocks(&readme);
    assert!(
        blocks.contains(&code),
        "README.md has no Rust block equal to examples/readme_server.rs (after its //! header); \
         copy the example into the README's server snippet"
    );
}

#[tokio::test]
async fn the_readme_server_deregisters_on_sigterm_and_sigint() {
    let etcd = Etcd::start().await;
    let binary = example_binary("readme_server");
    for signal in ["TERM", "INT"] {
        let port = process::free_ports(1)[0];
        let key = format!("greeter/127.0.0.1:{port}");
        let mut child = Command::new(&binary)
            .env("ETCD_ENDPOINTS", etcd.endpoint())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn readme_server");
        let client = etcd.client().await;
        let registered = |present: bool| {
            let (mut client, key) = (client.clone(), key.clone());
            async move {
                let response = client.get(key.as_str(), None).await;
                response.is_ok_and(|r| r.kvs().is_empty() != present)
            }
        };
        wait_until(&format!("{key} registered"), DEADLINE, || registered(true)).await;

        process::send_signal(child.id(), signal);
        let status = tokio::task::spawn_blocking(move || {
            let status = process::wait_exit_blocking(&mut child, DEADLINE);
            if status.is_none() {
                process::kill9(&mut child);
            }
            status
        })
        .await
        .expect("wait for readme_server");
        let status = status.unwrap_or_else(|| panic!("readme_server ignores SIG{signal}"));
        assert!(status.success(), "SIG{signal}: {status}");
        // Deregistration comes before the exit: the key is gone now, not after its TTL.
        assert!(registered(false).await, "SIG{signal} left {key} in etcd");
    }
}
