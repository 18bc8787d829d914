//! Who may see and do what: the one place the API's handlers ask.
//!
//! Roles (see `store::Role`): administrators do everything; operators see and act on
//! every guest, template, operation and boot job and read nodes and plugins; users see
//! and act on their own guests (and those guests' operations and boot jobs), their own
//! and public templates, and pools. Something a caller may not see answers exactly as if
//! it did not exist (404), so that others' guests do not leak through ids or names. An
//! action the caller's role does not allow at all answers 403 naming the role it needs.

use super::auth::Caller;
use super::error::Error;
use super::AppState;
use crate::controller::store::{GuestRow, OpRow, Role, ScriptRow, TemplateRow};
use crate::script::catalog::Kind;

/// The guest `id` (id or name) if the caller may see it; 404 otherwise.
pub async fn guest(state: &AppState, caller: &Caller, id: &str) -> Result<GuestRow, Error> {
    state
        .store
        .guest(id)
        .await?
        .filter(|g| sees_guest(caller, g))
        .ok_or_else(|| Error::not_found("guest", id))
}

pub fn sees_guest(caller: &Caller, g: &GuestRow) -> bool {
    caller.sees_all() || g.owner_id.as_deref() == Some(caller.id.as_str())
}

/// Whether the caller may see an operation: their own request, or about a guest of theirs.
pub async fn sees_op(state: &AppState, caller: &Caller, op: &OpRow) -> Result<bool, Error> {
    if caller.sees_all() || op.requested_by_id.as_deref() == Some(caller.id.as_str()) {
        return Ok(true);
    }
    match &op.guest_id {
        Some(g) => Ok(state
            .store
            .guest(g)
            .await?
            .is_some_and(|g| sees_guest(caller, &g))),
        None => Ok(false),
    }
}

/// The operation `id` if the caller may see it; 404 otherwise.
pub async fn op(state: &AppState, caller: &Caller, id: &str) -> Result<OpRow, Error> {
    match state.store.op(id).await? {
        Some(op) if sees_op(state, caller, &op).await? => Ok(op),
        _ => Err(Error::not_found("operation", id)),
    }
}

pub fn sees_template(caller: &Caller, t: &TemplateRow) -> bool {
    caller.sees_all() || t.public || t.owner_id.as_deref() == Some(caller.id.as_str())
}

/// Whether the caller may change or delete a template: its owner, or an administrator or
/// operator.
pub fn owns_template(caller: &Caller, t: &TemplateRow) -> bool {
    caller.sees_all() || t.owner_id.as_deref() == Some(caller.id.as_str())
}

/// Administrators only: 403 naming what needed it.
pub fn admin(caller: &Caller, what: &str) -> Result<(), Error> {
    if caller.role() == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{what} needs an administrator")))
    }
}

/// Administrators and operators: 403 naming what needed it.
pub fn operator(caller: &Caller, what: &str) -> Result<(), Error> {
    if caller.sees_all() {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "{what} needs an operator or an administrator"
        )))
    }
}

/// Whether the caller may see a script: every profile (they shape every guest, and hold no
/// one's secrets); a boot script when it is published, theirs, or they see everything.
pub fn sees_script(caller: &Caller, r: &ScriptRow) -> bool {
    r.kind == Kind::Profile.as_str()
        || r.public
        || caller.sees_all()
        || r.owner_id.as_deref() == Some(caller.id.as_str())
}

/// Whether the caller sees corral's own (shipped) scripts of `kind` and the jobs they
/// run: every profile; system boot jobs only for administrators who ask (S21).
pub fn sees_system(caller: &Caller, kind: Kind, asked: bool) -> bool {
    kind == Kind::Profile || (caller.role() == Role::Admin && asked)
}

/// Whether the caller may see a system boot job at all (administrators).
pub fn sees_system_jobs(caller: &Caller) -> bool {
    caller.role() == Role::Admin
}

/// Who may write a script. Profiles run as root in every guest of the templates that use
/// them: administrators write them. A boot script runs only where it is queued: its
/// author (by user id: a later user with the same name is someone else) or an
/// administrator changes it. `owner`: None for a new script.
pub fn may_write_script(
    caller: &Caller,
    kind: Kind,
    owner: Option<Option<&str>>,
) -> Result<(), Error> {
    let ok = caller.role() == Role::Admin
        || (kind == Kind::Boot && owner.is_none_or(|o| o == Some(caller.id.as_str())));
    if ok {
        return Ok(());
    }
    let (who, what) = match kind {
        Kind::Boot => (" or the script's author", "boot script"),
        Kind::Profile => ("", "OS-init profile"),
    };
    Err(Error::Forbidden(format!(
        "only an administrator{who} may change this {what}"
    )))
}

/// The key a cached list page is kept under for this caller's view.
pub fn view_key(caller: &Caller) -> String {
    match caller.owner_scope() {
        None => "all".into(),
        Some(id) => format!("owner:{id}"),
    }
}
