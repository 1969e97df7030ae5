//! The `fleetgate` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc: measurably cheaper per-frame allocations than the system allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Self-hosted Tesla Fleet Telemetry ingest server.
#[derive(Parser)]
#[command(name = "fleetgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (a Tesla config.json works as is).
    Serve {
        /// Configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
        /// Run the admin API without a token (only on a loopback address; for development).
        #[arg(long)]
        insecure_admin: bool,
        /// Once listening, write the bound addresses here as JSON (for tools and tests that
        /// start the server on port 0).
        #[arg(long)]
        addrs_file: Option<PathBuf>,
        /// Log line shape on stderr: text, json (tracing's) or tesla (Tesla's server's logrus
        /// JSON: level, msg, time). Default: the config's fleetgate.log_format, else json when
        /// json_log_enable, else text.
        #[arg(long, value_enum)]
        log_format: Option<fleetgate::logging::LogFormat>,
    },
    /// Check a config file as `serve` would, without opening any listener: print every problem
    /// (and every warning) and exit non-zero when there is a problem.
    CheckConfig {
        /// Configuration file (JSON).
        file: PathBuf,
        /// Do not open the files the config names (certificates, sites, secrets): for a config
        /// rendered for another machine, such as the Helm chart's.
        #[arg(long)]
        no_file_checks: bool,
        /// Warnings (unknown keys, features fleetgate does not have) fail the check too.
        #[arg(long)]
        strict: bool,
        /// Print one JSON object on stdout (`file`, `ok`, `problems` with `key` and
        /// `problem`, `warnings`, `error`) instead of text; the exit code is the same.
        #[arg(long)]
        json: bool,
        /// Check as `serve --insecure-admin` runs: an admin API without a token is allowed on
        /// a loopback address.
        #[arg(long)]
        insecure_admin: bool,
    },
    /// Decode captured frames (one websocket message per file; `-` reads stdin) to JSON lines.
    Decode {
        /// Frame files.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Everything on an embedded default: server, admin API, sites, a watch and simulated
    /// vehicles that drive, arrive and charge. No external services.
    Demo {
        /// Print events as CloudEvents JSON lines.
        #[arg(long)]
        json: bool,
        /// Milliseconds between frames of one vehicle.
        #[arg(long, default_value_t = 120)]
        pace_ms: u64,
    },
    /// Simulated vehicles streaming to a server over mTLS, every ack verified.
    Sim {
        /// Server address: host:port or wss://host:port/.
        #[arg(long)]
        server: String,
        /// Dev PKI folder (`certs dev --out DIR`); vehicle certificates are made and cached there.
        #[arg(long)]
        certs: PathBuf,
        /// Number of vehicles.
        #[arg(long, default_value_t = 10)]
        vehicles: usize,
        /// Frames per second per vehicle.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// GeoJSON LineString to drive along.
        #[arg(long)]
        route: Option<PathBuf>,
    },
    /// The load bench: many mTLS vehicles against a server, with latencies and /proc figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Certificates for development and tests.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print a shell completion script: `fleetgate completions bash >
    /// /etc/bash_completion.d/fleetgate` (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print fleetgate's man page (roff): `fleetgate man > /usr/local/share/man/man1/fleetgate.1`.
    Man,
    /// Tesla onboarding: the partner key, signed telemetry configs, pre-flight checks.
    Tesla {
        #[command(subcommand)]
        command: TeslaCommand,
    },
}

#[derive(Subcommand)]
enum TeslaCommand {
    /// A new partner key: DIR/private-key.pem (P-256, mode 0600) and
    /// DIR/com.tesla.3p.public-key.pem (host it on the partner domain).
    Keygen {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the signed telemetry config (Tesla.SS256 JWS) that fleetgate.tesla describes.
    SignConfig {
        /// Configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the claims JSON instead of the token.
        #[arg(long)]
        claims: bool,
    },
    /// Check what cars check: the ca chain against the served certificate, its key and
    /// expiry, the integer port, the client CAs the server asks for, the partner domain.
    Doctor {
        /// Configuration file (JSON).
        #[arg(long, short)]
        config: PathBuf,
        /// Fetch the served certificate from HOST:PORT instead of hostname:port.
        #[arg(long)]
        connect: Option<String>,
    },
}

fn tesla(command: TeslaCommand) -> ExitCode {
    use fleetgate::tesla::commands;
    match command {
        TeslaCommand::Keygen { out } => match commands::keygen(&out) {
            Ok((private, public)) => {
                println!("wrote {} (mode 0600: keep it secret)", private.display());
                println!("wrote {}", public.display());
                println!("next: serve the public key at https://<partner_domain>/.well-known/appspecific/com.tesla.3p.public-key.pem");
                println!("      (fleetgate's status port serves it there when fleetgate.tesla.private_key_file is set),");
                println!(
                    "      and set fleetgate.tesla.private_key_file = {}",
                    private.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetgate tesla keygen: {e}");
                ExitCode::from(1)
            }
        },
        TeslaCommand::SignConfig { config, claims } => match commands::sign_config(&config, claims)
        {
            Ok((signed, warnings)) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                match signed {
                    commands::Signed::Token(t) | commands::Signed::Claims(t) => println!("{t}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetgate tesla sign-config: {e}");
                ExitCode::from(2)
            }
        },
        TeslaCommand::Doctor { config, connect } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fleetgate tesla doctor: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let report =
                runtime.block_on(fleetgate::tesla::doctor::run(&config, connect.as_deref()));
            for line in report.lines() {
                println!("{line}");
            }
            if report.failed() {
                eprintln!(
                    "fleetgate tesla doctor: vehicles will not stream until every FAIL is fixed"
                );
                ExitCode::from(1)
            } else {
                println!("fleetgate tesla doctor: what cars check passes");
                ExitCode::SUCCESS
            }
        }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Load a running server: connect N vehicles, stream frames, report.
    Load {
        /// Vehicle listener (IP:PORT).
        #[arg(long)]
        target: std::net::SocketAddr,
        /// TLS server name of the server certificate.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Dev PKI folder (`certs dev --out DIR`) whose CA the server trusts; vehicle
        /// certificates are made and cached there.
        #[arg(long)]
        pki: PathBuf,
        /// Number of vehicles.
        #[arg(long, default_value_t = 1000)]
        vehicles: usize,
        /// New connections per second (0 = as fast as --concurrency allows).
        #[arg(long, default_value_t = 0.0)]
        ramp: f64,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Frames per second per vehicle (0 = hold the connections idle).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds of warm-up before measuring.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Loopback source addresses 127.0.0.1..N (past the ephemeral-port limit).
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Server pid: sample its RSS and CPU from /proc.
        #[arg(long)]
        server_pid: Option<i32>,
        /// Then drop every connection and reconnect all at once.
        #[arg(long)]
        storm: bool,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a scenario against a fresh bare ack server and a fresh fleetgate, side by side.
    Scenario {
        /// Which scenario.
        #[arg(value_enum)]
        scenario: fleetgate::tools::bench::scenario::Scenario,
        /// Vehicles (default: 19,500 for idle-max, steady, storm; 2,000 saturate; 10,000 kafka).
        #[arg(long)]
        vehicles: Option<usize>,
        /// Measured seconds of streaming phases.
        #[arg(long)]
        window: Option<u64>,
        /// Only this server.
        #[arg(long, value_enum)]
        only: Option<fleetgate::tools::bench::scenario::ServerKind>,
        /// How much of fleetgate's pipeline to run (stage by stage against the bare server).
        #[arg(long, value_enum, default_value = "full")]
        pipeline: fleetgate::tools::bench::scenario::PipelineWork,
        /// Work folder (PKI, sites, configs).
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// Kafka bootstrap servers (kafka-reliable).
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// Loopback source addresses.
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Frame → event latency and events/s as a Kafka consumer sees them (run beside a load).
    Events {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// The server's `namespace` (topics `{ns}_V` and `{ns}_events`).
        #[arg(long)]
        namespace: String,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The bare comparison server: mTLS websocket, envelope check, ack; nothing else.
    BareServer {
        /// Dev PKI folder (ca.pem, server.pem, server.key).
        #[arg(long)]
        pki: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:4443")]
        listen: std::net::SocketAddr,
    },
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<(), String> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
        // a run of minutes must not lose its report to a missing folder
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("bench: report written to {}", path.display());
    }
    Ok(())
}

fn bench(command: BenchCommand) -> ExitCode {
    fleetgate::tools::bench::procstat::raise_nofile_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetgate bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            BenchCommand::Load {
                target,
                server_name,
                pki,
                vehicles,
                ramp,
                concurrency,
                rate,
                warmup,
                duration,
                sources,
                server_pid,
                storm,
                json,
            } => {
                let report =
                    fleetgate::tools::bench::run_load(fleetgate::tools::bench::LoadOptions {
                        target,
                        server_name,
                        pki,
                        vehicles,
                        ramp_per_s: ramp,
                        concurrency,
                        rate_hz: rate,
                        warmup_s: warmup,
                        duration_s: duration,
                        sources,
                        server_pid,
                        storm,
                    })
                    .await?;
                print!("{}", fleetgate::tools::bench::load_table(&report));
                write_json(&json, &report)
            }
            BenchCommand::Scenario {
                scenario,
                vehicles,
                window,
                only,
                pipeline,
                work_dir,
                kafka,
                sources,
                json,
            } => {
                let report = fleetgate::tools::bench::scenario::run(
                    fleetgate::tools::bench::scenario::ScenarioOptions {
                        scenario,
                        vehicles,
                        window_s: window,
                        work_dir,
                        only,
                        pipeline,
                        kafka,
                        sources,
                    },
                )
                .await?;
                print!("{}", fleetgate::tools::bench::scenario::table(&report));
                write_json(&json, &report)
            }
            BenchCommand::Events {
                kafka,
                namespace,
                duration,
                json,
            } => {
                let report = tokio::task::spawn_blocking(move || {
                    fleetgate::tools::bench::events::run(
                        &kafka,
                        &namespace,
                        std::time::Duration::from_secs(duration),
                    )
                })
                .await
                .map_err(|e| e.to_string())??;
                println!(
                    "frames/s {:.0}  events/s {:.0}  matched {}/{}  frame→event p50 {} ms  p99 {} ms  max {} ms",
                    report.frames_per_s,
                    report.events_per_s,
                    report.matched,
                    report.events,
                    report.latency_p50_ms,
                    report.latency_p99_ms,
                    report.latency_max_ms
                );
                write_json(&json, &report)
            }
            BenchCommand::BareServer { pki, listen } => {
                fleetgate::tools::bench::bare::run(&pki, listen).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetgate bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A dev PKI: root CA (tls.ca_file), server cert, `Tesla Issuing CA`, vehicle certs, negatives.
    Dev {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of vehicle certificates (VINs 5YJ3E1EA7KF000001…).
        #[arg(long, default_value_t = 3)]
        vehicles: usize,
        /// Extra server names / IPs (localhost, 127.0.0.1 and ::1 are always included).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Skip the negative test cases.
        #[arg(long)]
        no_negative: bool,
    },
}

/// `check-config`: exit 0 ok, 1 warnings under `--strict`, 2 problems (every problem and every
/// warning is reported together, as text on stderr or one JSON object on stdout).
fn check_config(
    file: &std::path::Path,
    no_file_checks: bool,
    strict: bool,
    json: bool,
    insecure_admin: bool,
) -> ExitCode {
    use fleetgate::config::ConfigError;
    let result = fleetgate::config::Config::load_with(
        file,
        fleetgate::config::Checks {
            files: !no_file_checks,
            insecure_admin,
        },
    );
    let (problems, warnings, error): (
        Vec<fleetgate::config::ConfigIssue>,
        Vec<String>,
        Option<String>,
    ) = match &result {
        Ok(loaded) => (Vec::new(), loaded.warnings.clone(), None),
        Err(ConfigError::Invalid {
            issues, warnings, ..
        }) => (issues.clone(), warnings.clone(), None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let code = if error.is_some() || !problems.is_empty() {
        2
    } else if strict && !warnings.is_empty() {
        1
    } else {
        0
    };
    if json {
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "ok": code == 0,
            "problems": problems.iter().map(|i| serde_json::json!({"key": i.key, "problem": i.problem})).collect::<Vec<_>>(),
            "warnings": warnings,
            "error": error,
        });
        println!("{report}");
        return ExitCode::from(code);
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    match (&result, code) {
        (Err(e), _) => eprintln!("fleetgate check-config: {e}"),
        (Ok(_), 1) => eprintln!(
            "fleetgate check-config: {}: {} warning(s), and --strict makes them fail",
            file.display(),
            warnings.len()
        ),
        (Ok(_), _) => println!("fleetgate check-config: {}: ok", file.display()),
    }
    ExitCode::from(code)
}

fn serve(
    config: PathBuf,
    insecure_admin: bool,
    addrs_file: Option<PathBuf>,
    log_format: Option<fleetgate::logging::LogFormat>,
) -> ExitCode {
    let checks = fleetgate::config::Checks {
        files: true,
        insecure_admin,
    };
    let loaded = match fleetgate::config::Config::load_with(&config, checks) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fleetgate serve: {e}");
            return ExitCode::from(2);
        }
    };
    fleetgate::logging::init(
        &loaded.config,
        log_format.unwrap_or_else(|| fleetgate::logging::LogFormat::of(&loaded.config)),
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetgate serve: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (addrs, run) = match fleetgate::app::start(
            &loaded,
            fleetgate::app::StartOptions {
                insecure_admin,
                event_tap: None,
            },
            shutdown.clone(),
        )
        .await
        {
            Ok(started) => started,
            Err(e) => {
                // once, through the log (stderr; JSON when json_log_enable)
                tracing::error!("cannot start: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(path) = &addrs_file {
            // written whole, then renamed: a reader never sees half a file
            let tmp = path.with_extension("tmp");
            let json = serde_json::to_vec(&addrs).unwrap_or_default();
            if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::error!(file = %path.display(), error = %e, "cannot write --addrs-file");
                return ExitCode::from(1);
            }
        }
        let signal = shutdown.clone();
        tokio::spawn(async move {
            fleetgate::app::wait_for_signal().await;
            tracing::info!("shutdown requested: no new connections, draining");
            signal.cancel();
        });
        let left = run.await;
        if left == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

fn certs_dev(
    out: PathBuf,
    vehicles: usize,
    server_names: Vec<String>,
    no_negative: bool,
) -> ExitCode {
    let mut names = vec!["localhost", "127.0.0.1", "::1"];
    names.extend(server_names.iter().map(String::as_str));
    let vins = fleetgate::tools::certs::example_vins(vehicles);
    let result = fleetgate::tools::certs::DevPki::generate()
        .and_then(|pki| pki.write(&out, &names, &vins, !no_negative));
    match result {
        Ok(files) => {
            println!("wrote {} files to {}", files.len(), out.display());
            println!("  tls.ca_file     = {}", out.join("ca.pem").display());
            println!("  tls.server_cert = {}", out.join("server.pem").display());
            println!("  tls.server_key  = {}", out.join("server.key").display());
            println!(
                "  vehicles        = {}/VIN.pem + VIN.key",
                out.join("vehicles").display()
            );
            if !no_negative {
                for (name, what) in fleetgate::tools::certs::NEGATIVE_CASES {
                    println!("  negative/{name}: {what}");
                }
            }
            println!("dev certificates only: never use them in production");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleetgate certs dev: {e}");
            ExitCode::from(1)
        }
    }
}

/// The arguments as clap reads them: Tesla's server is started as `fleet-telemetry
/// -config=FILE` (Go's flag forms: `-config FILE`, `-config=FILE`, `--config …`), and a
/// container or unit written for it starts `serve` with the same arguments.
fn with_tesla_invocation(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let tesla_form = ["-config", "--config", "-c"].iter().any(|flag| {
        first == *flag
            || first
                .strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if !tesla_form {
        return args;
    }
    let mut out = Vec::with_capacity(args.len() + 2);
    out.push(args[0].clone());
    out.push("serve".into());
    for arg in &args[1..] {
        // Go's single-dash long flag is clap's double-dash one
        match arg.to_str() {
            Some(a) if a == "-config" || a.starts_with("-config=") => {
                out.push(format!("-{a}").into())
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_tesla_invocation(std::env::args_os().collect()));
    match cli.command {
        Command::Serve {
            config,
            insecure_admin,
            addrs_file,
            log_format,
        } => serve(config, insecure_admin, addrs_file, log_format),
        Command::CheckConfig {
            file,
            no_file_checks,
            strict,
            json,
            insecure_admin,
        } => check_config(&file, no_file_checks, strict, json, insecure_admin),
        Command::Certs {
            command:
                CertsCommand::Dev {
                    out,
                    vehicles,
                    server_names,
                    no_negative,
                },
        } => certs_dev(out, vehicles, server_names, no_negative),
        Command::Bench { command } => bench(command),
        Command::Tesla { command } => tesla(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleetgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetgate man: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo { json, pace_ms } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fleetgate demo: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(fleetgate::tools::commands::demo::run(
                json,
                std::time::Duration::from_millis(pace_ms),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetgate demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sim {
            server,
            certs,
            vehicles,
            rate,
            duration,
            route,
        } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fleetgate sim: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let opts = fleetgate::tools::commands::sim::SimOptions {
                server,
                certs,
                vehicles,
                rate_hz: rate,
                duration_s: duration,
                route,
            };
            match runtime.block_on(fleetgate::tools::commands::sim::run(
                opts,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )) {
                Ok(summary) => {
                    fleetgate::tools::commands::sim::print_summary(&summary);
                    if summary.failed.is_empty()
                        && summary.acked == summary.sent
                        && summary.errors == 0
                    {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("fleetgate sim: not every frame was acked ({} of {}), or vehicles failed", summary.acked, summary.sent);
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("fleetgate sim: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Decode { files } => {
            let stdout = std::io::stdout();
            match fleetgate::tools::commands::decode::run(&files, &mut stdout.lock()) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(failed) => {
                    eprintln!(
                        "fleetgate decode: {failed} of {} inputs could not be decoded (see the \"error\" lines)",
                        files.len()
                    );
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("fleetgate decode: cannot write output: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    #[test]
    fn teslas_invocation_starts_serve() {
        for line in [
            "fleet-telemetry -config=/etc/c.json",
            "fleet-telemetry -config /etc/c.json",
            "fleet-telemetry --config=/etc/c.json",
            "fleet-telemetry --config /etc/c.json",
        ] {
            let cli = Cli::try_parse_from(with_tesla_invocation(args(line))).unwrap();
            match cli.command {
                Command::Serve { config, .. } => {
                    assert_eq!(config, PathBuf::from("/etc/c.json"), "{line}")
                }
                _ => panic!("{line} did not start serve"),
            }
        }
        // fleetgate's own forms are left alone
        let own = args("fleetgate check-config /etc/c.json");
        assert_eq!(with_tesla_invocation(own.clone()), own);
        let cli = Cli::try_parse_from(with_tesla_invocation(args(
            "fleetgate serve -c /etc/c.json",
        )))
        .unwrap();
        assert!(matches!(cli.command, Command::Serve { .. }));
    }

    #[test]
    fn completions_and_the_man_page_come_from_the_cli_definition() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "fleetgate",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(
            bash.contains("check-config") && bash.contains("sign-config"),
            "{bash}"
        );
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.contains(".TH fleetgate") && man.contains("check\\-config"),
            "{man}"
        );
    }
}
