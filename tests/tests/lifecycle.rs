//! The shared start/stop sequence (`docs/lifecycle.md`) with the real
//! binaries: the `listening` lines at start, `/readyz` answering 503 while a
//! drain is held open (by a hook still running in the agent, by a request
//! body still arriving in the collector), a second signal exiting at once
//! with 130, and the protocol version check of the ingest listener.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::*;

/// `opsplane-agent run` prints exactly one `listening` line per listener on
/// stdout (nothing else), with the port the kernel picked for port 0.
#[test]
fn the_agent_prints_one_listening_line_per_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = write_file(
        tmp.path(),
        "flags.json",
        r#"{"flags":{"f":{"state":"ENABLED","variants":{"on":true},"defaultVariant":"on"}}}"#,
    );
    let up = Upstream::start();
    let cfg = write_file(
        tmp.path(),
        "agent.toml",
        &format!(
            "service = \"web\"\nenvironment = \"dev\"\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = {:?}\n[flags]\nfile = {:?}\n",
            tmp.path().join("data").display().to_string(),
            up.url,
            flags.display().to_string()
        ),
    );
    let mut child = Command::new(bin("opsplane-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(l);
    }
    let bound = parse_listening(&lines.concat());
    let api = bound["api"];
    let proxy = bound["proxy"];
    assert!(
        lines[0].starts_with("listening api=127.0.0.1:"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("listening proxy=127.0.0.1:"),
        "{lines:?}"
    );
    assert!(api.port() != 0 && proxy.port() != 0 && api != proxy);
    let r = http().get(format!("http://{api}/readyz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = http().get(format!("http://{proxy}/x")).send().unwrap();
    assert_eq!(r.text().unwrap(), "upstream GET /x");
    // SIGTERM: a clean exit, and nothing more on stdout
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "", "stdout after the listening lines");
    assert!(child.wait().unwrap().success());
}

/// The agent drains while a hook still runs: its API keeps answering, with
/// `/readyz` at 503; a second SIGTERM exits at once with 130 and takes the
/// hook's process group with it.
#[test]
fn agent_readiness_is_503_during_the_drain_and_a_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let token = c.enroll_token("prod", "web");
    let started = tmp.path().join("hook.started");
    let tail = format!(
        r#"[collector]
url = "{ingest}"
token = "{token}"

[[killswitch]]
name = "payments"
on_kill = ["/bin/sh", "-c", "echo $$ > {started}; sleep 60"]
hook_timeout = "120s"
"#,
        ingest = c.ingest_url,
        started = started.display()
    );
    let mut agent = Agent::start(
        &tmp.path().join("agent"),
        "service = \"web\"\nenvironment = \"prod\"",
        None,
        &tail,
    );
    wait_for("agent connected", Duration::from_secs(20), || {
        (agent.status()["collector"]["connected"] == true).then_some(())
    });
    c.ok(&[
        "kill",
        "payments",
        "--env",
        "prod",
        "--reason",
        "drain test",
    ]);
    let hook_pid: i32 = wait_for("the hook to start", Duration::from_secs(20), || {
        std::fs::read_to_string(&started).ok()?.trim().parse().ok()
    });
    assert_eq!(agent.get("/readyz").0, 200);

    let proc = agent.proc.as_mut().unwrap();
    proc.signal("-TERM");
    // the hook holds the drain open: the API answers, not ready
    let body = wait_for(
        "/readyz 503 during the drain",
        Duration::from_secs(4),
        || {
            let r = http()
                .get(format!("{}/readyz", agent.api_url))
                .send()
                .ok()?;
            (r.status() == 503).then(|| r.json::<Value>().unwrap_or(Value::Null))
        },
    );
    assert_eq!(body["error"]["code"], "SHUTTING_DOWN", "{body}");
    assert_eq!(agent.get("/healthz").0, 200, "the API still answers");
    let proc = agent.proc.as_mut().unwrap();
    assert!(proc.child.as_mut().unwrap().try_wait().unwrap().is_none());

    let second = Instant::now();
    proc.signal("-TERM");
    let st = proc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(130), "log:\n{}", proc.log_text());
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "the second signal took {:?}",
        second.elapsed()
    );
    assert!(proc.log_text().contains("second signal"));
    wait_for("the hook's group killed", Duration::from_secs(10), || {
        gone(hook_pid).then_some(())
    });
}

/// The collector drains while a request body is still arriving: `/readyz`
/// answers 503 on the admin and ingest listeners; a second SIGTERM exits at
/// once with 130.
#[test]
fn collector_readiness_is_503_during_the_drain_and_a_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Collector::start(tmp.path());
    let ingest = c.ingest_url.trim_start_matches("http://").to_string();
    // half a heartbeat body: the request stays in flight
    let mut slow = std::net::TcpStream::connect(&ingest).unwrap();
    slow.write_all(
        format!(
            "POST /v1/agent/heartbeat HTTP/1.1\r\nHost: {ingest}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"identity\":"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        http()
            .get(format!("{}/readyz", c.admin_url))
            .send()
            .unwrap()
            .status(),
        200
    );
    let proc = c.proc.as_mut().unwrap();
    proc.signal("-TERM");
    for base in [c.admin_url.clone(), c.ingest_url.clone()] {
        let body = wait_for(
            "/readyz 503 during the drain",
            Duration::from_secs(4),
            || {
                let r = http().get(format!("{base}/readyz")).send().ok()?;
                (r.status() == 503).then(|| r.json::<Value>().unwrap_or(Value::Null))
            },
        );
        assert_eq!(body["error"]["code"], "SHUTTING_DOWN", "{body}");
    }
    let proc = c.proc.as_mut().unwrap();
    assert!(proc.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let second = Instant::now();
    proc.signal("-INT");
    let st = proc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(130), "log:\n{}", proc.log_text());
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "the second signal took {:?}",
        second.elapsed()
    );
    drop(slow);
}

/// The ingest listener checks `X-Opsplane-Protocol` on every agent route:
/// another major version is refused naming both, no header counts as 1.
#[test]
fn the_collector_refuses_another_protocol_version() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let client = http();
    let routes = [
        ("POST", "/v1/agent/enroll"),
        ("GET", "/v1/agent/stream"),
        ("POST", "/v1/agent/ack"),
        ("POST", "/v1/agent/heartbeat"),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", c.ingest_url);
        let req = |version: Option<&str>| {
            let mut r = client
                .request(method.parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body("{}");
            if let Some(v) = version {
                r = r.header("X-Opsplane-Protocol", v);
            }
            r.send().unwrap()
        };
        for bad in ["2", "0.9", "two"] {
            let r = req(Some(bad));
            assert_eq!(r.status(), 400, "{method} {path} with {bad}");
            let v: Value = r.json().unwrap();
            assert_eq!(v["error"]["code"], "PROTOCOL_MISMATCH", "{v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains(&format!("{bad:?}")) && msg.contains("protocol 1"),
                "{msg}"
            );
        }
        for ok in [None, Some("1"), Some("1.2")] {
            let r = req(ok);
            let v: Value = r.json().unwrap_or(Value::Null);
            assert_ne!(
                v["error"]["code"], "PROTOCOL_MISMATCH",
                "{method} {path} with {ok:?}: {v}"
            );
        }
    }
    // the probes do not need the header
    let r = client
        .get(format!("{}/readyz", c.ingest_url))
        .header("X-Opsplane-Protocol", "2")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Gone, or a zombie nobody reaped yet (it runs no more).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}
