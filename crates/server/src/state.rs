//! What every request shares: the model pool (once loaded), the uploads folder and the watch
//! folder whose queue receives labels.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cxr_core::input::Gate;
use cxr_core::pool::ModelPool;
use cxr_core::queue::ID_LEN;
use cxr_core::service::Service;

use crate::error::ApiError;

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
}

impl AppState {
    /// Makes the uploads folder (`data_dir/uploads`, mode 700) if needed.
    pub fn new(
        data_dir: &Path,
        watch_dir: PathBuf,
        request_timeout: Duration,
        max_body: usize,
    ) -> std::io::Result<Self> {
        Ok(Self {
            models: OnceLock::new(),
            uploads: Uploads::create(&data_dir.join("uploads"))?,
            watch_dir,
            request_timeout,
            max_body,
            loopback: true,
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
/// client chose. The folder is private to this user (mode 700).
pub struct Uploads {
    dir: PathBuf,
}

/// Extensions an upload is stored under, by its content.
const STORED: [&str; 3] = ["png", "jpg", "dcm"];

impl Uploads {
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
        })
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored file of `id` (already checked by [`parse_id`]), if any.
    #[must_use]
    pub fn find(&self, id: &str) -> Option<PathBuf> {
        STORED
            .iter()
            .map(|ext| self.dir.join(format!("{id}.{ext}")))
            .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
    }

    /// The stored bytes of `id`, read through the input gate; 404 when there is none.
    pub fn read(&self, id: &str) -> Result<(PathBuf, Vec<u8>), ApiError> {
        let path = self.find(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "no image {id} (upload it with POST /v1/classifier)"
            ))
        })?;
        let bytes = Gate::UNTRUSTED.read(&path)?;
        Ok((path, bytes))
    }

    /// Stores `bytes` (already decoded successfully) as `id`; the same content uploaded again is
    /// kept once. Another content under the same id (a 64-bit collision) is refused.
    pub fn store(&self, id: &str, bytes: &[u8]) -> Result<PathBuf, ApiError> {
        if let Some(existing) = self.find(id) {
            let same = std::fs::read(&existing).is_ok_and(|b| b == bytes);
            if same {
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
        Ok(path)
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
}
