//! The file-system watcher of the inbox: native events (inotify on Linux) through
//! `notify-debouncer-full`, or polling where native events are unavailable (network and WSL
//! mounts, the inotify limits reached) or when asked for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use notify_debouncer_full::{
    DebounceEventHandler, DebounceEventResult, Debouncer, NoCache, RecommendedCache,
    new_debouncer_opt,
};

use crate::{CoreError, Result};

/// Which kind of watcher to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// Native events, falling back to polling when they are unavailable.
    #[default]
    Auto,
    /// Poll the folder (for network mounts, or wherever native events are unreliable).
    Poll,
}

/// The running watcher, owning its debouncer: dropping it stops watching.
pub struct FolderWatcher {
    inner: Inner,
    /// What runs: `inotify`, `poll`, ... for messages.
    pub kind: String,
    /// Why polling was chosen, when it was not asked for.
    pub fallback: Option<String>,
}

/// Held only to be dropped: dropping a debouncer stops its threads and the watch.
enum Inner {
    Native {
        _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    },
    Poll {
        _debouncer: Debouncer<PollWatcher, NoCache>,
    },
}

impl std::fmt::Debug for FolderWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatcher")
            .field("kind", &self.kind)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl FolderWatcher {
    /// Watches `dir`, delivering debounced events (`debounce` quiet time per path) to
    /// `handler`. With [`WatchMode::Auto`], a native watcher is tried first; when it cannot be
    /// set up, or `dir` is on a network or WSL mount (where native events miss changes made by
    /// other machines), polling every `poll_interval` takes over and `fallback` says why.
    pub fn new<F>(
        dir: &Path,
        recursive: bool,
        mode: WatchMode,
        debounce: Duration,
        poll_interval: Duration,
        handler: F,
    ) -> Result<Self>
    where
        F: DebounceEventHandler + Clone,
    {
        let recursive_mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let mut fallback = None;
        if mode == WatchMode::Auto {
            if let Some(fs) = remote_filesystem(dir) {
                fallback = Some(format!(
                    "{} is on a {fs} mount, where native file events miss changes made \
                     elsewhere: polling instead",
                    dir.display()
                ));
            } else {
                match Self::native(dir, recursive_mode, debounce, handler.clone()) {
                    Ok(debouncer) => {
                        return Ok(Self {
                            inner: Inner::Native {
                                _debouncer: debouncer,
                            },
                            kind: format!("{:?}", RecommendedWatcher::kind()).to_lowercase(),
                            fallback: None,
                        });
                    }
                    Err(e) => fallback = Some(format!("{}: polling instead", describe(&e))),
                }
            }
        }
        let config = notify::Config::default().with_poll_interval(poll_interval);
        let mut debouncer =
            new_debouncer_opt::<F, PollWatcher, NoCache>(debounce, None, handler, NoCache, config)
                .map_err(|e| watch_error(dir, &e))?;
        debouncer
            .watch(dir, recursive_mode)
            .map_err(|e| watch_error(dir, &e))?;
        Ok(Self {
            inner: Inner::Poll {
                _debouncer: debouncer,
            },
            kind: "poll".into(),
            fallback,
        })
    }

    fn native<F: DebounceEventHandler>(
        dir: &Path,
        recursive_mode: RecursiveMode,
        debounce: Duration,
        handler: F,
    ) -> notify::Result<Debouncer<RecommendedWatcher, RecommendedCache>> {
        let mut debouncer = new_debouncer_opt::<F, RecommendedWatcher, RecommendedCache>(
            debounce,
            None,
            handler,
            RecommendedCache::new(),
            notify::Config::default(),
        )?;
        debouncer.watch(dir, recursive_mode)?;
        Ok(debouncer)
    }

    /// Whether events come from polling.
    #[must_use]
    pub fn is_polling(&self) -> bool {
        matches!(self.inner, Inner::Poll { .. })
    }
}

/// A watcher error as a sentence, naming the kernel limits when they are the cause (inotify's
/// `ENOSPC`, 28: too many watches; `EMFILE`, 24: too many inotify instances).
#[must_use]
pub fn describe(error: &notify::Error) -> String {
    let limit = match &error.kind {
        notify::ErrorKind::MaxFilesWatch => Some("fs.inotify.max_user_watches"),
        notify::ErrorKind::Io(io) => match io.raw_os_error() {
            Some(28) => Some("fs.inotify.max_user_watches"),
            Some(24) => Some("fs.inotify.max_user_instances"),
            _ => None,
        },
        _ => None,
    };
    match limit {
        Some(setting) => format!(
            "the inotify limit is reached ({error}); raise it with \
             `sudo sysctl {setting}=524288` (and in /etc/sysctl.d to keep it)"
        ),
        None => format!("native file events are unavailable ({error})"),
    }
}

fn watch_error(dir: &Path, error: &notify::Error) -> CoreError {
    CoreError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("cannot watch: {error}")),
    }
}

/// File systems on which native events are incomplete or missing.
const REMOTE: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "drvfs",
    "fuse.sshfs",
    "afs",
    "ceph",
    "glusterfs",
    "fuse.rclone",
    "davfs",
    "virtiofs",
];

/// The file-system type of the mount holding `dir`, when it is a network or WSL mount (Linux,
/// read from `/proc/self/mountinfo`; elsewhere `None`).
#[must_use]
pub fn remote_filesystem(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type(&info, &dir).filter(|fs| REMOTE.contains(&fs.as_str()))
}

/// The file-system type of the longest mount point containing `dir`, from mountinfo text:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn mount_type(mountinfo: &str, dir: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let point = PathBuf::from(point.replace("\\040", " "));
        let Some(fs) = fields.get(dash + 1) else {
            continue;
        };
        let depth = point.components().count();
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, (*fs).to_owned()));
        }
    }
    best.map(|(_, fs)| fs)
}

/// A cloneable handler that forwards debounced results to a channel.
#[derive(Clone)]
pub(crate) struct Forward(pub std::sync::mpsc::Sender<super::Msg>);

impl DebounceEventHandler for Forward {
    fn handle_event(&mut self, result: DebounceEventResult) {
        let _ = self.0.send(super::Msg::Events(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_point_decides() {
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /mnt/share rw,relatime shared:20 - nfs4 server:/export rw
41 22 0:41 / /mnt/share/local rw - ext4 /dev/vdb rw
42 22 0:42 / /mnt/c rw - 9p drvfs rw
43 22 0:43 / /mnt/with\\040space rw - cifs //srv/x rw";
        let t = |p: &str| mount_type(info, Path::new(p));
        assert_eq!(t("/home/me/watch").as_deref(), Some("ext4"));
        assert_eq!(t("/mnt/share/watch").as_deref(), Some("nfs4"));
        assert_eq!(t("/mnt/share/local/watch").as_deref(), Some("ext4"));
        assert_eq!(t("/mnt/c/Users").as_deref(), Some("9p"));
        assert_eq!(t("/mnt/with space/in").as_deref(), Some("cifs"));
    }

    #[test]
    fn inotify_limits_are_named() {
        let watches = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert!(describe(&watches).contains("fs.inotify.max_user_watches"));
        let instances = notify::Error::io(std::io::Error::from_raw_os_error(24));
        assert!(describe(&instances).contains("fs.inotify.max_user_instances"));
        let enospc = notify::Error::io(std::io::Error::from_raw_os_error(28));
        assert!(describe(&enospc).contains("fs.inotify.max_user_watches"));
        let other = notify::Error::generic("boom");
        assert!(describe(&other).contains("unavailable"));
    }
}
