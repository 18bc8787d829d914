//! What a guest's init plan is computed from: its OS-init profile's source (shipped or
//! stored) and the facts the profile sees, built from the guest's record, its pool and
//! its template.
//!
//! The controller only gathers this [`InitInput`]; the node runs the profile where the
//! plan is needed (the seed build, the agent delivery, a seed rebuild after a hostname or
//! IP change). A profile thus never runs inside the controller's write transaction, and
//! its cost lands on the node doing the work. The input is taken from the current record
//! at each dispatch, so a re-run step produces the same seed as the first run.

use super::steps::StepError;
use crate::controller::store::{self as st, GuestRow, Tx};
use crate::model::InitInput;
use crate::script::catalog::{self, Kind};
use crate::script::guest::{GuestFacts, TemplateFacts};
use crate::script::hostapi::netmask;

/// The source of a shipped or stored script.
pub async fn script_source(
    tx: &mut Tx<'_>,
    kind: Kind,
    name: &str,
) -> Result<Option<String>, StepError> {
    if let Some(s) = catalog::shipped(kind, name) {
        return Ok(Some(s.to_string()));
    }
    Ok(st::script_in(tx, kind.as_str(), name)
        .await?
        .map(|r| r.source))
}

pub fn profile_of(g: &GuestRow) -> String {
    g.os_init_profile
        .clone()
        .unwrap_or_else(|| catalog::default_profile(&g.os_type).to_string())
}

/// What a script knows about `g`; `ip` overrides the recorded address (an IP change).
pub async fn guest_facts(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    ip: Option<(&str, &str)>,
) -> Result<GuestFacts, StepError> {
    let (ip, pool_id) = match ip {
        Some((ip, pool)) => (Some(ip.to_string()), Some(pool.to_string())),
        None => (g.ip.clone(), g.pool_id.clone()),
    };
    let mut f = GuestFacts {
        id: g.id.clone(),
        name: g.name.clone(),
        hostname: g.hostname.clone(),
        os_type: g.os_type.clone(),
        profile: profile_of(g),
        mac: g.mac.clone(),
        user: if g.os_type == "windows" {
            "Administrator".into()
        } else {
            "root".into()
        },
        template: TemplateFacts {
            name: String::new(),
            path: g.template_path.clone(),
            os_type: g.os_type.clone(),
        },
        ..GuestFacts::default()
    };
    let secrets = g.secrets();
    f.password_hash = secrets.password_hash;
    f.ssh_keys = secrets.ssh_keys;
    if let Some(name) = st::template_name_in(tx, &g.template_id).await? {
        f.template.name = name;
    }
    if let (Some(ip), Some(pool_id)) = (ip, pool_id) {
        let pool = st::pool_in(tx, &pool_id)
            .await?
            .ok_or_else(|| StepError::Permanent(format!("IP pool {pool_id} vanished")))?;
        let prefix: i64 = pool
            .cidr
            .split('/')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| StepError::Permanent(format!("pool {} has a bad cidr", pool.name)))?;
        f.address = Some(format!("{ip}/{prefix}"));
        f.ip = Some(ip);
        f.prefix = Some(prefix);
        f.netmask = Some(netmask(prefix));
        f.gateway = pool.gateway.clone();
        f.dns = pool.dns_list();
    }
    Ok(f)
}

/// The input of `g`'s init plan; `ip` overrides the recorded address (an IP change).
pub async fn init_input(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    ip: Option<(&str, &str)>,
) -> Result<InitInput, StepError> {
    let profile = profile_of(g);
    let source = script_source(tx, Kind::Profile, &profile)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("OS-init profile {profile} does not exist")))?;
    Ok(InitInput {
        facts: guest_facts(tx, g, ip).await?,
        profile,
        source,
    })
}
