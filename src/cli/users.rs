//! `corral user …`: users and roles (administrators), and `corral user passwd` for yourself.
//! Passwords are read from the terminal's standard input, never from the command line
//! (where `ps` and shell history would keep them).

use std::io::BufRead;

use clap::Subcommand;
use corral_client::apis::users_api;
use corral_client::models::{NewUser, PasswordChange, UserChange, UserRole};

use super::output::{age, emit, emit_record, opt, Table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Every user (administrators).
    List,
    /// Yourself.
    Me,
    /// Create a user; the password is read from standard input.
    Create {
        name: String,
        /// admin, operator or user.
        #[arg(long, default_value = "user")]
        role: String,
        /// Where password-reset links go.
        #[arg(long)]
        email: Option<String>,
    },
    /// Change a user's role (administrators).
    SetRole { user: String, role: String },
    /// Set a user's mail address for password recovery; '' removes it (administrators).
    SetEmail { user: String, email: String },
    /// Delete users and their tokens (administrators).
    #[command(alias = "remove")]
    Delete {
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Change your own password: the current one, then the new one, each on a line of
    /// standard input.
    Passwd,
}

fn role(s: &str) -> Result<UserRole, CliError> {
    match s {
        "admin" => Ok(UserRole::Admin),
        "operator" => Ok(UserRole::Operator),
        "user" => Ok(UserRole::User),
        _ => Err(CliError::Usage(format!(
            "role {s:?}: use admin, operator or user"
        ))),
    }
}

fn read_line(what: &str) -> Result<String, CliError> {
    eprintln!("{what}:");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("reading {what}: {e}")))?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        return Err(CliError::Usage(format!(
            "no {what} given on standard input"
        )));
    }
    Ok(line)
}

impl Client {
    pub async fn user(&self, cmd: UserCmd) -> Result<bool, CliError> {
        let c = self.config();
        match cmd {
            UserCmd::List => {
                let list = users_api::user_list(c).await?;
                emit(self.out, &list, || {
                    let mut t = Table::new(&["name", "role", "email", "id", "age"]);
                    for u in &list {
                        t.row(vec![
                            u.name.clone(),
                            serde_json::to_value(u.role)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default(),
                            opt(&u.email),
                            u.id.clone(),
                            age(&u.created_at),
                        ]);
                    }
                    t
                });
            }
            UserCmd::Me => emit_record(self.out, &users_api::user_me(c).await?),
            UserCmd::Create {
                name,
                role: r,
                email,
            } => {
                let r = role(&r)?;
                let password = read_line("password")?;
                let mut u = NewUser::new(name, password, r);
                u.email = email;
                emit_record(self.out, &users_api::user_create(c, u).await?);
            }
            UserCmd::SetEmail { user, email } => {
                let mut ch = UserChange::new();
                ch.email = Some(email);
                emit_record(self.out, &users_api::user_update(c, &user, ch).await?);
            }
            UserCmd::SetRole { user, role: r } => {
                let mut ch = UserChange::new();
                ch.role = Some(role(&r)?);
                emit_record(self.out, &users_api::user_update(c, &user, ch).await?);
            }
            UserCmd::Delete { users } => {
                let (_, all) = self
                    .each(&users, |u| async move {
                        users_api::user_delete(c, &u).await?;
                        eprintln!("user {u} deleted");
                        Ok(())
                    })
                    .await;
                return Ok(all);
            }
            UserCmd::Passwd => {
                let current = read_line("current password")?;
                let new = read_line("new password")?;
                users_api::user_change_password(c, PasswordChange::new(current, new)).await?;
                eprintln!("password changed");
            }
        }
        Ok(true)
    }
}
