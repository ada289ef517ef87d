//! The workspace's programs the tests run as child processes: the examples
//! ([`example_binary`]) and the `tonic-etcd` command ([`command_binary`]).
//!
//! Each is built by `cargo build` when first asked for: a no-op when the binary is fresh, and
//! no stale binary is tested after `cargo test --test <name>`, which builds neither. The build
//! resolves features as `make test` (`cargo test --workspace --all-features`) does, so that in
//! the suite it finds everything built but the command's own crate:
//! - the whole workspace, with the crate features of this test binary;
//! - the dev-dependencies on (tokio's `test-util`, tonic's defaults, ...): cargo turns them on
//!   only when an example, test or bench is among the targets, as it always is here;
//! - none of the variables `cargo test` sets for this test binary (see
//!   [`set_for_this_crate`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of example `name` of the crate, built as the module doc says.
///
/// Each call runs the build, which is a no-op when the binary is fresh: keep the path.
pub fn example_binary(name: &str) -> PathBuf {
    build(&["--example", name]);
    binary(&profile_dir().join("examples"), name)
}

/// The path of the binary `name` of a workspace member, such as the `tonic-etcd` command
/// (crates/cli), built as the module doc says.
///
/// `greeter_server` is built with it: an example among the targets turns the dev-dependencies
/// on. Each call runs the build, which is a no-op when the binary is fresh: keep the path.
pub fn command_binary(name: &str) -> PathBuf {
    build(&["--bin", name, "--example", "greeter_server"]);
    binary(&profile_dir(), name)
}

/// `dir/name` with the platform's executable suffix, which the build must have made.
fn binary(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// The profile directory of this test binary: `target/<profile>/deps/<test>` gives
/// `target/<profile>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The crate features this test binary was built with, as `--features` of the workspace.
fn features() -> String {
    let features = [
        ("tls", cfg!(feature = "tls")),
        ("health", cfg!(feature = "health")),
        ("metrics", cfg!(feature = "metrics")),
    ];
    let on: Vec<String> = features
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| format!("tonic-etcd/{name}"))
        .collect();
    on.join(",")
}

/// Whether `cargo test` set variable `name` for this test binary: facts about this crate, not
/// settings of the build (those, such as `CARGO_TARGET_DIR` or `RUSTFLAGS`, stay). A nested
/// cargo would hand them to build scripts that watch them: ring's watches
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_*` (briansmith/ring#2454), so ring, rustls, tonic,
/// etcd-client and this crate would be built again here, and again by the next `cargo` run
/// from a shell.
fn set_for_this_crate(name: &str) -> bool {
    ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ]
        .contains(&name)
}

/// Runs `cargo build --workspace <targets>` with this test binary's features and profile.
fn build(targets: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--workspace", "--features", &features()])
        .args(targets)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir().ends_with("release") {
        command.arg("--release");
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_for_this_crate) {
            command.env_remove(name);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run cargo build {targets:?}: {e}"));
    assert!(
        output.status.success(),
        "cargo build {targets:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
