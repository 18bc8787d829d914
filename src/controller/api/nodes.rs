//! Nodes: what they reported, whether they are alive, since when they are not (S36, S95).

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{access, AppState, Auth};
use crate::controller::saga::kinds::{node_remove, Request};
use crate::controller::store::Requester;
use crate::controller::store::{CleanupRow, NodeRow};
use crate::model::{now_ms, rfc3339, NodeAction};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Worker {
    pub name: String,
    pub state: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Node {
    /// From /etc/machine-id unless configured (S93).
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub online: bool,
    pub offline_since: Option<String>,
    pub offline_seconds: Option<i64>,
    /// Node clock of the last heartbeat.
    pub last_seen: String,
    /// Accepts automatically placed guests (S51).
    pub accept_auto: bool,
    /// `kvm` or `qemu` (TCG), S55.
    pub domain_type: String,
    pub cpu_model: String,
    /// The CPU has VT-x / AMD-V.
    pub cpu_virt: bool,
    pub cpus: u32,
    pub memory_mib: u64,
    pub free_memory_mib: u64,
    pub load1: f64,
    pub storage_dir: String,
    pub storage_total_mib: u64,
    pub storage_free_mib: u64,
    /// Where guests' NICs attach unless their pool names a network (S68).
    pub vm_network_bridge: String,
    /// Management network: VNC and migration (S68).
    pub vm_manage_network_bridge: String,
    /// Linux bridges present on the node.
    pub bridges: Vec<String>,
    pub hypervisor_uri: String,
    pub version: String,
    pub workers: Vec<Worker>,
    pub guests: u32,
    /// VNC ports this node hands out.
    pub vnc_port_min: Option<u16>,
    pub vnc_port_max: Option<u16>,
    /// Domains on the node that corral does not manage (S16, S17): never touched.
    pub foreign_domains: Vec<ForeignDomain>,
    /// What abandoned steps and failed undos left on the node: removed (by the guest's
    /// uuid or a recorded path) when the node is online, first thing after it returns,
    /// and retried by the janitor until it succeeds.
    pub cleanup: Vec<CleanupEntry>,
    /// What the node claims beyond what an administrator accepted: not used (placement
    /// and everything else see the accepted figures and directory) until accepted with
    /// `POST /nodes/{id}/capacity`. Absent when it claims nothing more.
    pub held: Option<HeldClaims>,
    /// Its fence command (HA, S74): the program (a file in the controller's fence
    /// directory) and its arguments. Absent: HA cannot restart its guests.
    pub fence_command: Option<Vec<String>>,
    /// When its fence was last confirmed.
    pub fenced_at: Option<String>,
}

/// A node's claims held back (each only where it claims more, or another directory).
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct HeldClaims {
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub storage_total_mib: Option<u64>,
    pub cpu_overcommit: Option<f64>,
    pub memory_overcommit: Option<f64>,
    pub storage_dir: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CleanupEntry {
    pub id: i64,
    /// The guest the object belonged to.
    pub guest_id: Option<String>,
    /// The operation that left it.
    pub operation_id: Option<String>,
    /// `destroy`, `undefine` (the guest's domain) or `remove_file`.
    pub action: String,
    /// The domain's uuid or the file's path.
    pub target: String,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
}

fn cleanup_entry(r: CleanupRow) -> CleanupEntry {
    let (action, target) = match r.node_action() {
        Ok(NodeAction::RemoveFile { path }) => ("remove_file".to_string(), path),
        Ok(NodeAction::Undefine { guest_id }) => ("undefine".to_string(), guest_id),
        Ok(NodeAction::Destroy { guest_id }) => ("destroy".to_string(), guest_id),
        Ok(other) => (other.name().to_string(), String::new()),
        Err(e) => ("unreadable".to_string(), e.to_string()),
    };
    CleanupEntry {
        id: r.id,
        guest_id: r.guest_id,
        operation_id: r.op_id,
        action,
        target,
        reason: r.reason,
        attempts: r.attempts,
        last_error: r.last_error,
        created_at: rfc3339(r.created_at),
    }
}

#[derive(Debug, Object, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct ForeignDomain {
    pub uuid: String,
    pub name: String,
    pub state: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NodeSettings {
    pub accept_auto: Option<bool>,
    /// Its fence command (HA, S74): a program in the controller's fence directory
    /// (`fence_dir`, default `/etc/corral/fence.d`) and its arguments, in which `{node}`
    /// and `{address}` stand for the node's id and management address. Exit status 0
    /// confirms the node is off. An empty list removes it. Keep passwords in the
    /// program, not in its arguments: administrators read them back.
    #[oai(validator(max_items = 32))]
    pub fence_command: Option<Vec<String>>,
}

/// Node `id` as the API shows it; 404 when there is none.
async fn node_view(state: &AppState, id: &str) -> Result<Node, Error> {
    let n = state
        .store
        .node(id)
        .await?
        .ok_or_else(|| Error::not_found("node", id))?;
    view(state, n).await
}

async fn view(state: &AppState, n: NodeRow) -> Result<Node, Error> {
    let f = n.node_facts();
    let guests = state.store.guest_count_on_node(&n.id).await? as u32;
    let foreign_domains = serde_json::from_str(&n.foreign_domains).unwrap_or_default();
    let cleanup = state
        .store
        .cleanup_of_node(&n.id)
        .await?
        .into_iter()
        .map(cleanup_entry)
        .collect();
    let held = state
        .store
        .node_claims(&n.id)
        .await?
        .map(|(_, h)| h)
        .filter(|h| !h.is_empty())
        .map(|h| HeldClaims {
            cpus: h.cpus,
            memory_mib: h.memory_mib,
            storage_total_mib: h.storage_total_mib,
            cpu_overcommit: h.cpu_overcommit,
            memory_overcommit: h.memory_overcommit,
            storage_dir: h.storage_dir,
        });
    let fence_command = n.fence();
    Ok(Node {
        cleanup,
        held,
        fence_command,
        fenced_at: n.fenced_at.map(rfc3339),
        vnc_port_min: f.vnc_ports.map(|p| p.0),
        vnc_port_max: f.vnc_ports.map(|p| p.1),
        foreign_domains,
        offline_seconds: n.offline_since.map(|s| (now_ms() - s) / 1000),
        offline_since: n.offline_since.map(rfc3339),
        last_seen: rfc3339(n.last_seen),
        id: n.id,
        hostname: n.hostname,
        address: f.address,
        online: n.online,
        accept_auto: n.accept_auto,
        domain_type: f.domain_type,
        cpu_model: f.cpu_model,
        cpu_virt: f.cpu_virt,
        cpus: f.cpus,
        memory_mib: f.memory_mib,
        free_memory_mib: f.free_memory_mib,
        load1: f.load1,
        storage_dir: f.storage_dir,
        storage_total_mib: f.storage_total_mib,
        storage_free_mib: f.storage_free_mib,
        vm_network_bridge: f.bridge,
        vm_manage_network_bridge: f.manage_bridge,
        bridges: f.bridges,
        hypervisor_uri: f.hypervisor_uri,
        version: f.version,
        workers: f
            .workers
            .into_iter()
            .map(|w| Worker {
                name: w.name,
                state: w.state,
            })
            .collect(),
        guests,
    })
}

#[derive(Debug, Clone, Copy, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum GuestRecords {
    /// Keep the guests' records and disks: they read `unknown` until the node returns.
    Keep,
    /// Delete the guests' records, disk records and leases with the node (S58).
    Delete,
}

/// A node to enroll.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct EnrollNode {
    /// The node's id: its configured `node_id`, else its `/etc/machine-id`. 1-64 letters,
    /// digits, `.`, `_` or `-`, starting with a letter or a digit.
    pub id: String,
}

/// A node's Redis credentials. The secret is shown once, here; corral keeps only its
/// SHA-256.
#[derive(Debug, Object)]
pub struct NodeCredential {
    pub node_id: String,
    /// The node's own Redis user: it may use only its own queue, event stream, fences
    /// and wake channel.
    pub redis_user: String,
    pub redis_password: String,
    /// The controller's Redis URL with these credentials: the node's `redis_url`
    /// (`CORRAL_REDIS_URL`). A node on another host may need another host part.
    pub redis_url: String,
}

#[derive(ApiResponse)]
pub enum CredentialIssued {
    #[oai(status = 201)]
    Created(Json<NodeCredential>),
}

#[derive(ApiResponse)]
pub enum Revoked {
    #[oai(status = 204)]
    Done,
}

fn issued(c: crate::controller::enroll::Credential) -> CredentialIssued {
    CredentialIssued::Created(Json(NodeCredential {
        node_id: c.node_id,
        redis_user: c.user,
        redis_password: c.secret,
        redis_url: c.redis_url,
    }))
}

pub struct NodeApi;

#[OpenApi(tag = "super::system::Tag::Nodes")]
impl NodeApi {
    /// All nodes that ever reported.
    #[oai(path = "/nodes", method = "get", operation_id = "node_list")]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// `true`: only live nodes (e.g. to choose a migration target, S09).
        online: poem_openapi::param::Query<Option<bool>>,
    ) -> ApiResult<Json<Vec<Node>>> {
        access::operator(&auth.0, "listing nodes")?;
        let mut out = Vec::new();
        for n in state.store.nodes().await? {
            if online.0.is_some_and(|o| o != n.online) {
                continue;
            }
            out.push(view(&state, n).await?);
        }
        Ok(Json(out))
    }

    #[oai(path = "/nodes/:id", method = "get", operation_id = "node_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Node>> {
        access::operator(&auth.0, "reading a node")?;
        Ok(Json(node_view(&state, &id).await?))
    }

    /// Remove a node (S35): allowed when it is offline, or online without guests. Say what
    /// happens to its guests' records: `keep` or `delete` (S58). Runs as an operation.
    #[oai(path = "/nodes/:id", method = "delete", operation_id = "node_remove")]
    async fn remove(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        guests: poem_openapi::param::Query<GuestRecords>,
    ) -> ApiResult<super::guests::OpResponse> {
        access::admin(&auth.0, "removing a node")?;
        let n = state
            .store
            .node(&id)
            .await?
            .ok_or_else(|| Error::not_found("node", id.0.clone()))?;
        let count = state.store.guest_count_on_node(&n.id).await?;
        if n.online && count > 0 {
            return Err(Error::Conflict {
                message: format!("node {} is online with {count} guest(s): delete or move them first, or stop the node", n.id),
                details: Some(serde_json::json!({"guests": count})),
            }
            .into());
        }
        let req = Request::NodeRemove(node_remove::Payload {
            delete_guests: matches!(guests.0, GuestRecords::Delete),
        });
        let mut tx = state.store.begin().await?;
        let op = super::operations::start_op(
            &state,
            &mut tx,
            &req,
            super::operations::Target::Node(&n.id),
            Requester::user(&auth.0.user),
            false,
        )
        .await?;
        state.store.commit(tx).await?;
        state.waker.wake(&op.id);
        Ok(super::guests::accepted(String::new(), &op.id))
    }

    /// Change node settings: accept automatically placed guests or not, and the fence
    /// command HA runs before it restarts the node's guests elsewhere.
    #[oai(path = "/nodes/:id", method = "patch", operation_id = "node_update")]
    async fn update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<NodeSettings>,
    ) -> ApiResult<Json<Node>> {
        access::admin(&auth.0, "changing a node's settings")?;
        if let Some(cmd) = &body.0.fence_command {
            if cmd.iter().any(|a| a.len() > 1024 || a.contains('\0')) {
                return Err(Error::BadRequest(
                    "fence_command: each argument is at most 1024 bytes, without NUL".into(),
                )
                .into());
            }
            if !cmd.is_empty() {
                state
                    .fencer
                    .program(cmd)
                    .map_err(|e| Error::BadRequest(format!("fence_command: {e}")))?;
            }
            let set = (!cmd.is_empty()).then_some(cmd.as_slice());
            if !state.store.set_node_fence(&id, set).await? {
                return Err(Error::not_found("node", id.0.clone()).into());
            }
        }
        if let Some(a) = body.0.accept_auto {
            if !state.store.set_node_accept_auto(&id, a).await? {
                return Err(Error::not_found("node", id.0.clone()).into());
            }
        }
        Ok(Json(node_view(&state, &id).await?))
    }

    /// Enroll a node: it gets its own Redis user and the controller starts reading its
    /// event stream. The answer holds the node's `redis_url`, secret included, shown this
    /// once.
    #[oai(path = "/nodes", method = "post", operation_id = "node_enroll")]
    async fn enroll(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<EnrollNode>,
    ) -> ApiResult<CredentialIssued> {
        access::admin(&auth.0, "enrolling a node")?;
        Ok(issued(
            state
                .enroller
                .enroll(&body.0.id, false)
                .await
                .map_err(Error::from)?,
        ))
    }

    /// Accept what a node claims now (its CPUs, memory, storage, over-commit ratios and
    /// disk-image directory) as its capacity (administrators only). Until then a claim
    /// beyond what was accepted (at its first heartbeat, or last time) is held and not
    /// used. A disk-image directory that would hold a template directory is never accepted.
    #[oai(
        path = "/nodes/:id/capacity",
        method = "post",
        operation_id = "node_accept_capacity"
    )]
    async fn accept_capacity(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Node>> {
        access::admin(&auth.0, "accepting a node's capacity")?;
        if !state
            .store
            .accept_node_claims(&id, &state.image_dirs)
            .await?
        {
            return Err(Error::not_found("node", id.0.clone()).into());
        }
        Ok(Json(node_view(&state, &id).await?))
    }

    /// Give an enrolled node a new Redis secret; the old one stops working at once. The
    /// node needs the new `redis_url` to report again.
    #[oai(
        path = "/nodes/:id/credential",
        method = "post",
        operation_id = "node_rotate_credential"
    )]
    async fn rotate(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<CredentialIssued> {
        access::admin(&auth.0, "rotating a node's credential")?;
        Ok(issued(
            state
                .enroller
                .enroll(&id, true)
                .await
                .map_err(Error::from)?,
        ))
    }

    /// Revoke a node's credential: Redis drops its user and connections within seconds,
    /// and the controller stops reading its stream. Its guests' records stay (the node
    /// reads offline); enroll it again to let it back.
    #[oai(
        path = "/nodes/:id/credential",
        method = "delete",
        operation_id = "node_revoke_credential"
    )]
    async fn revoke(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Revoked> {
        access::admin(&auth.0, "revoking a node's credential")?;
        state.enroller.revoke(&id).await.map_err(Error::from)?;
        Ok(Revoked::Done)
    }
}
