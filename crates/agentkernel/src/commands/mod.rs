//! One module per command; `dispatch` maps each to its exit code.

mod attach;
mod cp;
mod exec;
mod run;
mod sandbox;
mod status;
mod stream;
mod terminal;

use crate::cli::Command;

pub async fn dispatch(command: Command) -> i32 {
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Status(args) => status::status(args),
        Command::Create(args) => sandbox::create(*args).await,
        Command::Start(args) => sandbox::start(args).await,
        Command::Exec(args) => exec::exec(args).await,
        Command::Attach(args) => attach::attach(args).await,
        Command::Cp(args) => cp::cp(args).await,
        Command::Stop(args) => sandbox::stop(args).await,
        Command::Remove(args) => sandbox::remove(args).await,
        Command::List(args) => sandbox::list(args).await,
        Command::Inspect(args) => sandbox::inspect(args).await,
    }
}
