use std::process::ExitCode;

use clap::Parser;

use regfs::cli::{Cli, Command};
use regfs::{commands, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match &cli.command {
        Command::Mount(args) => commands::mount(args),
        Command::Gc(args) => commands::gc(args),
        Command::Status(args) => commands::status(args),
        Command::Jobs(args) => commands::jobs(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
