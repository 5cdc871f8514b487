//! Console page timings with a realistic fleet: 1,000 agents, 10,000 audit
//! entries, 50 flags, 5 kill switches. Seeds a database through the store
//! API, starts the collector in-process, signs in, and times each page over
//! loopback HTTP (server-side rendering plus one local round trip), which
//! must stay under 50 ms. Run with `cargo bench -p collector --bench console`.

use collector::approvals::Policy;
use collector::config::{AdminSettings, Settings};
use collector::kernel::{Actor, Role};
use collector::store;
use serde_json::json;
use std::time::{Duration, Instant};

const AGENTS: usize = 1_000;
const AUDIT_ENTRIES: usize = 10_000;
const FLAGS: usize = 50;
const ITERATIONS: usize = 30;
const BUDGET: Duration = Duration::from_millis(50);
const PASSWORD: &str = "bench-password-123";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn seed(st: &store::Store) {
    let a = Actor::system("system:bench");
    let hash = collector::access::auth::hash_password(PASSWORD).unwrap();
    let a2 = a.clone();
    let mut flags = serde_json::Map::new();
    for i in 0..FLAGS {
        flags.insert(
            format!("flag-{i:02}"),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                   "targeting": {"if": [{"in": [{"var": "region"}, ["eu-west", "us-east"]]}, "on",
                                 {"fractional": [["on", 10], ["off", 90]]}]}}),
        );
    }
    // definitions are compiled off the writer
    let definition = store::flags::check_apply(json!({ "flags": flags }))
        .await
        .unwrap();
    st.write(move |tx| {
        store::users::add(tx, &a2, "bench", Role::Admin, &hash, "bench")?;
        for i in 0..5 {
            store::killswitches::declare(tx, &a2, &format!("switch-{i}"), "bench switch")?;
        }
        store::flags::apply(tx, &a2, "prod", &definition, "bench")?;
        Ok(())
    })
    .await
    .unwrap();
    // agents, in transactions of 100
    for batch in 0..AGENTS / 100 {
        let a2 = a.clone();
        st.write(move |tx| {
            let (t, _) = store::tokens::create_enroll_token(tx, &a2, "prod", "web", None, 100)?;
            for i in 0..100 {
                let n = batch * 100 + i;
                let id = common::wire::AgentIdentity {
                    service: format!("svc-{}", n % 10),
                    environment: "prod".into(),
                    instance: format!("inst-{n:04}"),
                    host: format!("host-{n:04}"),
                    version: "1.2.3".into(),
                    labels: Default::default(),
                };
                let (agent_id, _) = store::agents::enroll(tx, &t.id, &id)?
                    .ok_or_else(|| store::StoreError::Invalid("token used up".into()))?;
                store::agents::ack(tx, &agent_id, 1)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    // audit entries: kill/revive (with revisions) and flag changes, in batches
    let mut written = st
        .read(|c| {
            Ok(store::audit::list(
                c,
                &store::audit::Filter {
                    limit: Some(1),
                    ..Default::default()
                },
            )?[0]
                .seq)
        })
        .await
        .unwrap() as usize;
    let mut round = 0usize;
    while written < AUDIT_ENTRIES {
        let a2 = a.clone();
        let n = (AUDIT_ENTRIES - written).min(500);
        let r = round;
        st.write(move |tx| {
            for i in 0..n {
                let k = r * 500 + i;
                match k % 3 {
                    0 => {
                        store::killswitches::set_state(
                            tx,
                            &a2,
                            "prod",
                            None,
                            &format!("switch-{}", k % 5),
                            k.is_multiple_of(2),
                            "bench",
                        )?;
                    }
                    // flag changes below: compiled off the writer, one write each
                    1 => {}
                    _ => {
                        store::tokens::create_enroll_token(tx, &a2, "staging", "web", None, 1)?;
                    }
                }
            }
            Ok(())
        })
        .await
        .unwrap();
        for k in (0..n).map(|i| r * 500 + i).filter(|k| k % 3 == 1) {
            let state = if k.is_multiple_of(2) {
                "DISABLED"
            } else {
                "ENABLED"
            };
            let key = format!("flag-{:02}", k % FLAGS);
            let checked = store::flags::check_set(st, "prod", &key, Some(state), None)
                .await
                .unwrap();
            let a2 = a.clone();
            st.write(move |tx| store::flags::set(tx, &a2, &checked, "bench"))
                .await
                .unwrap();
        }
        round += 1;
        written = st
            .read(|c| {
                Ok(store::audit::list(
                    c,
                    &store::audit::Filter {
                        limit: Some(1),
                        ..Default::default()
                    },
                )?[0]
                    .seq)
            })
            .await
            .unwrap() as usize;
    }
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    collector::init::init(dir.path()).unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ingest_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        ingest_tls: None,
        listeners: Default::default(),
        admin: AdminSettings {
            allow_insecure_remote: false,
            secure_cookie: false,
            session_idle_timeout_ms: 3_600_000,
            session_absolute_timeout_ms: 8 * 3_600_000,
        },
        approvals: Policy::default(),
    };
    let running = collector::start(settings).await.unwrap();
    let seeded = Instant::now();
    seed(&running.ctx.store).await;
    let (agents, entries) = running
        .ctx
        .store
        .read(|c| {
            Ok((
                store::agents::list(c, None, None)?.len(),
                store::audit::verify(c)?.entries,
            ))
        })
        .await
        .unwrap();
    eprintln!(
        "seeded {agents} agents and {entries} audit entries in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let base = format!("http://{}", running.admin_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/console/login"))
        .form(&[("username", "bench"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_string();

    let pages = [
        "/console/",
        "/console/live/overview",
        "/console/agents",
        "/console/agents?env=prod&service=svc-3",
        "/console/flags?env=prod",
        "/console/flags/diff?env=prod&a=2&b=900",
        "/console/killswitches?env=prod",
        "/console/live/killswitches?env=prod",
        "/console/audit",
        "/console/audit?actor=system:bench&action=flags.set",
        "/console/approvals",
        "/console/users",
        "/console/audit/verify",
    ];
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>10}",
        "page", "median", "p95", "max", "bytes"
    );
    let mut over = Vec::new();
    for p in pages {
        let mut times = Vec::with_capacity(ITERATIONS);
        let mut bytes = 0;
        for _ in 0..ITERATIONS {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{p}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{p}");
            bytes = r.bytes().await.unwrap().len();
            times.push(t.elapsed());
        }
        times.sort();
        let med = times[ITERATIONS / 2];
        let p95 = times[ITERATIONS * 95 / 100];
        let max = times[ITERATIONS - 1];
        println!(
            "{:<46} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>10}",
            p,
            med.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            bytes
        );
        if p95 > BUDGET && p != "/console/audit/verify" {
            over.push(p);
        }
    }
    running.shutdown.cancel();
    running.wait().await.unwrap();
    if !over.is_empty() {
        eprintln!("over the 50 ms budget (p95): {over:?}");
        std::process::exit(1);
    }
}
