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

use anyhow::{bail, Context};
use benches::*;
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const DISTINCT_CONTEXTS: usize = 65_536;

struct Args {
    runs: usize,
    duration: Duration,
    warmup: Duration,
    conns: usize,
    flags: Vec<usize>,
    edge_path: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 3,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        conns: 32,
        flags: vec![350],
        edge_path: "/api/frontend".into(),
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
            "--edge-path" => a.edge_path = v,
            _ => bail!(
                "unknown argument {k} (known: --runs --duration --warmup --conns --flags --edge-path)"
            ),
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
    per_core: Vec<f64>,
    rss_load: Vec<f64>,
    errors: u64,
}

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
    let a = args()?;
    ensure_built(&["agent"])?;
    for &n in &a.flags {
        in_process(n)?;
    }
    let edge_bin = find_edge()?;
    let agent_bin = bin_dir().join("opsplane-agent");
    pin_self(0)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let mut rows: Vec<Row> = Vec::new();

    for &n in &a.flags {
        let srv = Servers::start(
            &tmp.path().join(format!("flags-{n}")),
            n,
            &agent_bin,
            &edge_bin,
            1,
        )?;
        for mix in ["distinct", "repeated"] {
            let (agent_reqs, edge_reqs) = requests(mix, &a.edge_path)?;
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
            let targets = [
                Arc::new(Target {
                    addr: srv.agent_addr,
                    authorization: None,
                    reqs: agent_reqs,
                }),
                Arc::new(Target {
                    addr: srv.edge_addr,
                    authorization: Some(EDGE_TOKEN.into()),
                    reqs: edge_reqs,
                }),
            ];
            let pids = [srv.agent.pid(), srv.edge.pid()];
            let mut samples = [Samples::default(), Samples::default()];
            for run in 0..a.runs {
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
                        "  {n:>3} flags {mix:<8} {:<5} run {}: {:>8.0} req/s  p50 {:>9}  p99 {:>9}  server CPU {:>3.0}%  load generator CPU {:>3.0}%  errors {}",
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
            for (i, s) in samples.into_iter().enumerate() {
                rows.push(Row {
                    flags: n,
                    mix,
                    server: ["opsplane-agent", "unleash-edge"][i],
                    endpoint: if i == 0 {
                        "POST /ofrep/v1/evaluate/flags".into()
                    } else {
                        format!("POST {}", a.edge_path)
                    },
                    body_bytes: sizes[i],
                    s,
                });
            }
        }
    }

    println!();
    println!(
        "Bulk evaluation over loopback HTTP, medians of {} runs ({} s each after {} s warm-up, {} keep-alive connections; servers on core 1, load on core 0)",
        a.runs,
        a.duration.as_secs_f64(),
        a.warmup.as_secs_f64(),
        a.conns
    );
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
            median(r.s.rps.clone()),
            median(r.s.per_core.clone()),
            fmt_us(median(r.s.p50.clone())),
            fmt_us(median(r.s.p99.clone())),
            median(r.s.cpu.clone()),
            median(r.s.client_cpu.clone()),
            median(r.s.rss_load.clone()) / 1024.0,
            r.s.errors
        );
    }
    println!();
    println!("| flags | contexts | agent/edge req/s | agent/edge req per CPU-second | agent p99 | agent/edge p99 | target |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for pair in rows.chunks(2) {
        if let [ag, ed] = pair {
            let rps = median(ag.s.rps.clone()) / median(ed.s.rps.clone());
            let per_core = median(ag.s.per_core.clone()) / median(ed.s.per_core.clone());
            let p99 = median(ag.s.p99.clone());
            let p99_ratio = p99 / median(ed.s.p99.clone());
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
