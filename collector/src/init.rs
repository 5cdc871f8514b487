//! `opsplane-collector init`: creates the database, the first admin user and
//! an admin API token.

use crate::access::auth;
use crate::kernel::{Actor, Role};
use crate::store::{self, Store};
use anyhow::{bail, Context};
use std::path::Path;

pub struct Initialised {
    pub admin_user: String,
    pub admin_password: String,
    pub admin_token: String,
}

pub fn init(data_dir: &Path) -> anyhow::Result<Initialised> {
    if Store::exists(data_dir) {
        let s = Store::open(data_dir)?;
        let users = s.read_blocking(store::users::list)?;
        s.close();
        if !users.is_empty() {
            bail!("{} is already initialised", data_dir.display());
        }
    }
    let store = Store::open(data_dir).context("creating the database")?;
    let password = auth::new_password();
    let hash = auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    let actor = Actor::system("system:init");
    let token = store.write_blocking(move |tx| {
        store::users::add(
            tx,
            &actor,
            "admin",
            Role::Admin,
            &hash,
            "collector initialised",
        )?;
        // the token belongs to the admin it is made for (four-eyes counts
        // it as that person)
        let owner = Actor {
            person: "admin".into(),
            ..actor.clone()
        };
        let (_, secret) = store::tokens::create_api_token(
            tx,
            &owner,
            "admin",
            Role::Admin,
            None,
            "collector initialised",
        )?;
        Ok(secret)
    })?;
    store.close();
    Ok(Initialised {
        admin_user: "admin".into(),
        admin_password: password,
        admin_token: token,
    })
}
