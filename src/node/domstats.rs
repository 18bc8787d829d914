//! Every running domain's figures in one libvirt call, `virConnectGetAllDomainStats` (S77):
//! one of the modules with `unsafe` code (with `events.rs`, `iotune.rs` and the store's
//! WAL hook).
//!
//! The `virt` crate wraps the call, but frees only the array of records and leaks the
//! records themselves (their typed parameters and domain references): a node sampling
//! every 15 s would grow for ever. So the call is made here, the parameters are copied
//! into plain Rust values, and the list is released with `virDomainStatsRecordListFree`.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint};

use virt::connect::Connect;
use virt::error::Error;
use virt::sys;

/// One domain's statistics: its UUID and libvirt's numeric parameters by name
/// (`cpu.time`, `balloon.current`, `block.0.rd.bytes`, `net.0.rx.bytes`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainStats {
    pub uuid: String,
    pub params: BTreeMap<String, f64>,
}

/// The statistics corral reads: state, CPU time, balloon, vCPUs, interfaces, disks.
const GROUPS: c_uint = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK;

/// The running domains' statistics, in one call.
pub fn all(conn: &Connect) -> Result<Vec<DomainStats>, Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is open for the call; libvirt allocates the NULL-terminated array
    // it stores in `records`, released below with the matching free function.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            GROUPS,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
        )
    };
    if n < 0 {
        return Err(Error::last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: the array holds `n` valid record pointers (then a NULL).
        let rec = unsafe { *records.add(i) };
        if rec.is_null() {
            break;
        }
        // SAFETY: `rec` points to a record libvirt filled; it lives until the free below.
        out.push(unsafe { copy_record(&*rec) });
    }
    if !records.is_null() {
        // SAFETY: `records` came from virConnectGetAllDomainStats and is freed once.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// Copies one record into owned values.
///
/// # Safety
/// `rec` must be a record filled by libvirt that is still alive.
unsafe fn copy_record(rec: &sys::virDomainStatsRecord) -> DomainStats {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `rec.dom` is the record's domain; `buf` has the bytes the call writes.
    let uuid = if unsafe { sys::virDomainGetUUIDString(rec.dom, buf.as_mut_ptr()) } == 0 {
        // SAFETY: libvirt wrote a NUL-terminated string.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    let mut params = BTreeMap::new();
    for j in 0..rec.nparams.max(0) as usize {
        // SAFETY: `params` holds `nparams` entries.
        let p = unsafe { &*rec.params.add(j) };
        // SAFETY: `field` is a NUL-terminated name within its fixed-size array.
        let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the union member read is the one `type_` names.
        let v = unsafe { number(p.type_, &p.value) };
        if let Some(v) = v {
            params.insert(name, v);
        }
    }
    DomainStats { uuid, params }
}

/// The parameter's value as a number (strings and booleans are skipped).
///
/// # Safety
/// `ty` must be the type libvirt set for `v`.
unsafe fn number(ty: c_int, v: &sys::_virTypedParameter__bindgen_ty_1) -> Option<f64> {
    // SAFETY (each arm): the member read is the one the type names.
    match ty as u32 {
        sys::VIR_TYPED_PARAM_INT => Some(unsafe { v.i } as f64),
        sys::VIR_TYPED_PARAM_UINT => Some(unsafe { v.ui } as f64),
        sys::VIR_TYPED_PARAM_LLONG => Some(unsafe { v.l } as f64),
        sys::VIR_TYPED_PARAM_ULLONG => Some(unsafe { v.ul } as f64),
        sys::VIR_TYPED_PARAM_DOUBLE => Some(unsafe { v.d }),
        _ => None,
    }
}
