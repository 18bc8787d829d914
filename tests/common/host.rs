//! Host objects a test makes for itself: each is named per run (`crl` + 8 hex digits), so
//! parallel runs cannot collide, and removed on drop, so nothing outlives the test.

use std::process::Command;

/// A Linux bridge on the host; removed on drop.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    /// A bridge with the pool's gateway address on it.
    pub fn new(gateway_cidr: &str) -> Bridge {
        Bridge::make(&[vec!["addr", "add", gateway_cidr, "dev"]])
    }

    /// A bridge with no address on the host side.
    pub fn new_bare() -> Bridge {
        Bridge::make(&[])
    }

    fn make(extra: &[Vec<&str>]) -> Bridge {
        let name = per_run_name();
        let mut steps = vec![vec!["link", "add", &name, "type", "bridge"]];
        for e in extra {
            let mut e = e.clone();
            e.push(&name);
            steps.push(e);
        }
        steps.push(vec!["link", "set", &name, "up"]);
        let bridge = Bridge { name: name.clone() };
        for args in steps {
            assert!(
                Command::new("ip").args(&args).status().unwrap().success(),
                "ip {args:?}"
            );
        }
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// A name for a host object of this run, e.g. `crl1a2b3c4d` (an interface name fits 15
/// bytes).
pub fn per_run_name() -> String {
    format!("crl{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Whether a network interface of that name exists on the host.
pub fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
