//! What a node reports about itself: identity (S93), domain type (S55), capacity, load.

use crate::config::NodeConfig;
use crate::model::NodeFacts;
use crate::node::hypervisor::Hypervisor;

/// The node id: /etc/machine-id, so two hosts with one hostname stay distinct (S48).
pub fn machine_id() -> Result<String, String> {
    let id = std::fs::read_to_string("/etc/machine-id")
        .map_err(|e| format!("reading /etc/machine-id: {e}; set node_id in the config"))?;
    let id = id.trim().to_string();
    if id.is_empty() {
        return Err("/etc/machine-id is empty; set node_id in the config".into());
    }
    Ok(id)
}

/// `kvm` when the CPU has VT-x/AMD-V and /dev/kvm exists, `qemu` (TCG) otherwise (S55);
/// the config overrides; libvirt's test driver only knows its own `test` type.
pub fn domain_type(cfg: &NodeConfig) -> String {
    if let Some(t) = &cfg.domain_type {
        return t.clone();
    }
    if cfg.hypervisor_uri.starts_with("test:") {
        return "test".into();
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    detect(&cpuinfo, std::path::Path::new("/dev/kvm").exists())
}

pub fn detect(cpuinfo: &str, dev_kvm: bool) -> String {
    let virt_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if virt_flag && dev_kvm { "kvm" } else { "qemu" }.into()
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// Size and free space of the filesystem holding `dir`, MiB (`statvfs`, through `df`
/// so the node stays free of unsafe code outside the events module).
pub(crate) fn fs_space(dir: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output();
    let Ok(out) = out else { return (0, 0) };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().nth(1) else {
        return (0, 0);
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    let kib = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024;
    (kib(1), kib(3))
}

pub async fn collect(cfg: &NodeConfig, domain_type: &str, hv: &dyn Hypervisor) -> NodeFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cpu_virt = detect(&cpuinfo, true) == "kvm";
    let (storage_total_mib, storage_free_mib) = fs_space(&cfg.storage_dir);
    let allowed = cfg.bridges_allowed();
    let mut bridges: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("bridge").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                // Only the bridges guests may use count for placement.
                .filter(|b| allowed.contains(b))
                .collect()
        })
        .unwrap_or_default();
    bridges.sort();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let hv_version = hv
        .versions()
        .await
        .map(|(l, h)| format!("libvirt {l}, hypervisor {h}"))
        .unwrap_or_default();
    let (migration_uri, migration_address) = cfg.migration_endpoint();
    NodeFacts {
        hostname,
        address: cfg.vnc_listen.clone(),
        domain_type: domain_type.into(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_mib: meminfo("MemTotal:"),
        free_memory_mib: meminfo("MemAvailable:"),
        load1,
        storage_dir: cfg.storage_dir.display().to_string(),
        bridge: cfg.vm_network_bridge.clone(),
        manage_bridge: cfg.vm_manage_network_bridge.clone(),
        hypervisor_uri: cfg.hypervisor_uri.clone(),
        version: format!("corral {}; {hv_version}", env!("CARGO_PKG_VERSION")),
        workers: vec![],
        vnc_ports: Some((cfg.vnc_port_min, cfg.vnc_port_max)),
        bridges,
        cpu_model,
        cpu_virt,
        storage_total_mib,
        storage_free_mib,
        cpu_overcommit: Some(cfg.cpu_overcommit),
        memory_overcommit: Some(cfg.memory_overcommit),
        migration_uri: Some(migration_uri),
        migration_address: Some(migration_address),
        shared_storage: cfg.shared_storage.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::detect;

    #[test]
    fn kvm_needs_both_the_flag_and_dev_kvm() {
        let vmx = "processor: 0\nflags\t\t: fpu vme vmx sse\n";
        let none = "processor: 0\nflags\t\t: fpu vme sse\n";
        assert_eq!(detect(vmx, true), "kvm");
        assert_eq!(detect(vmx, false), "qemu");
        assert_eq!(detect(none, true), "qemu");
        assert_eq!(detect("flags : svm", true), "kvm");
    }
}
