//! Helpers for the end-to-end tests: find the built binaries, start a real
//! collector and real agents in temp dirs, run `opsctl`, and wait for
//! conditions with deadlines (never bare sleeps).
//!
//! Ports: the processes are configured with port 0 and report what they
//! bound on stdout, one `listening NAME=ADDR` line per listener
//! (`docs/lifecycle.md`); [`Proc::listening`] reads those lines. After the
//! first start the config is rewritten with the bound ports, so a restart
//! ([`Collector::run`], [`Agent::run`] again) comes back on the same
//! addresses, which the other side (agents, the test) still uses. That is
//! the one place a fixed port remains: the port is free between the stop and
//! the restart, and another process binding port 0 in that moment could be
//! given it (unlikely; the restart would then fail loudly). No test probes
//! for a free port any more (`tests/console.rs` still does for its own
//! processes).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built by this workspace (next to the test executable's
/// `deps` folder; `cargo test --workspace` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn healthy(url: &str) -> bool {
    http()
        .get(format!("{url}/healthz"))
        .send()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

/// A child process killed when dropped, with its log (stdout and stderr)
/// in a file.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Where this process's part of the (appended) log starts.
    log_start: u64,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let log_start = f.metadata().map(|m| m.len()).unwrap_or(0);
        let child = cmd
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        Proc {
            child: Some(child),
            log,
            log_start,
        }
    }

    /// Waits for this process's `listening NAME=ADDR` line of each of
    /// `names` and returns the addresses in that order. Panics with the log
    /// if the process exits first or the lines do not come within 20 s.
    pub fn listening(&mut self, names: &[&str]) -> Vec<SocketAddr> {
        let start = Instant::now();
        loop {
            let bound = parse_listening(&self.own_log());
            let found: Option<Vec<SocketAddr>> =
                names.iter().map(|n| bound.get(*n).copied()).collect();
            if let Some(addrs) = found {
                return addrs;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!(
                    "process exited ({st}) before reporting {names:?}; log:\n{}",
                    self.own_log()
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "no `listening` line for {names:?} within 20 s; log:\n{}",
                    self.own_log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log written since this process started.
    fn own_log(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(self.log_start));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        self.signal("-TERM");
        let start = Instant::now();
        let mut c = self.child.take().expect("running");
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return (st, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                panic!(
                    "process did not exit within 15 s of SIGTERM; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process has exited (within `timeout`) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                self.child = None;
                return st;
            }
            if start.elapsed() > timeout {
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The `listening NAME=ADDR` lines of a process's output, by name (a name
/// reported twice keeps its last address).
pub fn parse_listening(output: &str) -> std::collections::HashMap<String, SocketAddr> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("listening "))
        .filter_map(|rest| {
            let (name, addr) = rest.trim().split_once('=')?;
            Some((name.to_string(), addr.parse().ok()?))
        })
        .collect()
}

/// Replaces `key = "HOST:0"` (the first one after `section`) in a config
/// file by the bound address, so a restart binds the same address.
fn pin_port(config: &Path, section: &str, key: &str, bound: SocketAddr) {
    let text = std::fs::read_to_string(config).expect("config");
    let Some(at) = text.find(section) else { return };
    let wanted = format!("{key} = \"{}:0\"", bound.ip());
    let Some(rel) = text[at..].find(&wanted) else {
        return;
    };
    let i = at + rel;
    let pinned = format!(
        "{}{key} = \"{bound}\"{}",
        &text[..i],
        &text[i + wanted.len()..]
    );
    std::fs::write(config, pinned).expect("config");
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real collector in a temp dir.
pub struct Collector {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ingest_url: String,
    pub admin_url: String,
    pub status_url: String,
    pub admin_token: String,
    pub admin_password: String,
    pub proc: Option<Proc>,
}

impl Collector {
    /// `init` then `run` in `dir`.
    pub fn start(dir: &Path) -> Collector {
        Self::start_with(dir, None)
    }

    /// Like [`Collector::start`], with the ingest listener on TLS when
    /// `tls` gives `(certificate, key)` PEM files.
    pub fn start_with(dir: &Path, tls: Option<(&Path, &Path)>) -> Collector {
        let data = dir.join("collector-data");
        let token_file = dir.join("admin.token");
        let out = Command::new(bin("opsplane-collector"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .arg("--admin-token-file")
            .arg(&token_file)
            .output()
            .expect("init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let admin_password = stdout
            .lines()
            .find_map(|l| l.strip_prefix("admin password (shown once): "))
            .expect("password printed")
            .to_string();
        let admin_token = std::fs::read_to_string(&token_file)
            .expect("token")
            .trim()
            .to_string();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[ingest]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n[status_page]\nlisten = \"127.0.0.1:0\"\n",
                data.display().to_string(),
                tls.map(|(c, k)| format!("tls_cert = {:?}\ntls_key = {:?}\n", c.display().to_string(), k.display().to_string()))
                    .unwrap_or_default()
            ),
        )
        .expect("config");
        let mut c = Collector {
            dir: dir.to_path_buf(),
            config,
            // set from the `listening` lines by `run`
            ingest_url: if tls.is_some() { "https" } else { "http" }.to_string(),
            admin_url: String::new(),
            status_url: String::new(),
            admin_token,
            admin_password,
            proc: None,
        };
        c.run();
        c
    }

    /// Starts (or restarts) the `run` process, reads the addresses it
    /// bound (the first run pins them in the config for the restarts) and
    /// waits until it serves.
    pub fn run(&mut self) {
        let mut p = Proc::spawn(
            Command::new(bin("opsplane-collector"))
                .arg("run")
                .arg("--config")
                .arg(&self.config),
            self.dir.join("collector.log"),
        );
        let bound = p.listening(&["ingest", "admin", "status"]);
        self.proc = Some(p);
        for (section, addr) in ["[ingest]", "[admin]", "[status_page]"].iter().zip(&bound) {
            pin_port(&self.config, section, "listen", *addr);
        }
        let scheme = if self.ingest_url.starts_with("https") {
            "https"
        } else {
            "http"
        };
        self.ingest_url = format!("{scheme}://{}", bound[0]);
        self.admin_url = format!("http://{}", bound[1]);
        self.status_url = format!("http://{}", bound[2]);
        let url = self.admin_url.clone();
        wait_for("collector /healthz", Duration::from_secs(20), || {
            healthy(&url).then_some(())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Runs `opsctl` with this collector's URL and the admin token.
    pub fn opsctl(&self, args: &[&str]) -> Output {
        self.opsctl_as(&self.admin_token, args)
    }

    pub fn opsctl_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("opsctl"))
            .args(args)
            .env("OPSPLANE_URL", &self.admin_url)
            .env("OPSPLANE_TOKEN", token)
            .output()
            .expect("opsctl")
    }

    /// Runs `opsctl`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.opsctl(args);
        assert!(
            out.status.success(),
            "opsctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `opsctl --json ...` parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// An enrollment token for `env`/`service`, good for ten agents
    /// (tokens are single-use unless created with `--uses`).
    pub fn enroll_token(&self, env: &str, service: &str) -> String {
        self.json(&[
            "agents",
            "enroll-token",
            "--env",
            env,
            "--service",
            service,
            "--uses",
            "10",
        ])["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// Creates an API token with `role`.
    pub fn token(&self, name: &str, role: &str) -> String {
        self.json(&["tokens", "create", "--name", name, "--role", role])["token"]
            .as_str()
            .expect("token")
            .to_string()
    }
}

/// A real agent in its own folder.
pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub api_url: String,
    pub proxy_url: Option<String>,
    pub proc: Option<Proc>,
}

impl Agent {
    /// Writes `agent.toml` from `head` and `tail` (the caller's sections)
    /// with port 0 for `[api]` (and `[proxy]` when `proxy_upstream` is
    /// given), starts the agent and reads the addresses it bound.
    pub fn start(dir: &Path, head: &str, proxy_upstream: Option<&str>, tail: &str) -> Agent {
        std::fs::create_dir_all(dir).expect("agent dir");
        let mut text = format!(
            "{head}\ndata_dir = {:?}\n",
            dir.join("data").display().to_string()
        );
        text.push_str("[api]\nlisten = \"127.0.0.1:0\"\n");
        let mut proxy_url = None;
        if let Some(up) = proxy_upstream {
            text.push_str(&format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = {up:?}\n"
            ));
            // set from the `listening` line by `run`
            proxy_url = Some(String::new());
        }
        text.push_str(tail);
        let config = dir.join("agent.toml");
        std::fs::write(&config, text).expect("agent config");
        let mut a = Agent {
            dir: dir.to_path_buf(),
            config,
            api_url: String::new(),
            proxy_url,
            proc: None,
        };
        a.run();
        a
    }

    /// Starts (or restarts) the agent, reads the addresses it bound (the
    /// first run pins them in the config for the restarts) and waits until
    /// it serves. `proxy_url` is `Some` when the agent runs a proxy.
    pub fn run(&mut self) {
        let mut p = Proc::spawn(
            Command::new(bin("opsplane-agent"))
                .arg("run")
                .arg("--config")
                .arg(&self.config),
            self.dir.join("agent.log"),
        );
        let names: &[&str] = if self.proxy_url.is_some() {
            &["api", "proxy"]
        } else {
            &["api"]
        };
        let bound = p.listening(names);
        self.proc = Some(p);
        pin_port(&self.config, "[api]", "listen", bound[0]);
        self.api_url = format!("http://{}", bound[0]);
        if let Some(proxy) = bound.get(1) {
            pin_port(&self.config, "[proxy]", "listen", *proxy);
            self.proxy_url = Some(format!("http://{proxy}"));
        }
        let url = self.api_url.clone();
        wait_for("agent /healthz", Duration::from_secs(20), || {
            healthy(&url).then_some(())
        });
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = http()
            .get(format!("{}{path}", self.api_url))
            .send()
            .expect("agent request");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    pub fn status(&self) -> serde_json::Value {
        self.get("/v1/status").1
    }

    /// Waits until the agent has applied revision `rev` or newer.
    pub fn wait_revision(&self, rev: u64) {
        let start = Instant::now();
        loop {
            let s = self.status();
            if s["flags"]["revision"].as_u64().unwrap_or(0) >= rev
                && s["flags"]["source"] == "collector"
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("timed out waiting for the agent to apply revision {rev}; status: {s}\nlog:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

/// A tiny upstream app for proxy tests: answers every request with
/// `200 upstream METHOD PATH`, counting the requests it saw.
pub struct Upstream {
    pub url: String,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Upstream {
        use std::io::{BufRead, BufReader, Read};
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().expect("clone"));
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (m, p) = (
                            parts.next().unwrap_or("").to_string(),
                            parts.next().unwrap_or("").to_string(),
                        );
                        let mut len = 0usize;
                        loop {
                            let mut hl = String::new();
                            if r.read_line(&mut hl).unwrap_or(0) == 0 {
                                return;
                            }
                            if hl == "\r\n" {
                                break;
                            }
                            if let Some(v) = hl.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let resp = format!("upstream {m} {p}");
                        let out = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{resp}", resp.len());
                        if s.write_all(out.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream { url, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}
