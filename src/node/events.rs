//! libvirt domain lifecycle events: one of the three modules with `unsafe` code (the
//! others are the controller store's WAL hook, `controller/store/changes.rs`, and a disk's
//! live I/O limits, `node/iotune.rs`).
//!
//! The `virt` crate does not wrap event callbacks, so this module calls the C API
//! directly: it registers libvirt's default event loop (before any connection is opened),
//! runs it on a dedicated thread, and subscribes a callback for
//! `VIR_DOMAIN_EVENT_ID_LIFECYCLE` that forwards the domain's UUID over a channel. The
//! watcher then reads the domain's state the ordinary (safe) way and reports it.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr};
use std::os::raw::{c_char, c_int};
use std::sync::Once;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

static EVENT_LOOP: Once = Once::new();

/// Registers and runs libvirt's default event loop. Must run before the first
/// connection is opened; later calls do nothing.
pub fn init_event_loop() {
    EVENT_LOOP.call_once(|| {
        // SAFETY: plain C call with no arguments; `Once` makes it the only registration,
        // and it happens before this process opens any libvirt connection.
        let rc = unsafe { sys::virEventRegisterDefaultImpl() };
        if rc < 0 {
            tracing::warn!(
                "libvirt event loop registration failed: state changes are seen by polling only"
            );
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default implementation was registered above; this thread
                // is the only one that runs it.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the libvirt event thread: {e}");
        }
    });
}

type LifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the boxed sender leaked in `subscribe`; libvirt keeps it alive
    // until it calls `free_sender`, which happens after the last callback.
    let tx = unsafe { &*(opaque as *const UnboundedSender<String>) };
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid for the duration of the callback and `buf` has the
    // VIR_UUID_STRING_BUFLEN bytes the function writes (NUL included).
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        // SAFETY: libvirt wrote a NUL-terminated string into `buf`.
        let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let _ = tx.send(uuid);
    }
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: `opaque` came from `Box::into_raw` in `subscribe` and libvirt calls this once.
    drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<String>) });
}

/// Subscribes to lifecycle events on `conn`; every event sends the domain's UUID to `tx`.
/// The subscription ends when `conn` is closed.
pub fn subscribe(conn: &Connect, tx: UnboundedSender<String>) -> Result<(), String> {
    let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
    // SAFETY: libvirt calls a VIR_DOMAIN_EVENT_ID_LIFECYCLE callback with the lifecycle
    // signature; the C API takes it cast to the generic type (its VIR_DOMAIN_EVENT_CALLBACK
    // macro does the same). Both are plain function pointers of the same size.
    let cb = unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(on_lifecycle as LifecycleCb) };
    // SAFETY: `conn` is an open connection; `opaque` stays valid until `free_sender`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt will never free `opaque`; we do.
        unsafe { free_sender(opaque) };
        return Err("virConnectDomainEventRegisterAny failed".into());
    }
    Ok(())
}

/// Keeps a subscription alive on its own thread, reconnecting when libvirtd restarts.
pub fn spawn_listener(uri: String, tx: UnboundedSender<String>) {
    let spawned = std::thread::Builder::new()
        .name("libvirt-listener".into())
        .spawn(move || loop {
            if tx.is_closed() {
                return;
            }
            match Connect::open(Some(&uri)) {
                Ok(conn) => {
                    match subscribe(&conn, tx.clone()) {
                        Ok(()) => {
                            while conn.is_alive().unwrap_or(false) && !tx.is_closed() {
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                        Err(e) => tracing::warn!("subscribing to libvirt events: {e}"),
                    }
                    drop(conn);
                }
                Err(e) => tracing::warn!("libvirt event connection: {e}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the libvirt listener thread: {e}");
    }
}
