//! corral: a lightweight private cloud for KVM.
//!
//! Layout:
//! * [`controller`]: HTTP API, SQL store, saga engine, allocators, ingest of node events;
//! * [`node`]: the node agent (job worker, heartbeats, domain watcher, hypervisor trait);
//! * [`transport`]: Redis queues (apalis-redis) and the event stream;
//! * [`model`]: types shared by both sides and the wire enums;
//! * [`metrics`]: metric names and rates, shared by the nodes and the controller;
//! * [`jobs`]: the operation-kind catalog, built from the kinds' modules;
//! * [`render`], [`guestinit`]: minijinja templates, init plans and NoCloud seeds;
//! * [`script`]: the Rhai sandbox, OS-init profiles and boot jobs;
//! * [`config`]: configuration; [`up`]: single-machine mode;
//! * [`modes`]: 0700 directories and 0600 files for everything corral keeps;
//! * [`chain`]: errors keep their causes, and become text only at the edges.
//!
//! The CLI client (`cli`) and `corral bench` (`bench`) are modules of the `corral` binary
//! (src/main.rs), not of this library: no library user needs them.

pub mod chain;
pub mod config;
pub mod controller;
pub mod digest;
pub mod fault;
pub mod guestinit;
pub mod iso;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod modes;
pub mod node;
pub mod process;
pub mod render;
pub mod script;
pub mod transport;
pub mod up;
