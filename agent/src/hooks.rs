//! Runs the `on_kill` / `on_revive` commands of the agent's own config once
//! per transition. The runner compares each switch's wanted state with the
//! state its hooks last ran for (persisted in the data dir), so a restart does
//! not run a hook again and a transition missed while down runs on start.
//! Commands come only from the local config file and run without a shell.
//! Each hook runs in its own process group, and a timeout kills the whole
//! group, so children the hook started do not outlive it.

use crate::config::Killswitch;
use crate::disk::{self, HookState};
use crate::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How much of a hook's output is logged.
const MAX_LOGGED_OUTPUT: usize = 4096;

pub async fn run(
    switches: Vec<Killswitch>,
    data_dir: PathBuf,
    mut killed_rx: watch::Receiver<Arc<BTreeSet<String>>>,
    ready_rx: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let switches: Vec<Killswitch> = switches
        .into_iter()
        .filter(|k| !k.on_kill.is_empty() || !k.on_revive.is_empty())
        .collect();
    if switches.is_empty() {
        return;
    }
    let path = data_dir.join(disk::HOOKS_FILE);
    let mut done: HookState = disk::read_json(&path).unwrap_or_default();
    let mut ready_rx = ready_rx;
    // Act only once a snapshot is held: before that "not killed" means "unknown".
    while !*ready_rx.borrow_and_update() {
        tokio::select! {
            r = ready_rx.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
    loop {
        let killed = killed_rx.borrow_and_update().clone();
        for k in &switches {
            let want = killed.contains(&k.name);
            let last = done.get(&k.name).copied().unwrap_or(false);
            if want == last {
                continue;
            }
            let cmd = if want { &k.on_kill } else { &k.on_revive };
            if !cmd.is_empty() {
                run_one(k, want, cmd, &metrics).await;
            }
            done.insert(k.name.clone(), want);
            let (p, d) = (path.clone(), done.clone());
            let saved = tokio::task::spawn_blocking(move || disk::write_json(&p, &d, 0o600)).await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::error!(path = %path.display(), "cannot record hook state; the hook may run again after a restart");
            }
        }
        tokio::select! {
            r = killed_rx.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn run_one(k: &Killswitch, killed: bool, cmd: &[String], metrics: &Metrics) {
    let which = if killed { "on_kill" } else { "on_revive" };
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .env("OPSPLANE_KILLSWITCH", &k.name)
        .env(
            "OPSPLANE_KILLSWITCH_STATE",
            if killed { "killed" } else { "alive" },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own group (pgid = its pid), so a timeout can kill its children too
        .process_group(0)
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            tracing::error!(killswitch = %k.name, hook = which, command = %cmd[0], error = %e, "hook could not start");
            metrics.hook_run(which, "error");
            return;
        }
    };
    let pgid = child.id();
    match tokio::time::timeout(k.hook_timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stdout = clip(&out.stdout);
            let stderr = clip(&out.stderr);
            let ms = started.elapsed().as_millis() as u64;
            if out.status.success() {
                tracing::info!(killswitch = %k.name, hook = which, duration_ms = ms, stdout = %stdout, stderr = %stderr, "hook ran");
                metrics.hook_run(which, "ok");
            } else {
                tracing::error!(killswitch = %k.name, hook = which, duration_ms = ms, status = %out.status, stdout = %stdout, stderr = %stderr, "hook failed");
                metrics.hook_run(which, "failed");
            }
        }
        Ok(Err(e)) => {
            tracing::error!(killswitch = %k.name, hook = which, error = %e, "hook failed");
            metrics.hook_run(which, "error");
        }
        Err(_) => {
            // the direct child is killed when its future is dropped
            // (kill_on_drop); the rest of its group is killed here
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                kill_group(pgid);
            }
            tracing::error!(killswitch = %k.name, hook = which, timeout_ms = k.hook_timeout.as_millis() as u64, "hook timed out and was killed");
            metrics.hook_run(which, "timeout");
        }
    }
}

/// SIGKILL to every process of the group `pgid` (the hook and what it started).
fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, error = %e, "cannot kill the hook's process group"),
    }
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_LOGGED_OUTPUT)]);
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Gone, or a zombie nobody reaped yet (it runs no more).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn a_timed_out_hook_takes_its_children_with_it() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("grandchild.pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let k = Killswitch {
            name: "payments".into(),
            blocks: Vec::new(),
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            body: String::new(),
            on_kill: vec!["/bin/sh".into(), "-c".into(), script],
            on_revive: Vec::new(),
            hook_timeout: Duration::from_millis(1000),
        };
        let metrics = Metrics::default();
        run_one(&k, true, &k.on_kill, &metrics).await;
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("the hook wrote its child's pid before the timeout")
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "the hook's child {pid} still runs after the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
