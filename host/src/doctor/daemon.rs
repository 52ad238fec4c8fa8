//! Whether a daemon answers on the socket (a `hello` as any client sends it, through the
//! daemon's own framing) and whether the systemd user service is installed.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::Check;
use crate::daemon::config::default_socket;
use crate::daemon::protocol::{read_frame, write_frame, FrameLimits, PROTOCOL_VERSION};
use crate::user_dirs::env_dir;

/// How long a daemon may take to answer `hello` (it answers between jobs' steps at once; a
/// busy 2-core machine can still take a moment).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The user unit `scripts/install --systemd` writes.
fn unit_path() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("systemd/user/sdhost.service"))
}

/// Says hello and returns the `welcome` header (or the error the daemon answered with).
fn hello(socket: &Path) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let request = json!({
        "type": "hello",
        "id": 1,
        "protocol": PROTOCOL_VERSION,
        "client": format!("sdhost doctor {}", env!("CARGO_PKG_VERSION")),
    });
    write_frame(&mut stream, &request, &[])?;
    // The welcome has no attachments: a small payload limit is enough.
    let frame = read_frame(
        &mut stream,
        FrameLimits {
            max_payload: 1 << 20,
        },
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(frame.header)
}

/// The daemon's and the service's lines.
pub(super) fn check(socket: Option<PathBuf>) -> Vec<Check> {
    let socket = socket.unwrap_or_else(default_socket);
    let unit = unit_path();
    let unit_installed = unit.as_deref().is_some_and(Path::exists);
    let start = if unit_installed {
        "start it: `systemctl --user start sdhost` (or run `sdhost serve`)"
    } else {
        "start it: `sdhost serve` (or install it as a user service: scripts/install --systemd)"
    };
    let daemon = match hello(&socket) {
        Ok(header) if header["type"] == "welcome" => {
            let version = header["daemon"].as_str().unwrap_or("unknown version");
            let model = header["model"]["name"].as_str().unwrap_or("?");
            let demo = if header["model"]["demo"] == true {
                " (the random-weight demo model: pictures are noise)"
            } else {
                ""
            };
            let ours = format!("sdhost {}", env!("CARGO_PKG_VERSION"));
            let other = if version == ours {
                String::new()
            } else {
                format!("; this binary is {ours}")
            };
            Check::ok(
                "daemon",
                format!(
                    "{version} on {}, model {model}{demo}{other}",
                    socket.display()
                ),
            )
        }
        Ok(header) => Check::problem(
            "daemon",
            format!(
                "{} answered hello with {}: {}",
                socket.display(),
                header["code"].as_str().unwrap_or("?"),
                header["message"].as_str().unwrap_or("")
            ),
            "restart the daemon with this sdhost (an older or newer one is running)",
        ),
        Err(e) => Check::problem(
            "daemon",
            format!("not running: nothing answers on {} ({e})", socket.display()),
            start,
        ),
    };
    vec![daemon, service(unit.as_deref())]
}

/// The systemd user unit's line: optional, but when there its program must exist.
fn service(unit: Option<&Path>) -> Check {
    let Some(unit) = unit.filter(|u| u.exists()) else {
        return Check::ok(
            "service",
            "no systemd user unit (optional: scripts/install --systemd)",
        );
    };
    let text = std::fs::read_to_string(unit).unwrap_or_default();
    let exec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .unwrap_or("");
    let program = exec.split_whitespace().next().unwrap_or("");
    if !program.is_empty() && Path::new(program).exists() {
        Check::ok("service", format!("{} (ExecStart={exec})", unit.display()))
    } else {
        Check::problem(
            "service",
            format!(
                "{} starts {:?}, which does not exist",
                unit.display(),
                program
            ),
            "reinstall it: scripts/install --systemd (or remove the unit: scripts/install \
             --uninstall)",
        )
    }
}
