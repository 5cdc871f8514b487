//! OFREP single-flag evaluation over loopback HTTP: the real `opsplane-agent`
//! (standalone, flag file) against Unleash Edge (offline mode, bootstrap file
//! with the same flags), each pinned to core 1, the load generator pinned to
//! core 0. Same load generator, same contexts, 5 and 350 flags.
//!
//!     cargo run --release -p benches --bin ofrep_vs_edge [-- --runs 3 --duration 10 --warmup 2 --conns 32 --flags 5,350]
//!
//! Needs `taskset` (util-linux) and Unleash Edge: `$UNLEASH_EDGE`, else
//! `unleash-edge` on PATH.
//! Install it with `cargo install unleash-edge --locked --root DIR` and set
//! `UNLEASH_EDGE=DIR/bin/unleash-edge`.

use anyhow::{bail, Context};
use benches::*;
use bytes::Bytes;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const USERS: usize = 1000;
const REQS: usize = 4096;

struct Args {
    runs: usize,
    duration: Duration,
    warmup: Duration,
    conns: usize,
    flags: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 3,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        conns: 32,
        flags: vec![5, 350],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--runs" => a.runs = v.parse()?,
            "--duration" => a.duration = Duration::from_secs_f64(v.parse()?),
            "--warmup" => a.warmup = Duration::from_secs_f64(v.parse()?),
            "--conns" => a.conns = v.parse()?,
            "--flags" => {
                a.flags = v
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            _ => bail!("unknown argument {k} (known: --runs --duration --warmup --conns --flags)"),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
    client_cpu: Vec<f64>,
    /// req/s divided by the server's CPU share: robust to CPU stolen by other load
    per_core: Vec<f64>,
    rss_load: Vec<f64>,
    errors: u64,
}

struct Row {
    flags: usize,
    server: &'static str,
    s: Samples,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    ensure_built(&["agent"])?;
    let edge_bin = find_edge()?;
    let agent_bin = bin_dir().join("opsplane-agent");
    pin_self(0)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let mut rows: Vec<Row> = Vec::new();

    for &n in &a.flags {
        let ds = data_set(n);
        let dir = tmp.path().join(format!("flags-{n}"));
        std::fs::create_dir_all(&dir)?;
        let flag_file = dir.join("flags.json");
        std::fs::write(&flag_file, serde_json::to_vec_pretty(&ds.flagd)?)?;
        let bootstrap = dir.join("bootstrap.json");
        std::fs::write(&bootstrap, serde_json::to_vec_pretty(&ds.unleash)?)?;
        let agent_port = free_port();
        let agent_cfg = dir.join("agent.toml");
        std::fs::write(
            &agent_cfg,
            format!(
                "service = \"bench\"\nenvironment = \"bench\"\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:{agent_port}\"\n[flags]\nfile = {:?}\n",
                dir.join("agent-data").display().to_string(),
                flag_file.display().to_string()
            ),
        )?;
        let edge_port = free_port();
        let agent = Proc::spawn_pinned(
            "agent",
            1,
            &agent_bin,
            &["run", "--config", agent_cfg.to_str().unwrap()],
            &dir.join("agent.log"),
        )?;
        let edge_port_s = edge_port.to_string();
        let edge = Proc::spawn_pinned(
            "edge",
            1,
            &edge_bin,
            &[
                "--port",
                &edge_port_s,
                "--interface",
                "127.0.0.1",
                "offline",
                "--bootstrap-file",
                bootstrap.to_str().unwrap(),
                "--client-tokens",
                EDGE_TOKEN,
                "--frontend-tokens",
                EDGE_TOKEN,
            ],
            &dir.join("edge.log"),
        )?;
        let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse()?;
        let edge_addr: SocketAddr = format!("127.0.0.1:{edge_port}").parse()?;
        wait_http_ok(agent_addr, "/readyz", Duration::from_secs(20))
            .context("agent not ready (see agent.log)")?;
        wait_http_ok(
            edge_addr,
            "/internal-backstage/health",
            Duration::from_secs(20),
        )
        .context("edge not healthy")?;

        // the same flag and user sequence for both servers
        let mut agent_reqs = Vec::with_capacity(REQS);
        let mut edge_reqs = Vec::with_capacity(REQS);
        for i in 0..REQS {
            let key = &ds.keys[i % n];
            let (tk, email, country) = user((i * 31) % USERS);
            agent_reqs.push(Req {
                path: format!("/ofrep/v1/evaluate/flags/{key}"),
                body: Bytes::from(serde_json::to_vec(
                    &json!({"context": {"targetingKey": tk, "email": email, "country": country}}),
                )?),
            });
            edge_reqs.push(Req {
                path: format!("/api/frontend/features/{key}"),
                body: Bytes::from(serde_json::to_vec(
                    &json!({"userId": tk, "properties": {"email": email, "country": country}}),
                )?),
            });
        }
        // both answer every flag with 200 before we measure
        rt.block_on(async {
            for (name, addr, auth, reqs) in [
                ("agent", agent_addr, None, &agent_reqs),
                ("edge", edge_addr, Some(EDGE_TOKEN), &edge_reqs),
            ] {
                for r in reqs.iter().take(n.max(4)) {
                    let (st, body) = one(addr, auth, &r.path, r.body.clone()).await?;
                    if st != 200 {
                        bail!("{name} answered {st} to {}: {body}", r.path);
                    }
                }
                let r = &reqs[3 % reqs.len()];
                let (_, body) = one(addr, auth, &r.path, r.body.clone()).await?;
                println!("sample {name} answer ({n} flags) {}: {body}", r.path);
            }
            anyhow::Ok(())
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = [
            rss_kib(agent.pid()).unwrap_or(0),
            rss_kib(edge.pid()).unwrap_or(0),
        ];

        let targets = [
            Arc::new(Target {
                addr: agent_addr,
                authorization: None,
                reqs: agent_reqs,
            }),
            Arc::new(Target {
                addr: edge_addr,
                authorization: Some(EDGE_TOKEN.into()),
                reqs: edge_reqs,
            }),
        ];
        let pids = [agent.pid(), edge.pid()];
        let mut samples = [Samples::default(), Samples::default()];
        for run in 0..a.runs {
            // alternate who goes first
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let r = rt.block_on(run_load(
                    targets[i].clone(),
                    a.conns,
                    a.warmup,
                    a.duration,
                    Some(pids[i]),
                ))?;
                println!(
                    "  {n:>3} flags  {:<5} run {}: {:>8.0} req/s  p50 {:>9}  p99 {:>9}  server CPU {:>3.0}%  load generator CPU {:>3.0}%  errors {}",
                    ["agent", "edge"][i],
                    run + 1,
                    r.rps(),
                    fmt_us(r.p50_us()),
                    fmt_us(r.p99_us()),
                    r.server_cpu_pct.unwrap_or(f64::NAN),
                    r.client_cpu_pct.unwrap_or(f64::NAN),
                    r.errors
                );
                let s = &mut samples[i];
                s.rps.push(r.rps());
                s.p50.push(r.p50_us());
                s.p99.push(r.p99_us());
                s.cpu.push(r.server_cpu_pct.unwrap_or(f64::NAN));
                s.client_cpu.push(r.client_cpu_pct.unwrap_or(f64::NAN));
                s.per_core
                    .push(r.rps() / (r.server_cpu_pct.unwrap_or(f64::NAN) / 100.0));
                s.rss_load.push(r.server_rss_kib.unwrap_or(0) as f64);
                s.errors += r.errors;
            }
        }
        let peak = [
            peak_rss_kib(agent.pid()).unwrap_or(0),
            peak_rss_kib(edge.pid()).unwrap_or(0),
        ];
        for (i, s) in samples.into_iter().enumerate() {
            rows.push(Row {
                flags: n,
                server: ["opsplane-agent", "unleash-edge"][i],
                s,
                idle_rss_kib: idle[i],
                peak_rss_kib: peak[i],
            });
        }
        drop(agent);
        drop(edge);
    }

    println!();
    println!(
        "OFREP single-flag evaluation over loopback HTTP, medians of {} runs ({} s each after {} s warm-up, {} keep-alive connections; servers on core 1, load on core 0)",
        a.runs,
        a.duration.as_secs_f64(),
        a.warmup.as_secs_f64(),
        a.conns
    );
    println!(
        "| flags | server | endpoint | req/s | req per server CPU-second | p50 | p99 | server CPU | load-gen CPU | RSS idle | RSS under load | peak RSS | errors |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.0}% | {:.0}% | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |",
            r.flags,
            r.server,
            if r.server == "opsplane-agent" { "POST /ofrep/v1/evaluate/flags/{key}" } else { "POST /api/frontend/features/{name}" },
            median(r.s.rps.clone()),
            median(r.s.per_core.clone()),
            fmt_us(median(r.s.p50.clone())),
            fmt_us(median(r.s.p99.clone())),
            median(r.s.cpu.clone()),
            median(r.s.client_cpu.clone()),
            r.idle_rss_kib as f64 / 1024.0,
            median(r.s.rss_load.clone()) / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            r.s.errors
        );
    }
    println!();
    println!("| flags | agent/edge req/s | agent/edge req per CPU-second | agent/edge p50 | agent/edge p99 | target |");
    println!("|---:|---:|---:|---:|---:|---|");
    for pair in rows.chunks(2) {
        if let [ag, ed] = pair {
            let rps = median(ag.s.rps.clone()) / median(ed.s.rps.clone());
            let per_core = median(ag.s.per_core.clone()) / median(ed.s.per_core.clone());
            let p50 = median(ag.s.p50.clone()) / median(ed.s.p50.clone());
            let p99 = median(ag.s.p99.clone()) / median(ed.s.p99.clone());
            let rss_ok = ag.flags < 350 || median(ag.s.rss_load.clone()) <= 10.0 * 1024.0;
            println!(
                "| {} | {rps:.2}x | {per_core:.2}x | {p50:.2}x | {p99:.2}x | throughput >= 2x: {}; lower p99: {}{} |",
                ag.flags,
                if rps >= 2.0 { "met" } else { "MISSED" },
                if p99 < 1.0 { "met" } else { "MISSED" },
                if ag.flags >= 350 {
                    format!("; agent RSS <= 10 MiB: {}", if rss_ok { "met" } else { "MISSED" })
                } else {
                    String::new()
                }
            );
        }
    }
    println!();
    println!("Unleash Edge's own published figures (docs/benchmarking.md, hey over Docker, /api/frontend, p95):");
    println!("  5 features, 1 CPU: 39,000 req/s, p95 1.6 ms, 6.7 MiB;  350 features, 1 CPU: 6,900 req/s, p95 7.4 ms, 6.7 MiB");
    Ok(())
}
