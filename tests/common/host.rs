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

/// A second libvirt daemon on this machine, as a second host: its own state directories
/// in a private mount namespace, its own host UUID (libvirt refuses to migrate between
/// equal ones), listening on TCP at `127.0.0.2` on a free port. Its guests are destroyed
/// and the daemon stopped on drop.
pub struct SecondLibvirt {
    pub uri: String,
    pub address: String,
    dir: std::path::PathBuf,
    daemon: std::process::Child,
}

impl SecondLibvirt {
    /// Starts it under `dir`; None (with the reason printed) when this host cannot.
    pub fn start(dir: &std::path::Path) -> Option<SecondLibvirt> {
        let port = super::free_port();
        let d = dir.join("libvirt2");
        for sub in ["etc/qemu", "run", "lib", "cache", "log"] {
            std::fs::create_dir_all(d.join(sub)).ok()?;
        }
        let conf = format!(
            "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"127.0.0.2\"\ntcp_port = \"{port}\"\n\
             auth_tcp = \"none\"\nauth_unix_rw = \"none\"\nhost_uuid = \"{}\"\n",
            uuid::Uuid::new_v4()
        );
        std::fs::write(d.join("etc/libvirtd.conf"), conf).ok()?;
        let qemu = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
        std::fs::write(
            d.join("etc/qemu.conf"),
            format!("{qemu}\nstdio_handler = \"file\"\n"),
        )
        .ok()?;
        let p = |s: &str| d.join(s).display().to_string();
        let script = format!(
            "mount --bind {etc} /etc/libvirt && mount --bind {run} /var/run/libvirt && \
             mount --bind {lib} /var/lib/libvirt && mount --bind {cache} /var/cache/libvirt && \
             mount --bind {log} /var/log/libvirt && exec libvirtd --listen --pid-file {pid}",
            etc = p("etc"),
            run = p("run"),
            lib = p("lib"),
            cache = p("cache"),
            log = p("log"),
            pid = p("libvirtd.pid"),
        );
        let log = std::fs::File::create(d.join("libvirtd.log")).ok()?;
        let daemon = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(log.try_clone().ok()?)
            .stderr(log)
            .spawn()
            .ok()?;
        let me = SecondLibvirt {
            uri: format!("qemu+tcp://127.0.0.2:{port}/system"),
            address: "127.0.0.2".into(),
            dir: d,
            daemon,
        };
        for _ in 0..100 {
            if me.virsh(&["version"]).0 {
                return Some(me);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!(
            "the second libvirtd did not answer; its log: {}",
            std::fs::read_to_string(me.dir.join("libvirtd.log")).unwrap_or_default()
        );
        None
    }

    /// `virsh` against it: whether it succeeded, and its output.
    pub fn virsh(&self, args: &[&str]) -> (bool, String) {
        match Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()
        {
            Ok(out) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            ),
            Err(_) => (false, String::new()),
        }
    }

    /// Its domains' names, running or not.
    pub fn domains(&self) -> Vec<String> {
        self.virsh(&["list", "--all", "--name"])
            .1
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }
}

impl Drop for SecondLibvirt {
    fn drop(&mut self) {
        for d in self.domains() {
            let _ = self.virsh(&["destroy", &d]);
            let _ = self.virsh(&["undefine", "--snapshots-metadata", &d]);
        }
        // `sh` exec'd libvirtd: the child is the daemon.
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
