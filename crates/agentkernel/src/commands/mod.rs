//! One module per command; `dispatch` maps each to its exit code.

mod run;
mod status;

use crate::cli::Command;

pub async fn dispatch(command: Command) -> i32 {
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Status(args) => status::status(args),
    }
}
