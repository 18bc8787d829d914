//! `corral token …`: your named API tokens (for scripts and CI).

use clap::Subcommand;
use corral_client::apis::auth_api;
use corral_client::models::{NewToken, TokenScope};

use super::output::{age, emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; its value is printed once.
    Create {
        name: String,
        /// Lifetime, e.g. 3600s, 90m, 12h, 30d (default: never expires).
        #[arg(long)]
        expires_in: Option<String>,
        /// `metrics`: a scrape-only token for Prometheus (`/metrics`, nothing else).
        #[arg(long, value_parser = ["api", "metrics"], default_value = "api")]
        scope: String,
    },
    /// Your tokens (never their values).
    List,
    /// Revoke tokens by id; they stop working at once.
    Revoke {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `90m`, `12h`, `30d`, `3600s` or a bare number of seconds.
fn parse_secs(s: &str) -> Result<u64, CliError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| CliError::Usage(format!("bad lifetime {s:?}: write e.g. 90m, 12h or 30d")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(CliError::Usage(format!(
                "bad lifetime unit in {s:?}: use s, m, h or d"
            )))
        }
    };
    Ok(n * mult)
}

impl Client {
    pub async fn token(&self, cmd: TokenCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            TokenCmd::Create {
                name,
                expires_in,
                scope,
            } => {
                let mut t = NewToken::new(name);
                t.scope = Some(if scope == "metrics" {
                    TokenScope::Metrics
                } else {
                    TokenScope::Api
                });
                t.expires_in_secs = expires_in.as_deref().map(parse_secs).transpose()?;
                let created = auth_api::token_create(c, t).await?;
                if self.out == super::Output::Table {
                    eprintln!("token (shown once; corral keeps only its digest):");
                    println!("{}", created.token);
                } else {
                    emit_record(self.out, &created);
                }
            }
            TokenCmd::List => {
                let list = auth_api::token_list(c).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["id", "name", "age", "expires", "current"]);
                    for x in &list {
                        t.row(vec![
                            x.id.clone(),
                            x.name.clone(),
                            age(&x.created_at),
                            opt(&x.expires_at),
                            if x.current { "yes" } else { "" }.into(),
                        ]);
                    }
                    t
                });
            }
            TokenCmd::Revoke { ids } => {
                let (_, all) = self
                    .each(&ids, |id| async move {
                        auth_api::token_revoke(c, &id).await?;
                        eprintln!("{id} revoked");
                        Ok(())
                    })
                    .await;
                return Ok(all);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_secs("90m").unwrap(), 5400);
        assert_eq!(parse_secs("12h").unwrap(), 43_200);
        assert_eq!(parse_secs("30d").unwrap(), 2_592_000);
        assert_eq!(parse_secs("10").unwrap(), 10);
        assert!(parse_secs("1w").is_err());
        assert!(parse_secs("h").is_err());
    }
}
