//! Origin layer: the HTTP client, the checks every answer must pass, and what answers mean.
//!
//! - [`client`]: requests to a site's origins, with one deadline, retries and hedging;
//! - [`answer`]: what an answer says (version, size, freshness) and whether it can be trusted;
//! - [`body`]: reading an answer's body under the low-speed rule;
//! - `failure`: what a failed exchange means (a timeout, an unreachable origin);
//! - [`tls`]: certificate pins for origins with self-signed certificates;
//! - [`health`]: which origins are in rotation, standbys, and the order a request tries them;
//! - [`listing`]: directory listings parsed from index pages and manifests.
//!
//! Depends on `config` and `base` only.

mod answer;
mod body;
mod client;
mod failure;
pub mod health;
pub mod listing;
mod tls;

pub use answer::{CacheControl, Probe, Version};
pub use body::RangeBody;
pub use client::{encode_path, OriginClient, Site};
pub use health::{HealthState, Member, Pool, Role};
