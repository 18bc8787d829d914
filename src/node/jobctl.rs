//! A domain's running job: its statistics (`virDomainGetJobStats`), `virDomainAbortJob`
//! (cancel a migration) and `virDomainMigrateStartPostCopy` (switch a migration that
//! does not converge to post-copy). The `virt` crate does not wrap the last two, and its
//! `job_stats` hands libvirt's parameter array to a `Vec` (undefined behaviour when no
//! job runs and libvirt returns none, and a free through Rust's allocator of memory
//! libvirt allocated), so the statistics are read here through libvirt's own accessors
//! and freed by libvirt. One of the modules with `unsafe` code (with `node/events.rs`,
//! `node/iotune.rs` and the store's WAL hook).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::raw::{c_int, c_ulonglong};

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use super::hypervisor::JobFigures;

/// The domain's job's figures (`flags`: 0 for the running job, or
/// `VIR_DOMAIN_JOB_STATS_COMPLETED`); None when there is no such job.
pub fn stats(d: &Domain, flags: u32) -> Result<Option<JobFigures>, Error> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: libvirt allocates `params` (n entries, possibly none and null) for us to
    // free with `virTypedParamsFree`; `d` keeps the domain alive for the call.
    let r = unsafe { sys::virDomainGetJobStats(d.as_ptr(), &mut kind, &mut params, &mut n, flags) };
    if r < 0 {
        return Err(Error::last_error());
    }
    let get = |name: &str| -> u64 {
        let Ok(key) = CString::new(name) else {
            return 0;
        };
        let mut v: c_ulonglong = 0;
        // SAFETY: `params`/`n` are libvirt's array from above (null with 0 is allowed);
        // `key` outlives the call; `v` is written only when the field is found.
        let found = unsafe { sys::virTypedParamsGetULLong(params, n, key.as_ptr(), &mut v) };
        if found == 1 {
            v
        } else {
            0
        }
    };
    let figures = (kind != sys::VIR_DOMAIN_JOB_NONE as c_int).then(|| JobFigures {
        elapsed_ms: get("time_elapsed"),
        data_processed: get("data_processed"),
        data_remaining: get("data_remaining"),
        data_total: get("data_total"),
        mem_bps: get("memory_bps"),
        disk_bps: get("disk_bps"),
        dirty_rate: get("memory_dirty_rate"),
        iteration: get("memory_iteration"),
        expected_downtime_ms: get("downtime"),
        downtime_ms: get("downtime"),
    });
    // SAFETY: frees the `n` parameters libvirt allocated above, once.
    unsafe { sys::virTypedParamsFree(params, n) };
    Ok(figures)
}

/// Aborts the domain's running job (a migration: the guest stays where it was).
pub fn abort(d: &Domain) -> Result<(), Error> {
    // SAFETY: `d` keeps the domain pointer alive for the call; libvirt only reads it.
    let r = unsafe { sys::virDomainAbortJob(d.as_ptr()) };
    if r < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// Switches the domain's running migration (started with `VIR_MIGRATE_POSTCOPY`) to
/// post-copy: the guest runs on the target from now on and pulls the memory still left.
pub fn start_post_copy(d: &Domain) -> Result<(), Error> {
    // SAFETY: as above; flags must be 0.
    let r = unsafe { sys::virDomainMigrateStartPostCopy(d.as_ptr(), 0) };
    if r < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}
