//! Processes of the lab: long-running ones (control plane, proxies, gRPC servers, tcpdump)
//! that write to a log file and die with their guard, and short commands run to completion
//! under a deadline.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::wait;

/// How long a process gets to exit after a polite signal before it is killed (5 s).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How many lines of each log a failing test prints (40).
pub const TAIL_LINES: usize = 40;

/// What to start inside a network namespace: program, arguments and extra environment.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Network namespace the process runs in.
    pub ns: String,
    /// Short name, also the log file's stem (`<name>.log`).
    pub name: String,
    /// Path of the program.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<OsString>,
    /// Environment added to the lab's own.
    pub env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// A launch of `program` named `name` in namespace `ns`, with no arguments yet.
    pub fn new(ns: &str, name: &str, program: impl Into<PathBuf>) -> Launch {
        Launch {
            ns: ns.to_owned(),
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line as one readable string, for logs and errors.
    pub fn describe(&self) -> String {
        let mut text = self.program.display().to_string();
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    fn command(&self) -> Command {
        // `ip netns exec` execs the program in place, so the child's pid is the program's own
        // and signals reach it directly.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(&self.ns)
            .arg(&self.program)
            .args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Tests read these logs: no colour codes in them.
        cmd.env("NO_COLOR", "1");
        cmd.stdin(Stdio::null()).process_group(0);
        cmd
    }
}

/// A running process with stdout and stderr in a log file; stopped when dropped.
///
/// When the drop happens during a panic (a failing test), the tail of the log is printed to
/// stderr first, so the test output shows why.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    log_start: u64,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `launch` with its output appended to `<log_dir>/<name>.log`.
    pub fn spawn(launch: &Launch, log_dir: &Path) -> Result<Proc> {
        let log = log_dir.join(format!("{}.log", launch.name));
        let mut file = OpenOptions::new().create(true).append(true).open(&log)?;
        writeln!(file, "==> {} (netns {})", launch.describe(), launch.ns)?;
        let log_start = file.metadata()?.len();

        let mut cmd = launch.command();
        cmd.stdout(file.try_clone()?).stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in netns {}", launch.describe(), launch.ns))?;
        Ok(Proc {
            name: launch.name.clone(),
            child,
            log,
            log_start,
            exited: None,
        })
    }

    /// The name the process was launched under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file (shared by every start of a process with this name).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What this run of the process has written so far, colour codes removed.
    pub fn log_text(&self) -> String {
        read_from(&self.log, self.log_start)
            .map(|t| strip_ansi(&t))
            .unwrap_or_default()
    }

    /// The last `lines` lines of this run's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits until the log holds `needle`; fails early if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("{} to log {needle:?}", self.name);
        let result = wait::until(&what, timeout, || {
            if self.log_text().contains(needle) {
                return Ok(Some(()));
            }
            match self.exit_status()? {
                Some(status) => bail!("{} exited ({status}) before logging {needle:?}", self.name),
                None => Ok(None),
            }
        });
        result.map_err(|e| self.with_tail(e))
    }

    /// Adds the tail of this process's log to an error about it.
    pub fn with_tail(&self, error: anyhow::Error) -> anyhow::Error {
        let tail = self.log_tail(TAIL_LINES);
        anyhow!("{error:#}\n----- last lines of {} -----\n{tail}", self.name)
    }

    /// Sends `signal` to the process group, unless the process has already exited.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.exit_status()?.is_none() {
            killpg(self.pgid(), signal).with_context(|| format!("{signal} to {}", self.name))?;
        }
        Ok(())
    }

    /// Stops the process: SIGTERM, then SIGKILL after `STOP_GRACE`.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGTERM, STOP_GRACE)
    }

    /// Sends `signal`, waits up to `grace` for the exit, then kills the process group.
    pub fn signal_and_wait(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        self.signal(signal)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            std::thread::sleep(wait::POLL_INTERVAL);
        }
        // Ignore ESRCH: the group may have gone between the last check and now.
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Prints the tail of the log to stderr under a heading naming the process.
    pub fn print_tail(&self) {
        eprintln!(
            "----- {} (log {}), last {TAIL_LINES} lines -----\n{}",
            self.name,
            self.log.display(),
            self.log_tail(TAIL_LINES)
        );
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_tail();
        }
        if let Err(error) = self.stop() {
            eprintln!("edgeward-lab: could not stop {}: {error:#}", self.name);
        }
    }
}

/// Runs `cmd` to completion with piped output, killing it if it outlives `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    let status = wait_or_kill(&mut child, timeout)?;
    let output = Output {
        status: status.0,
        stdout: join(stdout),
        stderr: join(stderr),
    };
    if status.1 {
        bail!(
            "`{line}` did not finish within {timeout:?}; {}",
            show_output(&output)
        );
    }
    Ok(output)
}

/// Runs `cmd` like `run` and requires success; gives stdout as text.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let line = describe(cmd);
    let output = run(cmd, timeout)?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}); {}",
            output.status,
            show_output(&output)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits for the child; on timeout kills its group. Gives the status and whether it timed out.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<(ExitStatus, bool)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    Ok((child.wait()?, true))
}

fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    // Each pipe is drained on its own thread so a chatty child never blocks on a full pipe.
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
}

fn join(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn show_output(output: &Output) -> String {
    format!(
        "stderr: {:?}; stdout: {:?}",
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    )
}

fn read_from(path: &Path, offset: u64) -> Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes ANSI escape sequences (colours), in case a program ignores `NO_COLOR`.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // A CSI sequence runs from ESC [ to its final byte, a letter.
        if chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2maccess\u{1b}[0m: ok";
        assert_eq!(strip_ansi(line), "2026  INFO access: ok");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn run_kills_a_command_past_its_deadline() {
        let started = Instant::now();
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_ok_reports_stderr_of_a_failure() {
        let err = run_ok(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            STOP_GRACE,
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
