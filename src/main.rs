//! The `fleetgate` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Decode captured frames (one websocket message per file; `-` reads stdin) to JSON lines.
    Decode {
        /// Frame files.
        #[arg(required = true)]
        files: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { files } => {
            let stdout = std::io::stdout();
            match fleetgate::commands::decode::run(&files, &mut stdout.lock()) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(failed) => {
                    eprintln!("fleetgate decode: {failed} of {} inputs could not be decoded (see the \"error\" lines)", files.len());
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
