//! Service layer: running a mount as a daemon or under systemd, and operating it.
//!
//! - [`mount`]: the FUSE mount, its session threads, readiness and clean unmount;
//! - [`daemon`]: forking into the background, telling the parent or systemd when it is live;
//! - [`supervise`]: the supervisor that keeps a mount alive across its worker's deaths;
//! - [`holder`]: the worker's side of it: a new supervisor when the one it had dies;
//! - [`fdstore`]: systemd's notification and file-descriptor-store protocol;
//! - [`handover`]: taking a live mount over from a previous process;
//! - [`upgrade`]: exec of the installed binary in place (`ston-fs restart`);
//! - [`control`]: the control socket behind `purge`, `expire`, `hardpurge`, `stats`, `restart`;
//! - [`metrics`]: the Prometheus endpoint; [`syslog`]: logging without a log file;
//! - [`lograte`]: the cap on repeated log lines;
//! - [`mountinfo`]: the kernel's table of mounts.
//!
//! Depends on `fuse`, `cache`, `store`, `config` and `base`.

pub mod control;
pub mod daemon;
pub mod fdstore;
pub mod handover;
pub mod holder;
pub mod lograte;
pub mod metrics;
pub mod mount;
pub mod mountinfo;
pub mod supervise;
pub mod syslog;
pub mod upgrade;
