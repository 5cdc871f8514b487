//! Shared pieces of the user-run benchmarks (`src/bin/*.rs`): finding and
//! building the real binaries, pinning to cores, reading a process's RSS and
//! CPU time from `/proc`, the flag data sets (flagd and Unleash forms of the
//! same flags) and a closed-loop HTTP/1.1 load generator recording every
//! latency in an HdrHistogram. `compare` runs the agent and a peer side by side.

pub mod compare;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------- processes ----------

/// Directory holding this workspace's release binaries (next to this bench).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("bin dir").to_path_buf()
}

/// Builds the workspace binaries the benchmark starts (`cargo run -p benches`
/// builds only this package). Cheap when they are up to date.
pub fn ensure_built(packages: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--bins", "--quiet"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let st = cmd.status().context("running cargo build")?;
    if !st.success() {
        bail!("cargo build of {packages:?} failed");
    }
    Ok(())
}

/// Pins this whole process (every thread, and threads started later) to `core`.
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let st = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the load generator")?;
    if !st.success() {
        bail!("taskset -a -p -c {core} failed");
    }
    Ok(())
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// Starts `program args` pinned to `core` with `taskset -c`, output to `log`.
    pub fn spawn_pinned(
        name: &'static str,
        core: usize,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let f = std::fs::File::create(log)?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("OPSPLANE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc { child, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// `VmHWM` (peak RSS) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of `pid` (clock ticks, normally 1/100 s).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the ")" of the command name; utime and stime are fields 14 and 15
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits for the `listening NAME=ADDR` line (`docs/lifecycle.md`) that an
/// Opsplane binary writes to its output, here the `log` file, when it has
/// bound `name`.
pub fn listening_addr(log: &Path, name: &str, timeout: Duration) -> anyhow::Result<SocketAddr> {
    let start = Instant::now();
    let prefix = format!("listening {name}=");
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| l.strip_prefix(&prefix)) {
            return addr
                .trim()
                .parse()
                .with_context(|| format!("bad listening line in {}", log.display()));
        }
        if start.elapsed() > timeout {
            bail!("no `{prefix}` line in {} within {timeout:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `GET path` on `addr` until it answers 200, or fails after `timeout`.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_end(&mut buf).is_ok()
                && buf.starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!("{addr}{path} did not answer 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port that was free a moment ago (racy): only for programs
/// that cannot bind port 0 and report it (Unleash Edge); the Opsplane
/// binaries bind port 0 and print what they bound ([`listening_addr`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// ---------- flag data sets ----------

/// The same `n` flags in flagd form (for the agent) and in Unleash's full
/// client-features form (for Edge), plus their keys. The mix cycles through
/// four kinds: a static boolean, a boolean targeting rule (`country` in a
/// list), a boolean 10 % fractional rollout, and a string flag whose variant
/// depends on an `ends_with` rule on `email`.
pub struct DataSet {
    pub flagd: Value,
    pub unleash: Value,
    pub keys: Vec<String>,
}

pub fn data_set(n: usize) -> DataSet {
    let mut flagd = Map::new();
    let mut features = Vec::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("flag-{i:03}");
        let (f, strategy, variants) = match i % 4 {
            0 => (
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
                json!({"name": "default", "constraints": [], "parameters": {}}),
                json!([]),
            ),
            1 => (
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                       "targeting": {"if": [{"in": [{"var": "country"}, ["de", "fr"]]}, "on", "off"]}}),
                json!({"name": "flexibleRollout",
                       "constraints": [{"contextName": "country", "operator": "IN", "values": ["de", "fr"],
                                        "inverted": false, "caseInsensitive": false}],
                       "parameters": {"rollout": "100", "stickiness": "default", "groupId": key}}),
                json!([]),
            ),
            2 => (
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                       "targeting": {"fractional": [["on", 10], ["off", 90]]}}),
                json!({"name": "flexibleRollout", "constraints": [],
                       "parameters": {"rollout": "10", "stickiness": "default", "groupId": key}}),
                json!([]),
            ),
            _ => (
                json!({"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                       "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "b", null]},
                       "metadata": {"owner": "team-x"}}),
                json!({"name": "flexibleRollout",
                       "constraints": [{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"],
                                        "inverted": false, "caseInsensitive": false}],
                       "parameters": {"rollout": "100", "stickiness": "default", "groupId": key}}),
                json!([{"name": "b", "weight": 1000, "weightType": "variable", "stickiness": "default",
                        "payload": {"type": "string", "value": "b"}, "overrides": []}]),
            ),
        };
        flagd.insert(key.clone(), f);
        features.push(json!({
            "name": key, "type": "release", "enabled": true, "project": "default", "stale": false,
            "strategies": [strategy], "variants": variants, "impressionData": false
        }));
        keys.push(key);
    }
    DataSet {
        flagd: json!({"flags": flagd}),
        unleash: json!({"version": 2, "features": features, "query": {}}),
        keys,
    }
}

/// The evaluation contexts used by the load: user `u` has a varying
/// targeting key, an email that matches the `ends_with` rule half the time
/// and one of four countries.
pub fn user(u: usize) -> (String, String, &'static str) {
    let domain = ["example.com", "other.org"][u % 2];
    (
        format!("user-{u}"),
        format!("user-{u}@{domain}"),
        ["de", "us", "fr", "gb"][u % 4],
    )
}

// ---------- load generator ----------

/// One prepared request (the load cycles through a list of them).
pub struct Req {
    pub path: String,
    pub body: Bytes,
}

pub struct Target {
    pub addr: SocketAddr,
    pub authorization: Option<String>,
    pub reqs: Vec<Req>,
}

pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// Server CPU use over the measured window, in % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Largest server RSS seen while measuring (KiB).
    pub server_rss_kib: Option<u64>,
    /// The load generator's own CPU use over the measured window (% of one core).
    pub client_cpu_pct: Option<f64>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn p50_us(&self) -> f64 {
        self.hist.value_at_quantile(0.50) as f64 / 1000.0
    }
    pub fn p99_us(&self) -> f64 {
        self.hist.value_at_quantile(0.99) as f64 / 1000.0
    }
}

fn new_hist() -> Histogram<u64> {
    // nanoseconds, 1 ns .. 60 s, 3 significant digits
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Closed loop: `conns` keep-alive HTTP/1.1 connections, each sending the next
/// request as soon as the previous answer is read, for `warmup` (not
/// recorded) then `duration` (every latency recorded). Runs on the calling
/// runtime (a current-thread runtime pinned to one core in the benches).
pub async fn run_load(
    target: Arc<Target>,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let t = target.clone();
        tasks.push(tokio::spawn(async move {
            connection(t, c, conns, measure_from, end).await
        }));
    }
    // sample the server while measuring
    let me = std::process::id();
    let pid = server_pid.unwrap_or(me);
    let mut rss_max: Option<u64> = None;
    tokio::time::sleep_until(measure_from.into()).await;
    let (srv0, me0) = (cpu_ticks(pid), cpu_ticks(me));
    let t0 = Instant::now();
    while Instant::now() + Duration::from_millis(250) < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_max = rss_max.max(rss_kib(pid));
    }
    let secs = t0.elapsed().as_secs_f64();
    let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 100.0 / secs * 100.0),
        _ => None,
    };
    let server_cpu = pct(srv0, cpu_ticks(pid)).filter(|_| server_pid.is_some());
    let client_cpu = pct(me0, cpu_ticks(me));
    let mut hist = new_hist();
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        let (h, n, e) = t.await??;
        hist.add(&h)?;
        requests += n;
        errors += e;
    }
    Ok(LoadResult {
        requests,
        errors,
        elapsed: duration,
        hist,
        server_cpu_pct: server_cpu,
        server_rss_kib: rss_max.filter(|_| server_pid.is_some()),
        client_cpu_pct: client_cpu,
    })
}

async fn connection(
    t: Arc<Target>,
    first: usize,
    step: usize,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let stream = tokio::net::TcpStream::connect(t.addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = t.addr.to_string();
    let mut hist = new_hist();
    let (mut n, mut errors) = (0u64, 0u64);
    let mut i = first * 7919;
    loop {
        let r = &t.reqs[i % t.reqs.len()];
        i += step;
        let mut b = http::Request::builder()
            .method(http::Method::POST)
            .uri(r.path.as_str())
            .header(http::header::HOST, host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(a) = &t.authorization {
            b = b.header(http::header::AUTHORIZATION, a.as_str());
        }
        let req = b.body(Full::new(r.body.clone()))?;
        sender.ready().await?;
        let sent = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let _body = resp.into_body().collect().await?;
        let done = Instant::now();
        if done >= end {
            break;
        }
        if sent >= measure_from {
            hist.record((done - sent).as_nanos() as u64)?;
            n += 1;
            if !status.is_success() {
                errors += 1;
            }
        }
    }
    Ok((hist, n, errors))
}

/// One request and its answer (status, body), for checking a server before loading it.
pub async fn one(
    addr: SocketAddr,
    authorization: Option<&str>,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Value)> {
    let (status, bytes) = one_bytes(addr, authorization, path, body).await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// One request and its answer as bytes (status, body).
pub async fn one_bytes(
    addr: SocketAddr,
    authorization: Option<&str>,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        b = b.header(http::header::AUTHORIZATION, a);
    }
    let resp = sender.send_request(b.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

// ---------- the two servers ----------

/// The token Edge is started with (client and frontend).
pub const EDGE_TOKEN: &str = "*:development.benchmark-token";

/// Unleash Edge: `$UNLEASH_EDGE`, else `unleash-edge` on `PATH`.
pub fn find_edge() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("UNLEASH_EDGE") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("unleash-edge"))
        .find(|p| p.exists())
    {
        return Ok(p);
    }
    bail!(
        "Unleash Edge not found. Install it with\n  cargo install unleash-edge --locked --version 20.1.0\n\
         and put it on PATH, or set UNLEASH_EDGE=/path/to/unleash-edge"
    )
}

/// The agent (standalone on a flag file) and Unleash Edge (offline on a
/// bootstrap file) serving the same `n` flags, both pinned to `core`.
pub struct Servers {
    pub agent: Proc,
    pub edge: Proc,
    pub agent_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub data: DataSet,
}

impl Servers {
    pub fn start(
        dir: &Path,
        n: usize,
        agent_bin: &Path,
        edge_bin: &Path,
        core: usize,
    ) -> anyhow::Result<Servers> {
        let ds = data_set(n);
        std::fs::create_dir_all(dir)?;
        let flag_file = dir.join("flags.json");
        std::fs::write(&flag_file, serde_json::to_vec_pretty(&ds.flagd)?)?;
        let bootstrap = dir.join("bootstrap.json");
        std::fs::write(&bootstrap, serde_json::to_vec_pretty(&ds.unleash)?)?;
        let agent_cfg = dir.join("agent.toml");
        std::fs::write(
            &agent_cfg,
            format!(
                "service = \"bench\"\nenvironment = \"bench\"\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[flags]\nfile = {:?}\n",
                dir.join("agent-data").display().to_string(),
                flag_file.display().to_string()
            ),
        )?;
        let edge_port = free_port();
        let agent_cfg_s = agent_cfg.display().to_string();
        let agent = Proc::spawn_pinned(
            "agent",
            core,
            agent_bin,
            &["run", "--config", &agent_cfg_s],
            &dir.join("agent.log"),
        )?;
        let edge_port_s = edge_port.to_string();
        let bootstrap_s = bootstrap.display().to_string();
        let edge = Proc::spawn_pinned(
            "edge",
            core,
            edge_bin,
            &[
                "--port",
                &edge_port_s,
                "--interface",
                "127.0.0.1",
                "offline",
                "--bootstrap-file",
                &bootstrap_s,
                "--client-tokens",
                EDGE_TOKEN,
                "--frontend-tokens",
                EDGE_TOKEN,
            ],
            &dir.join("edge.log"),
        )?;
        let agent_addr = listening_addr(&dir.join("agent.log"), "api", Duration::from_secs(20))
            .context("agent did not report its address (see agent.log)")?;
        let edge_addr: SocketAddr = format!("127.0.0.1:{edge_port}").parse()?;
        wait_http_ok(agent_addr, "/readyz", Duration::from_secs(20))
            .context("agent not ready (see agent.log)")?;
        wait_http_ok(
            edge_addr,
            "/internal-backstage/health",
            Duration::from_secs(20),
        )
        .context("edge not healthy")?;
        Ok(Servers {
            agent,
            edge,
            agent_addr,
            edge_addr,
            data: ds,
        })
    }
}

// ---------- statistics ----------

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Formats microseconds as "123 µs" or "1.23 ms".
pub fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
