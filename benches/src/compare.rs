//! What the side-by-side benchmarks (`ofrep_vs_edge`, `bulk_vs_edge`) share:
//! their command-line options, the alternating agent/peer load runs, and the
//! per-server samples the tables are printed from.

use crate::{fmt_us, median, run_load, LoadResult, Target};
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;

/// Options every side-by-side run takes; `extra` names the binary's own
/// options, handed back in [`RunArgs::extra`].
pub struct RunArgs {
    pub runs: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub conns: usize,
    pub flags: Vec<usize>,
    pub extra: Vec<(String, String)>,
}

impl RunArgs {
    /// Parses `--runs --duration --warmup --conns --flags` and the `extra`
    /// options from the process arguments.
    pub fn parse(default_flags: &[usize], extra: &[&str]) -> anyhow::Result<RunArgs> {
        let mut a = RunArgs {
            runs: 3,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            conns: 32,
            flags: default_flags.to_vec(),
            extra: Vec::new(),
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
                other if extra.contains(&other) => a.extra.push((k, v)),
                _ => bail!(
                    "unknown argument {k} (known: --runs --duration --warmup --conns --flags {})",
                    extra.join(" ")
                ),
            }
        }
        Ok(a)
    }

    /// The value of one of the binary's own options.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The header line of a result table.
    pub fn describe(&self, what: &str) -> String {
        format!(
            "{what}, medians of {} runs ({} s each after {} s warm-up, {} keep-alive connections; servers on core 1, load on core 0)",
            self.runs,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
            self.conns
        )
    }
}

/// One server's results over the runs.
#[derive(Default)]
pub struct Samples {
    pub rps: Vec<f64>,
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    pub cpu: Vec<f64>,
    pub client_cpu: Vec<f64>,
    /// req/s divided by the server's CPU share: robust to CPU stolen by other load
    pub per_core: Vec<f64>,
    pub rss_load: Vec<f64>,
    pub errors: u64,
}

impl Samples {
    pub fn push(&mut self, r: &LoadResult) {
        let cpu = r.server_cpu_pct.unwrap_or(f64::NAN);
        self.rps.push(r.rps());
        self.p50.push(r.p50_us());
        self.p99.push(r.p99_us());
        self.cpu.push(cpu);
        self.client_cpu.push(r.client_cpu_pct.unwrap_or(f64::NAN));
        self.per_core.push(r.rps() / (cpu / 100.0));
        self.rss_load.push(r.server_rss_kib.unwrap_or(0) as f64);
        self.errors += r.errors;
    }

    pub fn rps(&self) -> f64 {
        median(self.rps.clone())
    }
    pub fn per_core(&self) -> f64 {
        median(self.per_core.clone())
    }
    pub fn p50(&self) -> f64 {
        median(self.p50.clone())
    }
    pub fn p99(&self) -> f64 {
        median(self.p99.clone())
    }
    pub fn cpu(&self) -> f64 {
        median(self.cpu.clone())
    }
    pub fn client_cpu(&self) -> f64 {
        median(self.client_cpu.clone())
    }
    pub fn rss_load_mib(&self) -> f64 {
        median(self.rss_load.clone()) / 1024.0
    }
}

/// Loads the agent (`targets[0]`) and the peer (`targets[1]`) in turn,
/// `args.runs` times each, alternating who goes first, and prints a line per
/// run prefixed with `label`.
pub fn alternate(
    rt: &tokio::runtime::Runtime,
    args: &RunArgs,
    targets: [Arc<Target>; 2],
    pids: [u32; 2],
    label: &str,
) -> anyhow::Result<[Samples; 2]> {
    let mut samples = [Samples::default(), Samples::default()];
    for run in 0..args.runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = rt.block_on(run_load(
                targets[i].clone(),
                args.conns,
                args.warmup,
                args.duration,
                Some(pids[i]),
            ))?;
            println!(
                "  {label} {:<5} run {}: {:>8.0} req/s  p50 {:>9}  p99 {:>9}  server CPU {:>3.0}%  load generator CPU {:>3.0}%  errors {}",
                ["agent", "edge"][i],
                run + 1,
                r.rps(),
                fmt_us(r.p50_us()),
                fmt_us(r.p99_us()),
                r.server_cpu_pct.unwrap_or(f64::NAN),
                r.client_cpu_pct.unwrap_or(f64::NAN),
                r.errors
            );
            samples[i].push(&r);
        }
    }
    Ok(samples)
}

/// The built agent, the peer's binary, this process pinned to core 0, a
/// runtime for the load generator and a scratch directory.
pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub agent_bin: std::path::PathBuf,
    pub edge_bin: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

impl Bench {
    pub fn new() -> anyhow::Result<Bench> {
        crate::ensure_built(&["agent"])?;
        let edge_bin = crate::find_edge()?;
        crate::pin_self(0)?;
        Ok(Bench {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            agent_bin: crate::bin_dir().join("opsplane-agent"),
            edge_bin,
            tmp: tempfile::tempdir()?,
        })
    }

    /// The agent and Unleash Edge serving the same `n` flags, both on core 1.
    pub fn servers(&self, n: usize) -> anyhow::Result<crate::Servers> {
        crate::Servers::start(
            &self.tmp.path().join(format!("flags-{n}")),
            n,
            &self.agent_bin,
            &self.edge_bin,
            1,
        )
    }
}

impl crate::Servers {
    /// The agent's and Edge's request sequences as load targets, in the
    /// order [`alternate`] takes them.
    pub fn targets(&self, agent: Vec<crate::Req>, edge: Vec<crate::Req>) -> [Arc<Target>; 2] {
        [
            Arc::new(Target {
                addr: self.agent_addr,
                authorization: None,
                reqs: agent,
            }),
            Arc::new(Target {
                addr: self.edge_addr,
                authorization: Some(crate::EDGE_TOKEN.into()),
                reqs: edge,
            }),
        ]
    }

    pub fn pids(&self) -> [u32; 2] {
        [self.agent.pid(), self.edge.pid()]
    }
}
