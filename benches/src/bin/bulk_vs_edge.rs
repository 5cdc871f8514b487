//! Bulk evaluation over loopback HTTP: every flag evaluated for one context
//! per request. The real `opsplane-agent` (standalone, flag file) answers
//! `POST /ofrep/v1/evaluate/flags`; Unleash Edge (offline, bootstrap file with
//! the same flags) answers `POST /api/frontend`. Both servers are pinned to
//! core 1, the load generator to core 0, as in `ofrep_vs_edge`.
//!
//! Two context mixes:
//! * `distinct`: 65,536 different contexts, cycled. More than any cache of the
//!   agent holds (at most 1,024 entries), and an LRU cache under a cycle longer
//!   than its capacity never hits, so every request is evaluated and encoded.
//! * `repeated`: one context for every request (a browser SDK polling).
//!
//!     cargo run --release -p benches --bin bulk_vs_edge [-- --runs 3 --duration 10 --warmup 2 --conns 32 --flags 350 --edge-path /api/frontend]
//!
//! Needs `taskset` (util-linux) and Unleash Edge (see `ofrep_vs_edge`).

use anyhow::bail;
use benches::compare::{alternate, Bench, RunArgs, Samples};
use benches::*;
use bytes::Bytes;
use serde_json::json;
use std::time::Duration;

const DISTINCT_CONTEXTS: usize = 65_536;

struct Row {
    flags: usize,
    mix: &'static str,
    server: &'static str,
    endpoint: String,
    body_bytes: usize,
    s: Samples,
}

fn requests(mix: &str, edge_path: &str) -> anyhow::Result<(Vec<Req>, Vec<Req>)> {
    let users: Vec<usize> = match mix {
        "distinct" => (0..DISTINCT_CONTEXTS).collect(),
        _ => vec![42],
    };
    let mut agent = Vec::with_capacity(users.len());
    let mut edge = Vec::with_capacity(users.len());
    for u in users {
        let (tk, email, country) = user(u);
        agent.push(Req {
            path: "/ofrep/v1/evaluate/flags".into(),
            body: Bytes::from(serde_json::to_vec(
                &json!({"context": {"targetingKey": tk, "email": email, "country": country}}),
            )?),
        });
        edge.push(Req {
            path: edge_path.into(),
            body: Bytes::from(serde_json::to_vec(
                &json!({"userId": tk, "properties": {"email": email, "country": country}}),
            )?),
        });
    }
    Ok((agent, edge))
}

/// Where a cache miss spends its time, in process: evaluating every flag,
/// writing the answer, hashing it for the ETag (µs per request, best of 5
/// rounds of 2,000).
fn in_process(n: usize) -> anyhow::Result<()> {
    use agent::api::bulk;
    use common::flags::{EvalContext, FlagSet};
    use std::time::Instant;
    let set = FlagSet::from_value(&data_set(n).flagd)?;
    let ctxs: Vec<EvalContext> = (0..2000)
        .map(|u| {
            let (tk, email, country) = user(u);
            EvalContext::from_value(json!({"targetingKey": tk, "email": email, "country": country, "service": "bench", "environment": "bench"}))
        })
        .collect();
    let (mut eval_us, mut encode_us, mut hash_us) = (f64::MAX, f64::MAX, f64::MAX);
    let mut len = 0;
    for _ in 0..5 {
        let (mut te, mut tw, mut th) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for c in &ctxs {
            let t0 = Instant::now();
            let evals = set.evaluate_all(c);
            let t1 = Instant::now();
            let mut out = Vec::with_capacity(len + 256);
            bulk::write_ofrep_bulk(&mut out, 1, &evals);
            let t2 = Instant::now();
            let hit = bulk::Hit::new(1, out);
            let t3 = Instant::now();
            len = hit.body.len();
            te += t1 - t0;
            tw += t2 - t1;
            th += t3 - t2;
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ctxs.len() as f64;
        eval_us = eval_us.min(per(te));
        encode_us = encode_us.min(per(tw));
        hash_us = hash_us.min(per(th));
    }
    println!(
        "in process, {n} flags: evaluate_all {eval_us:.1} µs, write the answer {encode_us:.1} µs, ETag hash {hash_us:.1} µs ({len} bytes)"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = RunArgs::parse(&[350], &["--edge-path"])?;
    let edge_path = a
        .extra("--edge-path")
        .unwrap_or("/api/frontend")
        .to_string();
    for &n in &a.flags {
        in_process(n)?;
    }
    let bench = Bench::new()?;
    let rt = &bench.rt;
    let mut rows: Vec<Row> = Vec::new();

    for &n in &a.flags {
        let srv = bench.servers(n)?;
        for mix in ["distinct", "repeated"] {
            let (agent_reqs, edge_reqs) = requests(mix, &edge_path)?;
            // both answer 200 with every flag before we measure
            let sizes = rt.block_on(async {
                let mut sizes = [0usize; 2];
                for (i, (name, addr, auth, reqs)) in [
                    ("agent", srv.agent_addr, None, &agent_reqs),
                    ("edge", srv.edge_addr, Some(EDGE_TOKEN), &edge_reqs),
                ]
                .into_iter()
                .enumerate()
                {
                    let r = &reqs[0];
                    let (st, body) = one_bytes(addr, auth, &r.path, r.body.clone()).await?;
                    if st != 200 {
                        bail!(
                            "{name} answered {st} to {}: {}",
                            r.path,
                            String::from_utf8_lossy(&body)
                        );
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body)?;
                    let count = v["flags"]
                        .as_array()
                        .or(v["toggles"].as_array())
                        .map_or(0, Vec::len);
                    println!(
                        "{name} {mix}: {} answers {count} flags in {} bytes",
                        r.path,
                        body.len()
                    );
                    if name == "agent" && count != n {
                        bail!("the agent answered {count} flags, expected {n}");
                    }
                    sizes[i] = body.len();
                }
                anyhow::Ok(sizes)
            })?;
            let targets = srv.targets(agent_reqs, edge_reqs);
            let pids = srv.pids();
            let samples = alternate(rt, &a, targets, pids, &format!("{n:>3} flags {mix:<8}"))?;
            for (i, s) in samples.into_iter().enumerate() {
                rows.push(Row {
                    flags: n,
                    mix,
                    server: ["opsplane-agent", "unleash-edge"][i],
                    endpoint: if i == 0 {
                        "POST /ofrep/v1/evaluate/flags".into()
                    } else {
                        format!("POST {edge_path}")
                    },
                    body_bytes: sizes[i],
                    s,
                });
            }
        }
    }

    println!();
    println!("{}", a.describe("Bulk evaluation over loopback HTTP"));
    println!(
        "| flags | contexts | server | endpoint | answer bytes | req/s | req per server CPU-second | p50 | p99 | server CPU | load-gen CPU | RSS under load | errors |"
    );
    println!("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | `{}` | {} | {:.0} | {:.0} | {} | {} | {:.0}% | {:.0}% | {:.1} MiB | {} |",
            r.flags,
            r.mix,
            r.server,
            r.endpoint,
            r.body_bytes,
            r.s.rps(),
            r.s.per_core(),
            fmt_us(r.s.p50()),
            fmt_us(r.s.p99()),
            r.s.cpu(),
            r.s.client_cpu(),
            r.s.rss_load_mib(),
            r.s.errors
        );
    }
    println!();
    println!("| flags | contexts | agent/edge req/s | agent/edge req per CPU-second | agent p99 | agent/edge p99 | target |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for pair in rows.chunks(2) {
        if let [ag, ed] = pair {
            let rps = ag.s.rps() / ed.s.rps();
            let per_core = ag.s.per_core() / ed.s.per_core();
            let p99 = ag.s.p99();
            let p99_ratio = p99 / ed.s.p99();
            let want = if ag.mix == "distinct" { 5.0 } else { 10.0 };
            println!(
                "| {} | {} | {rps:.2}x | {per_core:.2}x | {} | {p99_ratio:.2}x | >= {want:.0}x: {}; p99 <= 5 ms: {} |",
                ag.flags,
                ag.mix,
                fmt_us(p99),
                if rps >= want { "met" } else { "MISSED" },
                if p99 <= 5000.0 { "met" } else { "MISSED" },
            );
        }
    }
    Ok(())
}
