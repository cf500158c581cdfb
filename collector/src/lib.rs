//! ferry-collector: the central service.
//!
//! - [`routing`]: YAML routing rules (to / copy / drop), a pure router.
//! - [`coordinator`]: consumer-group membership and server-side partition assignment.

pub mod coordinator;
pub mod routing;
