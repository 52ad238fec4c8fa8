//! `sdhost doctor` as a user runs it, with HOME and the XDG folders in a temporary folder:
//! nothing set up (problems, each with its fix, exit status 1), a models folder, the GIMP
//! plug-in installed and then changed, a broken config file, and a running daemon.

use crate::common;
use crate::daemon::start_daemon;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// A user's folders in a temporary folder.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// `sdhost doctor ARGS` in this home: exit status and stdout.
    fn doctor(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_sdhost"))
            .arg("doctor")
            .args(args)
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("SDHOST_CACHE_DIR", self.path("cache"))
            .env_remove("SDHOST_PLUGINS_DIR")
            .output()
            .expect("run sdhost doctor");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "doctor panicked:\n{stdout}\n{stderr}"
        );
        (output.status.code().unwrap_or(-1), stdout)
    }

    /// The JSON report of `sdhost doctor --json ARGS`.
    fn report(&self, args: &[&str]) -> Report {
        let mut all = vec!["--json"];
        all.extend(args);
        let (code, stdout) = self.doctor(&all);
        let json: Value = serde_json::from_str(&stdout).expect("doctor --json prints JSON");
        assert_eq!(json["ok"], Value::Bool(code == 0), "{stdout}");
        Report { code, json }
    }

    /// The one check named `name` of a fresh report.
    fn check(&self, args: &[&str], name: &str) -> Value {
        self.report(args).check(name)
    }

    fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("config/sdhost/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A parsed report and the exit status.
struct Report {
    code: i32,
    json: Value,
}

impl Report {
    /// The checks named `name`.
    fn checks(&self, name: &str) -> Vec<Value> {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == name)
            .cloned()
            .collect()
    }

    /// The one check named `name`.
    fn check(&self, name: &str) -> Value {
        let checks = self.checks(name);
        assert_eq!(checks.len(), 1, "{name}: {}", self.json);
        checks[0].clone()
    }
}

fn assert_problem(check: &Value, detail: &str, fix: &[&str]) {
    assert_eq!(check["status"], "problem", "{check}");
    let text = check["detail"].as_str().unwrap();
    assert!(text.contains(detail), "{check}");
    let fix_text = check["fix"].as_str().expect("a problem has a fix");
    for part in fix {
        assert!(fix_text.contains(part), "fix lacks {part:?}: {check}");
    }
}

fn assert_ok(check: &Value, detail: &str) {
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains(detail),
        "{check}"
    );
    assert!(check["fix"].is_null(), "{check}");
}

#[test]
fn nothing_set_up_gives_problems_with_fixes() {
    let home = Home::new();
    let (code, text) = home.doctor(&[]);
    assert_eq!(code, 1, "{text}");
    // Every problem line is followed by its fix.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("problem") {
            assert!(lines[i + 1].trim_start().starts_with("fix: "), "{text}");
        }
    }
    assert!(
        text.lines().last().unwrap().contains("problems found"),
        "{text}"
    );

    let report = home.report(&[]);
    assert_eq!(report.code, 1);
    assert_ok(&report.check("libtorch"), "libtorch_cpu.so");
    assert_ok(&report.check("config"), "none");
    assert_ok(&report.check("device"), "cpu");
    let models = report.check("models");
    assert_problem(&models, "demo model", &["models_dir", "--models-dir"]);
    assert!(models["detail"].as_str().unwrap().contains("noise"));
    assert_ok(&report.checks("samplers")[0], "built-in plugin");
    assert_problem(
        &report.check("gimp plug-in"),
        "not installed",
        &["make install-gimp-plugin", "scripts/install"],
    );
    assert_problem(
        &report.check("interrogate lists"),
        "not found",
        &["make setup"],
    );
    assert_problem(&report.check("daemon"), "not running", &["sdhost serve"]);
    assert_ok(&report.check("service"), "no systemd user unit");
}

#[test]
fn a_models_folder_and_the_lists_are_found() {
    let home = Home::new();
    let models = home.path("models");
    let checkpoints = models.join("Stable-diffusion");
    std::fs::create_dir_all(&checkpoints).unwrap();
    common::tiny_model(&checkpoints, 5);
    home.write_config(&format!(
        "models_dir = {:?}\n",
        models.display().to_string()
    ));
    let lists = home.path("data/sdhost/interrogate");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(lists.join("mediums.txt"), "oil painting\n").unwrap();

    let report = home.report(&[]);
    assert_ok(&report.check("config"), "config.toml");
    assert_ok(&report.check("models"), "1 checkpoint(s)");
    assert_ok(&report.check("interrogate lists"), "1 in");

    // A models folder that is not there.
    home.write_config("models_dir = \"/nonexistent/models\"\n");
    assert_problem(
        &home.check(&[], "models"),
        "does not exist",
        &["models_dir"],
    );
}

#[test]
fn the_gimp_plug_in_is_checked_against_the_built_files() {
    let home = Home::new();
    let status = Command::new(common::workspace().join("gimp-bridge/install.sh"))
        .env("HOME", home.path("home"))
        .env("XDG_CONFIG_HOME", home.path("config"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_ok(&home.check(&[], "gimp plug-in"), "installed and current");

    let client = home.path("config/GIMP/3.0/plug-ins/sdhost_gimp/sdhost_client.py");
    let mut text = std::fs::read_to_string(&client).unwrap();
    text.push_str("# an older copy\n");
    std::fs::write(&client, text).unwrap();
    let check = home.check(&[], "gimp plug-in");
    assert_problem(&check, "outdated", &["make install-gimp-plugin"]);
    assert!(check["detail"]
        .as_str()
        .unwrap()
        .contains("sdhost_client.py"));
}

#[test]
fn a_broken_config_file_is_named() {
    let home = Home::new();
    let path = home.write_config("models_dir = [\n");
    let report = home.report(&[]);
    assert_eq!(report.code, 1);
    assert_problem(
        &report.check("config"),
        &path.display().to_string(),
        &["correct"],
    );
    // The other checks still run, on the defaults.
    assert_problem(&report.check("models"), "demo model", &["models_dir"]);

    let other = home.path("other.toml");
    std::fs::write(&other, "modle = \"x\"\n").unwrap();
    let other_arg = other.display().to_string();
    let check = home.check(&["--config", &other_arg], "config");
    assert_problem(&check, "modle", &[&other_arg]);

    home.write_config("device = \"tpu\"\n");
    assert_problem(&home.check(&[], "device"), "tpu", &["device = \"cpu\""]);
    if !tch::Cuda::is_available() {
        home.write_config("device = \"cuda\"\n");
        assert_problem(&home.check(&[], "device"), "cuda", &["device = \"cpu\""]);
    }
}

#[test]
fn a_stale_service_unit_is_a_problem() {
    let home = Home::new();
    let unit = home.path("config/systemd/user/sdhost.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(
        &unit,
        "[Service]\nExecStart=/nonexistent/bin/sdhost serve\n",
    )
    .unwrap();
    let report = home.report(&[]);
    assert_problem(
        &report.check("service"),
        "/nonexistent/bin/sdhost",
        &["scripts/install --systemd"],
    );
    // With the unit installed, the daemon's fix names the service.
    assert_problem(
        &report.check("daemon"),
        "not running",
        &["systemctl --user start sdhost"],
    );
}

#[test]
fn a_running_daemon_answers_with_its_version_and_model() {
    let daemon = start_daemon(&[], None);
    let home = Home::new();
    let socket = daemon.socket.display().to_string();
    let check = home.check(&["--socket", &socket], "daemon");
    assert_ok(&check, &format!("sdhost {}", env!("CARGO_PKG_VERSION")));
    assert!(
        check["detail"].as_str().unwrap().contains("model tiny-"),
        "{check}"
    );
}
