//! The spine end to end with real processes: enrollment, pushed revisions,
//! kill-switch enforcement in the proxy with hooks, applied counts, and the
//! faults (collector down, agent restarted with the collector away, agent
//! SIGKILLed while revisions move on, collector restarted, revocation).

use serde_json::Value;
use std::time::Duration;
use tests::*;

const FLAGS: &str = r#"{"flags": {
  "new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
     "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}},
  "banner": {"state": "ENABLED", "variants": {"blue": "blue", "red": "red"}, "defaultVariant": "blue"}
}}"#;

fn agent_config(token: &str, ingest: &str, hooks_log: &std::path::Path) -> (String, String) {
    let head =
        "service = \"web\"\nenvironment = \"prod\"\nlabels = { region = \"eu-west\" }".to_string();
    let tail = format!(
        r#"[collector]
url = "{ingest}"
token = "{token}"
heartbeat_interval = "1s"

[[killswitch]]
name = "checkout-payments"
block = [{{ method = "POST", path_prefix = "/api/pay" }}]
status = 503
retry_after = "120s"
body = "Payments are paused for maintenance"
on_kill = ["/bin/sh", "-c", "echo kill $OPSPLANE_KILLSWITCH >> {log}"]
on_revive = ["/bin/sh", "-c", "echo revive $OPSPLANE_KILLSWITCH >> {log}"]
"#,
        log = hooks_log.display()
    );
    (head, tail)
}

fn hooks(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn killed_count(c: &Collector) -> (u64, u64, Value) {
    let v = c.json(&["killswitches", "list", "--env", "prod"]);
    let k = v["killswitches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "checkout-payments")
        .cloned()
        .expect("switch listed");
    (
        k["applied"].as_u64().unwrap(),
        k["agents"].as_u64().unwrap(),
        k,
    )
}

#[test]
fn flags_and_kill_switches_end_to_end_with_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Collector::start(tmp.path());
    let up = Upstream::start();
    let token = c.enroll_token("prod", "web");
    let hooks_log = tmp.path().join("hooks.log");
    let (head, tail) = agent_config(&token, &c.ingest_url, &hooks_log);
    let mut agent = Agent::start(&tmp.path().join("agent"), &head, Some(&up.url), &tail);
    let proxy = agent.proxy_url.clone().unwrap();
    let client = http();

    // enrolled, connected, ready on the empty revision
    wait_for("agent connected", Duration::from_secs(20), || {
        (agent.status()["collector"]["connected"] == true).then_some(())
    });
    assert_eq!(agent.get("/readyz").0, 200);
    let agents = c.json(&["agents", "list"]);
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);
    assert_eq!(agents["agents"][0]["state"], "connected");

    // flags pushed and evaluated with the agent's own context merged with the request's
    let f = write_file(tmp.path(), "flags.json", FLAGS);
    let applied = c.json(&[
        "flags",
        "apply",
        f.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "first flags",
    ]);
    let rev = applied["revision"].as_u64().unwrap();
    agent.wait_revision(rev);
    let r: Value = client
        .post(format!(
            "{}/ofrep/v1/evaluate/flags/new-checkout",
            agent.api_url
        ))
        .json(&serde_json::json!({"context": {"targetingKey": "u1", "email": "a@example.com"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["value"], true);
    assert_eq!(r["variant"], "on");
    assert_eq!(r["reason"], "TARGETING_MATCH");
    let (_, v) = agent.get("/v1/flags/banner");
    assert_eq!(v["value"], "blue");
    assert_eq!(v["reason"], "STATIC");
    assert_eq!(v["revision"], rev);

    // before the kill: the proxy passes everything
    let pay = || {
        client
            .post(format!("{proxy}/api/pay"))
            .body("{}")
            .send()
            .unwrap()
    };
    assert_eq!(pay().status(), 200);
    let hits_before = up.hits();

    // kill: the proxy answers 503 with Retry-After, the upstream never sees it
    c.ok(&[
        "kill",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "card processor down",
    ]);
    wait_for("kill enforced", Duration::from_secs(10), || {
        (pay().status() == 503).then_some(())
    });
    let r = pay();
    assert_eq!(r.headers()["retry-after"], "120");
    assert_eq!(r.headers()["x-opsplane-killswitch"], "checkout-payments");
    assert_eq!(r.text().unwrap(), "Payments are paused for maintenance");
    assert_eq!(
        client
            .get(format!("{proxy}/api/pay"))
            .send()
            .unwrap()
            .status(),
        200,
        "other methods pass"
    );
    assert_eq!(
        client
            .post(format!("{proxy}/api/orders"))
            .send()
            .unwrap()
            .status(),
        200,
        "other paths pass"
    );
    assert_eq!(
        up.hits(),
        hits_before + 2,
        "blocked requests never reach the app"
    );
    let (_, ks) = agent.get("/v1/killswitches/checkout-payments");
    assert_eq!(ks["killed"], true);
    assert_eq!(ks["reason"], "card processor down");
    // an API token shows as itself, with the person behind it
    assert_eq!(ks["by"], "token:admin (owner admin)");
    wait_for("applied 1 of 1", Duration::from_secs(10), || {
        let (n, m, _) = killed_count(&c);
        (n == 1 && m == 1).then_some(())
    });
    wait_for("on_kill ran", Duration::from_secs(10), || {
        (hooks(&hooks_log) == ["kill checkout-payments"]).then_some(())
    });

    // a second kill is a no-op: no new revision, no second hook run
    let again = c.ok(&[
        "kill",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "again",
    ]);
    assert!(again.contains("already killed"), "{again}");

    // collector stopped: the agent keeps serving and enforcing
    c.stop();
    wait_for("agent notices", Duration::from_secs(40), || {
        (agent.status()["collector"]["connected"] == false).then_some(())
    });
    assert_eq!(pay().status(), 503);
    let (st, v) = agent.get("/v1/flags/banner");
    assert_eq!((st, v["value"].clone()), (200, Value::from("blue")));
    assert_eq!(agent.status()["flags"]["stale"], true);

    // agent restarted while the collector is away: last-known-good, still enforcing
    let (status, took) = agent.proc.as_mut().unwrap().terminate();
    assert!(status.success(), "agent exit {status}");
    assert!(took < Duration::from_secs(6), "SIGTERM took {took:?}");
    agent.run();
    assert_eq!(agent.get("/readyz").0, 200);
    let s = agent.status();
    assert_eq!(s["flags"]["source"], "cache");
    assert_eq!(s["flags"]["stale"], true);
    assert_eq!(s["flags"]["revision"].as_u64().unwrap(), rev + 1);
    assert_eq!(pay().status(), 503);
    assert_eq!(
        hooks(&hooks_log).len(),
        1,
        "a restart does not run on_kill again"
    );

    // collector back: the agent reconnects and catches up
    c.run();
    agent.wait_revision(rev + 1);
    c.ok(&[
        "revive",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "processor back",
    ]);
    wait_for("revived", Duration::from_secs(20), || {
        (pay().status() == 200).then_some(())
    });
    wait_for("on_revive ran", Duration::from_secs(10), || {
        (hooks(&hooks_log) == ["kill checkout-payments", "revive checkout-payments"]).then_some(())
    });

    // agent SIGKILLed while several revisions go by: it catches up to the newest
    agent.proc.as_mut().unwrap().kill9();
    c.ok(&[
        "flags",
        "set",
        "banner",
        "--env",
        "prod",
        "--default-variant",
        "red",
        "--reason",
        "r1",
    ]);
    c.ok(&[
        "kill",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "r2",
    ]);
    let last = c.json(&[
        "flags",
        "set",
        "new-checkout",
        "--env",
        "prod",
        "--state",
        "DISABLED",
        "--reason",
        "r3",
    ]);
    let last_rev = last["revision"].as_u64().unwrap();
    agent.run();
    agent.wait_revision(last_rev);
    assert_eq!(agent.get("/v1/flags/banner").1["value"], "red");
    let (_, v) = agent.get("/v1/flags/new-checkout");
    assert_eq!(v["reason"], "DISABLED");
    assert!(
        v.get("value").is_none(),
        "a disabled flag has no value: {v}"
    );
    assert_eq!(pay().status(), 503);

    // collector restarted: the stream resumes and new revisions arrive
    let (st, took) = c.proc.as_mut().unwrap().terminate();
    assert!(st.success(), "collector exit {st}");
    assert!(
        took < Duration::from_secs(6),
        "collector SIGTERM took {took:?}"
    );
    c.run();
    let r = c.json(&[
        "revive",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "r4",
    ]);
    agent.wait_revision(r["revision"].as_u64().unwrap());
    assert_eq!(pay().status(), 200);
    wait_for("applied after restart", Duration::from_secs(10), || {
        let (n, m, _) = killed_count(&c);
        (n == 1 && m == 1).then_some(())
    });

    // the whole story is in the audit log, and the chain verifies
    let audit = c.ok(&["audit", "list"]);
    for action in [
        "flags.apply",
        "killswitch.kill",
        "killswitch.revive",
        "flags.set",
    ] {
        assert!(audit.contains(action), "{action} missing from\n{audit}");
    }
    c.ok(&["audit", "verify"]);
}

#[test]
fn laggards_are_named_and_revocation_cuts_an_agent_off() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let token = c.enroll_token("prod", "web");
    let hooks_log = tmp.path().join("hooks.log");
    let (head, tail) = agent_config(&token, &c.ingest_url, &hooks_log);
    let up = Upstream::start();
    let a1 = Agent::start(
        &tmp.path().join("a1"),
        &head.replace("labels", "instance = \"a1\"\nlabels"),
        Some(&up.url),
        &tail,
    );
    let a2 = Agent::start(
        &tmp.path().join("a2"),
        &head.replace("labels", "instance = \"a2\"\nlabels"),
        Some(&up.url),
        &tail,
    );
    wait_for("two agents connected", Duration::from_secs(20), || {
        let v = c.json(&["agents", "list", "--env", "prod"]);
        let n = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "connected")
            .count();
        (n == 2).then_some(())
    });
    // a2 frozen (SIGSTOP): it cannot apply the kill and is named as lagging
    a2.proc.as_ref().unwrap().signal("-STOP");
    c.ok(&[
        "kill",
        "checkout-payments",
        "--env",
        "prod",
        "--reason",
        "test",
    ]);
    let k = wait_for("one of two applied", Duration::from_secs(10), || {
        let (n, m, k) = killed_count(&c);
        (n == 1 && m == 2).then_some(k)
    });
    assert_eq!(k["lagging"].as_array().unwrap().len(), 1);
    assert_eq!(k["lagging"][0]["instance"], "a2");
    let human = c.ok(&["killswitches", "list", "--env", "prod"]);
    assert!(human.contains("1/2") && human.contains("a2"), "{human}");
    a2.proc.as_ref().unwrap().signal("-CONT");
    wait_for("two of two applied", Duration::from_secs(20), || {
        let (n, m, _) = killed_count(&c);
        (n == 2 && m == 2).then_some(())
    });

    // revoke a1: within seconds its stream is closed and it stops syncing
    let id = a1.status()["agent"]["id"].as_str().unwrap().to_string();
    c.ok(&["agents", "revoke", &id, "--reason", "host decommissioned"]);
    wait_for("a1 revoked", Duration::from_secs(5), || {
        (a1.status()["collector"]["revoked"] == true).then_some(())
    });
    let v = c.json(&["agents", "list"]);
    let row = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["state"], "revoked");
    // still serving and enforcing what it had
    assert_eq!(
        a1.get("/v1/killswitches/checkout-payments").1["killed"],
        true
    );
    drop(a2);
}

#[test]
fn enrollment_token_must_match_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let token = c.enroll_token("staging", "api");
    let tail = format!(
        "[collector]\nurl = \"{}\"\ntoken = \"{token}\"\n",
        c.ingest_url
    );
    let a = Agent::start(
        &tmp.path().join("a"),
        "service = \"web\"\nenvironment = \"prod\"",
        None,
        &tail,
    );
    wait_for("mismatch reported", Duration::from_secs(10), || {
        let s = a.status();
        s["collector"]["last_error"]
            .as_str()
            .filter(|e| e.contains("ENROLL_MISMATCH"))
            .map(|_| ())
    });
    assert_eq!(
        a.get("/readyz").0,
        503,
        "no snapshot without a collector or cache"
    );
    assert!(c.json(&["agents", "list"])["agents"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn agents_reach_the_collector_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    // a private CA and a certificate for 127.0.0.1 / localhost
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "opsplane test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let cert_file = write_file(tmp.path(), "ingest.pem", &cert.pem());
    let key_file = write_file(tmp.path(), "ingest.key", &key.serialize_pem());
    let ca_file = write_file(tmp.path(), "ca.pem", &ca.pem());

    let c = Collector::start_with(tmp.path(), Some((&cert_file, &key_file)));
    assert!(c.ingest_url.starts_with("https://"));
    let token = c.enroll_token("prod", "web");
    let tail = format!(
        "[collector]\nurl = \"{}\"\ntoken = \"{token}\"\nca_file = {:?}\n",
        c.ingest_url,
        ca_file.display().to_string()
    );
    let a = Agent::start(
        &tmp.path().join("a"),
        "service = \"web\"\nenvironment = \"prod\"",
        None,
        &tail,
    );
    c.ok(&["killswitches", "create", "pay", "--description", "x"]);
    let rev = c.json(&["kill", "pay", "--env", "prod", "--reason", "tls"])["revision"]
        .as_u64()
        .unwrap();
    a.wait_revision(rev);
    assert_eq!(a.get("/v1/killswitches/pay").1["killed"], true);

    // an agent that does not trust the CA is refused at the handshake
    let token2 = c.enroll_token("prod", "web");
    let tail2 = format!(
        "[collector]\nurl = \"{}\"\ntoken = \"{token2}\"\n",
        c.ingest_url
    );
    let b = Agent::start(
        &tmp.path().join("b"),
        "service = \"web\"\nenvironment = \"prod\"",
        None,
        &tail2,
    );
    wait_for("handshake refused", Duration::from_secs(10), || {
        b.status()["collector"]["last_error"].as_str().map(|_| ())
    });
    assert_eq!(b.status()["collector"]["connected"], false);
    assert_eq!(
        c.json(&["agents", "list"])["agents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // plain HTTP to the TLS port gets nowhere
    assert!(http()
        .get(format!("{}/healthz", c.ingest_url.replace("https", "http")))
        .send()
        .map(|r| !r.status().is_success())
        .unwrap_or(true));
}

#[test]
fn service_scoped_kills_and_hook_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let hooks_log = tmp.path().join("hooks.log");
    let tail = |token: &str| {
        format!(
            r#"[collector]
url = "{}"
token = "{token}"

[[killswitch]]
name = "search"
on_kill = ["/bin/sh", "-c", "echo started >> {log}; sleep 30; echo finished >> {log}"]
hook_timeout = "300ms"
"#,
            c.ingest_url,
            log = hooks_log.display()
        )
    };
    let web = Agent::start(
        &tmp.path().join("web"),
        "service = \"web\"\nenvironment = \"prod\"",
        None,
        &tail(&c.enroll_token("prod", "web")),
    );
    let api = Agent::start(
        &tmp.path().join("api"),
        "service = \"api\"\nenvironment = \"prod\"",
        None,
        &tail(&c.enroll_token("prod", "api")),
    );
    wait_for("both connected", Duration::from_secs(20), || {
        let v = c.json(&["agents", "list", "--env", "prod"]);
        (v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "connected")
            .count()
            == 2)
            .then_some(())
    });
    let rev = c.json(&[
        "kill",
        "search",
        "--env",
        "prod",
        "--service",
        "api",
        "--reason",
        "api only",
    ])["revision"]
        .as_u64()
        .unwrap();
    web.wait_revision(rev);
    api.wait_revision(rev);
    assert_eq!(api.get("/v1/killswitches/search").1["killed"], true);
    assert_eq!(web.get("/v1/killswitches/search").1["killed"], false);
    let v = c.json(&["killswitches", "list", "--env", "prod"]);
    let scoped = v["killswitches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["service"] == "api")
        .unwrap()
        .clone();
    assert_eq!(
        (scoped["killed"].clone(), scoped["agents"].clone()),
        (Value::Bool(true), Value::from(1)),
        "{scoped}"
    );
    // the hook of the killed agent was stopped at its timeout and logged as such
    wait_for("hook timeout logged", Duration::from_secs(10), || {
        api.log_text()
            .contains("hook timed out and was killed")
            .then_some(())
    });
    assert_eq!(
        hooks(&hooks_log),
        ["started"],
        "only the api agent ran its hook, and it was killed before finishing"
    );
    assert!(
        !web.log_text().contains("hook"),
        "the web agent ran nothing"
    );
}
