//! From file-system events to what the watcher should do: a pure function, so that recorded
//! event sequences can be replayed in tests (see `test_cases/`). Events are hints only: a
//! "check" means "look at this file once it has been quiet", never "this file is complete".

use std::path::{Component, Path, PathBuf};

use notify::Event;
use notify::event::{EventKind, MetadataKind, ModifyKind, RenameMode};

use crate::files::{EXTENSIONS, has_supported_extension};

/// What to do about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A radiograph may have appeared or changed: look at it once it has been quiet.
    Check(PathBuf),
    /// The path left the inbox (removed, or renamed away): drop pending work on it.
    Forget(PathBuf),
    /// List this folder again: a folder appeared (recursive mode), the inbox's permissions
    /// changed (files that could not be moved may move now), or events were lost.
    Scan(PathBuf),
    /// A name the watcher leaves alone, and why.
    Ignore(PathBuf, Ignored),
}

/// Why a name is left in the inbox untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A file still being written under a temporary name (`.part`, `.tmp`, `~`, ...): it is
    /// taken when renamed to its final name.
    Temporary,
    /// A hidden file or a file in a hidden folder (editors, sync tools, write-then-rename).
    Hidden,
    /// Not one of the supported extensions ([`EXTENSIONS`]).
    Unsupported,
}

impl Ignored {
    /// Whether to tell the user (once): a temporary or hidden file is expected to be renamed,
    /// an unsupported one sits there until someone removes it.
    #[must_use]
    pub fn worth_reporting(self) -> bool {
        self == Self::Unsupported
    }

    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Self::Temporary => "temporary name: taken once renamed to its final name".into(),
            Self::Hidden => "hidden file".into(),
            Self::Unsupported => format!(
                "not a radiograph file name (expected .{}); left in the inbox",
                EXTENSIONS.join(", .")
            ),
        }
    }
}

/// Suffixes of names that writers use while a file is incomplete.
const TEMPORARY_SUFFIXES: &[&str] = &[
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    "~",
    ".crdownload",
    ".download",
    ".swp",
    ".filepart",
];

/// How the watcher sees a file name (the last path component).
#[must_use]
pub fn classify_name(name: &str) -> Option<Ignored> {
    let lower = name.to_lowercase();
    if name.starts_with('.') {
        Some(Ignored::Hidden)
    } else if TEMPORARY_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        Some(Ignored::Temporary)
    } else if has_supported_extension(name) {
        None
    } else {
        Some(Ignored::Unsupported)
    }
}

/// What a path inside the inbox means, or `None` when it is not the watcher's business
/// (outside the inbox, the inbox itself, or in a sub-folder when not recursive).
fn consider(inbox: &Path, recursive: bool, path: &Path) -> Option<Action> {
    let relative = path.strip_prefix(inbox).ok()?;
    let parts: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    let (name, folders) = parts.split_last()?;
    if !recursive && !folders.is_empty() {
        return None;
    }
    if folders.iter().any(|f| f.to_string_lossy().starts_with('.')) {
        return Some(Action::Ignore(path.to_path_buf(), Ignored::Hidden));
    }
    Some(match classify_name(&name.to_string_lossy()) {
        None => Action::Check(path.to_path_buf()),
        Some(why) => Action::Ignore(path.to_path_buf(), why),
    })
}

/// What a file found by listing the inbox means (`path` is a file, not a folder): like an
/// event creating it.
#[must_use]
pub fn actions_for_file(inbox: &Path, recursive: bool, path: &Path) -> Option<Action> {
    consider(inbox, recursive, path)
}

/// A name without an extension may be a folder moved into a recursive inbox.
fn maybe_folder(inbox: &Path, recursive: bool, path: &Path) -> Option<Action> {
    let name = path.file_name()?.to_string_lossy();
    (recursive
        && path != inbox
        && path.starts_with(inbox)
        && !name.starts_with('.')
        && !name.contains('.'))
    .then(|| Action::Scan(path.to_path_buf()))
}

/// The actions for a batch of (debounced) events on `inbox`, at most one per path, in the order
/// the paths were last touched. Access events (open, read, close) are dropped, as are events
/// outside the inbox.
#[must_use]
pub fn actions(inbox: &Path, recursive: bool, events: &[Event]) -> Vec<Action> {
    let mut out: Vec<Action> = Vec::new();
    let mut push = |action: Option<Action>| {
        let Some(action) = action else { return };
        let path = match &action {
            Action::Check(p) | Action::Forget(p) | Action::Scan(p) | Action::Ignore(p, _) => {
                p.clone()
            }
        };
        out.retain(|a| {
            !matches!(a, Action::Check(p) | Action::Forget(p) | Action::Ignore(p, _) if *p == path)
        });
        if !out.contains(&action) {
            out.push(action);
        }
    };
    for event in events {
        if event.need_rescan() {
            push(Some(Action::Scan(inbox.to_path_buf())));
            continue;
        }
        let forget = |p: &PathBuf| {
            p.starts_with(inbox)
                .then(|| Action::Forget(p.clone()))
                .filter(|_| p != inbox)
        };
        match event.kind {
            EventKind::Access(_)
            | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => {}
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for p in &event.paths {
                    push(forget(p));
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to, ..] = event.paths.as_slice() {
                    push(forget(from));
                    push(
                        maybe_folder(inbox, recursive, to)
                            .or_else(|| consider(inbox, recursive, to)),
                    );
                }
            }
            EventKind::Modify(ModifyKind::Name(_)) => {
                for p in &event.paths {
                    push(
                        maybe_folder(inbox, recursive, p).or_else(|| consider(inbox, recursive, p)),
                    );
                }
            }
            EventKind::Create(notify::event::CreateKind::Folder) => {
                for p in &event.paths {
                    push(maybe_folder(inbox, recursive, p));
                }
            }
            EventKind::Modify(ModifyKind::Metadata(_))
                if event.paths.iter().any(|p| p == inbox) =>
            {
                // The inbox's own permissions changed: what could not be moved may move now.
                push(Some(Action::Scan(inbox.to_path_buf())));
            }
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
                for p in &event.paths {
                    push(consider(inbox, recursive, p));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, Flag, RemoveKind};

    /// One recorded sequence: `test_cases/*.json`.
    #[derive(serde::Deserialize)]
    struct Case {
        description: String,
        #[serde(default)]
        recursive: bool,
        /// `[kind, path...]`, with kinds as notify prints them (`Create(File)`) and paths
        /// relative to the watch folder.
        events: Vec<Vec<String>>,
        /// `[action, path]` (`check`, `forget`, `scan`, `temporary`, `hidden`, `unsupported`).
        expected: Vec<(String, String)>,
    }

    fn kind(text: &str) -> EventKind {
        match text {
            "Create(File)" => EventKind::Create(CreateKind::File),
            "Create(Folder)" => EventKind::Create(CreateKind::Folder),
            "Create(Any)" => EventKind::Create(CreateKind::Any),
            "Access(Open(Any))" => EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "Access(Close(Write))" => EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "Access(Close(Read))" => EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "Modify(Data(Any))" => EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "Modify(Any)" => EventKind::Modify(ModifyKind::Any),
            "Modify(Metadata(Any))" => EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            "Modify(Metadata(AccessTime))" => {
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))
            }
            "Modify(Name(From))" => EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            "Modify(Name(To))" => EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "Modify(Name(Both))" => EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            "Modify(Name(Any))" => EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
            "Remove(File)" => EventKind::Remove(RemoveKind::File),
            "Remove(Any)" => EventKind::Remove(RemoveKind::Any),
            "Rescan" => EventKind::Other,
            other => panic!("unknown event kind {other}"),
        }
    }

    fn replay(json: &str) {
        let cases: Vec<Case> = serde_json::from_str(json).unwrap();
        let root = Path::new("/w");
        let inbox = root.join("inbox");
        for case in cases {
            let events: Vec<Event> = case
                .events
                .iter()
                .map(|e| {
                    let mut event = Event::new(kind(&e[0]));
                    if e[0] == "Rescan" {
                        event = event.set_flag(Flag::Rescan);
                    }
                    for p in &e[1..] {
                        event = event.add_path(root.join(p));
                    }
                    event
                })
                .collect();
            let got: Vec<(String, String)> = actions(&inbox, case.recursive, &events)
                .into_iter()
                .map(|a| {
                    let (what, path) = match a {
                        Action::Check(p) => ("check", p),
                        Action::Forget(p) => ("forget", p),
                        Action::Scan(p) => ("scan", p),
                        Action::Ignore(p, Ignored::Temporary) => ("temporary", p),
                        Action::Ignore(p, Ignored::Hidden) => ("hidden", p),
                        Action::Ignore(p, Ignored::Unsupported) => ("unsupported", p),
                    };
                    let rel = path.strip_prefix(root).unwrap().display().to_string();
                    (what.to_owned(), rel)
                })
                .collect();
            assert_eq!(got, case.expected, "{}", case.description);
        }
    }

    #[test]
    fn copies_and_renames_into_place() {
        replay(include_str!("test_cases/copy_and_rename.json"));
    }

    #[test]
    fn temporary_hidden_and_other_files() {
        replay(include_str!("test_cases/ignored_names.json"));
    }

    #[test]
    fn removals_moves_and_slow_writes() {
        replay(include_str!("test_cases/moves_and_removals.json"));
    }

    #[test]
    fn folders_permissions_and_lost_events() {
        replay(include_str!("test_cases/folders_and_rescans.json"));
    }

    #[test]
    fn names_are_classified_without_regard_to_case() {
        assert_eq!(classify_name("a.PNG"), None);
        assert_eq!(classify_name("scan.JPEG"), None);
        assert_eq!(classify_name("study.dcm"), None);
        assert_eq!(classify_name("a.png.part"), Some(Ignored::Temporary));
        assert_eq!(classify_name("a.png~"), Some(Ignored::Temporary));
        assert_eq!(classify_name("a.TMP"), Some(Ignored::Temporary));
        assert_eq!(classify_name(".a.png"), Some(Ignored::Hidden));
        assert_eq!(classify_name("png"), Some(Ignored::Unsupported));
        assert_eq!(classify_name(".png"), Some(Ignored::Hidden));
        assert_eq!(classify_name("notes.txt"), Some(Ignored::Unsupported));
    }
}
