//! The per-user folders sdhost reads and writes, as the XDG base directory rules name them
//! (each `$XDG_*` variable, else its default under `$HOME`); no other module's types.

use std::path::PathBuf;

/// A folder from the environment variable `var`, when it is set and not empty.
pub fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    env_dir("HOME")
}

/// `$XDG_CONFIG_HOME/sdhost` (or `~/.config/sdhost`).
pub fn config_dir() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| home().map(|h| h.join(".config")))
        .map(|d| d.join("sdhost"))
}

/// `$XDG_DATA_HOME/sdhost` (or `~/.local/share/sdhost`): the demo model and the interrogation
/// category lists live there.
pub fn data_dir() -> Option<PathBuf> {
    env_dir("XDG_DATA_HOME")
        .or_else(|| home().map(|h| h.join(".local/share")))
        .map(|d| d.join("sdhost"))
}
