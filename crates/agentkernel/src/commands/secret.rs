//! `agentkernel secret set|list|remove`: the host user's secret store. Values are read from
//! standard input (never from the command line, where `ps` and shell history would see
//! them) and never printed.

use std::io::{IsTerminal, Read, Write};

use ak_service::Caller;

use super::{print_json, say};
use crate::cli::SecretCommand;
use crate::{exit, wiring};

pub fn secret(command: SecretCommand) -> i32 {
    let service = wiring::service();
    let result = match &command {
        SecretCommand::Set(args) => read_value(&args.name).and_then(|value| {
            service
                .set_secret(Caller::Local, &args.name, value)
                .map_err(exit::with_hint)
        }),
        SecretCommand::List(args) => service
            .list_secrets(Caller::Local)
            .map_err(exit::with_hint)
            .map(|names| {
                if args.json {
                    print_json(&names);
                } else {
                    for name in names {
                        say(&name);
                    }
                }
            }),
        SecretCommand::Remove(args) => service
            .remove_secret(Caller::Local, &args.name)
            .map_err(exit::with_hint),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            exit::report(&error);
            exit::USAGE
        }
    }
}

/// The value on standard input: a line typed at a terminal (without echo is the shell's
/// business: `read -s`), or everything piped in; one trailing newline is dropped.
fn read_value(name: &str) -> anyhow::Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        // The prompt goes to stderr so that stdout stays clean for scripts.
        let mut prompt = std::io::stderr();
        let _ = write!(prompt, "value of {name} (then Enter): ");
        let _ = prompt.flush();
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        return Ok(strip_newline(line));
    }
    let mut text = String::new();
    stdin.read_to_string(&mut text)?;
    Ok(strip_newline(text))
}

fn strip_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}
