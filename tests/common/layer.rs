//! The layer harness: a cache (and the media layer over it) opened on its own runtime, as a
//! mount holds them, driven directly, without FUSE and without root.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ston_fs::base::FsResult;
use ston_fs::cache::{Cache, Object};
use ston_fs::config::Config;
use ston_fs::media::{Media, MediaRequest, MediaView, Presentation};

use super::origin::Origin;

/// The block size every layer test runs with (a few blocks make a multi-block file).
pub const BLOCK: u64 = 64 * 1024;
/// The deadline of one call; generous, since a hang is what it detects.
pub const CALL: Duration = Duration::from_secs(20);

/// A configuration over `origin` with its cache in `dir`; `settings` are `-o` pairs.
pub fn config(origin: &Origin, dir: &Path, settings: &[(&str, &str)]) -> Config {
    let mut config = Config::default();
    config.set("origin", &origin.url()).expect("origin");
    config.cache_dir = dir.to_path_buf();
    config.set("block_size", "64K").expect("block_size");
    config.set("connect_timeout", "2").expect("connect_timeout");
    config.set("receive_timeout", "5").expect("receive_timeout");
    for (key, value) in settings {
        config.set(key, value).expect(key);
    }
    config.validate().expect("valid config");
    config
}

/// A test origin, and an empty folder for a cache of it.
pub fn origin_and_cache_dir() -> (Origin, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("cache folder");
    (Origin::start(), dir)
}

/// The runtime a mount runs its I/O on.
pub fn io_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A cache and the media layer over it, on their own runtime.
pub struct Layer {
    pub cache: Arc<Cache>,
    pub media: Arc<Media>,
    pub runtime: tokio::runtime::Runtime,
}

impl Layer {
    pub fn open(config: Config) -> Layer {
        let runtime = io_runtime();
        let cache = {
            let _inside = runtime.enter();
            Arc::new(Cache::open(config).expect("cache opens"))
        };
        let media = Arc::new(Media::new(cache.clone()));
        Layer {
            cache,
            media,
            runtime,
        }
    }

    /// Journals what is cached and closes, as an unmount does.
    pub fn close(self) {
        self.cache.flush();
        self.crash();
    }

    /// Stops everything and releases the cache folder's lock (as a crash would, minus the
    /// journal records that only `flush` writes).
    pub fn crash(self) {
        let Layer {
            cache,
            media,
            runtime,
        } = self;
        drop(media);
        drop(cache);
        drop(runtime);
    }

    pub fn resolve(&self, path: &str) -> FsResult<Arc<Object>> {
        let deadline = Instant::now() + CALL;
        self.runtime
            .block_on(self.cache.resolve(0, Arc::from(path), deadline))
    }

    pub fn file(&self, path: &str) -> Arc<Object> {
        self.resolve(path)
            .unwrap_or_else(|e| panic!("resolve {path}: {e}"))
    }

    pub fn read(&self, object: &Arc<Object>, range: Range<u64>) -> FsResult<(Bytes, bool)> {
        let deadline = Instant::now() + CALL;
        self.runtime
            .block_on(self.cache.read(object, range, deadline))
    }

    /// Reads the whole object in one call; returns the bytes and whether it was a hit.
    pub fn read_all(&self, object: &Arc<Object>) -> (Bytes, bool) {
        self.read(object, 0..object.size())
            .unwrap_or_else(|e| panic!("read {}: {e}", object.path()))
    }

    /// Waits until every block of `object` reached the cache file (write-behind is async).
    pub fn wait_cached(&self, object: &Object) {
        wait_cached(object);
    }

    pub fn used(&self) -> u64 {
        self.cache.usage().0
    }

    pub fn objects(&self) -> u64 {
        self.cache.usage().2
    }

    pub fn present(&self, object: &Arc<Object>, request: &MediaRequest) -> FsResult<Presentation> {
        let deadline = Instant::now() + CALL;
        self.runtime
            .block_on(self.media.present(object, request, deadline))
    }

    /// The view `request` presents `object` through; panics when it is served unchanged.
    pub fn view(&self, object: &Arc<Object>, request: &MediaRequest) -> MediaView {
        match self.present(object, request) {
            Ok(Presentation::View(view)) => view,
            Ok(Presentation::Unchanged) => panic!("{} is presented unchanged", object.path()),
            Err(e) => panic!("present {}: {e}", object.path()),
        }
    }

    pub fn read_view(&self, object: &Arc<Object>, view: &MediaView, range: Range<u64>) -> Bytes {
        let deadline = Instant::now() + CALL;
        self.runtime
            .block_on(self.media.read_view(object, view, range, deadline))
            .unwrap_or_else(|e| panic!("read {}: {e}", object.path()))
            .0
    }
}

/// Waits until every block of `object` reached the cache file (write-behind is async).
pub fn wait_cached(object: &Object) {
    let give_up = Instant::now() + CALL;
    while !object.fully_cached() {
        assert!(
            Instant::now() < give_up,
            "{} never fully cached",
            object.path()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
