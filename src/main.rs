use std::process::ExitCode;

use clap::Parser;

use regfs::cli::{Cli, Command, ConfigAction};
use regfs::{commands, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match &cli.command {
        Command::Mount(args) => commands::mount(args),
        Command::Gc(args) => commands::gc(args),
        Command::Status(args) => commands::status(args),
        Command::Jobs(args) => commands::jobs(args),
        Command::Config(ConfigAction::Check { file }) => commands::config_check(file),
        Command::Completions { shell } => commands::completions(*shell),
        Command::Man => commands::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
