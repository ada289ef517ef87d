//! `tonic-etcd`: see which instances a service has in etcd, follow its changes, and probe
//! their health. Reads the same registry formats as the tonic-etcd library, through it.
//!
//! ```text
//! tonic-etcd --etcd http://127.0.0.1:2379 ls greeter
//! tonic-etcd ls greeter -o json
//! tonic-etcd watch greeter
//! tonic-etcd probe greeter
//! ```

mod etcd;
mod listing;
mod ls;
mod probe;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tonic_etcd::{Blog, EtcdNaming, Format, GoZero, Kratos, PlainAddr};

const EXIT_CODES: &str = "Exit codes:\n  \
    0  done, and nothing is wrong\n  \
    1  done, but something is wrong (ls: a value that does not decode or an address under \
    two keys; probe: an instance not SERVING, or none), or etcd failed midway\n  \
    2  bad usage, or etcd unreachable or refusing the credentials at start";

/// List, watch and probe the instances of a service registered in etcd.
///
/// SERVICE means what --format means: the etcd naming target (keys `<service>/...`), the
/// go-zero key, the Kratos or blog service name, or the plain prefix. Tables and change lines
/// go to stdout; errors and warnings to stderr.
#[derive(Parser, Debug)]
#[command(name = "tonic-etcd", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    etcd: etcd::EtcdArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A table of the service's instances: key, address, TLS, weight, zone, version, lease
    /// and its TTL left; flags values that do not decode and addresses under two keys.
    #[command(after_help = EXIT_CODES)]
    Ls {
        #[command(flatten)]
        service: ServiceArgs,
        /// `table` for people, `json` (an array of objects) for scripts.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One line per change, as it happens: time, present/added/updated/removed, address,
    /// key; the current instances first (`present`). Runs until SIGINT or SIGTERM.
    #[command(after_help = EXIT_CODES)]
    Watch {
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Calls grpc.health.v1.Health/Check on each instance and shows status and latency.
    #[command(after_help = EXIT_CODES)]
    Probe {
        #[command(flatten)]
        service: ServiceArgs,
        /// `table` for people, `json` (an array of objects) for scripts.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The health service name to ask about (e.g. `helloworld.Greeter`); empty asks
        /// about the server as a whole.
        #[arg(long, default_value = "")]
        health_service: String,
        /// Seconds each probe may take, connecting included.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
        /// Call every instance over TLS, trusting this CA certificate (PEM file). Without
        /// it, only instances registered as TLS (kratos `grpcs://`) are called over TLS.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ServiceArgs {
    /// The service, as --format means it.
    service: String,
    /// The registry wire format.
    #[arg(long, value_enum, default_value_t = FormatArg::EtcdNaming)]
    format: FormatArg,
}

impl ServiceArgs {
    /// The format, and the key prefix it gives the service; an empty service is refused.
    fn resolve(&self) -> Result<(Box<dyn Format>, String), String> {
        if self.service.trim_matches('/').is_empty() {
            return Err(format!("service {:?} names no service", self.service));
        }
        let format = self.format.format();
        let prefix = format.prefix(&self.service);
        Ok((format, prefix))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// The registry wire format (`--format`), as the examples name them.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// etcd's Go naming convention: keys `<target>/<addr>`, JSON values with `Addr`.
    EtcdNaming,
    /// go-zero: keys `<key>/<lease id>`, values `host:port`.
    GoZero,
    /// Kratos: keys `/microservices/<name>/<id>`, `ServiceInstance` JSON values.
    Kratos,
    /// The blog post's format: keys `services/<name>/<addr>`, values `{"ID":..,"IP":..}`.
    Blog,
    /// Keys `<prefix>/<addr>`, values `host:port`.
    Plain,
}

impl FormatArg {
    fn format(self) -> Box<dyn Format> {
        match self {
            FormatArg::EtcdNaming => Box::new(EtcdNaming),
            FormatArg::GoZero => Box::new(GoZero::new()),
            FormatArg::Kratos => Box::new(Kratos::new()),
            FormatArg::Blog => Box::new(Blog::new()),
            FormatArg::Plain => Box::new(PlainAddr),
        }
    }
}

/// How a command ended: done (0), done with something wrong (1), or a usage or start-up
/// failure (2) with its message.
enum Outcome {
    Clean,
    Wrong(Option<String>),
    Usage(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::Wrong(message) => {
            if let Some(message) = message {
                eprintln!("tonic-etcd: {message}");
            }
            ExitCode::from(1)
        }
        Outcome::Usage(message) => {
            eprintln!("tonic-etcd: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let service = match &cli.command {
        Command::Ls { service, .. }
        | Command::Watch { service }
        | Command::Probe { service, .. } => service,
    };
    let (format, prefix) = match service.resolve() {
        Ok(resolved) => resolved,
        Err(message) => return Outcome::Usage(message),
    };
    let mut client = match etcd::connect(&cli.etcd).await {
        Ok(client) => client,
        Err(message) => return Outcome::Usage(message),
    };
    match cli.command {
        Command::Ls { output, .. } => {
            let rows = match listing::fetch(&mut client, &prefix, &*format).await {
                Ok(rows) => rows,
                Err(message) => return Outcome::Wrong(Some(message)),
            };
            match output {
                Output::Table if rows.is_empty() => eprintln!("no instance under {prefix}"),
                Output::Table => _ = print_line(&ls::table(&rows).to_string()),
                Output::Json => _ = print_line(&json(&rows)),
            }
            match rows.iter().any(|r| r.problem.is_some()) {
                true => Outcome::Wrong(None),
                false => Outcome::Clean,
            }
        }
        Command::Watch { .. } => match watch::run(client, &prefix, &*format).await {
            Ok(()) => Outcome::Clean,
            Err(message) => Outcome::Wrong(Some(message)),
        },
        Command::Probe {
            output,
            health_service,
            timeout,
            tls_ca,
            ..
        } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                return Outcome::Usage(format!(
                    "--timeout {timeout} is not a positive number of seconds"
                ));
            }
            let rows = match listing::fetch(&mut client, &prefix, &*format).await {
                Ok(rows) => rows,
                Err(message) => return Outcome::Wrong(Some(message)),
            };
            let settings = probe::ProbeSettings {
                service: health_service,
                timeout: Duration::from_secs_f64(timeout),
                tls_ca,
            };
            let probes = probe::probe_all(&rows, &settings).await;
            match output {
                Output::Table => _ = print_line(&probe_table(&probes).to_string()),
                Output::Json => _ = print_line(&json(&probes)),
            }
            if probes.is_empty() {
                Outcome::Wrong(Some(format!("no instance to probe under {prefix}")))
            } else if probes.iter().all(probe::Probe::serving) {
                Outcome::Clean
            } else {
                Outcome::Wrong(None)
            }
        }
    }
}

/// Writes `text` and a newline to stdout; `false` once stdout is closed (the reader of a pipe
/// left, as `| head` does), which is not an error of this program.
pub fn print_line(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("rows of strings and numbers always serialise")
}

fn probe_table(probes: &[probe::Probe]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(["KEY", "ADDRESS", "STATUS", "LATENCY"]);
    for p in probes {
        let latency = p
            .latency_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms"));
        table.add_row([p.key.clone(), p.addr.clone(), p.status.clone(), latency]);
    }
    table
}
