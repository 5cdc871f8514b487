//! Runs commands declared in the agent's own config file (hooks today; exec
//! checks, backup commands and operator actions next), never through a
//! shell: the argv comes from the config as written, with extra environment
//! variables, an optional working directory and a timeout. Each command runs
//! in its own process group; a timeout kills the whole group, so children
//! the command started do not outlive it. Output is captured and clipped to
//! a byte limit (the rest is read and thrown away, so a chatty command never
//! blocks on a full pipe). The result is typed: [`Outcome`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A command from the config.
#[derive(Debug, Clone)]
pub struct Command {
    /// Program and arguments, as written in the config (never a shell line).
    pub argv: Vec<String>,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory (default: the agent's).
    pub dir: Option<PathBuf>,
    /// The whole process group is killed after this long.
    pub timeout: Duration,
    /// Bytes kept of stdout, and of stderr.
    pub output_limit: usize,
}

impl Command {
    /// `argv` with no extra environment, the agent's working directory, and
    /// the given timeout and output limit.
    pub fn new(argv: Vec<String>, timeout: Duration, output_limit: usize) -> Command {
        Command {
            argv,
            env: Vec::new(),
            dir: None,
            timeout,
            output_limit,
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited by itself: `code` is `None` when a signal ended it (`signal`).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Still running at the timeout: its process group was killed.
    TimedOut,
    /// Could not be started (missing program, not executable, bad directory).
    NotStarted(String),
}

/// Captured output of one stream, clipped to the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first `output_limit` bytes.
    pub bytes: Vec<u8>,
    /// Bytes the command wrote in all.
    pub total: u64,
}

impl Captured {
    /// Whether more was written than kept.
    pub fn clipped(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    /// The kept bytes as text (lossy), trailing whitespace trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim_end().to_string()
    }
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

impl Finished {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.outcome
            == Outcome::Exited {
                code: Some(0),
                signal: None,
            }
    }
}

/// Process groups of the commands running now (killed on a forced exit).
static RUNNING: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Removes a process group from [`RUNNING`] when its command is done.
struct Registered(Option<i32>);

impl Registered {
    fn new(pgid: Option<i32>) -> Registered {
        if let Some(p) = pgid {
            RUNNING.lock().unwrap_or_else(|e| e.into_inner()).insert(p);
        }
        Registered(pgid)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            RUNNING.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
        }
    }
}

/// Kills the process group of every command still running: a forced exit
/// of the agent leaves none of them behind.
pub fn kill_all_running() {
    let groups: Vec<i32> = RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    for pgid in groups {
        kill_group(pgid);
    }
}

/// Runs `cmd` (see the module docs) and reports how it ended.
pub async fn run(cmd: &Command) -> Finished {
    let started = Instant::now();
    let not_started = |why: String| Finished {
        outcome: Outcome::NotStarted(why),
        stdout: Captured::default(),
        stderr: Captured::default(),
        duration: started.elapsed(),
    };
    let Some((program, args)) = cmd.argv.split_first() else {
        return not_started("empty command".into());
    };
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own group (pgid = its pid), so a timeout can kill its children too
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &cmd.dir {
        c.current_dir(d);
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return not_started(format!("{program}: {e}")),
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let _registered = Registered::new(pgid);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let limit = cmd.output_limit;
    let work = async {
        tokio::join!(
            read_clipped(out, limit),
            read_clipped(err, limit),
            child.wait()
        )
    };
    match tokio::time::timeout(cmd.timeout, work).await {
        Ok((stdout, stderr, status)) => {
            let outcome = match status {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    Outcome::Exited {
                        code: st.code(),
                        signal: st.signal(),
                    }
                }
                Err(e) => Outcome::NotStarted(format!("{program}: cannot wait for it: {e}")),
            };
            Finished {
                outcome,
                stdout,
                stderr,
                duration: started.elapsed(),
            }
        }
        Err(_) => {
            if let Some(p) = pgid {
                kill_group(p);
            }
            let _ = child.start_kill();
            // reap it (SIGKILL cannot be ignored; the bound is only a guard)
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Finished {
                outcome: Outcome::TimedOut,
                stdout: Captured::default(),
                stderr: Captured::default(),
                duration: started.elapsed(),
            }
        }
    }
}

/// Reads `r` to its end, keeping the first `limit` bytes.
async fn read_clipped<R: AsyncRead + Unpin>(r: Option<R>, limit: usize) -> Captured {
    let mut got = Captured::default();
    let Some(mut r) = r else {
        return got;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => {
                got.total += n as u64;
                let room = limit.saturating_sub(got.bytes.len());
                got.bytes.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// SIGKILL to every process of the group `pgid` (the command and what it started).
fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, error = %e, "cannot kill the command's process group"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, limit: usize) -> Command {
        Command::new(
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
            limit,
        )
    }

    /// Gone, or a zombie nobody reaped yet (it runs no more).
    pub(crate) fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("child.pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let f = run(&sh(&script, Duration::from_millis(500), 1024)).await;
        assert_eq!(f.outcome, Outcome::TimedOut);
        assert!(!f.success());
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("the command wrote its child's pid before the timeout")
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "child {pid} outlived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_is_clipped_to_the_limit_and_fully_read() {
        // 1 MB on stdout: far more than a pipe holds, so an unread pipe would block it
        let f = run(&sh(
            "head -c 1000000 /dev/zero | tr '\\0' x; echo oops >&2",
            Duration::from_secs(20),
            100,
        ))
        .await;
        assert!(f.success(), "{f:?}");
        assert_eq!(f.stdout.bytes, vec![b'x'; 100]);
        assert_eq!(f.stdout.total, 1_000_000);
        assert!(f.stdout.clipped());
        assert_eq!(f.stderr.text(), "oops");
        assert!(!f.stderr.clipped());
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_reported_with_its_code() {
        let f = run(&sh("echo half; exit 3", Duration::from_secs(20), 1024)).await;
        assert_eq!(
            f.outcome,
            Outcome::Exited {
                code: Some(3),
                signal: None
            }
        );
        assert!(!f.success());
        assert_eq!(f.stdout.text(), "half");
    }

    #[tokio::test]
    async fn a_missing_program_is_not_started() {
        let f = run(&Command::new(
            vec!["/nonexistent/program".into()],
            Duration::from_secs(5),
            1024,
        ))
        .await;
        match &f.outcome {
            Outcome::NotStarted(why) => assert!(why.contains("/nonexistent/program"), "{why}"),
            other => panic!("{other:?}"),
        }
        let f = run(&Command::new(Vec::new(), Duration::from_secs(5), 1024)).await;
        assert_eq!(f.outcome, Outcome::NotStarted("empty command".into()));
    }

    #[tokio::test]
    async fn env_and_working_dir_are_given_no_shell_is_involved() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(
            // `$HOME;` would be expanded by a shell; here it is one literal argument
            vec!["/bin/echo".into(), "$HOME;".into()],
            Duration::from_secs(5),
            1024,
        );
        let f = run(&cmd).await;
        assert_eq!(f.stdout.text(), "$HOME;");
        cmd = Command::new(
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "pwd; echo $OPSPLANE_X".into(),
            ],
            Duration::from_secs(5),
            1024,
        )
        .env("OPSPLANE_X", "from-config");
        cmd.dir = Some(tmp.path().to_path_buf());
        let f = run(&cmd).await;
        let dir = tmp.path().canonicalize().unwrap();
        assert_eq!(f.stdout.text(), format!("{}\nfrom-config", dir.display()));
    }
}
