//! Kill-switch propagation: the time from `opsctl kill` (a real process)
//! returning to the new state being applied on each of 100 agents.
//!
//!     cargo run --release -p benches --bin propagation [-- --agents 100 --iterations 20]
//!
//! A real collector process (`init` + `run`) and 100 in-process agents
//! (`agent::start`, each with its own data dir, enrolled with one token and
//! declaring the kill switch without block rules) in one tokio runtime. Each
//! iteration alternates kill / revive; for every agent the latency runs from
//! the `Instant` right after opsctl exits to the moment that agent's
//! `applied_tx` shows a revision whose snapshot has the expected kill state.

use agent::config::{Collector, Config, Killswitch};
use anyhow::{bail, Context};
use benches::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SWITCH: &str = "bench-switch";
const ENV: &str = "bench";

struct Args {
    agents: usize,
    iterations: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        agents: 100,
        iterations: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--agents" => a.agents = v.parse()?,
            "--iterations" => a.iterations = v.parse()?,
            _ => bail!("unknown argument {k} (known: --agents --iterations)"),
        }
    }
    Ok(a)
}

struct Opsctl {
    bin: PathBuf,
    url: String,
    token: String,
}

impl Opsctl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--json")
            .args(args)
            .env("OPSPLANE_URL", &self.url)
            .env("OPSPLANE_TOKEN", &self.token);
        c
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            bail!(
                "opsctl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

fn start_collector(dir: &Path) -> anyhow::Result<(Proc, String, String, Opsctl)> {
    let bins = bin_dir();
    let data = dir.join("collector-data");
    let token_file = dir.join("admin.token");
    let out = Command::new(bins.join("opsplane-collector"))
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--admin-token-file")
        .arg(&token_file)
        .output()?;
    if !out.status.success() {
        bail!(
            "collector init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let (i, a, s) = (free_port(), free_port(), free_port());
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[ingest]\nlisten = \"127.0.0.1:{i}\"\n[admin]\nlisten = \"127.0.0.1:{a}\"\n[status_page]\nlisten = \"127.0.0.1:{s}\"\n",
            data.display().to_string()
        ),
    )?;
    let collector_bin = bins.join("opsplane-collector");
    let mut cmd = Command::new(&collector_bin);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("OPSPLANE_LOG", "warn");
    let log = std::fs::File::create(dir.join("collector.log"))?;
    let child = cmd.stdout(log.try_clone()?).stderr(log).spawn()?;
    let proc = Proc {
        child,
        name: "collector",
    };
    wait_http_ok(
        format!("127.0.0.1:{a}").parse()?,
        "/healthz",
        Duration::from_secs(20),
    )?;
    let opsctl = Opsctl {
        bin: bins.join("opsctl"),
        url: format!("http://127.0.0.1:{a}"),
        token,
    };
    Ok((
        proc,
        format!("http://127.0.0.1:{i}"),
        format!("http://127.0.0.1:{a}"),
        opsctl,
    ))
}

fn agent_config(i: usize, dir: &Path, ingest: &str, token: &str) -> Config {
    Config {
        service: "web".into(),
        environment: ENV.into(),
        instance: format!("bench-{i:03}"),
        host: "localhost".into(),
        data_dir: dir.join(format!("agent-{i:03}")),
        labels: BTreeMap::new(),
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        api_token: None,
        max_body_bytes: 1_000_000,
        api_http: Default::default(),
        collector: Some(Collector {
            url: ingest.into(),
            enroll_token: Some(token.into()),
            heartbeat_interval: Duration::from_secs(10),
            ca_pem: None,
        }),
        flags_file: None,
        flags_poll: Duration::from_secs(1),
        flag_options: Default::default(),
        proxy: None,
        killswitches: vec![Killswitch {
            name: SWITCH.into(),
            blocks: Vec::new(),
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            body: String::new(),
            on_kill: Vec::new(),
            on_revive: Vec::new(),
            hook_timeout: Duration::from_secs(30),
        }],
    }
}

fn killed(shared: &agent::state::Shared) -> bool {
    shared
        .snapshot
        .load()
        .as_ref()
        .is_some_and(|s| s.killed.contains(SWITCH))
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    ensure_built(&["collector"])?;
    let tmp = tempfile::tempdir()?;
    let (_collector, ingest, _admin, opsctl) = start_collector(tmp.path())?;
    let opsctl = Arc::new(opsctl);
    // one token for every agent (tokens are single-use by default)
    let enroll = opsctl.json(&[
        "agents",
        "enroll-token",
        "--env",
        ENV,
        "--service",
        "web",
        "--uses",
        "10000",
    ])?["token"]
        .as_str()
        .context("enroll token")?
        .to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut agents = Vec::with_capacity(a.agents);
        for i in 0..a.agents {
            agents.push(agent::start(agent_config(i, tmp.path(), &ingest, &enroll)).await?);
        }
        // every agent connected and holding a revision from the collector
        let t = Instant::now();
        loop {
            let ready = agents
                .iter()
                .filter(|r| r.shared.collector_status().connected && r.shared.applied_tx.borrow().is_some())
                .count();
            if ready == agents.len() {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("only {ready} of {} agents connected after 60 s", agents.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("{} agents connected and applied in {:.1} s", agents.len(), t.elapsed().as_secs_f64());

        let shareds: Vec<Arc<agent::state::Shared>> = agents.iter().map(|r| r.shared.clone()).collect();
        let mut from_exit: Vec<Duration> = Vec::new();
        let mut from_start: Vec<Duration> = Vec::new();
        let mut before_exit = 0usize;
        let mut opsctl_times = Vec::new();
        for it in 0..a.iterations {
            let want = it % 2 == 0;
            let verb = if want { "kill" } else { "revive" };
            // watchers subscribe before opsctl starts
            let mut watchers = Vec::new();
            for s in &shareds {
                let s = s.clone();
                let mut rx = s.applied_tx.subscribe();
                watchers.push(tokio::spawn(async move {
                    let seen = rx.wait_for(|_| killed(&s) == want).await.map(|_| Instant::now());
                    let rev = s.snapshot.load().as_ref().map(|sn| sn.revision).unwrap_or(0);
                    (seen.ok(), rev)
                }));
            }
            let o = opsctl.clone();
            let (out, started, exited) = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let out = o.cmd(&[verb, SWITCH, "--env", ENV, "--reason", "propagation benchmark"]).output();
                (out, started, Instant::now())
            })
            .await?;
            let out = out?;
            if !out.status.success() {
                bail!("opsctl {verb} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            let rev = v["revision"].as_u64().context("revision in opsctl output")?;
            opsctl_times.push(exited - started);
            let mut lat = Vec::new();
            for w in watchers {
                let (seen, applied_rev) = tokio::time::timeout(Duration::from_secs(30), w)
                    .await
                    .context("an agent did not apply the change within 30 s")??;
                let seen = seen.context("watch closed")?;
                if applied_rev < rev {
                    bail!("agent applied revision {applied_rev}, expected >= {rev}");
                }
                if seen < exited {
                    before_exit += 1;
                }
                lat.push(seen.saturating_duration_since(exited));
                from_start.push(seen - started);
            }
            lat.sort();
            println!(
                "{:>2} {verb:<6} rev {rev:>3}: opsctl took {:>8}; applied on {} agents: p50 {:>8}  max {:>8} after opsctl exited",
                it + 1,
                ms(exited - started),
                lat.len(),
                ms(pct(&lat, 0.5)),
                ms(*lat.last().unwrap_or(&Duration::ZERO))
            );
            from_exit.extend(lat);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        from_exit.sort();
        from_start.sort();
        opsctl_times.sort();
        println!();
        println!(
            "Kill-switch propagation, {} agents x {} changes = {} samples (collector and agents on one 2-core box, loopback)",
            shareds.len(),
            a.iterations,
            from_exit.len()
        );
        println!("| measured | p50 | p99 | max |");
        println!("|---|---:|---:|---:|");
        println!(
            "| opsctl exit -> applied on agent | {} | {} | {} |",
            ms(pct(&from_exit, 0.5)),
            ms(pct(&from_exit, 0.99)),
            ms(pct(&from_exit, 1.0))
        );
        println!(
            "| opsctl start -> applied on agent | {} | {} | {} |",
            ms(pct(&from_start, 0.5)),
            ms(pct(&from_start, 0.99)),
            ms(pct(&from_start, 1.0))
        );
        println!(
            "| opsctl process run time | {} | {} | {} |",
            ms(pct(&opsctl_times, 0.5)),
            ms(pct(&opsctl_times, 0.99)),
            ms(pct(&opsctl_times, 1.0))
        );
        println!(
            "{before_exit} of {} samples were applied before opsctl had even exited (counted as 0 ms).",
            from_exit.len()
        );
        let p99 = pct(&from_exit, 0.99);
        // the comparison uses the conservative figure: from opsctl's start,
        // so the CLI's own run time and the collector's commit are included
        let p99_start = pct(&from_start, 0.99);
        println!();
        println!("| system | how a change reaches the edge | figure | peer / ours (p99 from opsctl start) |");
        println!("|---|---|---:|---:|");
        println!(
            "| opsplane (this run) | pushed over the agent's stream | p99 {} from opsctl start, {} from its exit | 1x |",
            ms(p99_start),
            ms(p99)
        );
        let p99_ms = (p99_start.as_secs_f64() * 1000.0).max(0.001);
        for (name, how, figure_ms) in [
            ("LaunchDarkly", "SSE streaming, vendor claim \"within 200ms\"", 200.0),
            ("flagd", "HTTP sync poll, default interval 5 s", 5_000.0),
            ("Unleash Edge (OSS)", "polls upstream, default interval 15 s", 15_000.0),
        ] {
            println!(
                "| {name} | {how} | {figure_ms:.0} ms | {:.0}x |",
                figure_ms / p99_ms
            );
        }
        println!(
            "target p99 <= 100 ms: {}",
            if p99 <= Duration::from_millis(100) { "met" } else { "MISSED" }
        );
        for r in agents {
            r.shutdown.cancel();
        }
        anyhow::Ok(())
    })
}
