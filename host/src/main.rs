//! The `sdhost` binary.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The commands here print to a terminal or pipe: end quietly when the reader goes away
    // (`sdhost info … | head`) instead of panicking in println!. A long-running server
    // command must keep Rust's default (SIGPIPE ignored) so a dropped client is an error.
    // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = sdhost::cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            // One line: the error and its causes, each once (many errors already end with
            // their cause: "{path}: {source}").
            let mut chain: Vec<String> = Vec::new();
            for cause in error.chain().map(ToString::to_string) {
                if !chain.last().is_some_and(|last| last.ends_with(&cause)) {
                    chain.push(cause);
                }
            }
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
