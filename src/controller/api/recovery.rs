//! Recovering a forgotten password by mail (S33), with the SMTP settings kept in the
//! database and changed through `PATCH /settings` (S94).
//!
//! 1. `POST /auth/recover {username}` answers 202 whether or not the account exists or has
//!    an address, so it tells nobody which names exist; it counts against the login
//!    throttle of the caller's address. For a user with an address, a random token is
//!    made, its SHA-256 digest stored with a 30-minute expiry (replacing any earlier
//!    link), and the link (`smtp.reset_url` followed by the token, or the token alone) is
//!    mailed in the background, so the answer's timing says nothing either.
//! 2. `POST /auth/reset {token, password}` takes the link (it works once, expired or
//!    not), sets the new password and revokes every token of the user.
//!
//! Without SMTP settings (`host` empty) recovery is off and answers 403 saying so: an
//! administrator resets the password instead (`PATCH /users/{id}`). Not a 5xx: nothing
//! failed, the cloud's policy is that recovery goes through an administrator.

use poem::web::{Data, RemoteAddr};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::error::{ApiResult, Error};
use super::AppState;
use crate::controller::auth::{hash_password_blocking, token_digest};
use crate::model::now_ms;

/// How long a reset link works.
const RESET_MINUTES: i64 = 30;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP (a relay on the same host or network only).
    None,
    /// STARTTLS, usually on port 587.
    #[default]
    Starttls,
    /// TLS from the first byte, usually on port 465.
    Tls,
}

/// The SMTP settings as stored (the password included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub reset_url: Option<String>,
}

impl Default for Smtp {
    /// Mail off; the submission port with STARTTLS once a host is set.
    fn default() -> Self {
        Smtp {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: String::new(),
            reset_url: None,
        }
    }
}

/// The SMTP settings as shown: never the password.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SmtpView {
    /// Empty: mail is off (no password recovery).
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    /// Whether a password is stored (it is never shown).
    pub password_set: bool,
    /// The sender address.
    pub from: String,
    /// What a reset mail links to, followed by the token; absent: the token alone.
    pub reset_url: Option<String>,
}

/// New SMTP settings. Every field but `password` replaces the stored one; a left-out
/// password keeps the stored one, an empty one removes it.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct SmtpChange {
    /// Empty: mail off.
    pub host: String,
    /// Default 587.
    pub port: Option<u16>,
    pub security: Option<SmtpSecurity>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender address (required with a host).
    pub from: Option<String>,
    pub reset_url: Option<String>,
}

/// The stored SMTP settings, the password opened.
pub async fn load_smtp(state: &AppState) -> Result<Smtp, Error> {
    let mut s: Smtp = state.store.setting("smtp").await?;
    if let Some(p) = &s.password {
        s.password = Some(
            state
                .sealer
                .open(p)
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        );
    }
    Ok(s)
}

/// Stores the SMTP settings, the password sealed.
pub async fn save_smtp(state: &AppState, s: &Smtp) -> Result<(), Error> {
    let mut stored = s.clone();
    if let Some(p) = s.password.as_deref().filter(|p| !p.is_empty()) {
        stored.password = Some(
            state
                .sealer
                .seal(p)
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        );
    }
    state.store.set_setting("smtp", &stored).await?;
    Ok(())
}

/// At start: an SMTP password stored in clear (before sealing) is sealed.
pub async fn seal_stored_secrets(
    store: &crate::controller::store::Store,
    sealer: &crate::controller::sealed::Sealer,
) -> Result<(), crate::controller::ControllerError> {
    let mut s: Smtp = store.setting("smtp").await?;
    let Some(p) = s.password.clone().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    if crate::controller::sealed::Sealer::is_sealed(&p) {
        return Ok(());
    }
    s.password = Some(sealer.seal(&p)?);
    store.set_setting("smtp", &s).await?;
    tracing::info!("sealed the SMTP password stored in clear");
    Ok(())
}

impl Smtp {
    pub fn view(&self) -> SmtpView {
        SmtpView {
            host: self.host.clone(),
            port: self.port,
            security: self.security,
            username: self.username.clone(),
            password_set: self.password.as_deref().is_some_and(|p| !p.is_empty()),
            from: self.from.clone(),
            reset_url: self.reset_url.clone(),
        }
    }

    /// The stored settings after `c`, checked.
    pub fn changed(&self, c: SmtpChange) -> Result<Smtp, Error> {
        let from = c.from.unwrap_or_default();
        if !c.host.is_empty() {
            if from.parse::<lettre::Address>().is_err() {
                return Err(Error::BadRequest(format!(
                    "smtp.from {from:?} is not a mail address; e.g. corral@example.com"
                )));
            }
            if c.host.contains(|ch: char| ch.is_whitespace() || ch == '/') {
                return Err(Error::BadRequest(format!(
                    "smtp.host {:?} is not a host name",
                    c.host
                )));
            }
        }
        if let Some(u) = &c.reset_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(Error::BadRequest(format!(
                    "smtp.reset_url {u:?} must start with https:// (or http://)"
                )));
            }
        }
        Ok(Smtp {
            host: c.host,
            port: c.port.unwrap_or(587),
            security: c.security.unwrap_or_default(),
            username: c.username.filter(|u| !u.is_empty()),
            password: match c.password {
                Some(p) if p.is_empty() => None,
                Some(p) => Some(p),
                None => self.password.clone(),
            },
            from,
            reset_url: c.reset_url,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail address: {0}")]
    Address(#[from] lettre::address::AddressError),
    #[error("building the mail: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// Sends one plain-text mail through the configured server.
pub async fn send(smtp: &Smtp, to: &str, subject: &str, text: String) -> Result<(), MailError> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let message = Message::builder()
        .from(smtp.from.parse()?)
        .to(to.parse()?)
        .subject(subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(text)?;
    let builder = match smtp.security {
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
    };
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(std::time::Duration::from_secs(20)));
    if let Some(user) = &smtp.username {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            smtp.password.clone().unwrap_or_default(),
        ));
    }
    builder.build().send(message).await?;
    Ok(())
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct RecoverRequest {
    #[oai(validator(max_length = 64))]
    pub username: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ResetRequest {
    /// The token from the mailed link.
    pub token: String,
    /// The new password (at least 8 characters).
    pub password: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct RecoverAccepted {
    pub message: String,
}

#[derive(ApiResponse)]
pub enum Recovering {
    /// Accepted: a link goes out if the account exists and has a mail address.
    #[oai(status = 202)]
    Accepted(Json<RecoverAccepted>),
}

#[derive(ApiResponse)]
pub enum Reset {
    /// The password is changed; every token of the user is revoked.
    #[oai(status = 204)]
    Done,
}

pub struct RecoveryApi;

#[OpenApi(tag = "super::system::Tag::Auth")]
impl RecoveryApi {
    /// Ask for a password-reset link by mail. The answer is the same whether or not the
    /// account exists; 403 when the cloud has no mail settings (recovery is off).
    #[oai(path = "/auth/recover", method = "post", operation_id = "auth_recover")]
    async fn recover(
        &self,
        state: Data<&AppState>,
        remote: &RemoteAddr,
        body: Json<RecoverRequest>,
    ) -> ApiResult<Recovering> {
        super::auth::admit(&state, &body.username, remote)?;
        let smtp = load_smtp(&state).await?;
        if smtp.host.is_empty() {
            return Err(Error::Forbidden(
                "password recovery is off: this cloud has no mail settings; ask an administrator to reset the password"
                    .into(),
            )
            .into());
        }
        if let Some(user) = state.store.user_by_name(&body.username).await? {
            if let Some(to) = state.store.user_email(&user.id).await? {
                let token = crate::controller::auth::new_token();
                state
                    .store
                    .add_reset(
                        &token_digest(&token),
                        &user.id,
                        now_ms() + RESET_MINUTES * 60_000,
                    )
                    .await?;
                let link = format!("{}{token}", smtp.reset_url.clone().unwrap_or_default());
                let text = format!(
                    "Someone asked to reset the corral password of {}.\n\n\
                     To choose a new one, open this link within {RESET_MINUTES} minutes \
                     (it works once):\n\n{link}\n\n\
                     Or send the token with POST /api/v1/auth/reset.\n\n\
                     If it was not you, ignore this mail: the password stays as it is.\n",
                    user.name
                );
                let name = user.name.clone();
                tokio::spawn(async move {
                    match send(&smtp, &to, "corral: reset your password", text).await {
                        Ok(()) => tracing::info!(user = %name, "password reset link mailed"),
                        Err(e) => tracing::warn!(user = %name, "password reset mail: {e}"),
                    }
                });
            }
        }
        Ok(Recovering::Accepted(Json(RecoverAccepted {
            message: "if the account exists and has a mail address, a reset link is on its way"
                .into(),
        })))
    }

    /// Choose a new password with the token of a mailed link; the link works once.
    #[oai(path = "/auth/reset", method = "post", operation_id = "auth_reset")]
    async fn reset(&self, state: Data<&AppState>, body: Json<ResetRequest>) -> ApiResult<Reset> {
        let ResetRequest { token, password } = body.0;
        super::users::check_password(&password)?;
        let Some(user) = state
            .store
            .take_reset(&token_digest(token.trim()), now_ms())
            .await?
        else {
            return Err(Error::BadRequest(
                "this reset link is unknown, used or expired; ask for a new one".into(),
            )
            .into());
        };
        let hash = hash_password_blocking(password)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        state.store.update_user(&user, None, Some(&hash)).await?;
        state.store.revoke_all_tokens(&user).await?;
        Ok(Reset::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(host: &str, from: Option<&str>) -> SmtpChange {
        SmtpChange {
            host: host.into(),
            port: None,
            security: None,
            username: None,
            password: None,
            from: from.map(String::from),
            reset_url: None,
        }
    }

    #[test]
    fn smtp_settings_are_checked_and_the_password_kept_unless_replaced() {
        let stored = Smtp {
            password: Some("secret".into()),
            ..Smtp::default()
        };
        assert!(stored
            .changed(change("mail.example.com", Some("nope")))
            .is_err());
        assert!(stored
            .changed(change("bad host", Some("a@b.example")))
            .is_err());
        let s = stored
            .changed(change("mail.example.com", Some("corral@example.com")))
            .unwrap_or_default();
        assert_eq!(s.port, 587);
        assert_eq!(s.password.as_deref(), Some("secret"), "left out: kept");
        assert!(s.view().password_set);
        let mut c = change("mail.example.com", Some("corral@example.com"));
        c.password = Some(String::new());
        let s = stored.changed(c).unwrap_or_default();
        assert!(!s.view().password_set, "empty: removed");
        let mut c = change("", None);
        c.reset_url = Some("javascript:alert(1)".into());
        assert!(stored.changed(c).is_err());
    }
}
