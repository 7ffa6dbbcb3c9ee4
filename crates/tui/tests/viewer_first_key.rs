//! The first key typed into the viewer is not lost to the terminal graphics query. The real
//! binary runs in a pseudo-terminal (util-linux `script`) with `--image-protocol auto`, so it
//! asks the terminal about pictures at start. Nothing answers unless the test plays the
//! terminal. The key is `j` (next image); it took effect when the viewer starts explaining the
//! second image, which it logs. Every wait is on the log, bounded; none on a fixed sleep.
//!
//! Before the fix, ratatui-image's query thread stayed blocked reading stdin after its timeout
//! and took the first key: the second image was never explained.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FIRST: &str = "hannover_e1446fe8.png";
const SECOND: &str = "nih_00001299_000.png";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Quotes `s` for `sh`.
fn quoted(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', r"'\''"))
}

/// The log's first line containing every one of `needles`; panics after `limit`.
fn wait_for_log(log: &Path, needles: &[&str], limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < limit,
            "no log line with {needles:?} after {limit:?}; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Viewer {
    _dir: tempfile::TempDir,
    log: PathBuf,
    child: Child,
    stdin: ChildStdin,
    /// Signalled once when the viewer has written the graphics query's last part (the status
    /// report request) to the terminal.
    queried: mpsc::Receiver<()>,
    screen: Option<JoinHandle<()>>,
}

impl Viewer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        for name in [FIRST, SECOND] {
            std::fs::copy(repo().join("samples").join(name), images.join(name)).unwrap();
        }
        let log = dir.path().join("cxr.log");
        let viewer = format!(
            "stty rows 48 cols 160 && exec {} tui --device cpu --models {} {} \
             --image-protocol auto --no-cache --watch-dir {} --log {}",
            quoted(Path::new(env!("CARGO_BIN_EXE_cxr"))),
            quoted(&repo().join("models")),
            quoted(&images),
            quoted(&dir.path().join("watch")),
            quoted(&log),
        );
        let mut command = Command::new("script");
        command
            .args(["-q", "-e", "-f", "-c", &viewer, "/dev/null"])
            .env("HOME", dir.path())
            .env("TERM", "xterm-256color")
            .env("RUST_LOG", "info")
            .env_remove("CXR_MODELS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Not tmux, WezTerm, Konsole or iTerm2, whatever runs the tests.
        for var in [
            "TMUX",
            "TERM_PROGRAM",
            "WEZTERM_EXECUTABLE",
            "KONSOLE_VERSION",
            "ITERM_SESSION_ID",
            "LC_TERMINAL",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .expect("util-linux `script` runs the viewer in a pseudo-terminal");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, queried) = mpsc::channel();
        // Drains the screen output (so the viewer never blocks on it) and watches for the query.
        let screen = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buffer = [0_u8; 4096];
            let mut told = false;
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if !told {
                    seen.extend_from_slice(&buffer[..n]);
                    if seen.windows(4).any(|w| w == b"\x1b[5n") {
                        let _ = tx.send(());
                        told = true;
                    }
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        Self {
            _dir: dir,
            log,
            child,
            stdin,
            queried,
            screen: Some(screen),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Quits with `q` and expects a clean exit.
    fn quit(mut self) {
        self.send(b"q");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > Duration::from_secs(30) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.is_none() {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
        if let Some(screen) = self.screen.take() {
            screen.join().unwrap();
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "the viewer did not exit cleanly after q ({status:?}); log:\n{log}"
        );
    }
}

/// The terminal never answers (as in tmux, where the query goes to an outer terminal): the
/// query gives up after its timeout, and the `j` typed afterwards still moves the selection.
#[test]
fn a_key_typed_after_an_unanswered_graphics_query_is_kept() {
    let mut viewer = Viewer::start();
    let line = wait_for_log(
        &viewer.log,
        &["image protocol", "answered=false"],
        Duration::from_secs(120),
    );
    assert!(line.contains("protocol=Halfblocks"), "{line}");
    viewer.send(b"j");
    wait_for_log(
        &viewer.log,
        &["explaining", SECOND],
        Duration::from_secs(120),
    );
    viewer.quit();
}

/// A key typed while the viewer starts (here: before it even asks the terminal, while the
/// models load) is read along with the query's answers and handed to the viewer, not dropped.
#[test]
fn a_key_typed_while_the_viewer_starts_is_kept() {
    let mut viewer = Viewer::start();
    viewer.send(b"j");
    let line = wait_for_log(&viewer.log, &["image protocol"], Duration::from_secs(120));
    assert!(line.contains("keys_kept=1"), "{line}");
    wait_for_log(
        &viewer.log,
        &["explaining", SECOND],
        Duration::from_secs(120),
    );
    viewer.quit();
}

/// The test plays a sixel terminal: it answers the query, with a `j` typed right after the
/// answers in the same write. The viewer picks sixel with the answered cell size and keeps `j`.
#[test]
fn an_answering_terminal_sets_the_protocol_and_a_key_sent_with_the_answers_is_kept() {
    let mut viewer = Viewer::start();
    viewer
        .queried
        .recv_timeout(Duration::from_secs(120))
        .unwrap();
    viewer.send(b"\x1b[?62;4;22c\x1b[6;20;10t\x1b[0nj");
    let line = wait_for_log(&viewer.log, &["image protocol"], Duration::from_secs(30));
    assert!(
        line.contains("protocol=Sixel") && line.contains("answered=true"),
        "{line}"
    );
    wait_for_log(
        &viewer.log,
        &["explaining", SECOND],
        Duration::from_secs(120),
    );
    viewer.quit();
}
