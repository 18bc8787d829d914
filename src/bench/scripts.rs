//! Script evaluation cost: every shipped OS-init profile and boot job, run `n` times on
//! a sample guest through the same sandbox the controller uses (compiled once, as the
//! controller's cache does), plus the cost of a compile.

use std::time::Instant;

use corral::script::catalog::{sample_guest, sample_params, BOOT_JOBS, PROFILES};
use corral::script::{Limits, Scripts};

/// Prints µs per evaluation; returns an error text if a shipped script fails.
pub fn run(n: usize) -> Result<(), String> {
    let n = n.max(1);
    let s = Scripts::new(Limits::default()).map_err(|e| e.to_string())?;
    let g = sample_guest();
    let t = Instant::now();
    for _ in 0..n {
        s.sandbox()
            .compile("bench", PROFILES[0].1, &[("plan", 1)])
            .map_err(|e| e.to_string())?;
    }
    println!(
        "script compile (cloud-init profile):    {:>10.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    for (name, src) in PROFILES {
        s.plan(name, src, &g).map_err(|e| e.to_string())?; // warm the cache
        let t = Instant::now();
        for _ in 0..n {
            s.plan(name, src, &g).map_err(|e| e.to_string())?;
        }
        println!(
            "profile {name:<16} per run:        {:>10.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    for (name, src) in BOOT_JOBS {
        let p = sample_params(name);
        s.actions(name, src, &g, &p).map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..n {
            s.actions(name, src, &g, &p).map_err(|e| e.to_string())?;
        }
        println!(
            "boot job {name:<16} per run:       {:>10.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    Ok(())
}
