//! `opsctl`: the operator CLI over the collector's admin API. Human output by
//! default, `--json` for scripts. Exit codes: 0 ok, 1 the operation failed
//! (or `audit verify` found a problem), 2 bad usage or configuration.

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

const ENV_URL: &str = "OPSPLANE_URL";
const ENV_TOKEN: &str = "OPSPLANE_TOKEN";
const DEFAULT_URL: &str = "http://127.0.0.1:7602";

#[derive(Parser)]
#[command(name = "opsctl", version = common::VERSION, about = "Operate Opsplane: agents, flags, kill switches, audit, tokens, users")]
struct Cli {
    /// Admin API URL [env: OPSPLANE_URL, default http://127.0.0.1:7602]
    #[arg(long, global = true)]
    url: Option<String>,
    /// API token [env: OPSPLANE_TOKEN]
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON only.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Feature flags.
    #[command(subcommand)]
    Flags(FlagsCmd),
    /// Pull a kill switch (takes effect on every agent at once).
    Kill(KillArgs),
    /// Release a kill switch.
    Revive(KillArgs),
    /// Kill switches and how many agents applied each state.
    #[command(subcommand)]
    Killswitches(KillswitchesCmd),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Console users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Four-eyes requests: changes waiting for a second person.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Requests (pending by default).
    List {
        /// pending, approved, rejected, expired or all
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Approve someone else's request; the change takes effect at once.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a request (or withdraw your own).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    List {
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Create an enrollment token (printed alone on the last line); it
    /// enrolls one agent unless --uses says more.
    EnrollToken {
        #[arg(long)]
        env: String,
        #[arg(long)]
        service: String,
        /// at most 10y
        #[arg(long, default_value = "24h")]
        expires: String,
        /// How many agents it may enroll (1 to 10000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
    },
    /// Enrollment tokens: list them, revoke one.
    #[command(subcommand)]
    EnrollTokens(EnrollTokensCmd),
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum EnrollTokensCmd {
    /// Every enrollment token with its uses.
    List,
    /// Revoke an enrollment token: no agent enrolls with it any more.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum FlagsCmd {
    /// Replace the environment's flag definitions with FILE (flagd format); prints the diff.
    Apply {
        file: PathBuf,
        #[arg(long)]
        env: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, required_unless_present = "dry_run")]
        reason: Option<String>,
        /// Apply even though the definition has warnings (problems flagd
        /// loads anyway and answers at evaluation time); they are recorded
        /// in the audit log and shown to whoever approves the change.
        #[arg(long)]
        accept_warnings: bool,
    },
    List {
        #[arg(long)]
        env: String,
    },
    Get {
        key: String,
        #[arg(long)]
        env: String,
    },
    Set {
        key: String,
        #[arg(long)]
        env: String,
        #[arg(long, value_parser = ["ENABLED", "DISABLED"], required_unless_present = "default_variant")]
        state: Option<String>,
        #[arg(long)]
        default_variant: Option<String>,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Args)]
struct KillArgs {
    name: String,
    #[arg(long)]
    env: String,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
enum KillswitchesCmd {
    List {
        #[arg(long)]
        env: String,
    },
    /// Declare a switch that apps check themselves through the local API.
    Create {
        name: String,
        #[arg(long)]
        description: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    List {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check the hash chain; exit 1 and name the first bad entry if tampered.
    Verify,
    Export {
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create an API token (printed alone on the last line).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List,
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user; prints a generated password unless --password-file is given.
    Add {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    List,
    /// Change a user's role.
    SetRole {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        reason: String,
    },
}

/// How a command failed: 1 for operations, 2 for usage/config.
enum Failure {
    Op(String),
    Usage(String),
}

type Out = Result<ExitCode, Failure>;

struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
    json: bool,
}

impl Client {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::blocking::Response, Failure> {
        let resp = self.send(method, path, body)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        Err(Failure::Op(format!("{msg} (HTTP {})", status.as_u16())))
    }

    /// POSTs `body`; a refusal whose error code is `code` comes back as
    /// `Ok(Err(error object))` for the caller to show, other failures as
    /// [`Failure`].
    fn post_unless(
        &self,
        path: &str,
        body: Value,
        code: &str,
    ) -> Result<Result<Value, Value>, Failure> {
        let resp = self.send(reqwest::Method::POST, path, Some(body))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let v: Option<Value> = serde_json::from_str(&text).ok();
        match v {
            Some(v) if status.is_success() => Ok(Ok(v)),
            Some(v) if v["error"]["code"] == code => Ok(Err(v["error"].clone())),
            v => {
                let msg = v
                    .and_then(|v| v["error"]["message"].as_str().map(String::from))
                    .unwrap_or(text);
                Err(Failure::Op(format!("{msg} (HTTP {})", status.as_u16())))
            }
        }
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::blocking::Response, Failure> {
        let url = format!("{}/api/v1{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("user-agent", format!("opsctl/{}", common::VERSION));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .map_err(|e| Failure::Op(format!("cannot reach the collector at {}: {e}", self.base)))
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None)?
            .json()
            .map_err(|e| Failure::Op(format!("bad answer from the collector: {e}")))
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(reqwest::Method::POST, path, Some(body))?
            .json()
            .map_err(|e| Failure::Op(format!("bad answer from the collector: {e}")))
    }

    /// Prints `v` as JSON with --json, else runs `human`.
    fn show(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }
}

fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn main() -> ExitCode {
    let cli: Cli = match common::cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Op(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Out {
    let base = cli
        .url
        .or_else(|| common::config::env_override(ENV_URL))
        .unwrap_or_else(|| DEFAULT_URL.into())
        .trim_end_matches('/')
        .to_string();
    let token = cli
        .token
        .or_else(|| common::config::env_override(ENV_TOKEN))
        .ok_or_else(|| Failure::Usage("no API token: pass --token or set OPSPLANE_TOKEN".into()))?;
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::Op(e.to_string()))?;
    let c = Client {
        base,
        token,
        http,
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Agents(a) => agents(&c, a),
        Cmd::Flags(f) => flags(&c, f),
        Cmd::Kill(k) => kill(&c, k, true),
        Cmd::Revive(k) => kill(&c, k, false),
        Cmd::Killswitches(k) => killswitches(&c, k),
        Cmd::Audit(a) => audit(&c, a),
        Cmd::Tokens(t) => tokens(&c, t),
        Cmd::Users(u) => users(&c, u),
        Cmd::Approvals(a) => approvals(&c, a),
    }
}

/// Prints the "waiting for approval" note of a 202 answer; true if it was one.
fn pending(v: &Value) -> bool {
    if v["pending"].as_bool() != Some(true) {
        return false;
    }
    let a = &v["approval"];
    println!(
        "waiting for approval: request {} ({} {}) expires {}; another person runs `opsctl approvals approve {}`",
        s(&a["id"]), s(&a["action"]), s(&a["target"]), s(&a["expires"]), s(&a["id"])
    );
    let diff: Vec<common::diff::Change> =
        serde_json::from_value(a["diff"].clone()).unwrap_or_default();
    print!("{}", common::diff::render(&diff));
    print_warnings(
        "accepted warnings (shown to the approver)",
        &a["accepted_warnings"],
    );
    true
}

/// The refusal code of a flag change with warnings nobody accepted.
const DEFINITION_WARNINGS: &str = "DEFINITION_WARNINGS";

/// Prints `title (N):` and one warning a line, if there are any.
fn print_warnings(title: &str, warnings: &Value) {
    let list = warnings.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return;
    }
    println!("{title} ({}):", list.len());
    for w in list {
        println!("  - {}", s(w));
    }
}

/// Shows a `DEFINITION_WARNINGS` refusal (the error object; `--json`: on
/// standard output as `{"error": ...}`, with `warnings` an array) and
/// fails with exit code 1.
fn refused_for_warnings(c: &Client, error: &Value, hint: &str) -> Out {
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "error": error })).unwrap_or_default()
        );
    } else {
        let list = error["warnings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        eprintln!(
            "error: refused: {} warning(s), problems flagd would load and answer at evaluation time:",
            list.len()
        );
        for w in list {
            eprintln!("  - {}", s(w));
        }
        eprintln!("{hint}");
    }
    Ok(ExitCode::from(1))
}

fn approvals(c: &Client, cmd: ApprovalsCmd) -> Out {
    match cmd {
        ApprovalsCmd::List { state } => {
            let v = c.get(&format!("/approvals?state={}", q(&state)))?;
            c.show(&v, |v| {
                println!(
                    "{:<14} {:<9} {:<14} {:<28} {:<12} {:<24} REASON",
                    "ID", "STATE", "ACTION", "TARGET", "BY", "EXPIRES"
                );
                for a in v["approvals"].as_array().into_iter().flatten() {
                    println!(
                        "{:<14} {:<9} {:<14} {:<28} {:<12} {:<24} {}",
                        s(&a["id"]),
                        s(&a["state"]),
                        s(&a["action"]),
                        s(&a["target"]),
                        s(&a["requested_by"]),
                        s(&a["expires"]),
                        s(&a["reason"])
                    );
                }
            });
        }
        ApprovalsCmd::Approve { id, reason } => {
            let v = c.post(
                &format!("/approvals/{}/approve", q(&id)),
                json!({"reason": reason}),
            )?;
            c.show(&v, |v| {
                println!(
                    "request {id} approved: {} {} is done",
                    s(&v["approval"]["action"]),
                    s(&v["approval"]["target"])
                );
                if let Some(d) = v["result"]["diff_text"].as_str() {
                    print!("{d}");
                }
            });
        }
        ApprovalsCmd::Reject { id, reason } => {
            let v = c.post(
                &format!("/approvals/{}/reject", q(&id)),
                json!({"reason": reason}),
            )?;
            c.show(&v, |_| println!("request {id} rejected"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn agents(c: &Client, cmd: AgentsCmd) -> Out {
    match cmd {
        AgentsCmd::List { env, service } => {
            let mut path = "/agents?".to_string();
            if let Some(e) = env {
                path.push_str(&format!("environment={}&", q(&e)));
            }
            if let Some(s) = service {
                path.push_str(&format!("service={}&", q(&s)));
            }
            let v = c.get(&path)?;
            c.show(&v, |v| {
                println!(
                    "{:<14} {:<10} {:<12} {:<20} {:<10} {:<9} {:<24} REVISION",
                    "ID", "ENV", "SERVICE", "INSTANCE", "VERSION", "STATE", "LAST SEEN"
                );
                for a in v["agents"].as_array().into_iter().flatten() {
                    println!(
                        "{:<14} {:<10} {:<12} {:<20} {:<10} {:<9} {:<24} {}",
                        s(&a["id"]),
                        s(&a["environment"]),
                        s(&a["service"]),
                        s(&a["instance"]),
                        s(&a["version"]),
                        s(&a["state"]),
                        s(&a["last_seen"]),
                        s(&a["applied_revision"])
                    );
                }
            });
        }
        AgentsCmd::EnrollToken {
            env,
            service,
            expires,
            uses,
        } => {
            collector::auth::expiry_ms(Some(&expires)).map_err(Failure::Usage)?;
            let v = c.post(
                "/agents/enroll-tokens",
                json!({"environment": env, "service": service, "expires": expires, "uses": uses}),
            )?;
            c.show(&v, |v| {
                println!(
                    "enrollment token for service {} in {} (expires {}, enrolls {} agent(s)):",
                    s(&v["service"]),
                    s(&v["environment"]),
                    s(&v["expires"]),
                    s(&v["uses"])
                );
                println!("{}", s(&v["token"]));
            });
        }
        AgentsCmd::Revoke { id, reason } => {
            let v = c.post(
                &format!("/agents/{}/revoke", q(&id)),
                json!({"reason": reason}),
            )?;
            c.show(&v, |_| println!("agent {id} revoked"));
        }
        AgentsCmd::EnrollTokens(EnrollTokensCmd::List) => {
            let v = c.get("/agents/enroll-tokens")?;
            c.show(&v, |v| {
                println!(
                    "{:<10} {:<10} {:<12} {:<7} {:<24} {:<24} REVOKED",
                    "ID", "ENV", "SERVICE", "USES", "EXPIRES", "CREATED"
                );
                for t in v["enroll_tokens"].as_array().into_iter().flatten() {
                    let max = t["max_uses"]
                        .as_u64()
                        .map_or("∞".to_string(), |m| m.to_string());
                    println!(
                        "{:<10} {:<10} {:<12} {:<7} {:<24} {:<24} {}",
                        s(&t["id"]),
                        s(&t["environment"]),
                        s(&t["service"]),
                        format!("{}/{max}", s(&t["uses"])),
                        s(&t["expires"]),
                        s(&t["created"]),
                        s(&t["revoked"])
                    );
                }
            });
        }
        AgentsCmd::EnrollTokens(EnrollTokensCmd::Revoke { id, reason }) => {
            let v = c.post(
                &format!("/agents/enroll-tokens/{}/revoke", q(&id)),
                json!({"reason": reason}),
            )?;
            c.show(&v, |_| println!("enrollment token {id} revoked"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn flags(c: &Client, cmd: FlagsCmd) -> Out {
    match cmd {
        FlagsCmd::Apply {
            file,
            env,
            dry_run,
            reason,
            accept_warnings,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let definition: Value = serde_json::from_str(&text).map_err(|e| {
                Failure::Usage(format!(
                    "{}:{}:{}: invalid JSON: {e}",
                    file.display(),
                    e.line(),
                    e.column()
                ))
            })?;
            let answer = c.post_unless(
                "/flags/apply",
                json!({"environment": env, "definition": definition, "reason": reason.unwrap_or_default(), "dry_run": dry_run, "accept_warnings": accept_warnings}),
                DEFINITION_WARNINGS,
            )?;
            let v = match answer {
                Ok(v) => v,
                Err(error) => return refused_for_warnings(
                    c,
                    &error,
                    "nothing applied; to serve it anyway, apply it again with --accept-warnings",
                ),
            };
            c.show(&v, |v| {
                if pending(v) {
                    return;
                }
                let diff = v["diff_text"].as_str().unwrap_or("");
                if diff.is_empty() {
                    println!("no changes (revision {})", s(&v["revision"]));
                } else {
                    print!("{diff}");
                }
                if dry_run {
                    print_warnings("warnings", &v["warnings"]);
                    if v["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
                        println!("applying it needs --accept-warnings");
                    }
                    if !diff.is_empty() {
                        println!("dry run: nothing applied");
                    }
                } else if !diff.is_empty() {
                    print_warnings("accepted warnings", &v["warnings"]);
                    println!("applied as revision {}", s(&v["revision"]));
                }
            });
        }
        FlagsCmd::List { env } => {
            let v = c.get(&format!("/flags?environment={}", q(&env)))?;
            c.show(&v, |v| {
                println!("revision {} in {}", s(&v["revision"]), env);
                println!(
                    "{:<32} {:<9} {:<16} {:<10} VARIANTS",
                    "KEY", "STATE", "DEFAULT", "TARGETING"
                );
                if let Some(flags) = v["definition"]["flags"].as_object() {
                    for (k, f) in flags {
                        let variants: Vec<&String> = f["variants"]
                            .as_object()
                            .map(|m| m.keys().collect())
                            .unwrap_or_default();
                        let targeting = if f
                            .get("targeting")
                            .is_some_and(|t| t.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            "yes"
                        } else {
                            "no"
                        };
                        println!(
                            "{:<32} {:<9} {:<16} {:<10} {}",
                            k,
                            s(&f["state"]),
                            s(&f["defaultVariant"]),
                            targeting,
                            variants
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
            });
        }
        FlagsCmd::Get { key, env } => {
            let v = c.get(&format!("/flags/{}?environment={}", q(&key), q(&env)))?;
            c.show(&v, |v| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["flag"]).unwrap_or_default()
                )
            });
        }
        FlagsCmd::Set {
            key,
            env,
            state,
            default_variant,
            reason,
        } => {
            let answer = c.post_unless(
                &format!("/flags/{}", q(&key)),
                json!({"environment": env, "state": state, "default_variant": default_variant, "reason": reason}),
                DEFINITION_WARNINGS,
            )?;
            let v = match answer {
                Ok(v) => v,
                Err(error) => {
                    return refused_for_warnings(
                        c,
                        &error,
                        "nothing changed: the revision in force does not have these warnings; to accept them, apply the whole definition with `opsctl flags apply --accept-warnings`",
                    )
                }
            };
            c.show(&v, |v| {
                if pending(v) {
                    return;
                }
                print!("{}", v["diff_text"].as_str().unwrap_or(""));
                if v["changed"].as_bool() == Some(true) {
                    println!("applied as revision {}", s(&v["revision"]));
                } else {
                    println!("no change");
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kill(c: &Client, k: KillArgs, killed: bool) -> Out {
    let verb = if killed { "kill" } else { "revive" };
    let v = c.post(
        &format!("/killswitches/{}/{verb}", q(&k.name)),
        json!({"environment": k.env, "service": k.service, "reason": k.reason}),
    )?;
    c.show(&v, |v| {
        let scope = k
            .service
            .as_ref()
            .map(|s| format!(" for service {s}"))
            .unwrap_or_default();
        let state = if killed { "killed" } else { "alive" };
        if v["changed"].as_bool() == Some(true) {
            println!(
                "{} is now {state} in {}{scope} (revision {})",
                k.name,
                k.env,
                s(&v["revision"])
            );
        } else {
            println!("{} was already {state} in {}{scope}", k.name, k.env);
        }
    });
    Ok(ExitCode::SUCCESS)
}

fn killswitches(c: &Client, cmd: KillswitchesCmd) -> Out {
    match cmd {
        KillswitchesCmd::List { env } => {
            let v = c.get(&format!("/killswitches?environment={}", q(&env)))?;
            c.show(&v, |v| {
                println!(
                    "{:<24} {:<10} {:<7} {:<24} {:<12} {:<9} LAGGING",
                    "NAME", "SERVICE", "STATE", "SINCE", "BY", "APPLIED"
                );
                for k in v["killswitches"].as_array().into_iter().flatten() {
                    let lag: Vec<String> = k["lagging"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| format!("{} ({})", s(&a["instance"]), s(&a["id"])))
                        .collect();
                    println!(
                        "{:<24} {:<10} {:<7} {:<24} {:<12} {:<9} {}",
                        s(&k["name"]),
                        k["service"].as_str().unwrap_or("*"),
                        if k["killed"].as_bool() == Some(true) {
                            "KILLED"
                        } else {
                            "alive"
                        },
                        s(&k["since"]),
                        if k["by"].as_str().unwrap_or("").is_empty() {
                            "-".to_string()
                        } else {
                            s(&k["by"])
                        },
                        format!("{}/{}", s(&k["applied"]), s(&k["agents"])),
                        if lag.is_empty() {
                            "-".to_string()
                        } else {
                            lag.join(", ")
                        }
                    );
                }
            });
        }
        KillswitchesCmd::Create { name, description } => {
            let v = c.post(
                "/killswitches",
                json!({"name": name, "description": description}),
            )?;
            c.show(&v, |_| println!("kill switch {name} declared"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(c: &Client, cmd: AuditCmd) -> Out {
    match cmd {
        AuditCmd::List {
            since,
            actor,
            action,
            limit,
        } => {
            let mut path = format!("/audit?limit={limit}");
            if let Some(x) = since {
                path.push_str(&format!("&since={}", q(&x)));
            }
            if let Some(x) = actor {
                path.push_str(&format!("&actor={}", q(&x)));
            }
            if let Some(x) = action {
                path.push_str(&format!("&action={}", q(&x)));
            }
            let v = c.get(&path)?;
            c.show(&v, |v| {
                for e in v["entries"].as_array().into_iter().flatten() {
                    let reason = e["reason"]
                        .as_str()
                        .filter(|r| !r.is_empty())
                        .map(|r| format!(" reason={r:?}"))
                        .unwrap_or_default();
                    println!(
                        "#{} {} {} ({}, {}) {} {}{}",
                        s(&e["seq"]),
                        s(&e["time"]),
                        s(&e["actor"]),
                        s(&e["role"]),
                        s(&e["source"]),
                        s(&e["action"]),
                        s(&e["target"]),
                        reason
                    );
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => {
            let v = c.get("/audit/verify")?;
            let ok = v["ok"].as_bool() == Some(true);
            c.show(&v, |v| {
                if ok {
                    println!(
                        "audit chain intact: {} entries, head {}",
                        s(&v["entries"]),
                        s(&v["head_hash"])
                    );
                } else {
                    println!(
                        "AUDIT CHAIN BROKEN at entry {}: {}",
                        s(&v["first_bad_seq"]),
                        s(&v["problem"])
                    );
                }
            });
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Export { format } => {
            let resp = c.call(
                reqwest::Method::GET,
                &format!("/audit/export?format={format}"),
                None,
            )?;
            let text = resp.text().map_err(|e| Failure::Op(e.to_string()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn tokens(c: &Client, cmd: TokensCmd) -> Out {
    match cmd {
        TokensCmd::Create {
            name,
            role,
            expires,
            reason,
        } => {
            collector::auth::expiry_ms(expires.as_deref()).map_err(Failure::Usage)?;
            let v = c.post(
                "/tokens",
                json!({"name": name, "role": role, "expires": expires, "reason": reason}),
            )?;
            c.show(&v, |v| {
                if pending(v) {
                    println!("the token works once the request is approved (shown once):");
                    println!("{}", s(&v["token"]));
                    return;
                }
                println!(
                    "API token {} ({}, role {}, expires {}):",
                    s(&v["id"]),
                    s(&v["name"]),
                    s(&v["role"]),
                    s(&v["expires"])
                );
                println!("{}", s(&v["token"]));
            });
        }
        TokensCmd::List => {
            let v = c.get("/tokens")?;
            c.show(&v, |v| {
                println!(
                    "{:<10} {:<20} {:<10} {:<24} {:<24} REVOKED",
                    "ID", "NAME", "ROLE", "CREATED", "EXPIRES"
                );
                for t in v["tokens"].as_array().into_iter().flatten() {
                    println!(
                        "{:<10} {:<20} {:<10} {:<24} {:<24} {}",
                        s(&t["id"]),
                        s(&t["name"]),
                        s(&t["role"]),
                        s(&t["created"]),
                        s(&t["expires"]),
                        s(&t["revoked"])
                    );
                }
            });
        }
        TokensCmd::Revoke { id, reason } => {
            let v = c.post(
                &format!("/tokens/{}/revoke", q(&id)),
                json!({"reason": reason}),
            )?;
            c.show(&v, |_| println!("token {id} revoked"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn users(c: &Client, cmd: UsersCmd) -> Out {
    match cmd {
        UsersCmd::SetRole { name, role, reason } => {
            let v = c.post(
                &format!("/users/{}/role", q(&name)),
                json!({"role": role, "reason": reason}),
            )?;
            c.show(&v, |v| {
                if !pending(v) {
                    println!("{} now has the {} role", s(&v["name"]), s(&v["role"]));
                }
            });
        }
        UsersCmd::Add {
            name,
            role,
            password_file,
            reason,
        } => {
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", f.display())))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                None => None,
            };
            let v = c.post(
                "/users",
                json!({"name": name, "role": role, "password": password, "reason": reason}),
            )?;
            c.show(&v, |v| {
                if !pending(v) {
                    println!("user {} added with role {}", s(&v["name"]), s(&v["role"]));
                }
                if let Some(p) = v["password"].as_str() {
                    println!("password (shown once):");
                    println!("{p}");
                }
            });
        }
        UsersCmd::List => {
            let v = c.get("/users")?;
            c.show(&v, |v| {
                for u in v["users"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<10} {}",
                        s(&u["name"]),
                        s(&u["role"]),
                        s(&u["created"])
                    );
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
