//! The controller of the pull-based worker system.
pub mod core;
