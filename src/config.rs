//! Configuration: one struct per role, read from an optional TOML file and then overridden
//! by `CORRAL_*` environment variables (the variable name is the field name in capitals,
//! e.g. `CORRAL_REDIS_URL`). Defaults are the single-machine setup of `corral up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("environment variable {name}: cannot parse {value:?}")]
    Env { name: String, value: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Where the HTTP API listens. Port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// SQLite database file.
    pub database: PathBuf,
    pub redis_url: String,
    /// `corral up` only: the local node, enrolled anew (a fresh secret) at every start.
    #[serde(skip)]
    pub local_node: Option<String>,
    /// Directory for the admin token file and other controller state.
    pub data_dir: PathBuf,
    /// A node missing heartbeats for this long is offline and its guests read "unknown".
    pub node_timeout_secs: u64,
    /// HA (S74): a node offline for this long after `node_timeout_secs` is fenced and
    /// its HA guests restarted elsewhere (`CORRAL_HA_AFTER_SECS`). It must outlast the
    /// nodes' `self_fence_secs`, so that a partitioned node has stopped its HA guests
    /// before they start elsewhere (a fence is required all the same).
    pub ha_after_secs: u64,
    /// The directory whose programs may fence nodes (`CORRAL_FENCE_DIR`): a node's fence
    /// command names one of them, so the API chooses among what the host's root put
    /// there and never runs anything else.
    pub fence_dir: PathBuf,
    /// How long a fence command may take before it counts as failed.
    pub fence_timeout_secs: u64,
    /// Node jobs in flight per node; the rest of the backlog waits in SQL (apalis-redis
    /// cannot hold thousands of due jobs in one queue).
    pub dispatch_window: usize,
    /// A dispatched node step with no result after this long is dispatched again (steps are
    /// idempotent); covers a Redis that lost its data.
    pub step_lease_secs: u64,
    /// How long the janitor waits before running a node's failed cleanup items again.
    pub janitor_secs: u64,
    /// How long a token from `POST /auth/login` works, hours.
    pub login_token_hours: u64,
    /// Directories template images may be registered from (`CORRAL_IMAGE_DIRS`, comma
    /// separated). A template path anywhere else is refused: otherwise any user could
    /// register another guest's disk as a template and boot a copy of it.
    pub image_dirs: Vec<PathBuf>,
    /// Transient node-step failures are retried this many times before the saga unwinds.
    pub step_max_attempts: u32,
    pub vnc_port_min: u16,
    pub vnc_port_max: u16,
    /// Placement refuses a node whose guests would use more than this share of its
    /// (over-committed) memory, in percent (S92).
    pub placement_max_memory_pct: f64,
    /// Placement refuses a node whose 1-minute load per core is above this (S92).
    pub placement_max_load_per_cpu: f64,
    /// Password of the `admin` user created at first start; generated and printed when unset.
    pub admin_password: Option<String>,
    /// Where plugins live, one directory each (`<dir>/<name>/plugin.toml`).
    pub plugins_dir: PathBuf,
    /// The plugins to run; the others are listed as disabled. Empty: none run.
    pub plugins: Vec<String>,
    /// Wall-clock limit of one script call (profiles, boot jobs, plugin hooks), ms.
    pub script_deadline_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8620)),
            database: PathBuf::from("/var/lib/corral/corral.db"),
            redis_url: "redis://127.0.0.1:6379/".into(),
            local_node: None,
            data_dir: PathBuf::from("/var/lib/corral"),
            node_timeout_secs: 10,
            ha_after_secs: 60,
            fence_dir: PathBuf::from("/etc/corral/fence.d"),
            fence_timeout_secs: 60,
            dispatch_window: 32,
            step_lease_secs: 120,
            janitor_secs: 30,
            login_token_hours: 12,
            image_dirs: vec![PathBuf::from(DEFAULT_IMAGE_DIR)],
            step_max_attempts: 3,
            vnc_port_min: 5900,
            vnc_port_max: 6899,
            placement_max_memory_pct: 90.0,
            placement_max_load_per_cpu: 4.0,
            admin_password: None,
            plugins_dir: PathBuf::from("/etc/corral/plugins"),
            plugins: Vec::new(),
            script_deadline_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node identity; defaults to /etc/machine-id (S93) so two nodes with the same
    /// hostname never collide (S48).
    pub node_id: Option<String>,
    pub redis_url: String,
    /// libvirt URI: `qemu:///system` on a real host, `test:///default` for simulation.
    pub hypervisor_uri: String,
    /// The one disk-image directory of this node: system disks and seeds live here.
    pub storage_dir: PathBuf,
    /// Bridge guests' NICs attach to (S68).
    pub vm_network_bridge: String,
    /// Bridge / address the node's management traffic (VNC, migration) uses (S68).
    pub vm_manage_network_bridge: String,
    /// Address VNC listens on.
    pub vnc_listen: String,
    /// `kvm`, `qemu` or unset (auto: kvm when the CPU has vmx/svm and /dev/kvm exists, S55).
    pub domain_type: Option<String>,
    /// Machine type for new domains.
    pub machine: String,
    pub heartbeat_secs: u64,
    /// Seconds between full inventory reports (the periodic reconcile, S73).
    pub reconcile_secs: u64,
    /// Seconds between metric samples of the host and its guests (S22, S77); 0: none.
    pub metrics_secs: u64,
    /// Jobs this node executes at once.
    pub concurrency: usize,
    /// Reserve the VNC range in net.ipv4.ip_local_reserved_ports at start (S69).
    pub reserve_vnc_ports: bool,
    /// vCPUs this node may promise per core.
    pub cpu_overcommit: f64,
    /// Guest memory this node may promise per MiB of RAM.
    pub memory_overcommit: f64,
    /// VNC ports of this node's guests; reserved in net.ipv4.ip_local_reserved_ports (S69).
    pub vnc_port_min: u16,
    pub vnc_port_max: u16,
    /// Optional directory of template overrides (`domain.xml.j2`, ...).
    pub templates_dir: Option<PathBuf>,
    /// Directories a disk may be cloned from (`CORRAL_IMAGE_DIRS`): the node refuses a
    /// job naming a template image anywhere else, whoever queued it.
    pub image_dirs: Vec<PathBuf>,
    /// Wall-clock limit of one OS-init profile run on this node (the node computes each
    /// guest's init plan), as the controller's `script_deadline_ms` is for its scripts.
    pub script_deadline_ms: u64,
    /// The bridges guests may be attached to (`CORRAL_ALLOWED_BRIDGES`, comma separated).
    /// Empty: `vm_network_bridge` alone. The node refuses a domain on any other bridge
    /// (the management bridge above all), and reports only these for placement.
    pub allowed_bridges: Vec<String>,
    /// The controller's base URL (`CORRAL_CONTROLLER_URL`, e.g. `http://controller:8080`):
    /// template images this node does not see in `image_dirs` are fetched from there on
    /// first use, with the node's Redis credential. Unset: such a template fails.
    pub controller_url: Option<String>,
    /// Where fetched template images are kept (`CORRAL_TEMPLATE_CACHE`); default:
    /// `template-cache` beside `storage_dir`.
    pub template_cache: Option<PathBuf>,
    /// Bandwidth, MiB/s, a disk conversion into a template may use (`qemu-img convert -r`,
    /// `CORRAL_CONVERT_RATE_MIB`), so guests on the node keep their share of the disk, as
    /// Proxmox's `bwlimit`; unset: unlimited.
    pub convert_rate_mib: Option<u64>,
    /// The libvirt URI another node's agent opens to migrate a guest here
    /// (`CORRAL_MIGRATION_URI`). Unset: `hypervisor_uri` when it names a remote host,
    /// else `qemu+tcp://<migration_address>/system` (libvirtd listening on TCP; use
    /// `qemu+tls://` or `qemu+ssh://` between hosts that do not trust their network).
    pub migration_uri: Option<String>,
    /// Where this node's QEMU listens for an incoming migration's memory and disk streams
    /// (`CORRAL_MIGRATION_ADDRESS`); unset: `vnc_listen`, the management address.
    pub migration_address: Option<String>,
    /// Bandwidth, MiB/s, a migration from this node may use unless the request says
    /// (`CORRAL_MIGRATION_RATE_MIB`); unset: unlimited.
    pub migration_rate_mib: Option<u64>,
    /// A name for the shared storage `storage_dir` is on (`CORRAL_SHARED_STORAGE`): nodes
    /// with the same name and the same `storage_dir` see the same disks, so a migration
    /// between them copies no disk. Unset: local storage.
    pub shared_storage: Option<String>,
    /// Self-fencing (S74): with neither Redis nor the controller reachable for this
    /// long, the node stops its HA guests, which the controller may then restart
    /// elsewhere (`CORRAL_SELF_FENCE_SECS`; 0: never). Must be shorter than the
    /// controller's `node_timeout_secs + ha_after_secs`.
    pub self_fence_secs: u64,
    /// How often the node drops cached images of deleted templates
    /// (`CORRAL_TEMPLATE_SWEEP_SECS`; also at start).
    pub template_sweep_secs: u64,
}

impl NodeConfig {
    /// The libvirt URI peers migrate to, and the address QEMU takes the streams on.
    pub fn migration_endpoint(&self) -> (String, String) {
        let address = self
            .migration_address
            .clone()
            .unwrap_or_else(|| self.vnc_listen.clone());
        let uri = self.migration_uri.clone().unwrap_or_else(|| {
            if self.hypervisor_uri.contains("://") && !self.hypervisor_uri.contains(":///") {
                self.hypervisor_uri.clone()
            } else {
                format!("qemu+tcp://{address}/system")
            }
        });
        (uri, address)
    }

    /// Where this node keeps the template images it fetched.
    pub fn template_cache_dir(&self) -> PathBuf {
        self.template_cache.clone().unwrap_or_else(|| {
            self.storage_dir
                .parent()
                .unwrap_or(&self.storage_dir)
                .join("template-cache")
        })
    }

    /// The bridges guests may use on this node.
    pub fn bridges_allowed(&self) -> Vec<String> {
        if self.allowed_bridges.is_empty() {
            vec![self.vm_network_bridge.clone()]
        } else {
            self.allowed_bridges.clone()
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: None,
            redis_url: "redis://127.0.0.1:6379/".into(),
            hypervisor_uri: "qemu:///system".into(),
            storage_dir: PathBuf::from("/var/lib/corral/images"),
            vm_network_bridge: "corral0".into(),
            vm_manage_network_bridge: "corral0".into(),
            vnc_listen: "127.0.0.1".into(),
            domain_type: None,
            machine: "pc".into(),
            heartbeat_secs: 2,
            reconcile_secs: 10,
            metrics_secs: 15,
            concurrency: 16,
            reserve_vnc_ports: true,
            cpu_overcommit: 16.0,
            memory_overcommit: 1.0,
            vnc_port_min: 5900,
            vnc_port_max: 6899,
            templates_dir: None,
            image_dirs: vec![PathBuf::from(DEFAULT_IMAGE_DIR)],
            script_deadline_ms: 500,
            allowed_bridges: Vec::new(),
            controller_url: None,
            template_cache: None,
            convert_rate_mib: None,
            migration_uri: None,
            migration_address: None,
            migration_rate_mib: None,
            shared_storage: None,
            self_fence_secs: 30,
            template_sweep_secs: 60,
        }
    }
}

/// The file format: `[controller]`, `[node]` and `[up]` tables, all optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub controller: ControllerConfig,
    pub node: NodeConfig,
    pub up: UpConfig,
}

/// `corral up` only: how it keeps the processes it started (its Redis) running.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    /// The wait before the first restart of a child that exited
    /// (`CORRAL_RESTART_BACKOFF_MS`); it doubles with each exit that follows soon after.
    pub restart_backoff_ms: u64,
    /// The longest wait between restarts (`CORRAL_RESTART_BACKOFF_MAX_MS`).
    pub restart_backoff_max_ms: u64,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            restart_backoff_ms: 250,
            restart_backoff_max_ms: 8_000,
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where template images live by default (the README's first template goes there).
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/corral/templates";

/// A comma-separated list of directories.
fn dir_list(v: &str) -> Vec<PathBuf> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Whether `path` lies inside one of `dirs`, judged on its text: absolute, no `..`.
/// (A symbolic link inside an image directory is the administrator's own choice.)
pub fn in_dirs(dirs: &[PathBuf], path: &str) -> bool {
    let p = std::path::Path::new(path);
    p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        && dirs.iter().any(|d| p.starts_with(d) && p != d.as_path())
}

fn env_parse<T: std::str::FromStr>(name: &str, slot: &mut T) -> Result<(), ConfigError> {
    if let Some(v) = env_var(name) {
        *slot = v.parse().map_err(|_| ConfigError::Env {
            name: name.into(),
            value: v,
        })?;
    }
    Ok(())
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.into(),
                    source,
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `CORRAL_*` variables override the file, per role.
    fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_controller_env()?;
        self.apply_node_env()
    }

    /// The variables of `corral up` and the controller (some set both roles).
    fn apply_controller_env(&mut self) -> Result<(), ConfigError> {
        env_parse("CORRAL_RESTART_BACKOFF_MS", &mut self.up.restart_backoff_ms)?;
        env_parse(
            "CORRAL_RESTART_BACKOFF_MAX_MS",
            &mut self.up.restart_backoff_max_ms,
        )?;
        let c = &mut self.controller;
        env_parse("CORRAL_LISTEN", &mut c.listen)?;
        env_parse("CORRAL_DATABASE", &mut c.database)?;
        env_parse("CORRAL_DATA_DIR", &mut c.data_dir)?;
        env_parse("CORRAL_NODE_TIMEOUT_SECS", &mut c.node_timeout_secs)?;
        env_parse("CORRAL_DISPATCH_WINDOW", &mut c.dispatch_window)?;
        env_parse("CORRAL_STEP_LEASE_SECS", &mut c.step_lease_secs)?;
        env_parse("CORRAL_JANITOR_SECS", &mut c.janitor_secs)?;
        env_parse("CORRAL_HA_AFTER_SECS", &mut c.ha_after_secs)?;
        env_parse("CORRAL_FENCE_DIR", &mut c.fence_dir)?;
        env_parse("CORRAL_FENCE_TIMEOUT_SECS", &mut c.fence_timeout_secs)?;
        env_parse("CORRAL_LOGIN_TOKEN_HOURS", &mut c.login_token_hours)?;
        if let Some(v) = env_var("CORRAL_IMAGE_DIRS") {
            c.image_dirs = dir_list(&v);
        }
        env_parse("CORRAL_VNC_PORT_MIN", &mut c.vnc_port_min)?;
        env_parse("CORRAL_VNC_PORT_MAX", &mut c.vnc_port_max)?;
        // One variable sets the range for both roles (`corral up` runs both).
        env_parse("CORRAL_VNC_PORT_MIN", &mut self.node.vnc_port_min)?;
        env_parse("CORRAL_VNC_PORT_MAX", &mut self.node.vnc_port_max)?;
        env_parse(
            "CORRAL_PLACEMENT_MAX_MEMORY_PCT",
            &mut c.placement_max_memory_pct,
        )?;
        env_parse(
            "CORRAL_PLACEMENT_MAX_LOAD_PER_CPU",
            &mut c.placement_max_load_per_cpu,
        )?;
        env_parse("CORRAL_PLUGINS_DIR", &mut c.plugins_dir)?;
        env_parse("CORRAL_SCRIPT_DEADLINE_MS", &mut c.script_deadline_ms)?;
        if let Some(v) = env_var("CORRAL_PLUGINS") {
            // Comma-separated names.
            c.plugins = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env_var("CORRAL_ADMIN_PASSWORD") {
            c.admin_password = Some(v);
        }
        if let Some(v) = env_var("CORRAL_REDIS_URL") {
            c.redis_url = v.clone();
            self.node.redis_url = v;
        }
        Ok(())
    }

    /// The node's variables.
    fn apply_node_env(&mut self) -> Result<(), ConfigError> {
        let n = &mut self.node;
        if let Some(v) = env_var("CORRAL_NODE_ID") {
            n.node_id = Some(v);
        }
        env_parse("CORRAL_HYPERVISOR_URI", &mut n.hypervisor_uri)?;
        env_parse("CORRAL_STORAGE_DIR", &mut n.storage_dir)?;
        env_parse("CORRAL_VM_NETWORK_BRIDGE", &mut n.vm_network_bridge)?;
        env_parse(
            "CORRAL_VM_MANAGE_NETWORK_BRIDGE",
            &mut n.vm_manage_network_bridge,
        )?;
        env_parse("CORRAL_VNC_LISTEN", &mut n.vnc_listen)?;
        if let Some(v) = env_var("CORRAL_DOMAIN_TYPE") {
            n.domain_type = Some(v);
        }
        env_parse("CORRAL_HEARTBEAT_SECS", &mut n.heartbeat_secs)?;
        env_parse("CORRAL_SELF_FENCE_SECS", &mut n.self_fence_secs)?;
        env_parse("CORRAL_TEMPLATE_SWEEP_SECS", &mut n.template_sweep_secs)?;
        env_parse("CORRAL_RECONCILE_SECS", &mut n.reconcile_secs)?;
        env_parse("CORRAL_METRICS_SECS", &mut n.metrics_secs)?;
        env_parse("CORRAL_SCRIPT_DEADLINE_MS", &mut n.script_deadline_ms)?;
        env_parse("CORRAL_CONCURRENCY", &mut n.concurrency)?;
        env_parse("CORRAL_CPU_OVERCOMMIT", &mut n.cpu_overcommit)?;
        env_parse("CORRAL_RESERVE_VNC_PORTS", &mut n.reserve_vnc_ports)?;
        env_parse("CORRAL_MEMORY_OVERCOMMIT", &mut n.memory_overcommit)?;
        if let Some(v) = env_var("CORRAL_TEMPLATES_DIR") {
            n.templates_dir = Some(v.into());
        }
        if let Some(v) = env_var("CORRAL_IMAGE_DIRS") {
            n.image_dirs = dir_list(&v);
        }
        if let Some(v) = env_var("CORRAL_CONTROLLER_URL") {
            n.controller_url = Some(v);
        }
        if let Some(v) = env_var("CORRAL_TEMPLATE_CACHE") {
            n.template_cache = Some(v.into());
        }
        if let Some(v) = env_var("CORRAL_CONVERT_RATE_MIB") {
            n.convert_rate_mib = Some(v.parse().map_err(|_| {
                ConfigError::Invalid(format!("CORRAL_CONVERT_RATE_MIB {v:?} is not a number"))
            })?);
        }
        if let Some(v) = env_var("CORRAL_MIGRATION_URI") {
            n.migration_uri = Some(v);
        }
        if let Some(v) = env_var("CORRAL_MIGRATION_ADDRESS") {
            n.migration_address = Some(v);
        }
        if let Some(v) = env_var("CORRAL_SHARED_STORAGE") {
            n.shared_storage = Some(v);
        }
        if let Some(v) = env_var("CORRAL_MIGRATION_RATE_MIB") {
            n.migration_rate_mib = Some(v.parse().map_err(|_| {
                ConfigError::Invalid(format!("CORRAL_MIGRATION_RATE_MIB {v:?} is not a number"))
            })?);
        }
        if let Some(v) = env_var("CORRAL_ALLOWED_BRIDGES") {
            n.allowed_bridges = v
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect();
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.controller;
        if c.vnc_port_min > c.vnc_port_max {
            return Err(ConfigError::Invalid(format!(
                "vnc_port_min {} is above vnc_port_max {}",
                c.vnc_port_min, c.vnc_port_max
            )));
        }
        if self.node.vnc_port_min > self.node.vnc_port_max || self.node.vnc_port_min < 5900 {
            return Err(ConfigError::Invalid(format!(
                "node VNC ports {}-{} must be an ordered range from 5900 up",
                self.node.vnc_port_min, self.node.vnc_port_max
            )));
        }
        if c.dispatch_window == 0 {
            return Err(ConfigError::Invalid(
                "dispatch_window must be at least 1".into(),
            ));
        }
        if let Some(t) = &self.node.domain_type {
            if t != "kvm" && t != "qemu" {
                return Err(ConfigError::Invalid(format!(
                    "domain_type must be kvm or qemu, not {t:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_path_is_inside_a_directory_by_its_text() {
        let dirs = vec![
            PathBuf::from("/var/lib/corral/templates"),
            PathBuf::from("/srv/img"),
        ];
        assert!(in_dirs(&dirs, "/var/lib/corral/templates/debian.qcow2"));
        assert!(in_dirs(&dirs, "/srv/img/a/b.qcow2"));
        assert!(!in_dirs(&dirs, "/var/lib/corral/templates"));
        assert!(!in_dirs(
            &dirs,
            "/var/lib/corral/templates/../images/g.qcow2"
        ));
        assert!(!in_dirs(&dirs, "/var/lib/corral/templates-other/x.qcow2"));
        assert!(!in_dirs(&dirs, "relative/x.qcow2"));
        assert!(!in_dirs(&dirs, "/etc/shadow"));
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[node]\nhypervisor_uri = \"test:///default\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.node.hypervisor_uri, "test:///default");
        std::fs::write(&p, "[node]\nbogus = 1\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
