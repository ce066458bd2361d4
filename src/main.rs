use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigAction};

mod cli;
mod commands;
mod logging;
mod output;
mod progress;
mod retention_commands;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors go to standard error; clap ignores a failure to write them.
        Err(e) if e.use_stderr() || std::io::stdout().is_terminal() => e.exit(),
        // --help and --version into a pipe or a file: a failed write is an error, but a
        // reader that stopped early (`| head`) is not.
        Err(e) => {
            return match output::print_listing(&e.render().to_string()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    output::error(&msg);
                    ExitCode::FAILURE
                }
            };
        }
    };
    logging::init(cli.verbose);
    let result = match &cli.command {
        Command::Mount(args) => commands::mount(args),
        Command::Gc(args) => commands::gc(args),
        Command::Status(args) => commands::status(args),
        Command::Jobs(args) => commands::jobs(args),
        Command::Config(ConfigAction::Check { file }) => commands::config_check(file),
        Command::Tags(args) => retention_commands::tags(args),
        Command::Retention(action) => retention_commands::retention(action),
        Command::Completions { shell } => commands::completions(*shell),
        Command::Man => commands::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&e);
            ExitCode::FAILURE
        }
    }
}
