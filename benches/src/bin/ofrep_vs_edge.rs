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

use anyhow::bail;
use benches::compare::{alternate, Bench, RunArgs, Samples};
use benches::*;
use bytes::Bytes;
use serde_json::json;
use std::time::Duration;

const USERS: usize = 1000;
const REQS: usize = 4096;

struct Row {
    flags: usize,
    server: &'static str,
    s: Samples,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let a = RunArgs::parse(&[5, 350], &[])?;
    let bench = Bench::new()?;
    let rt = &bench.rt;
    let mut rows: Vec<Row> = Vec::new();

    for &n in &a.flags {
        let srv = bench.servers(n)?;
        let ds = &srv.data;
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
                ("agent", srv.agent_addr, None, &agent_reqs),
                ("edge", srv.edge_addr, Some(EDGE_TOKEN), &edge_reqs),
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
        // let both settle after the warm-up requests before reading idle memory
        std::thread::sleep(Duration::from_millis(500));
        let pids = srv.pids();
        let idle = pids.map(|p| rss_kib(p).unwrap_or(0));
        let targets = srv.targets(agent_reqs, edge_reqs);
        let samples = alternate(rt, &a, targets, pids, &format!("{n:>3} flags "))?;
        let peak = pids.map(|p| peak_rss_kib(p).unwrap_or(0));
        for (i, s) in samples.into_iter().enumerate() {
            rows.push(Row {
                flags: n,
                server: ["opsplane-agent", "unleash-edge"][i],
                s,
                idle_rss_kib: idle[i],
                peak_rss_kib: peak[i],
            });
        }
    }

    println!();
    println!(
        "{}",
        a.describe("OFREP single-flag evaluation over loopback HTTP")
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
            r.s.rps(),
            r.s.per_core(),
            fmt_us(r.s.p50()),
            fmt_us(r.s.p99()),
            r.s.cpu(),
            r.s.client_cpu(),
            r.idle_rss_kib as f64 / 1024.0,
            r.s.rss_load_mib(),
            r.peak_rss_kib as f64 / 1024.0,
            r.s.errors
        );
    }
    println!();
    println!("| flags | agent/edge req/s | agent/edge req per CPU-second | agent/edge p50 | agent/edge p99 | target |");
    println!("|---:|---:|---:|---:|---:|---|");
    for pair in rows.chunks(2) {
        if let [ag, ed] = pair {
            let rps = ag.s.rps() / ed.s.rps();
            let per_core = ag.s.per_core() / ed.s.per_core();
            let p50 = ag.s.p50() / ed.s.p50();
            let p99 = ag.s.p99() / ed.s.p99();
            let rss_ok = ag.flags < 350 || ag.s.rss_load_mib() <= 10.0;
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
