//! Scaling out: many edges behind a shared cache tier, on loopback.
//!
//! The tier is real: the in-process test origin (it records every request), three parents
//! that are private nginx instances with `proxy_cache`, `proxy_cache_lock` and `slice 1m`
//! (`benches/tier-parent.conf.in`, the configuration the README shows), and N edges, each a
//! separate ston-fs mount with its own cache. Every read on every edge is compared byte for
//! byte with the origin's content.
//!
//! - With `balance=hash`, the origin fetches each slice about once (at most 1.1 times) and
//!   the parents hold about one copy of what was read, for 1, 2, 4 and 8 edges; with
//!   `round_robin` the same run costs more of both.
//! - A parent killed mid-run loses no read; only its keys move, each to one other parent,
//!   and they come back once it restarts and is readmitted.
//! - A standby takes the reads only while every parent is down.
//! - Conditional probes, If-Range and the Via header pass through the tier.
//! - In virtual-host mode each host balances over its own parents with its own `balance`.
//! - A parent that answers 5xx, or slower than `receive_timeout`, is excluded; only its keys
//!   move, and the per-origin counters of `ston-fs stats` and Prometheus show it.
//!
//! Sizes are scaled down from the 300 objects of 4 KiB–64 MiB so the file runs in
//! under a minute on two cores: geometric mixes from 4 KiB up to 6 MiB (3 to 30 MiB per
//! test), read whole or by random ranges. `benches/tiers.sh` runs the full-size set.

mod common;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mount::{run_cli, stats_json, Mount};
use common::mount_origin;
use common::nginx::free_port;
use common::origin::{pattern, Fault, FaultAction, Origin, Stall};
use common::tier::{
    parent_list, parents_by_uri, start_parents, wait_until, Parent, ParentRequest, SLICE,
};
use common::{
    assert_bytes_eq, assert_file_matches, drop_page_cache, no_kernel_readahead, pread_full, Rng,
    KIB, MIB,
};

/// Options of every edge: blocks of one parent slice, and probes every 0.2 s with two good
/// ones to readmit, so recoveries take seconds. A dead parent refuses connections at once;
/// the timeouts stay well above what a parent waiting on `proxy_cache_lock` (it polls every
/// 0.5 s) takes on a loaded machine, so no hedge sends an object to a second parent.
const EDGE_OPTS: &str = "block_size=1M,connect_timeout=3,receive_timeout=3,request_timeout=30,\
                         origin_probe_interval=0.2,origin_recover_threshold=2,fuse_threads=4";
/// Longest the edges of one phase may take to read their objects before it is called a hang.
const READ_BOUND: Duration = Duration::from_secs(240);
/// Random ranges read from each object that is not read whole.
const RANGES: usize = 4;
const CLI_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Data set, edges and readers
// ---------------------------------------------------------------------------

/// One object at the origin.
#[derive(Clone)]
struct Object {
    path: String,
    data: Bytes,
}

/// `per_level` objects for each power of two from 4 KiB to `largest`, each a little above
/// its power of two, so last blocks and last slices are partial.
fn data_set(prefix: &str, largest: usize, per_level: usize, seed: u64) -> Vec<Object> {
    let mut set = Vec::new();
    let mut size = 4 * KIB;
    while size <= largest {
        for _ in 0..per_level {
            let i = set.len();
            let len = size + (i * 7919 * 13) % (size / 2);
            set.push(Object {
                path: format!("/{prefix}/obj-{i:03}.bin"),
                data: pattern(seed + i as u64, len),
            });
        }
        size *= 2;
    }
    set
}

fn total_bytes(set: &[Object]) -> usize {
    set.iter().map(|o| o.data.len()).sum()
}

/// Puts the set on every server in the same order, so each gives an object the same ETag.
fn put_all(servers: &[&Origin], set: &[Object]) {
    for server in servers {
        for object in set {
            server.put(&object.path, object.data.clone());
        }
    }
}

/// `n` edges (separate mounts and caches) in front of `origins`, named `edge-0`.. in Via.
fn mount_edges(n: usize, origins: &str, options: &str) -> Vec<Mount> {
    (0..n)
        .map(|i| {
            Mount::builder(origins)
                .opt(EDGE_OPTS)
                .opt(format!("via=edge-{i}"))
                .opt(options)
                .mount()
        })
        .collect()
}

fn mountpoints(edges: &[Mount]) -> Vec<PathBuf> {
    edges.iter().map(|e| e.mountpoint().to_path_buf()).collect()
}

/// Reads one object as a client of an edge would: whole, or a few random ranges (without
/// kernel read-ahead); every byte is compared with the origin's.
fn read_object(mountpoint: &Path, object: &Object, whole: bool, rng: &mut Rng) {
    let path = mountpoint.join(&object.path[1..]);
    if whole {
        assert_file_matches(&path, &object.data, 256 * KIB);
        return;
    }
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    no_kernel_readahead(&file);
    let len = object.data.len() as u64;
    for _ in 0..RANGES {
        let offset = rng.below(len);
        let want = 1 + rng.below(64 * KIB as u64) as usize;
        let got = pread_full(&file, offset, want)
            .unwrap_or_else(|e| panic!("pread {} at {offset}: {e}", path.display()));
        let end = (offset + want as u64).min(len) as usize;
        assert_bytes_eq(
            &got,
            &object.data[offset as usize..end],
            &format!("{} at {offset}", path.display()),
        );
    }
}

/// Objects up to 1 MiB, and every third one, are read whole; the others by random ranges.
fn read_whole(index: usize, object: &Object) -> bool {
    object.data.len() <= MIB || index.is_multiple_of(3)
}

/// One edge reads every object of `set`, in its own shuffled order.
fn read_set(mountpoint: &Path, set: &[Object], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..set.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for i in order {
        read_object(mountpoint, &set[i], read_whole(i, &set[i]), &mut rng);
    }
}

/// Every edge reads `set` at the same time, one thread each. A failed or wrong read fails
/// the test; so does a phase that runs past `READ_BOUND`.
fn read_everywhere(mountpoints: &[PathBuf], set: &Arc<Vec<Object>>, seed: u64) {
    let waiter = start_reading(mountpoints, set, seed);
    waiter.finish();
}

/// Readers running in the background; `finish` waits for them (bounded).
struct Readers {
    done: mpsc::Receiver<std::thread::Result<()>>,
    count: usize,
}

fn start_reading(mountpoints: &[PathBuf], set: &Arc<Vec<Object>>, seed: u64) -> Readers {
    let (tx, done) = mpsc::channel();
    for (edge, mountpoint) in mountpoints.iter().enumerate() {
        let (tx, set, mountpoint) = (tx.clone(), set.clone(), mountpoint.clone());
        let seed = seed * 1000 + edge as u64;
        std::thread::spawn(move || {
            let read = AssertUnwindSafe(|| read_set(&mountpoint, &set, seed));
            let _ = tx.send(std::panic::catch_unwind(read));
        });
    }
    Readers {
        done,
        count: mountpoints.len(),
    }
}

impl Readers {
    fn finish(self) {
        let deadline = Instant::now() + READ_BOUND;
        for _ in 0..self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => panic!("the edges did not finish reading within {READ_BOUND:?} (hung)"),
            }
        }
    }
}

/// `ston-fs purge MOUNT/*` on every edge: the next reads go to the tier again.
fn purge_everything(edges: &[Mount]) {
    for edge in edges {
        let everything = edge.mountpoint().join("*");
        let out = run_cli([OsStr::new("purge"), everything.as_os_str()], CLI_BOUND);
        assert!(out.success(), "purge:\n{}", out.describe());
    }
}

/// Purges every edge and reads the whole set again through them: which parents served each
/// path this time.
fn reread_everywhere(
    parents: &[Parent],
    edges: &[Mount],
    set: &Arc<Vec<Object>>,
    seed: u64,
) -> HashMap<String, Vec<usize>> {
    let marks: Vec<usize> = parent_logs(parents).iter().map(Vec::len).collect();
    purge_everything(edges);
    read_everywhere(&mountpoints(edges), set, seed);
    parents_by_uri(&since(&parent_logs(parents), &marks))
}

// ---------------------------------------------------------------------------
// What the origin and the parents saw
// ---------------------------------------------------------------------------

/// What one run cost the origin and the parents.
#[derive(Debug)]
struct Figures {
    balance: &'static str,
    edges: usize,
    /// Data requests the origin answered (every one is one parent slice).
    origin_requests: u64,
    /// Distinct slices asked for, and their bytes.
    slices: u64,
    slice_bytes: u64,
    /// Cache entries (slices) and bytes on every parent's disk together.
    cache_entries: u64,
    cache_bytes: u64,
}

impl Figures {
    /// How many times the origin sent each slice: 1.0 is the least possible.
    fn fetches_per_slice(&self) -> f64 {
        self.origin_requests as f64 / self.slices as f64
    }

    /// Copies of each slice in the tier: 1.0 is one copy of what was read.
    fn copies(&self) -> f64 {
        self.cache_entries as f64 / self.slices as f64
    }

    fn byte_copies(&self) -> f64 {
        self.cache_bytes as f64 / self.slice_bytes as f64
    }
}

/// Counts the origin's data requests and the distinct slices among them (checking each is
/// one whole slice), and the parents' cache use.
fn measure(balance: &'static str, edges: usize, origin: &Origin, parents: &[Parent]) -> Figures {
    origin.settle();
    let mut slices: HashMap<(String, u64), u64> = HashMap::new();
    let mut origin_requests = 0;
    for request in origin.requests() {
        let Some(entry) = origin.entry(&request.path) else {
            continue; // directories and health probes
        };
        let len = entry.data.len() as u64;
        let (start, end) = request.requested_span(len);
        assert!(
            request.range.is_some() && start % SLICE == 0 && (end % SLICE == 0 || end == len),
            "a parent asked the origin for something other than one slice: {request:?}"
        );
        origin_requests += 1;
        slices.insert((request.path.clone(), start), end - start);
    }
    let (mut cache_entries, mut cache_bytes) = (0, 0);
    for parent in parents {
        let (entries, bytes) = parent.cache_usage();
        cache_entries += entries;
        cache_bytes += bytes;
    }
    Figures {
        balance,
        edges,
        origin_requests,
        slices: slices.len() as u64,
        slice_bytes: slices.values().sum(),
        cache_entries,
        cache_bytes,
    }
}

/// Every request the parents logged, per parent.
fn parent_logs(parents: &[Parent]) -> Vec<Vec<ParentRequest>> {
    parents.iter().map(Parent::requests).collect()
}

/// The requests logged after `marks` (earlier log lengths), per parent.
fn since(logs: &[Vec<ParentRequest>], marks: &[usize]) -> Vec<Vec<ParentRequest>> {
    logs.iter()
        .zip(marks)
        .map(|(log, &mark)| log[mark.min(log.len())..].to_vec())
        .collect()
}

/// The one parent each object went to; fails if an object went to more than one.
fn owners(logs: &[Vec<ParentRequest>], set: &[Object]) -> HashMap<String, usize> {
    let by_uri = parents_by_uri(logs);
    let mut owners = HashMap::new();
    for object in set {
        let parents = by_uri.get(&object.path).cloned().unwrap_or_default();
        assert_eq!(
            parents.len(),
            1,
            "{} went to parents {parents:?}: every block of an object must go to one parent",
            object.path
        );
        owners.insert(object.path.clone(), parents[0]);
    }
    owners
}

/// Every range an edge asked a parent for starts on a block (= slice) boundary and ends on
/// one or at the object's end: the stable boundaries a slice cache keys on.
fn assert_block_aligned(logs: &[Vec<ParentRequest>], set: &[Object]) {
    let sizes: HashMap<&str, u64> = set
        .iter()
        .map(|o| (o.path.as_str(), o.data.len() as u64))
        .collect();
    for request in logs.iter().flatten() {
        let Some(&size) = sizes.get(request.uri.as_str()) else {
            continue;
        };
        let (first, last) = request
            .range
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("an edge request without a plain range: {request:?}"));
        let end = last + 1;
        assert!(
            first % SLICE == 0 && (end % SLICE == 0 || end >= size),
            "an edge asked for a range off the block boundaries: {request:?}"
        );
    }
}

/// One origin's entry in `ston-fs stats --json`.
fn origin_stats(stats: &serde_json::Value, url: &str) -> serde_json::Value {
    stats["origins"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["origin"] == url))
        .cloned()
        .unwrap_or_else(|| panic!("no origin {url} in stats:\n{stats:#}"))
}

fn state_of(edge: &Mount, url: &str) -> String {
    let stats = stats_json(edge.mountpoint());
    origin_stats(&stats, url)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// N = 1, 2, 4 and 8 edges read the same objects through three parents. With hashing, each
/// object goes to one parent from every edge, the origin sends each slice about once, and
/// the parents hold about one copy; round robin, in the same run, costs more of both.
#[test]
fn hashing_keeps_the_origin_at_one_fetch_per_slice_as_edges_grow() {
    let Some(origin) = mount_origin() else { return };
    let set = Arc::new(data_set("scale", 4 * MIB, 2, 11));
    put_all(&[&origin], &set);
    let mut rows = Vec::new();
    for balance in ["hash", "round_robin"] {
        for edges in [1, 2, 4, 8] {
            origin.reset();
            let parents = start_parents(3, origin.addr());
            let mounts = mount_edges(edges, &parent_list(&parents), &format!("balance={balance}"));
            read_everywhere(&mountpoints(&mounts), &set, edges as u64);
            drop(mounts);
            let logs = parent_logs(&parents);
            assert_block_aligned(&logs, &set);
            if balance == "hash" {
                owners(&logs, &set);
            }
            let figures = measure(balance, edges, &origin, &parents);
            eprintln!(
                "{balance:>11} {edges} edges: {:.2} origin fetches per slice, {:.2} copies in the tier ({:.2} by bytes); {} requests, {} slices",
                figures.fetches_per_slice(),
                figures.copies(),
                figures.byte_copies(),
                figures.origin_requests,
                figures.slices
            );
            rows.push(figures);
        }
    }
    let row = |balance: &str, edges: usize| {
        rows.iter()
            .find(|r| r.balance == balance && r.edges == edges)
            .unwrap()
    };
    for figures in rows.iter().filter(|r| r.balance == "hash") {
        assert!(
            figures.fetches_per_slice() <= 1.1 && figures.copies() <= 1.1,
            "with hashing, the origin sends each slice once and the tier holds one copy: {figures:?}"
        );
        assert!(figures.byte_copies() <= 1.1, "{figures:?}");
    }
    let (hash, round_robin) = (row("hash", 8), row("round_robin", 8));
    assert!(
        round_robin.fetches_per_slice() >= 1.5
            && round_robin.fetches_per_slice() > hash.fetches_per_slice() + 0.4,
        "round robin over three parents must cost the origin more: {round_robin:?} vs {hash:?}"
    );
    assert!(
        round_robin.copies() >= 1.5 && round_robin.copies() > hash.copies() + 0.4,
        "round robin must fill every parent with copies: {round_robin:?} vs {hash:?}"
    );
    eprintln!(
        "data set: {} objects, {} bytes",
        set.len(),
        total_bytes(&set)
    );
}

/// In virtual-host mode each `[[vhost]]` table balances over its own origin list: a host
/// with `balance = "hash"` sends every block of an object to one parent, from every edge,
/// while another host of the same mounts, on the global round robin, spreads its objects.
#[test]
fn each_virtual_host_balances_over_its_own_parents() {
    let Some(origin) = mount_origin() else { return };
    let set = Arc::new(data_set("vhost", 4 * MIB, 2, 53));
    put_all(&[&origin], &set);
    let parents = start_parents(3, origin.addr());
    let list = parents
        .iter()
        .map(|p| format!("\"{}\"", p.url()))
        .collect::<Vec<_>>()
        .join(", ");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let edges: Vec<Mount> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let config = dir.path().join("edge.toml");
            let text = format!(
                "cache_dir = \"{cache}\"\nbalance = \"round_robin\"\n\n\
                 [[vhost]]\nname = \"hashed.example\"\norigins = [{list}]\nbalance = \"hash\"\n\n\
                 [[vhost]]\nname = \"spread.example\"\norigins = [{list}]\n",
                cache = dir.path().join("cache").display(),
            );
            std::fs::write(&config, text).unwrap();
            Mount::with_config(&config)
                .opt(EDGE_OPTS)
                .opt(format!("via=edge-{i}"))
                .mount()
        })
        .collect();
    let under =
        |host: &str| -> Vec<PathBuf> { edges.iter().map(|e| e.mountpoint().join(host)).collect() };

    let marks: Vec<usize> = parents.iter().map(Parent::logged_now).collect();
    read_everywhere(&under("hashed.example"), &set, 1);
    let hashed = since(&parent_logs(&parents), &marks);
    assert_block_aligned(&hashed, &set);
    owners(&hashed, &set);

    let marks: Vec<usize> = parents.iter().map(Parent::logged_now).collect();
    read_everywhere(&under("spread.example"), &set, 2);
    let spread = since(&parent_logs(&parents), &marks);
    let by_uri = parents_by_uri(&spread);
    let shared = set
        .iter()
        .filter(|o| by_uri.get(&o.path).is_some_and(|p| p.len() > 1))
        .count();
    assert!(
        shared > 0 && spread.iter().all(|log| !log.is_empty()),
        "round robin must spread the other host's objects over every parent: {by_uri:?}"
    );
}

/// A parent is killed while three edges read: no read fails or differs, only that parent's
/// keys move (each to one other parent, the same from every edge), and once it restarts
/// and the edges readmit it, exactly its keys come back to it.
#[test]
fn a_parent_killed_mid_run_moves_only_its_keys_and_gets_them_back() {
    let Some(origin) = mount_origin() else { return };
    let set = Arc::new(data_set("kill", 2 * MIB, 6, 23));
    put_all(&[&origin], &set);
    let mut parents = start_parents(3, origin.addr());
    let list = parent_list(&parents);

    // Phase 1: the owner of every object.
    let first = mount_edges(2, &list, "balance=hash");
    read_everywhere(&mountpoints(&first), &set, 1);
    drop(first);
    let logs = parent_logs(&parents);
    let owners = owners(&logs, &set);
    let victim = 1;
    let victim_url = parents[victim].url();
    let victim_keys: HashSet<&String> = owners
        .iter()
        .filter(|(_, &owner)| owner == victim)
        .map(|(path, _)| path)
        .collect();
    let share = victim_keys.len() as f64 / set.len() as f64;
    assert!(
        (0.15..=0.55).contains(&share),
        "the victim owns {share:.2} of the keys; about a third expected"
    );

    // Phase 2: three fresh edges read everything; the victim dies mid-run.
    let marks: Vec<usize> = logs.iter().map(Vec::len).collect();
    let edges = mount_edges(3, &list, "balance=hash");
    let readers = start_reading(&mountpoints(&edges), &set, 2);
    let wanted = victim_keys.len() / 2;
    wait_until("phase 2 reaching the victim", READ_BOUND, || {
        parents[victim].logged_now().saturating_sub(marks[victim]) >= wanted
    });
    parents[victim].kill();
    readers.finish();
    let after_kill = since(&parent_logs(&parents), &marks);
    for (uri, serving) in parents_by_uri(&after_kill) {
        let Some(&owner) = owners.get(&uri) else {
            continue; // the directory's own lookups
        };
        if owner == victim {
            let others: Vec<usize> = serving.into_iter().filter(|&p| p != victim).collect();
            assert!(
                others.len() <= 1,
                "{uri} moved to several parents: {others:?}"
            );
        } else {
            assert_eq!(
                serving,
                vec![owner],
                "{uri} is not the victim's, yet it moved"
            );
        }
    }

    // Phase 2b: with the victim down, everything again: exactly its keys move.
    let moved = reread_everywhere(&parents, &edges, &set, 3);
    let mut moved_keys = 0;
    for object in set.iter() {
        let serving = &moved[&object.path];
        let owner = owners[&object.path];
        assert_eq!(serving.len(), 1, "{} went to {serving:?}", object.path);
        if owner == victim {
            moved_keys += 1;
            assert_ne!(serving[0], victim);
        } else {
            assert_eq!(
                serving[0], owner,
                "{} moved though its parent is up",
                object.path
            );
        }
    }
    assert_eq!(moved_keys, victim_keys.len(), "only the victim's keys move");
    eprintln!(
        "{moved_keys} of {} keys moved ({:.2}) when one of three parents died",
        set.len(),
        moved_keys as f64 / set.len() as f64
    );
    for edge in &edges {
        let stats = stats_json(edge.mountpoint());
        let dead = origin_stats(&stats, &victim_url);
        assert_eq!(dead["state"], "excluded", "{stats:#}");
        assert!(dead["failures"].as_u64().unwrap_or(0) >= 3, "{stats:#}");
    }

    // Phase 3: the victim restarts with its cache; once readmitted, its keys come back.
    parents[victim].restart();
    for edge in &edges {
        wait_until(
            "the edges readmitting the victim",
            Duration::from_secs(30),
            || state_of(edge, &victim_url) != "excluded",
        );
    }
    let back = reread_everywhere(&parents, &edges, &set, 4);
    for object in set.iter() {
        assert_eq!(
            back[&object.path],
            vec![owners[&object.path]],
            "{} is not back with its own parent",
            object.path
        );
    }
}

/// Every parent is down: reads go straight to the standby (the origin itself), none fails.
/// Once the parents are back and readmitted, data requests go through them again.
#[test]
fn a_standby_serves_only_while_every_parent_is_down() {
    let Some(origin) = mount_origin() else { return };
    let set = data_set("standby", MIB, 3, 37);
    let third = set.len() / 3;
    let parts: Vec<Arc<Vec<Object>>> = set
        .chunks(third)
        .take(3)
        .map(|part| Arc::new(part.to_vec()))
        .collect();
    put_all(&[&origin], &set);
    let mut parents = start_parents(3, origin.addr());
    let options = format!("balance=hash,standby={}", origin.url());
    let edges = mount_edges(2, &parent_list(&parents), &options);

    // Everything up: data requests reach the origin through the parents only.
    read_everywhere(&mountpoints(&edges), &parts[0], 1);
    // No settling: the origin logs a request as it arrives, and the standby's health probes
    // (every 0.2 s) never let it go quiet.
    let direct = |origin: &Origin| -> Vec<String> {
        let requests = origin.requests();
        let data = requests.iter().filter(|r| r.path != "/");
        let vias = data.map(|r| r.header("via").unwrap_or_default().to_string());
        vias.filter(|via| !via.contains("(nginx)")).collect()
    };
    assert_eq!(
        direct(&origin),
        Vec::<String>::new(),
        "the standby took data requests"
    );

    // Every parent down: the standby serves, and every read is exact.
    for parent in &mut parents {
        parent.kill();
    }
    origin.reset();
    read_everywhere(&mountpoints(&edges), &parts[1], 2);
    let direct_vias = direct(&origin);
    assert!(!direct_vias.is_empty(), "nothing reached the standby");
    for via in &direct_vias {
        assert!(
            via.starts_with("1.1 edge-") && via.ends_with(" (ston-fs)") && !via.contains(','),
            "a request to the standby did not come straight from an edge: {via:?}"
        );
    }
    for edge in &edges {
        let stats = stats_json(edge.mountpoint());
        let standby = origin_stats(&stats, &origin.url());
        assert_eq!(standby["role"], "standby", "{stats:#}");
        // Its row is labelled with its own name, not the first origin's (issue 20).
        let own_name = origin
            .url()
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        assert_eq!(standby["site"], own_name.as_str(), "{stats:#}");
        assert!(standby["bytes"].as_u64().unwrap_or(0) > 0, "{stats:#}");
        for parent in &parents {
            assert_eq!(origin_stats(&stats, &parent.url())["state"], "excluded");
        }
    }

    // Parents back: once readmitted, the data goes through them again.
    for parent in &mut parents {
        parent.restart();
    }
    for edge in &edges {
        wait_until(
            "the edges readmitting the parents",
            Duration::from_secs(30),
            || {
                parents
                    .iter()
                    .all(|p| state_of(edge, &p.url()) != "excluded")
            },
        );
    }
    origin.reset();
    read_everywhere(&mountpoints(&edges), &parts[2], 3);
    assert_eq!(
        direct(&origin),
        Vec::<String>::new(),
        "the standby still took data requests after the parents came back"
    );
    assert!(origin.requests().iter().any(|r| r.path != "/"));
}

/// Through the tier, range requests stay pinned with If-Range, a revalidation after the
/// TTL is a conditional probe the parent answers 304 from its cache, and the Via header
/// names the edge (and the parent, to the origin).
#[test]
fn conditional_probes_if_range_and_via_pass_through_the_tier() {
    let Some(origin) = mount_origin() else { return };
    let path = "/cond/movie.bin";
    let entry = origin.put(path, pattern(5, 3 * MIB + 512 * KIB));
    let parents = start_parents(3, origin.addr());
    let edge = Mount::builder(parent_list(&parents))
        .opt(EDGE_OPTS)
        .opt("balance=hash,via=edge-a,ttl=2")
        .mount();
    let file = edge.path(&path[1..]);
    assert_file_matches(&file, &entry.data, 256 * KIB);

    let logs = parent_logs(&parents);
    let owner = owners(
        &logs,
        &[Object {
            path: path.into(),
            data: entry.data.clone(),
        }],
    )[path];
    let asked: Vec<&ParentRequest> = logs[owner].iter().filter(|r| r.uri == path).collect();
    assert!(asked.len() >= 2, "{}", parents[owner].describe());
    for request in &asked {
        assert_eq!(request.status, 206, "{request:?}");
        assert_eq!(request.via, "1.1 edge-a (ston-fs)", "{request:?}");
    }
    let pinned: Vec<&&ParentRequest> = asked.iter().filter(|r| !r.if_range.is_empty()).collect();
    assert_eq!(
        pinned.len(),
        asked.len() - 1,
        "every fetch after the first probe is pinned"
    );
    for request in pinned {
        assert_eq!(request.if_range, entry.etag, "{request:?}");
    }
    origin.settle();
    // The directory `/cond` hashes to its own parent; the object's requests come via its owner.
    for request in origin.requests() {
        let via = request.header("via").unwrap_or_default();
        let parent = via
            .strip_prefix("1.1 edge-a (ston-fs), 1.1 parent-")
            .and_then(|rest| rest.strip_suffix(" (nginx)"));
        assert!(parent.is_some(), "{request:?}");
        if request.path == path {
            assert_eq!(parent, Some(owner.to_string().as_str()), "{request:?}");
        }
    }

    // After the TTL: a conditional probe, answered 304 by the parent's cache.
    let origin_requests = origin.request_count_for(path);
    let mark = logs[owner].len();
    std::thread::sleep(Duration::from_millis(2500));
    drop_page_cache(&file);
    assert_file_matches(&file, &entry.data, 256 * KIB);
    let later = parents[owner].requests();
    let revalidations: Vec<&ParentRequest> =
        later[mark..].iter().filter(|r| r.uri == path).collect();
    assert!(
        !revalidations.is_empty(),
        "no revalidation reached the parent"
    );
    for request in revalidations {
        assert_eq!(request.status, 304, "the edge kept its blocks: {request:?}");
        assert_eq!(request.if_none_match, entry.etag, "{request:?}");
    }
    origin.settle();
    assert_eq!(
        origin.request_count_for(path),
        origin_requests,
        "the parent answered the revalidation from its cache"
    );
}

/// The object changes at the origin after the parent cached its first slice: the parent now
/// holds slices of two versions. A read of the version the edge opened, pinned with If-Range,
/// can only fail (EIO); it never returns the new bytes or a mix.
#[test]
fn a_version_change_inside_the_tier_is_never_served_mixed() {
    let Some(origin) = mount_origin() else { return };
    let path = "/change/obj.bin";
    let old = origin.put(path, pattern(61, 4 * MIB));
    let parents = start_parents(1, origin.addr());
    let edge = Mount::builder(parent_list(&parents))
        .opt(EDGE_OPTS)
        .opt("readahead_max=0")
        .mount();
    let file = File::open(edge.path(&path[1..])).expect("open");
    no_kernel_readahead(&file);
    let head = pread_full(&file, 0, 4096).expect("first block");
    assert_bytes_eq(&head, &old.data[..4096], "first block");

    origin.replace(path, pattern(62, 4 * MIB));
    let at = 2 * MIB + 100;
    let read = pread_full(&file, at as u64, 4096);
    match &read {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Ok(got) => panic!(
            "the parent has no slice of the old version at {at}, yet the read returned \
             {} bytes (old version's: {}):\n{}",
            got.len(),
            got[..] == old.data[at..at + got.len()],
            parents[0].describe()
        ),
    }
    let asked = parents[0].requests();
    let pinned = asked
        .iter()
        .filter(|r| r.uri == path && !r.if_range.is_empty());
    assert!(
        pinned.into_iter().all(|r| r.if_range == old.etag),
        "{}",
        parents[0].describe()
    );
}

/// Three "parents" (in-process origins, so faults can be injected): one answers 503, later
/// another answers slower than `receive_timeout`. Each sick one is excluded, only its keys
/// move, reads stay exact, and the per-origin figures of `ston-fs stats` (text and JSON) and
/// Prometheus show each parent's requests, bytes, failures and state.
#[test]
fn a_sick_parent_is_excluded_and_only_its_keys_move() {
    common::require_mount!();
    let parents: Vec<Origin> = (0..3).map(|_| Origin::start()).collect();
    let set = Arc::new(data_set("sick", 256 * KIB, 5, 53));
    put_all(&parents.iter().collect::<Vec<_>>(), &set);
    let metrics_port = free_port();
    let list = parents
        .iter()
        .map(Origin::url)
        .collect::<Vec<_>>()
        .join(",");
    let edge = Mount::builder(list)
        .opt(EDGE_OPTS)
        .opt(format!(
            "balance=hash,readahead_max=0,metrics_addr=127.0.0.1:{metrics_port}"
        ))
        .mount();
    let mountpoint = vec![edge.mountpoint().to_path_buf()];
    // Which parents answered each path; a sick parent answered nothing useful (its stalled
    // requests were logged with the status they would have had).
    let served_by = |parents: &[Origin], sick: Option<usize>| -> HashMap<String, Vec<usize>> {
        let mut by_path: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, parent) in parents.iter().enumerate() {
            if Some(i) != sick {
                // (A sick one is probed every 0.2 s: it never goes quiet.)
                parent.settle();
            }
            for request in parent.requests() {
                let good = request.status < 500 && request.path != "/" && Some(i) != sick;
                let serving = by_path.entry(request.path.clone()).or_default();
                if good && !serving.contains(&i) {
                    serving.push(i);
                }
            }
        }
        by_path
    };

    read_everywhere(&mountpoint, &set, 1);
    let owners: HashMap<String, usize> = served_by(&parents, None)
        .into_iter()
        .filter(|(path, _)| set.iter().any(|o| &o.path == path))
        .map(|(path, serving)| {
            assert_eq!(serving.len(), 1, "{path} went to {serving:?}");
            (path, serving[0])
        })
        .collect();
    assert_eq!(owners.len(), set.len());

    // 5xx: parent 0 is excluded, its keys move, no other key does.
    // 6 s without headers (receive_timeout is 3): parent 1 is excluded the same way (parent
    // 0 recovers first).
    let sick_phases = [
        (0, FaultAction::Status(503)),
        (
            1,
            FaultAction::StallHeaders(Stall::For(Duration::from_secs(6))),
        ),
    ];
    // What parent 2, never sick, has received in all; its log is reset every phase. Bytes
    // are those of file answers: a directory's redirect body is never read.
    let mut healthy_received = (0, 0);
    let file_bytes =
        |parent: &Origin| -> u64 { set.iter().map(|o| parent.bytes_sent_for(&o.path)).sum() };
    for (sick, fault) in sick_phases {
        for parent in &parents {
            parent.clear_faults();
        }
        for parent in &parents {
            wait_until("every parent readmitted", Duration::from_secs(30), || {
                state_of(&edge, &parent.url()) != "excluded"
            });
        }
        parents[sick].add_fault(Fault::global(fault));
        parents[2].settle();
        healthy_received.0 += parents[2].request_count();
        healthy_received.1 += file_bytes(&parents[2]);
        for parent in &parents {
            parent.reset();
        }
        purge_everything(std::slice::from_ref(&edge));
        read_everywhere(&mountpoint, &set, 10 + sick as u64);
        let now = served_by(&parents, Some(sick));
        let sick_data = parents[sick]
            .requests()
            .into_iter()
            .filter(|r| r.path != "/");
        let sick_data = sick_data.count();
        assert!(
            sick_data <= 3,
            "a sick parent gets origin_fail_threshold (3) data requests, then none: {}",
            parents[sick].describe_requests()
        );
        for object in set.iter() {
            let serving = now.get(&object.path).cloned().unwrap_or_default();
            let owner = owners[&object.path];
            assert_eq!(serving.len(), 1, "{} went to {serving:?}", object.path);
            if owner == sick {
                assert_ne!(
                    serving[0], sick,
                    "{} stayed with a sick parent",
                    object.path
                );
            } else {
                assert_eq!(
                    serving[0], owner,
                    "{} moved though its parent is fine",
                    object.path
                );
            }
        }
        let stats = stats_json(edge.mountpoint());
        let sick_stats = origin_stats(&stats, &parents[sick].url());
        assert_eq!(sick_stats["state"], "excluded", "{stats:#}");
        assert!(
            sick_stats["failures"].as_u64().unwrap_or(0) >= 3,
            "{stats:#}"
        );
    }

    // Per-origin figures. Parent 2 was never sick, so never probed: the edge's count of
    // requests and bytes is what parent 2 received, and Prometheus says the same as JSON.
    parents[2].settle();
    healthy_received.0 += parents[2].request_count();
    healthy_received.1 += file_bytes(&parents[2]);
    let stats = stats_json(edge.mountpoint());
    let healthy = origin_stats(&stats, &parents[2].url());
    assert_eq!(healthy["state"], "healthy", "{stats:#}");
    assert_eq!(healthy["failures"], 0, "{stats:#}");
    assert_eq!(healthy["requests"], healthy_received.0, "{stats:#}");
    assert_eq!(healthy["bytes"], healthy_received.1, "{stats:#}");
    let metrics = scrape_metrics(metrics_port);
    let sample = |name: &str, origin: &str, extra: &str| -> Option<f64> {
        let labels = format!("origin=\"{origin}\",role=\"active\"{extra}}}");
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&labels))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let healthy_url = parents[2].url();
    assert_eq!(
        sample("stonfs_origin_sent_requests_total", &healthy_url, ""),
        Some(healthy_received.0 as f64),
        "{metrics}"
    );
    assert_eq!(
        sample("stonfs_origin_received_bytes_total", &healthy_url, ""),
        Some(healthy_received.1 as f64),
        "{metrics}"
    );
    assert_eq!(
        sample("stonfs_origin_failures_total", &healthy_url, ""),
        Some(0.0),
        "{metrics}"
    );
    let stalled = parents[1].url();
    assert_eq!(
        sample("stonfs_origin_state", &stalled, ",state=\"excluded\""),
        Some(1.0),
        "{metrics}"
    );
    assert!(sample("stonfs_origin_failures_total", &stalled, "").unwrap_or(0.0) >= 3.0);
    let text = run_cli(
        [OsStr::new("stats"), edge.mountpoint().as_os_str()],
        CLI_BOUND,
    );
    assert!(text.success(), "{}", text.describe());
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains(&stalled))
        .unwrap_or_else(|| panic!("parent 1 is not in the stats text:\n{}", text.stdout));
    assert!(
        line.contains("active excluded") && line.contains("failures"),
        "{line}"
    );
}

/// `GET /metrics` from the edge's Prometheus endpoint (bounded retries while it starts).
fn scrape_metrics(port: u16) -> String {
    for _ in 0..100 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut answer).is_ok()
            {
                if let Some((_, body)) = answer.split_once("\r\n\r\n") {
                    return body.to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the metrics endpoint on port {port} never answered");
}

/// The README shows the parent configuration these tests run, exactly.
#[test]
fn the_readme_shows_the_parent_configuration_the_tests_run() {
    common::require_mount!();
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(common::tier::PARENT_TEMPLATE),
        "README's Scaling out section must show benches/tier-parent.conf.in as it is"
    );
}
