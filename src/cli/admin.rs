//! `corral audit` and `corral settings …`: the audit trail, retention and mail settings
//! (administrators).

use clap::{Args, Subcommand};
use corral_client::apis::system_api;
use corral_client::models::{Retention, SettingsChange, SmtpChange, SmtpSecurity};

use super::output::{age, emit, emit_record, opt, Table};
use super::{CliError, Client};

/// Filters of `corral audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A user's name or id.
    #[arg(long)]
    user: Option<String>,
    /// The object acted on (a guest's id, ...).
    #[arg(long)]
    object: Option<String>,
    /// The API operation, e.g. guest_delete.
    #[arg(long)]
    action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// How many entries, newest first (1–1000).
    #[arg(long, default_value_t = 50)]
    limit: u64,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCmd {
    /// The settings (the SMTP password is never shown).
    Show,
    /// How long records are kept, in days (0: for ever).
    Retention {
        #[arg(long)]
        audit_days: u32,
        #[arg(long)]
        operations_days: u32,
        #[arg(long)]
        events_days: u32,
        /// Raw metric samples, hours (default 24).
        #[arg(long)]
        metrics_raw_hours: Option<u32>,
        /// Metric history (5-minute averages and maxima), days (default 15).
        #[arg(long)]
        metrics_days: Option<u32>,
    },
    /// The mail server for password recovery; `--host ''` turns mail off.
    Smtp {
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: Option<u16>,
        /// none, starttls (default) or tls.
        #[arg(long)]
        security: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// Read from CORRAL_SMTP_PASSWORD rather than the command line, when set.
        #[arg(long)]
        password: Option<String>,
        /// The sender address.
        #[arg(long)]
        from: Option<String>,
        /// What a reset mail links to, followed by the token.
        #[arg(long)]
        reset_url: Option<String>,
    },
    /// Purge now what the retention settings let go.
    Purge,
}

impl Client {
    pub async fn audit(&self, a: AuditArgs) -> Result<bool, CliError> {
        let list = system_api::audit_list(
            self.config(),
            a.user.as_deref(),
            a.object.as_deref(),
            a.action.as_deref(),
            a.since.as_deref(),
            None,
            Some(a.limit),
        )
        .await?;
        emit(self.out, &list, || {
            let mut t = Table::new(&["age", "user", "address", "action", "object", "status"]);
            for e in &list {
                t.row(vec![
                    age(&e.at),
                    opt(&e.user),
                    e.address.clone(),
                    e.action.clone(),
                    opt(&e.object),
                    e.status.to_string(),
                ]);
            }
            t
        });
        Ok(true)
    }

    pub async fn settings(&self, cmd: SettingsCmd) -> Result<bool, CliError> {
        let c = self.config();
        let mut change = SettingsChange::new();
        match cmd {
            SettingsCmd::Show => {
                emit_record(self.out, &system_api::settings_get(c).await?);
                return Ok(true);
            }
            SettingsCmd::Purge => {
                emit_record(self.out, &system_api::settings_purge(c).await?);
                return Ok(true);
            }
            SettingsCmd::Retention {
                audit_days,
                operations_days,
                events_days,
                metrics_raw_hours,
                metrics_days,
            } => {
                let mut r = Retention::new(audit_days, events_days, operations_days);
                r.metrics_raw_hours = metrics_raw_hours;
                r.metrics_days = metrics_days;
                change.retention = Some(Box::new(r));
            }
            SettingsCmd::Smtp {
                host,
                port,
                security,
                username,
                password,
                from,
                reset_url,
            } => {
                let mut s = SmtpChange::new(host);
                s.port = port;
                s.security = security
                    .map(|v| {
                        serde_json::from_value::<SmtpSecurity>(serde_json::Value::String(v.clone()))
                            .map_err(|_| {
                                CliError::Usage(format!(
                                    "--security {v:?}: use none, starttls or tls"
                                ))
                            })
                    })
                    .transpose()?;
                s.username = username;
                s.password = std::env::var("CORRAL_SMTP_PASSWORD").ok().or(password);
                s.from = from;
                s.reset_url = reset_url;
                change.smtp = Some(Box::new(s));
            }
        }
        emit_record(self.out, &system_api::settings_update(c, change).await?);
        Ok(true)
    }
}
