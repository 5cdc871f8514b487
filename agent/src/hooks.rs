//! Runs the `on_kill` / `on_revive` commands of the agent's own config once
//! per transition. The runner compares each switch's wanted state with the
//! state its hooks last ran for (persisted in the data dir), so a restart does
//! not run a hook again and a transition missed while down runs on start.
//! Commands come only from the local config file and run through `exec.rs`:
//! without a shell, in their own process group, the whole group killed at
//! the timeout, output clipped.

use crate::config::Killswitch;
use crate::disk::{self, HookState};
use crate::exec;
use crate::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::PathBuf;
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
    let command = exec::Command::new(cmd.to_vec(), k.hook_timeout, MAX_LOGGED_OUTPUT)
        .env("OPSPLANE_KILLSWITCH", &k.name)
        .env(
            "OPSPLANE_KILLSWITCH_STATE",
            if killed { "killed" } else { "alive" },
        );
    let f = exec::run(&command).await;
    let ms = f.duration.as_millis() as u64;
    let (stdout, stderr) = (f.stdout.text(), f.stderr.text());
    match &f.outcome {
        _ if f.success() => {
            tracing::info!(killswitch = %k.name, hook = which, duration_ms = ms, stdout = %stdout, stderr = %stderr, "hook ran");
            metrics.hook_run(which, "ok");
        }
        exec::Outcome::Exited { code, signal } => {
            tracing::error!(killswitch = %k.name, hook = which, duration_ms = ms, code = ?code, signal = ?signal, stdout = %stdout, stderr = %stderr, "hook failed");
            metrics.hook_run(which, "failed");
        }
        exec::Outcome::TimedOut => {
            tracing::error!(killswitch = %k.name, hook = which, timeout_ms = k.hook_timeout.as_millis() as u64, "hook timed out and was killed");
            metrics.hook_run(which, "timeout");
        }
        exec::Outcome::NotStarted(why) => {
            tracing::error!(killswitch = %k.name, hook = which, command = %cmd[0], error = %why, "hook could not start");
            metrics.hook_run(which, "error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::tests::gone;
    use std::time::{Duration, Instant};

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
