//! The two remote systems: Microsoft Graph ([`graph`]) and the Power Embedded API ([`portal`]),
//! both behind one HTTP edge ([`http`]), with their in-memory fakes for unit tests
//! ([`fake`] holds what the fakes share). Clients report what they read and do what they are
//! told: deciding what to change is the plan's business.

pub mod fake;
pub mod graph;
pub mod http;
pub mod portal;
