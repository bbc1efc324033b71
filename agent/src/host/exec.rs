//! The one place in the agent that spawns processes.
//!
//! Everything that needs a live node (systemctl, crictl, crio, oc, the OpenShift restore script,
//! ostree, rpm-ostree, etcdctl in tests) goes through [`CommandRunner`]. [`RealRunner`] runs the
//! command with a timeout, captures stdout and stderr (bounded), and kills the child when the
//! timeout fires or the caller goes away. [`RecordingRunner`] records every command instead and
//! answers from a script, for orchestration tests.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Captured output is cut at this many bytes per stream (the tail is dropped).
pub const OUTPUT_CAP: usize = 1 << 20;

/// A command to run: program, arguments, extra environment, optional timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    /// The program (a name looked up in `PATH`, or a path).
    pub program: String,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Kill the command after this long (`None`: wait forever).
    pub timeout: Option<Duration>,
}

impl Cmd {
    /// A command with no arguments and a 10-minute timeout.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Some(Duration::from_secs(600)),
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Sets (or clears) the timeout.
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    /// The command line as one string, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// The arguments as strings (lossy), for matching in tests.
    pub fn arg_strings(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

/// What a finished command printed, and its exit code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output (at most [`OUTPUT_CAP`] bytes).
    pub stdout: Vec<u8>,
    /// Standard error (at most [`OUTPUT_CAP`] bytes).
    pub stderr: Vec<u8>,
}

impl Output {
    /// A successful output with this stdout.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.into(),
            stderr: Vec::new(),
        }
    }

    /// A failed output with this exit code and stderr.
    pub fn failed(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        Self {
            code: Some(code),
            stdout: Vec::new(),
            stderr: stderr.into(),
        }
    }

    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last line of stderr (or stdout), for error messages.
    pub fn last_line(&self) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        String::from_utf8_lossy(text)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned()
    }
}

/// Why a command could not be run, or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed (not found in `PATH`).
    #[error("{program}: not found (is it installed and in PATH?)")]
    NotFound {
        /// The program.
        program: String,
    },
    /// Spawning failed for another reason.
    #[error("{program}: cannot start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The command exited with a non-zero code, or was killed by a signal.
    #[error("`{command}` failed (exit {}): {last_line}", code.map_or("signal".to_owned(), |c| c.to_string()))]
    Failed {
        /// The command line.
        command: String,
        /// The exit code (`None`: a signal).
        code: Option<i32>,
        /// The last line of its stderr (or stdout).
        last_line: String,
    },
    /// Waiting for or reading from the child failed.
    #[error("{program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Runs system commands. The real implementation spawns them; fakes record them.
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Runs `cmd` to completion and returns what it printed, whatever its exit code.
    fn output(&self, cmd: &Cmd) -> Result<Output, ExecError>;

    /// Runs `cmd` and fails unless it exits with 0.
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let out = self.output(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                command: cmd.display(),
                code: out.code,
                last_line: out.last_line(),
            })
        }
    }
}

/// Kills and reaps the child when dropped before it was waited for.
#[derive(Debug)]
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real runner: spawns processes.
#[derive(Clone, Debug, Default)]
pub struct RealRunner {
    /// Prepended to `PATH` lookups: when set, `program` names without a `/` are looked up here
    /// first (tests put stub scripts there).
    pub path_prefix: Option<PathBuf>,
}

impl RealRunner {
    /// A runner that uses the process's `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    fn command(&self, cmd: &Cmd) -> std::process::Command {
        let program: PathBuf = match &self.path_prefix {
            Some(dir) if !cmd.program.contains('/') && dir.join(&cmd.program).exists() => {
                dir.join(&cmd.program)
            }
            _ => PathBuf::from(&cmd.program),
        };
        #[allow(clippy::disallowed_methods)] // the agent's single exec module
        let mut c = std::process::Command::new(program);
        c.args(&cmd.args);
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        c
    }

    fn spawn_error(cmd: &Cmd, e: io::Error) -> ExecError {
        if e.kind() == io::ErrorKind::NotFound {
            ExecError::NotFound {
                program: cmd.program.clone(),
            }
        } else {
            ExecError::Spawn {
                program: cmd.program.clone(),
                source: e,
            }
        }
    }

    /// Starts a long-running command (a server in tests) with stdout and stderr appended to
    /// `log`. The returned handle kills it when dropped.
    pub fn spawn_background(&self, cmd: &Cmd, log: &Path) -> Result<Background, ExecError> {
        let io_err = |e| ExecError::Io {
            program: cmd.program.clone(),
            source: e,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let child = self
            .command(cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Self::spawn_error(cmd, e))?;
        Ok(Background {
            guard: KillOnDrop(Some(child)),
            command: cmd.display(),
        })
    }

    /// Whether `program` can be found (in `PATH`, or as a path).
    pub fn available(&self, program: &str) -> bool {
        if program.contains('/') {
            return Path::new(program).exists();
        }
        if let Some(dir) = &self.path_prefix
            && dir.join(program).exists()
        {
            return true;
        }
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
    }
}

/// A background process that is killed when this handle is dropped.
#[derive(Debug)]
pub struct Background {
    guard: KillOnDrop,
    command: String,
}

impl Background {
    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.guard.0.as_ref().map(Child::id)
    }

    /// Whether it has exited already.
    pub fn exited(&mut self) -> bool {
        match self.guard.0.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The command line it runs.
    pub fn command(&self) -> &str {
        &self.command
    }
}

fn read_capped(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let room = OUTPUT_CAP.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

impl CommandRunner for RealRunner {
    fn output(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let io_err = |e| ExecError::Io {
            program: cmd.program.clone(),
            source: e,
        };
        let mut child = self
            .command(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Self::spawn_error(cmd, e))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut guard = KillOnDrop(Some(child));
        // Drain both pipes on their own threads so a chatty child never blocks.
        let out_t = std::thread::spawn(move || stdout.map_or(Ok(Vec::new()), read_capped));
        let err_t = std::thread::spawn(move || stderr.map_or(Ok(Vec::new()), read_capped));
        let started = Instant::now();
        let status = loop {
            let Some(child) = guard.0.as_mut() else {
                return Err(io_err(io::Error::other("child vanished")));
            };
            if let Some(status) = child.try_wait().map_err(io_err)? {
                guard.0 = None;
                break status;
            }
            if let Some(t) = cmd.timeout
                && started.elapsed() >= t
            {
                drop(guard); // kills and reaps
                let _ = out_t.join();
                let _ = err_t.join();
                return Err(ExecError::Timeout {
                    command: cmd.display(),
                    after: t,
                });
            }
            let waited = started.elapsed();
            // Short polls at first (most commands are quick), then 50 ms.
            let pause = if waited < Duration::from_millis(50) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(50)
            };
            std::thread::sleep(pause);
        };
        let join = |t: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
            t.join()
                .map_err(|_| io_err(io::Error::other("output reader panicked")))?
                .map_err(io_err)
        };
        let stdout = join(out_t)?;
        let stderr = join(err_t)?;
        Ok(Output {
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// A scripted answer of the [`RecordingRunner`].
type Answer = Box<dyn Fn(&Cmd) -> Option<Result<Output, ExecError>> + Send + Sync>;

/// A fake runner: records every command and answers from its script (first matching rule
/// wins; commands no rule matches succeed with empty output).
#[derive(Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<Cmd>>,
    rules: Mutex<Vec<Answer>>,
}

impl fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingRunner")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl RecordingRunner {
    /// A runner where every command succeeds with empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: `answer` decides (returning `Some`) or passes (`None`).
    pub fn on(
        &self,
        answer: impl Fn(&Cmd) -> Option<Result<Output, ExecError>> + Send + Sync + 'static,
    ) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Box::new(answer));
        }
    }

    /// Answers commands whose line starts with `prefix` (program and arguments joined by
    /// spaces) with `out`.
    pub fn on_prefix(&self, prefix: &str, out: Output) {
        let prefix = prefix.to_owned();
        self.on(move |c| c.display().starts_with(&prefix).then(|| Ok(out.clone())));
    }

    /// Every command run so far.
    pub fn calls(&self) -> Vec<Cmd> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Every command line run so far.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Cmd::display).collect()
    }
}

impl CommandRunner for RecordingRunner {
    fn output(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(cmd.clone());
        }
        if let Ok(rules) = self.rules.lock() {
            for rule in rules.iter() {
                if let Some(answer) = rule(cmd) {
                    return answer;
                }
            }
        }
        Ok(Output::ok(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_codes() {
        let r = RealRunner::new();
        let out = r
            .output(&Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let e = r
            .run(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 2"]))
            .unwrap_err();
        assert!(
            matches!(e, ExecError::Failed { code: Some(2), ref last_line, .. } if last_line == "boom"),
            "{e}"
        );
    }

    #[test]
    fn times_out_and_kills() {
        let r = RealRunner::new();
        let t0 = Instant::now();
        let e = r
            .run(
                &Cmd::new("sleep")
                    .arg("30")
                    .timeout(Some(Duration::from_millis(200))),
            )
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_typed() {
        let e = RealRunner::new()
            .run(&Cmd::new("talm-no-such-program"))
            .unwrap_err();
        assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
    }

    #[test]
    fn recording_runner_records_and_answers() {
        let r = RecordingRunner::new();
        r.on_prefix("crictl ps", Output::ok("abc\n"));
        assert_eq!(
            r.run(&Cmd::new("crictl").args(["ps", "-q"]))
                .unwrap()
                .stdout,
            b"abc\n"
        );
        r.run(&Cmd::new("systemctl").args(["stop", "kubelet"]))
            .unwrap();
        assert_eq!(r.lines(), ["crictl ps -q", "systemctl stop kubelet"]);
    }
}
