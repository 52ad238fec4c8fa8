//! The diffusers side of the benchmark (a Python process answering timing requests) and the
//! measurement helpers both sides share.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

/// Where the reference side lives.
#[derive(Clone)]
pub struct ReferenceScript {
    /// The venv's Python.
    pub python: PathBuf,
    /// `tests/reference/bench_reference.py`.
    pub script: PathBuf,
    /// The device it runs on (`cpu`, `cuda:0`), as `--device` names it.
    pub device: String,
}

/// The diffusers side, a process answering timing requests one JSON line at a time.
pub struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    /// Starts the reference process for `model` with `threads` intra-op threads on the
    /// script's device.
    pub fn start(script: &ReferenceScript, model: &Path, threads: i32) -> anyhow::Result<Self> {
        let mut child = Command::new(&script.python)
            .arg(&script.script)
            .arg(model)
            .arg(threads.to_string())
            .arg("--device")
            .arg(&script.device)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting the reference side {} {} (run `make bench` from the repository \
                     root, which sets up .venv, or pass --python and --reference)",
                    script.python.display(),
                    script.script.display()
                )
            })?;
        let stdin = child.stdin.take().context("reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("reference stdout")?);
        Ok(Reference {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one request (`{"op": …}`) and returns the reference's answer.
    pub fn ask(&mut self, command: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        writeln!(self.stdin, "{command}")?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the reference process ended");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs one timed request and returns the reference's seconds.
    pub fn time(&mut self, command: serde_json::Value) -> anyhow::Result<f64> {
        let answer = self.ask(command)?;
        answer["seconds"]
            .as_f64()
            .with_context(|| format!("reference answered {answer}"))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{{\"op\": \"quit\"}}");
        let _ = self.child.wait();
    }
}

/// The median of some timings.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One warm-up of each side, then `repeat` timed runs alternating between them (which side
/// goes first alternates too), so both see the same machine state; the two medians.
pub fn interleaved(
    repeat: usize,
    mut ours: impl FnMut() -> anyhow::Result<f64>,
    mut theirs: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    ours()?;
    theirs()?;
    let (mut mine, mut reference) = (Vec::new(), Vec::new());
    for round in 0..repeat.max(1) {
        if round % 2 == 0 {
            mine.push(ours()?);
            reference.push(theirs()?);
        } else {
            reference.push(theirs()?);
            mine.push(ours()?);
        }
    }
    Ok((median(mine), median(reference)))
}

/// Seconds `f` takes.
pub fn seconds<T>(f: impl FnOnce() -> T) -> f64 {
    let start = Instant::now();
    let _ = f();
    start.elapsed().as_secs_f64()
}

/// Wall time and peak RSS (MiB) of a separate process. The peak is the child's `VmHWM`,
/// polled until it exits (exec starts a fresh count, unlike `ru_maxrss`, which also remembers
/// the forked copy of this process).
pub fn job_process(program: &Path, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak_kib = 0.0f64;
    let status = loop {
        if let Some(hwm) = status_kib(&status_file, "VmHWM:") {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    anyhow::ensure!(
        status.success(),
        "{} {} failed ({status})",
        program.display(),
        args.join(" ")
    );
    Ok((start.elapsed().as_secs_f64(), peak_kib / 1024.0))
}

/// A memory field (`VmRSS:`, `VmHWM:` …) of a `/proc/…/status` file, in KiB.
pub fn status_kib(status_file: &Path, field: &str) -> Option<f64> {
    std::fs::read_to_string(status_file)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}
