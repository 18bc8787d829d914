//! Resizing a guest (S75): `PUT /guests/{id}/size` runs `guest.resize` (see
//! `saga::kinds::resize`): any size on a guest that is shut off, within its maxima on
//! one that runs. Its node's capacity is checked again by the operation, and a refusal
//! names the node and the reason.
//!
//! The handler works out the whole size asked for (`wanted`: a field left out keeps the
//! guest's value), then checks it in this order, each refusal ending the request: the
//! maxima hold the size, the memory reaches the template's floor, something changes,
//! and the guest's state allows it (`check_state`).

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::access;
use super::error::{ApiError, ApiResult, Error};
use super::guests::{check_maxima, submit, OpResponse};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{resize, Request};
use crate::controller::store::GuestRow;
use crate::controller::store::Requester;
use crate::model::GuestState;

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct GuestSize {
    #[oai(validator(minimum(value = "1"), maximum(value = "256")))]
    pub cpus: Option<u32>,
    #[oai(validator(minimum(value = "32"), maximum(value = "1048576")))]
    pub memory_mib: Option<u32>,
    /// The ceiling for live growth (vCPU hot-plug); only while the guest is shut off.
    #[oai(validator(minimum(value = "1"), maximum(value = "256")))]
    pub max_cpus: Option<u32>,
    /// The ceiling for live growth (balloon); only while the guest is shut off.
    #[oai(validator(minimum(value = "32"), maximum(value = "1048576")))]
    pub max_memory_mib: Option<u32>,
}

pub struct ResizeApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl ResizeApi {
    /// Change a guest's vCPUs and memory (any of the fields). Runs as `guest.resize`.
    ///
    /// A shut-off guest takes any size and new maxima, and boots with them. A running
    /// guest changes live within its maxima (`max_cpus`, `max_memory_mib`, set at
    /// creation): vCPUs are hot-plugged and onlined through its agent (on KVM; under TCG
    /// vCPUs change only while it is off), the balloon gives or takes memory. Beyond
    /// them, or to change them, shut it down first (409).
    #[oai(
        path = "/guests/:id/size",
        method = "put",
        operation_id = "guest_resize"
    )]
    async fn resize(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<GuestSize>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let size = wanted(&g, &body.0);
        check_maxima(
            size.cpus,
            size.memory_mib,
            Some(size.max_cpus),
            Some(size.max_memory_mib),
        )?;
        check_memory_floor(&state, &g, size.memory_mib).await?;
        check_changed(&g, &size)?;
        check_state(&state, &g, &size).await?;
        let req = Request::GuestResize(size);
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }
}

/// The size `b` asks of `g`, as the operation's payload: a field left out keeps the
/// guest's value.
fn wanted(g: &GuestRow, b: &GuestSize) -> resize::Payload {
    let (old_max_cpus, old_max_memory_mib) = (g.max_cpus(), g.max_memory_mib());
    let cpus = b.cpus.unwrap_or(g.cpus as u32);
    let memory_mib = b.memory_mib.unwrap_or(g.memory_mib as u32);
    resize::Payload {
        cpus,
        memory_mib,
        old_cpus: g.cpus as u32,
        old_memory_mib: g.memory_mib as u32,
        // An unchanged maximum follows a size that outgrows it.
        max_cpus: b.max_cpus.unwrap_or(old_max_cpus.max(cpus)),
        max_memory_mib: b
            .max_memory_mib
            .unwrap_or(old_max_memory_mib.max(memory_mib)),
        old_max_cpus,
        old_max_memory_mib,
    }
}

/// Less memory than its image needs would starve the guest, live or not: `memory_mib`
/// must reach its template's minimum (and 64 MiB in any case).
async fn check_memory_floor(state: &AppState, g: &GuestRow, memory_mib: u32) -> Result<(), Error> {
    if let Some(t) = state.store.template(&g.template_id).await? {
        let floor = t.min_memory_mib.max(64);
        if i64::from(memory_mib) < floor {
            return Err(Error::Unprocessable(format!(
                "memory_mib {memory_mib} is below the minimum of template {} ({floor} MiB)",
                t.name
            )));
        }
    }
    Ok(())
}

/// A resize that changes nothing is a client mistake (400), not an operation.
fn check_changed(g: &GuestRow, size: &resize::Payload) -> Result<(), Error> {
    let unchanged = size.cpus == size.old_cpus
        && size.memory_mib == size.old_memory_mib
        && size.max_cpus == size.old_max_cpus
        && size.max_memory_mib == size.old_max_memory_mib;
    if unchanged {
        let resize::Payload {
            cpus,
            memory_mib,
            max_cpus,
            max_memory_mib,
            ..
        } = size;
        return Err(Error::BadRequest(format!(
            "guest {} already has {cpus} vCPUs and {memory_mib} MiB (at most {max_cpus} and \
             {max_memory_mib} MiB): give another size",
            g.name
        )));
    }
    Ok(())
}

/// Whether `g` can take `size` in its state (409 when not): a guest on no node cannot;
/// a shut-off guest takes anything; a running one changes live only within its old
/// maxima, and its vCPUs only on KVM (under TCG they change only while it is off).
async fn check_state(state: &AppState, g: &GuestRow, size: &resize::Payload) -> ApiResult<()> {
    let maxima_change =
        size.max_cpus != size.old_max_cpus || size.max_memory_mib != size.old_max_memory_mib;
    match g.state {
        _ if g.node_id.is_none() => Err(conflict(g, "has no node yet")),
        GuestState::Shutoff => Ok(()),
        GuestState::Running if maxima_change => Err(conflict(
            g,
            &format!(
                "runs: it can change live up to {} vCPUs and {} MiB; shut it down to go \
                 beyond that or to change the maximum",
                size.old_max_cpus, size.old_max_memory_mib
            ),
        )),
        GuestState::Running if size.cpus != size.old_cpus => {
            let node = g.node_id.as_deref().unwrap_or_default();
            let tcg = state
                .store
                .node(node)
                .await?
                .is_some_and(|n| n.node_facts().domain_type == "qemu");
            if tcg {
                return Err(conflict(
                    g,
                    &format!("runs on node {node}, {}", crate::model::TCG_VCPUS),
                ));
            }
            Ok(())
        }
        GuestState::Running => Ok(()),
        other => Err(conflict(
            g,
            &format!("is {other}: it resizes while it runs (within its maxima) or is shut off"),
        )),
    }
}

fn conflict(g: &GuestRow, why: &str) -> ApiError {
    Error::Conflict {
        message: format!("guest {} {why}", g.name),
        details: None,
    }
    .into()
}
