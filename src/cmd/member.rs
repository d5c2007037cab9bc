//! `weft member list|remove`: the control plane's Raft members, as the
//! leader sees them (any member passes the request on).

use anyhow::Context;
use weft_client::Method;
use weft_control_plane::store::membership::{Member, Role};
use weft_control_plane::store::network::{RPC_MEMBERS, RPC_REMOVE};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub client: super::ClientArgs,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Each member's id, address, role, term, lag and last contact.
    List,
    /// Take a member out of the cluster, by its id (`--node-id`).
    Remove { id: u64 },
}

/// POSTs `body` to the member's internal `path`; unwraps the leader's answer.
async fn call<T: serde::de::DeserializeOwned>(
    client: &weft_client::Client,
    path: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<T> {
    let v = client
        .request(
            Method::POST,
            path,
            Some(("application/json", serde_json::to_vec(body)?)),
            None,
        )
        .await?;
    let answer: Result<T, String> =
        serde_json::from_value(v).context("the server's answer is not a member answer")?;
    answer.map_err(anyhow::Error::msg)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.action {
        Action::List => {
            let members: Vec<Member> = call(&client, RPC_MEMBERS, &()).await?;
            print!("{}", table(&members));
        }
        Action::Remove { id } => {
            call::<()>(&client, RPC_REMOVE, &id).await?;
            println!("member {id} removed");
        }
    }
    Ok(())
}

fn table(members: &[Member]) -> String {
    let mut out = format!(
        "{:<4} {:<32} {:<8} {:<6} {:<6} {}\n",
        "ID", "ADDRESS", "ROLE", "TERM", "LAG", "LAST-CONTACT"
    );
    for m in members {
        let role = match m.role {
            Role::Leader => "leader",
            Role::Voter => "voter",
            Role::Learner => "learner",
        };
        let opt =
            |v: Option<u64>, unit: &str| v.map_or("<unknown>".into(), |v| format!("{v}{unit}"));
        out.push_str(&format!(
            "{:<4} {:<32} {:<8} {:<6} {:<6} {}\n",
            m.id,
            m.addr,
            role,
            m.term,
            opt(m.lag, ""),
            opt(m.last_contact_ms, "ms")
        ));
    }
    out
}
