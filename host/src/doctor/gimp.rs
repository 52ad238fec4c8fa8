//! The GIMP 3 plug-in: installed where `gimp-bridge/install.sh` puts it, and byte for byte the
//! files this sdhost was built with (an older plug-in may speak to the daemon in ways it has
//! since changed).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::Check;
use crate::user_dirs::env_dir;

/// The plug-in's files as `install.sh` installs them, with the contents built in.
const FILES: [(&str, &[u8]); 10] = [
    (
        "sdhost_gimp.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/sdhost_gimp.py"),
    ),
    (
        "gimp_arguments.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/gimp_arguments.py"),
    ),
    (
        "gimp_dialog.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/gimp_dialog.py"),
    ),
    (
        "gimp_jobs.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/gimp_jobs.py"),
    ),
    (
        "gimp_layers.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/gimp_layers.py"),
    ),
    (
        "gimp_procedures.py",
        include_bytes!("../../../gimp-bridge/sdhost_gimp/gimp_procedures.py"),
    ),
    (
        "sdhost_client.py",
        include_bytes!("../../../gimp-bridge/sdhost_client.py"),
    ),
    (
        "sdhost_bridge.py",
        include_bytes!("../../../gimp-bridge/sdhost_bridge.py"),
    ),
    (
        "sdhost_geometry.py",
        include_bytes!("../../../gimp-bridge/sdhost_geometry.py"),
    ),
    (
        "sdhost_link.py",
        include_bytes!("../../../gimp-bridge/sdhost_link.py"),
    ),
];

/// The fix for a missing or outdated plug-in.
const FIX: &str = "`make install-gimp-plugin` in the sdhost clone (gimp-bridge/install.sh), or \
                   scripts/install";

/// `${XDG_CONFIG_HOME:-~/.config}/GIMP/3.0/plug-ins/sdhost_gimp`, as install.sh has it.
fn plugin_dir() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("GIMP/3.0/plug-ins/sdhost_gimp"))
}

/// The plug-in's line.
pub(super) fn check() -> Vec<Check> {
    let Some(dir) = plugin_dir() else {
        return vec![Check::problem(
            "gimp plug-in",
            "neither XDG_CONFIG_HOME nor HOME is set",
            FIX,
        )];
    };
    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    for (name, built_in) in FILES {
        match std::fs::read(dir.join(name)) {
            Err(_) => missing.push(name),
            Ok(bytes) if bytes != built_in => outdated.push(name),
            Ok(_) => {}
        }
    }
    let main = dir.join(FILES[0].0);
    let executable = std::fs::metadata(&main).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let check = if missing.len() == FILES.len() {
        Check::problem(
            "gimp plug-in",
            format!("not installed in {}", dir.display()),
            FIX,
        )
    } else if !missing.is_empty() {
        Check::problem(
            "gimp plug-in",
            format!(
                "incomplete in {}: {} missing",
                dir.display(),
                missing.join(", ")
            ),
            FIX,
        )
    } else if !outdated.is_empty() {
        Check::problem(
            "gimp plug-in",
            format!(
                "outdated in {}: {} differ from this sdhost's",
                dir.display(),
                outdated.join(", ")
            ),
            FIX,
        )
    } else if !executable {
        Check::problem(
            "gimp plug-in",
            format!(
                "{} is not executable (GIMP will not run it)",
                main.display()
            ),
            format!("chmod +x {}, or {FIX}", main.display()),
        )
    } else {
        Check::ok(
            "gimp plug-in",
            format!("installed and current in {}", dir.display()),
        )
    };
    vec![check]
}
