//! `opsctl flags`: apply a whole definition (prints the diff), list, get,
//! and set one flag's state or default variant. Changes in a protected
//! environment wait for approval; a definition with warnings nobody
//! accepted is refused (exit 1, each warning listed).

use crate::approvals::{done_or_note, print_warnings};
use crate::client::{or_dash, print_json, q, Answer, Client, Failure, Out};
use crate::table::Table;
use clap::Subcommand;
use common::api::flags::{
    ApplyRequest, Definition, Flag, FlagChange, SetRequest, DEFINITION_WARNINGS,
};
use common::api::{EnvironmentQuery, ErrorBody, Submitted};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FlagsCmd {
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

/// The members of a flagd document the list shows; the rest stays unread.
#[derive(Default, Deserialize)]
struct DefinitionView {
    #[serde(default)]
    flags: BTreeMap<String, FlagView>,
}

#[derive(Deserialize)]
struct FlagView {
    #[serde(default)]
    state: Value,
    #[serde(default, rename = "defaultVariant")]
    default_variant: Value,
    #[serde(default)]
    variants: Map<String, Value>,
    #[serde(default)]
    targeting: Value,
}

/// A flagd member as a table cell: `-` for none, strings unquoted.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn run(c: &Client, cmd: FlagsCmd) -> Out {
    match cmd {
        FlagsCmd::Apply {
            file,
            env,
            dry_run,
            reason,
            accept_warnings,
        } => return apply(c, file, env, dry_run, reason, accept_warnings),
        FlagsCmd::List { env } => {
            let query = EnvironmentQuery {
                environment: env.clone(),
            };
            let a = c.get_with::<Definition, _>("/flags", &query)?;
            c.show(&a, |d| {
                println!("revision {} in {}", or_dash(d.revision), env);
                let t = Table::new(&[
                    ("KEY", 32),
                    ("STATE", 9),
                    ("DEFAULT", 16),
                    ("TARGETING", 10),
                    ("VARIANTS", 0),
                ]);
                let view: DefinitionView =
                    serde_json::from_value(d.definition.clone()).unwrap_or_default();
                for (key, f) in &view.flags {
                    let targeting = match &f.targeting {
                        Value::Object(o) if !o.is_empty() => "yes",
                        _ => "no",
                    };
                    let variants: Vec<&str> = f.variants.keys().map(String::as_str).collect();
                    t.row([
                        key.clone(),
                        cell(&f.state),
                        cell(&f.default_variant),
                        targeting.to_string(),
                        variants.join(", "),
                    ]);
                }
            });
        }
        FlagsCmd::Get { key, env } => {
            let query = EnvironmentQuery { environment: env };
            let a = c.get_with::<Flag, _>(&format!("/flags/{}", q(&key)), &query)?;
            c.show(&a, |f| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&f.flag).unwrap_or_default()
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
            let req = SetRequest {
                environment: env,
                state,
                default_variant,
                reason,
            };
            let answer = c.post_unless::<Submitted<FlagChange>, _>(
                &format!("/flags/{}", q(&key)),
                &req,
                DEFINITION_WARNINGS,
            )?;
            let a = match answer {
                Ok(a) => a,
                Err(error) => {
                    return refused_for_warnings(
                        c,
                        &error,
                        "nothing changed: the revision in force does not have these warnings; to accept them, apply the whole definition with `opsctl flags apply --accept-warnings`",
                    )
                }
            };
            c.show(&a, |s| {
                let Some(change) = done_or_note(s) else {
                    return;
                };
                print!("{}", change.diff_text);
                if change.changed {
                    println!("applied as revision {}", or_dash(change.revision));
                } else {
                    println!("no change");
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn apply(
    c: &Client,
    file: PathBuf,
    env: String,
    dry_run: bool,
    reason: Option<String>,
    accept_warnings: bool,
) -> Out {
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
    let req = ApplyRequest {
        environment: env,
        definition,
        reason: reason.unwrap_or_default(),
        dry_run,
        accept_warnings,
    };
    // a dry run answers the change itself, never a pending request
    let answer =
        c.post_unless::<Submitted<FlagChange>, _>("/flags/apply", &req, DEFINITION_WARNINGS)?;
    let a = match answer {
        Ok(a) => a,
        Err(error) => {
            return refused_for_warnings(
                c,
                &error,
                "nothing applied; to serve it anyway, apply it again with --accept-warnings",
            )
        }
    };
    c.show(&a, |s| {
        let Some(change) = done_or_note(s) else {
            return;
        };
        let diff = change.diff_text.as_str();
        if diff.is_empty() {
            println!("no changes (revision {})", or_dash(change.revision));
        } else {
            print!("{diff}");
        }
        if dry_run {
            print_warnings("warnings", &change.warnings);
            if !change.warnings.is_empty() {
                println!("applying it needs --accept-warnings");
            }
            if !diff.is_empty() {
                println!("dry run: nothing applied");
            }
        } else if !diff.is_empty() {
            print_warnings("accepted warnings", &change.warnings);
            println!("applied as revision {}", or_dash(change.revision));
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// Shows a `DEFINITION_WARNINGS` refusal (`--json`: the error body on
/// standard output) and fails with exit code 1.
fn refused_for_warnings(c: &Client, error: &Answer<ErrorBody>, hint: &str) -> Out {
    if c.json {
        print_json(&error.raw);
    } else {
        let list = &error.body.error.warnings;
        eprintln!(
            "error: refused: {} warning(s), problems flagd would load and answer at evaluation time:",
            list.len()
        );
        for w in list {
            eprintln!("  - {w}");
        }
        eprintln!("{hint}");
    }
    Ok(ExitCode::from(1))
}
