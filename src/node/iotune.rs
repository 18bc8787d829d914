//! Changing a running guest's disk I/O limits: `virDomainSetBlockIoTune`, which the
//! `virt` crate does not wrap. One of the three modules with `unsafe` code (with the
//! lifecycle events, `node/events.rs`, and the store's WAL hook); every other libvirt call
//! goes through `virt`.
//!
//! libvirt's `update-device` cannot change `<iotune>` on a live disk, and detaching and
//! re-attaching would take the disk from the guest, so the throttle is set through the
//! API meant for it. Each limit is sent with its `_max` equal to it: a cap with no burst
//! above the rate, which is what an unbursted limit means in QEMU too, and which the
//! test driver requires (it refuses a rate above a zero maximum). 0 lifts a limit.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::raw::c_int;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use crate::model::IoTune;

/// The typed parameters for `limits`: every rate corral manages, 0 where unset.
fn values(limits: Option<&IoTune>) -> Vec<(&'static str, u64)> {
    let iops = limits.and_then(|l| l.total_iops_sec).unwrap_or(0);
    let bytes = limits.and_then(|l| l.total_bytes_sec).unwrap_or(0);
    vec![
        ("total_iops_sec", iops),
        ("total_iops_sec_max", iops),
        ("total_bytes_sec", bytes),
        ("total_bytes_sec_max", bytes),
    ]
}

/// Sets the I/O limits of disk `target` of `d`; `flags` is libvirt's `AFFECT_*`.
pub fn set(d: &Domain, target: &str, limits: Option<&IoTune>, flags: u32) -> Result<(), Error> {
    let disk = CString::new(target).map_err(|_| Error::last_error())?;
    let names: Vec<(CString, u64)> = values(limits)
        .into_iter()
        .filter_map(|(n, v)| CString::new(n).ok().map(|n| (n, v)))
        .collect();
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    let mut max: c_int = 0;
    for (name, v) in &names {
        // SAFETY: `params`, `n` and `max` are the growable array libvirt manages (null
        // and zero to start); `name` outlives the call, and libvirt copies it.
        let r = unsafe {
            sys::virTypedParamsAddULLong(&mut params, &mut n, &mut max, name.as_ptr(), *v)
        };
        if r < 0 {
            let e = Error::last_error();
            // SAFETY: frees exactly the `n` parameters libvirt allocated above.
            unsafe { sys::virTypedParamsFree(params, n) };
            return Err(e);
        }
    }
    // SAFETY: `d` keeps the domain pointer alive for the call; `disk` and `params` are
    // valid for its duration and only read by libvirt.
    let r = unsafe { sys::virDomainSetBlockIoTune(d.as_ptr(), disk.as_ptr(), params, n, flags) };
    let e = (r < 0).then(Error::last_error);
    // SAFETY: frees the `n` parameters allocated above, once.
    unsafe { sys::virTypedParamsFree(params, n) };
    e.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_are_lifted_and_each_is_capped_at_its_rate() {
        let v = values(Some(&IoTune {
            total_iops_sec: Some(500),
            total_bytes_sec: None,
        }));
        assert!(v.contains(&("total_iops_sec", 500)) && v.contains(&("total_iops_sec_max", 500)));
        assert!(v.contains(&("total_bytes_sec", 0)) && v.contains(&("total_bytes_sec_max", 0)));
        assert!(values(None).iter().all(|(_, v)| *v == 0));
    }
}
