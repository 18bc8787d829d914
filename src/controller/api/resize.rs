//! Resizing a guest (S75): `PUT /guests/{id}/size` runs `guest.resize` (see
//! `saga::kinds::resize`): any size on a guest that is shut off, within its maxima on
//! one that runs. Its node's capacity is checked again by the operation, and a refusal
//! names the node and the reason.

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
        let b = body.0;
        let (old_max_cpus, old_max_memory) = (g.max_cpus(), g.max_memory_mib());
        let cpus = b.cpus.unwrap_or(g.cpus as u32);
        let memory_mib = b.memory_mib.unwrap_or(g.memory_mib as u32);
        // An unchanged maximum follows a size that outgrows it.
        let max_cpus = b.max_cpus.unwrap_or(old_max_cpus.max(cpus));
        let max_memory_mib = b.max_memory_mib.unwrap_or(old_max_memory.max(memory_mib));
        check_maxima(cpus, memory_mib, Some(max_cpus), Some(max_memory_mib))?;
        // Less memory than its image needs would starve the guest, live or not.
        if let Some(t) = state.store.template(&g.template_id).await? {
            let floor = t.min_memory_mib.max(64);
            if i64::from(memory_mib) < floor {
                return Err(Error::Unprocessable(format!(
                    "memory_mib {memory_mib} is below the minimum of template {} ({floor} MiB)",
                    t.name
                ))
                .into());
            }
        }
        let unchanged = cpus == g.cpus as u32
            && memory_mib == g.memory_mib as u32
            && max_cpus == old_max_cpus
            && max_memory_mib == old_max_memory;
        if unchanged {
            return Err(Error::BadRequest(format!(
                "guest {} already has {cpus} vCPUs and {memory_mib} MiB (at most {max_cpus} and \
                 {max_memory_mib} MiB): give another size",
                g.name
            ))
            .into());
        }
        let maxima_change = max_cpus != old_max_cpus || max_memory_mib != old_max_memory;
        match g.state {
            _ if g.node_id.is_none() => return Err(conflict(&g, "has no node yet")),
            GuestState::Shutoff => {}
            GuestState::Running if maxima_change => {
                return Err(conflict(
                    &g,
                    &format!(
                        "runs: it can change live up to {old_max_cpus} vCPUs and \
                         {old_max_memory} MiB; shut it down to go beyond that or to change \
                         the maximum"
                    ),
                ))
            }
            GuestState::Running if cpus != g.cpus as u32 => {
                let node = g.node_id.as_deref().unwrap_or_default();
                let tcg = state
                    .store
                    .node(node)
                    .await?
                    .is_some_and(|n| n.node_facts().domain_type == "qemu");
                if tcg {
                    return Err(conflict(
                        &g,
                        &format!("runs on node {node}, {}", crate::model::TCG_VCPUS),
                    ));
                }
            }
            GuestState::Running => {}
            other => {
                return Err(conflict(
                    &g,
                    &format!(
                        "is {other}: it resizes while it runs (within its maxima) or is shut off"
                    ),
                ))
            }
        }
        let req = Request::GuestResize(resize::Payload {
            cpus,
            memory_mib,
            old_cpus: g.cpus as u32,
            old_memory_mib: g.memory_mib as u32,
            max_cpus,
            max_memory_mib,
            old_max_cpus,
            old_max_memory_mib: old_max_memory,
        });
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }
}

fn conflict(g: &GuestRow, why: &str) -> ApiError {
    Error::Conflict {
        message: format!("guest {} {why}", g.name),
        details: None,
    }
    .into()
}
