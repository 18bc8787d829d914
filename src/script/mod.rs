//! Rhai scripting: OS-init profiles, boot jobs and plugins share one sandbox.
//!
//! * [`sandbox`]: the engine, its limits and errors;
//! * [`hostapi`]: the few functions scripts get beyond Rhai's standard library;
//! * [`guest`]: what a guest script receives and how its answer is checked;
//! * [`catalog`]: shipped scripts and the compile cache.

pub mod catalog;
pub mod guest;
pub mod hostapi;
pub mod sandbox;

#[cfg(test)]
mod tests;

pub use catalog::{Kind, Scripts};
pub use guest::GuestFacts;
pub use sandbox::{Limits, Sandbox, ScriptError};
