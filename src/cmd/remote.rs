//! `kubectl snapshot remote add|list|remove`: named remotes in the user's config file (never credentials).

use anyhow::{Result, bail};
use backends::url::RemoteUrl;

use super::Output;
use super::print_structured;
use crate::settings::{Config, RemoteConfig, config_path};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add (or replace) a named remote.
    Add(Box<AddArgs>),
    /// List named remotes.
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Remove a named remote.
    #[command(visible_alias = "rm")]
    Remove { name: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Name of the remote (letters, digits, '.', '_', '-').
    pub name: String,
    /// s3://BUCKET/FOLDER, oci://REGISTRY/REPOSITORY, file:///PATH or a directory.
    pub url: String,
    /// Make it the default remote (push, pull, and restore of snapshots that are not local).
    #[arg(long)]
    pub default: bool,
    #[command(flatten)]
    pub settings: crate::settings::RemoteSettings,
    /// Refused: credentials are never stored (use AWS_* variables or --s3-profile).
    #[arg(long, hide = true)]
    pub s3_access_key: Option<String>,
    #[arg(long, hide = true)]
    pub s3_secret_key: Option<String>,
    #[arg(long, hide = true)]
    pub s3_session_token: Option<String>,
}

pub async fn run(args: Args) -> Result<()> {
    let mut config = Config::load()?;
    match args.command {
        Command::Add(a) => {
            let a = *a;
            if a.s3_access_key.is_some() || a.s3_secret_key.is_some() || a.s3_session_token.is_some() {
                bail!(
                    "credentials are never stored in the config: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or name an AWS profile with --s3-profile"
                );
            }
            backends::SnapshotName::new(&a.name).map_err(|e| anyhow::anyhow!("remote name: {e}"))?;
            let url = RemoteUrl::parse(&a.url)?;
            if let Some(e) = &a.settings.endpoint {
                backends::url::refuse_credentials(e, "--s3-endpoint")?;
            }
            let url = match url {
                RemoteUrl::Dir(p) => std::path::absolute(&p).unwrap_or(p).display().to_string(),
                other => other.to_string(),
            };
            let entry = RemoteConfig { url, ..a.settings };
            config.remotes.insert(a.name.clone(), entry);
            if a.default || config.default_remote.is_none() {
                config.default_remote = Some(a.name.clone());
            }
            let path = config.save()?;
            crate::util::out!(
                "Added remote {:?}{} ({})",
                a.name,
                if config.default_remote.as_deref() == Some(&a.name) {
                    " (default)"
                } else {
                    ""
                },
                path.display()
            );
        }
        Command::List { output } => {
            if let Some(o) = output {
                return print_structured(&config, o);
            }
            if config.remotes.is_empty() {
                eprintln!(
                    "No remotes in {} (add one: kubectl snapshot remote add NAME URL)",
                    config_path()?.display()
                );
                return Ok(());
            }
            let mut rows = vec![vec!["NAME".to_string(), "URL".into(), "DEFAULT".into()]];
            for (name, r) in &config.remotes {
                rows.push(vec![
                    name.clone(),
                    r.url.clone(),
                    if config.default_remote.as_deref() == Some(name) {
                        "*".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            super::list::print_table(&rows)?;
        }
        Command::Remove { name } => {
            if config.remotes.remove(&name).is_none() {
                bail!("no remote named {name:?} (see `kubectl snapshot remote list`)");
            }
            if config.default_remote.as_deref() == Some(&name) {
                config.default_remote = None;
            }
            config.save()?;
            crate::util::out!("Removed remote {name:?}");
        }
    }
    Ok(())
}
