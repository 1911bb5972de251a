//! Service layer: running a mount as a daemon or under systemd, and operating it.
//!
//! - [`mount`]: the FUSE mount, its session threads, readiness and clean unmount;
//! - [`daemon`]: forking into the background, telling the parent or systemd when it is live;
//! - [`control`]: the control socket behind `purge`, `expire`, `hardpurge` and `stats`;
//! - [`metrics`]: the Prometheus endpoint; [`syslog`]: logging without a log file;
//! - [`mountinfo`]: the kernel's table of mounts.
//!
//! Depends on `fuse`, `cache`, `config` and `base`.

pub mod control;
pub mod daemon;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod syslog;
