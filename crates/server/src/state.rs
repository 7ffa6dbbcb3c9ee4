//! What every request shares: the model pool (once loaded), the uploads folder and the watch
//! folder whose queue receives labels.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use cxr_core::input::Gate;
use cxr_core::pool::ModelPool;
use cxr_core::queue::ID_LEN;
use cxr_core::service::Service;

use crate::error::ApiError;
use crate::limits::{BodyBudget, Limits};

/// Seconds a client is told to wait before trying again when every worker is busy.
pub const BUSY_RETRY_SECONDS: u64 = 2;

/// The loaded models: the pool and what the routes need to know about its classifier.
pub struct Models {
    pub pool: ModelPool<Service>,
    /// The classifier's classes; the first is the positive class.
    pub classes: Vec<String>,
    /// The models' fingerprint (part of every cache key).
    pub fingerprint: String,
}

impl Models {
    /// Asks a worker for the classifier's classes and the fingerprint (the pool's own state).
    pub fn new(pool: ModelPool<Service>) -> Result<Self, ApiError> {
        let answer = pool.submit(|service: &Service| {
            (
                service.pipeline().classifier.classes().to_vec(),
                service.fingerprint().to_owned(),
            )
        });
        let (classes, fingerprint) = answer
            .recv()
            .map_err(|_| ApiError::internal("the model workers stopped"))?
            .map_err(|p| ApiError::internal(p.to_string()))?;
        Ok(Self {
            pool,
            classes,
            fingerprint,
        })
    }
}

/// Shared by every request.
pub struct AppState {
    models: OnceLock<Models>,
    pub uploads: Uploads,
    pub watch_dir: PathBuf,
    /// How long a request waits for its result before it is answered 503 (the work goes on and
    /// its result is cached, so asking again later is cheap).
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Bound to a loopback address: requests must name a loopback host (no DNS rebinding).
    pub loopback: bool,
    /// Bounds on connections, bodies and the uploads folder.
    pub limits: Limits,
    /// The bytes of request bodies in flight ([`Limits::body_budget`]).
    pub budget: BodyBudget,
}

impl AppState {
    /// Makes the uploads folder (`data_dir/uploads`, mode 700) if needed, with the default
    /// [`Limits`].
    pub fn new(
        data_dir: &Path,
        watch_dir: PathBuf,
        request_timeout: Duration,
        max_body: usize,
    ) -> std::io::Result<Self> {
        Self::with_limits(
            data_dir,
            watch_dir,
            request_timeout,
            max_body,
            Limits::default(),
        )
    }

    /// Makes the uploads folder (`data_dir/uploads`, mode 700) if needed and brings it under
    /// [`Limits::uploads_max`].
    pub fn with_limits(
        data_dir: &Path,
        watch_dir: PathBuf,
        request_timeout: Duration,
        max_body: usize,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let uploads = Uploads::create(&data_dir.join("uploads"))?
            .capped(limits.uploads_max, Some(watch_dir.clone()));
        Ok(Self {
            models: OnceLock::new(),
            uploads,
            watch_dir,
            request_timeout,
            max_body,
            loopback: true,
            budget: BodyBudget::new(limits.body_budget, max_body),
            limits,
        })
    }

    /// Installs the loaded models (once; later calls are ignored).
    pub fn set_models(&self, models: Models) {
        let _ = self.models.set(models);
    }

    /// The models, or 503 while they load.
    pub fn models(&self) -> Result<&Models, ApiError> {
        self.models
            .get()
            .ok_or_else(|| ApiError::unavailable("the models are still loading", 2))
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
    }

    /// Runs `work` on a model worker and awaits its answer without blocking the async threads.
    /// A full queue is 503 at once; an answer that takes longer than the request timeout is
    /// 503 too (the work finishes and is cached).
    pub async fn compute<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Service) -> Result<T, ApiError> + Send + 'static,
    {
        let models = self.models()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        models
            .pool
            .try_submit(move |service: &Service| {
                let outcome = cxr_core::pool::catching(|| work(service)).unwrap_or_else(|p| {
                    Err(ApiError::internal(format!("internal error: {}", p.0)))
                });
                // The client may have gone: nobody to tell.
                let _ = tx.send(outcome);
            })
            .map_err(|_busy| {
                ApiError::unavailable(
                    "every model worker is busy and the queue is full; try again shortly",
                    BUSY_RETRY_SECONDS,
                )
            })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::internal("the model worker stopped")),
            Err(_) => Err(ApiError::unavailable(
                format!(
                    "no result within {} s; the work goes on and its result is cached: ask \
                     again shortly",
                    self.request_timeout.as_secs()
                ),
                5,
            )),
        }
    }
}

/// Checks an image id: the first 16 hex digits of its SHA-256 (as queue entries are named), or
/// all 64; returns the 16-digit id, lower case.
pub fn parse_id(text: &str) -> Result<String, ApiError> {
    let ok =
        (text.len() == ID_LEN || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(text[..ID_LEN].to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid id {:?}: expected {ID_LEN} hex digits (as POST /v1/classifier returns)",
            text.chars().take(80).collect::<String>()
        )))
    }
}

/// Uploaded radiographs, stored by content: `DIR/<id>.<png|jpg|dcm>`, never under a name the
/// client chose. The folder is private to this user (mode 700) and holds at most `cap` bytes:
/// after each store the oldest uploads are removed until it fits, except those with an entry
/// in the watch folder's review queue (the queue keeps its own copy of the image; the upload
/// is kept so that the classification and explainer routes still answer for an image under
/// review).
pub struct Uploads {
    dir: PathBuf,
    cap: u64,
    /// The watch folder whose queue entries keep their uploads.
    watch_dir: Option<PathBuf>,
    /// One store or eviction at a time (the model workers store concurrently).
    lock: Mutex<()>,
}

/// Extensions an upload is stored under, by its content.
const STORED: [&str; 3] = ["png", "jpg", "dcm"];

/// One stored upload, as the eviction sees it.
struct Stored {
    path: PathBuf,
    id: String,
    bytes: u64,
    modified: SystemTime,
}

impl Uploads {
    /// The folder, created private if needed, without a cap.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!(
                "{}: not a folder (a symbolic link?)",
                dir.display()
            )));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cap: u64::MAX,
            watch_dir: None,
            lock: Mutex::new(()),
        })
    }

    /// The same folder holding at most `cap` bytes, sparing the uploads that have an entry in
    /// the queue of `watch_dir`; brought under the cap now (a cap lowered since the last run).
    #[must_use]
    pub fn capped(mut self, cap: u64, watch_dir: Option<PathBuf>) -> Self {
        self.cap = cap;
        self.watch_dir = watch_dir;
        let guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.evict(None);
        drop(guard);
        self
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most bytes the folder holds (`u64::MAX`: no cap).
    #[must_use]
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The stored file of `id` (already checked by [`parse_id`]), or else the image of the
    /// watch folder's queue entry `id` (so an image under review that was never uploaded, or
    /// dropped into the inbox, answers the classification and explainer routes too), if any.
    #[must_use]
    pub fn find(&self, id: &str) -> Option<PathBuf> {
        STORED
            .iter()
            .map(|ext| self.dir.join(format!("{id}.{ext}")))
            .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
            .or_else(|| self.queued(id))
    }

    /// The image of queue entry `id` (exactly that id, not a prefix), checked as the queue
    /// checks it (a plain file inside its entry).
    fn queued(&self, id: &str) -> Option<PathBuf> {
        let queue = cxr_core::queue::Queue::open(self.watch_dir.as_ref()?).ok()?;
        let item = queue.get(id).ok().filter(|item| item.id == id)?;
        Some(item.image_path())
    }

    /// The stored bytes of `id`, read through the input gate; 404 when there is none (also
    /// when it was removed to keep the folder under its cap).
    pub fn read(&self, id: &str) -> Result<(PathBuf, Vec<u8>), ApiError> {
        let missing = || {
            ApiError::not_found(format!(
                "no image {id} (upload it with POST /v1/classifier)"
            ))
        };
        let path = self.find(id).ok_or_else(missing)?;
        match Gate::UNTRUSTED.read(&path) {
            Ok(bytes) => Ok((path, bytes)),
            // Removed since it was found (the cap).
            Err(_) if !path.exists() => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `bytes` (already decoded successfully) as `id`; the same content uploaded again is
    /// kept once (and counts as new for the eviction). Another content under the same id (a
    /// 64-bit collision) is refused. Then the oldest uploads are removed while the folder is
    /// over its cap (never this one, nor one in the review queue).
    pub fn store(&self, id: &str, bytes: &[u8]) -> Result<PathBuf, ApiError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = self.find(id) {
            let same = std::fs::read(&existing).is_ok_and(|b| b == bytes);
            if same {
                if let Ok(file) = std::fs::File::options().append(true).open(&existing) {
                    let _ = file.set_modified(SystemTime::now());
                }
                return Ok(existing);
            }
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("another image is stored as {id} (hash prefix collision)"),
            ));
        }
        let ext = cxr_core::files::extension_from_content(bytes);
        let path = self.dir.join(format!("{id}.{ext}"));
        cxr_core::fsutil::write_atomic(&path, bytes)?;
        self.evict(Some(id));
        Ok(path)
    }

    /// The stored uploads (files named `<id>.<ext>`; anything else in the folder is not ours).
    fn listing(&self) -> Vec<Stored> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let (id, ext) = name.split_once('.')?;
                let ours = STORED.contains(&ext)
                    && id.len() == ID_LEN
                    && id.bytes().all(|b| b.is_ascii_hexdigit());
                let meta = std::fs::symlink_metadata(entry.path()).ok()?;
                (ours && meta.is_file()).then(|| Stored {
                    path: entry.path(),
                    id: id.to_owned(),
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }

    /// Removes the oldest uploads (by the time they were stored) until the folder fits its
    /// cap, sparing `keep` and the queued ones. Called with the lock held.
    fn evict(&self, keep: Option<&str>) {
        if self.cap == u64::MAX {
            return;
        }
        let mut stored = self.listing();
        let mut total: u64 = stored.iter().map(|s| s.bytes).sum();
        if total <= self.cap {
            return;
        }
        stored.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.id.cmp(&b.id)));
        // Uploads with an entry in the review queue are kept.
        let queue = self
            .watch_dir
            .as_ref()
            .and_then(|watch| cxr_core::queue::Queue::open(watch).ok());
        let queued = |id: &str| queue.as_ref().is_some_and(|q| q.entry_dir(id).is_dir());
        let (mut removed, mut freed) = (0_usize, 0_u64);
        for upload in stored {
            if total <= self.cap {
                break;
            }
            if Some(upload.id.as_str()) == keep || queued(&upload.id) {
                continue;
            }
            if std::fs::remove_file(&upload.path).is_ok() {
                total -= upload.bytes;
                removed += 1;
                freed += upload.bytes;
            }
        }
        if removed > 0 {
            tracing::info!(
                "uploads: removed the {removed} oldest ({} MiB) to stay under {} MiB",
                freed >> 20,
                self.cap >> 20
            );
        }
        if total > self.cap {
            tracing::warn!(
                "uploads: {} MiB stored, over the {} MiB cap: the rest are in the review queue \
                 or just stored",
                total >> 20,
                self.cap >> 20
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_the_right_length() {
        assert_eq!(parse_id("0123456789ABCDEF").unwrap(), "0123456789abcdef");
        let full = "a".repeat(64);
        assert_eq!(parse_id(&full).unwrap(), "a".repeat(16));
        for bad in [
            "",
            "0123",
            "0123456789abcdeg",
            "../../etc/passwd",
            "0123456789abcdef0",
            "0123456789abcde\u{e9}",
        ] {
            let e = parse_id(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn uploads_are_private_and_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::create(&dir.path().join("a/uploads")).unwrap();
        let mode = std::fs::metadata(uploads.dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let png = b"\x89PNG fake";
        let path = uploads.store("00000000000000aa", png).unwrap();
        assert!(path.ends_with("00000000000000aa.png"));
        assert_eq!(uploads.store("00000000000000aa", png).unwrap(), path);
        let clash = uploads.store("00000000000000aa", b"other").unwrap_err();
        assert_eq!(clash.status, axum::http::StatusCode::CONFLICT);
        let jpg = uploads.store("00000000000000bb", &[0xff, 0xd8, 1]).unwrap();
        assert!(jpg.ends_with("00000000000000bb.jpg"));
        assert!(uploads.find("00000000000000cc").is_none());
        assert_eq!(
            uploads.read("00000000000000cc").unwrap_err().status,
            axum::http::StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_cap_removes_the_oldest_first_but_not_queued_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let watch = dir.path().join("watch");
        let queue = cxr_core::queue::Queue::create(&watch).unwrap();
        let uploads = Uploads::create(&dir.path().join("uploads"))
            .unwrap()
            .capped(250, Some(watch));
        let png = |fill: u8| {
            let mut bytes = b"\x89PNG".to_vec();
            bytes.resize(100, fill);
            bytes
        };
        let id = |n: u8| format!("{n:016x}");
        std::fs::create_dir_all(queue.entry_dir(&id(1))).unwrap();
        for n in 1..=4 {
            uploads.store(&id(n), &png(n)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // 1 is queued; 2 went when 3 came, 3 when 4 came.
        let kept: Vec<bool> = (1..=4).map(|n| uploads.find(&id(n)).is_some()).collect();
        assert_eq!(kept, [true, false, false, true]);
        // 2 again: 4 goes (the oldest unqueued), and 2 when 5 comes.
        uploads.store(&id(2), &png(2)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        uploads.store(&id(5), &png(5)).unwrap();
        let kept: Vec<bool> = (1..=5).map(|n| uploads.find(&id(n)).is_some()).collect();
        assert_eq!(kept, [true, false, false, false, true]);
        // Lowered since: brought under the new cap when opened.
        let reopened = Uploads::create(uploads.dir()).unwrap().capped(100, None);
        let left = (1..=5).filter(|n| reopened.find(&id(*n)).is_some()).count();
        assert_eq!(left, 1);
    }
}
