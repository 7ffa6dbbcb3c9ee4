//! Asking the terminal how it draws pictures, without losing a key.
//!
//! ratatui-image's own query (`Picker::from_query_stdio`) reads stdin with a blocking `read` on
//! a thread of its own. When the terminal does not answer in time its caller stops waiting,
//! but the thread stays blocked in that `read`: the next key the user types goes to it (and is
//! dropped) instead of to the viewer's input reader. Inside tmux that is every start, since the
//! query is passed through to an outer terminal that may not answer at all.
//!
//! Here the query is written and its answers read on the calling thread, before the input
//! reader starts, with `poll` and a deadline, so no read is left behind. Whatever arrives that
//! is not an answer (keys typed meanwhile) is decoded into key events and handed to the viewer.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui_image::FontSize;
use ratatui_image::picker::cap_parser::{Parser, QueryStdioOptions, Response};
use ratatui_image::picker::{Picker, ProtocolType};
use rustix::event::{PollFd, PollFlags, Timespec};

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
/// An escape sequence longer than this is not an answer to the query: it is dropped.
const LONGEST_SEQUENCE: usize = 1024;

/// What the query found out, and the keys typed while it ran.
pub struct Answer {
    pub picker: Picker,
    /// Keys that arrived while waiting for the answers, in the order typed.
    pub keys: Vec<KeyEvent>,
    /// Whether the terminal answered completely (its status report arrived). When it did not,
    /// answers may still arrive later, and the input reader has to ignore them.
    pub complete: bool,
}

/// Asks the terminal (stdin/stdout, in raw mode) about graphics, waiting at most `timeout`.
pub fn ask(timeout: Duration) -> io::Result<Answer> {
    // Also lets tmux pass the query through (`allow-passthrough`), as ratatui-image does.
    let is_tmux = Picker::halfblocks().tmux_detected();
    let mut options = QueryStdioOptions {
        timeout,
        ..QueryStdioOptions::default()
    };
    // ratatui-image's own exceptions: WezTerm draws iTerm2 pictures better, Konsole's sixels are
    // broken, and neither does kitty's placeholders right.
    if ["WEZTERM_EXECUTABLE", "KONSOLE_VERSION"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.is_empty()))
    {
        options.blacklist_protocols = vec![ProtocolType::Kitty, ProtocolType::Sixel];
    }
    let query = Parser::query(is_tmux, options);
    let split = exchange(query.as_bytes(), timeout)?;
    let complete = split.complete;
    let (answers, keys) = split.finish();
    Ok(Answer {
        picker: picker_from(&answers, window_font_size()),
        keys,
        complete,
    })
}

/// The terminal crossterm reads keys from: stdin when it is one, else `/dev/tty`.
enum Tty {
    Stdin(io::Stdin),
    Device(File),
}

impl Tty {
    fn open() -> io::Result<Self> {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            Ok(Self::Stdin(stdin))
        } else {
            Ok(Self::Device(File::open("/dev/tty")?))
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Stdin(stdin) => stdin.as_fd(),
            Self::Device(file) => file.as_fd(),
        }
    }
}

/// Writes `query` and reads until the terminal's status report or `timeout`. Reads only what
/// `poll` says is there, straight from the descriptor (no buffer that could keep bytes back
/// from crossterm), so nothing is left waiting on the terminal afterwards.
fn exchange(query: &[u8], timeout: Duration) -> io::Result<Split> {
    let tty = Tty::open()?;
    let fd = tty.fd();
    let deadline = Instant::now() + timeout;
    let mut stdout = io::stdout().lock();
    stdout.write_all(query)?;
    stdout.flush()?;
    let mut split = Split::default();
    let mut buffer = [0_u8; 512];
    while !split.complete {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().contains(PollFlags::IN) {
            break; // hung up or in error: nothing more will come
        }
        let read = rustix::io::read(fd, &mut buffer)?;
        if read == 0 {
            break;
        }
        split.push(&buffer[..read]);
    }
    Ok(split)
}

/// The picker for what the terminal answered, as ratatui-image decides: kitty over sixel, the
/// answered cell size else the one from the window's pixel size; without a cell size only
/// halfblocks. With no graphics answer, the environment's hints (tmux's outer terminal,
/// iTerm2-like terminals) decide, as in `Picker::from_fontsize`.
fn picker_from(answers: &[Response], window_font: Option<FontSize>) -> Picker {
    let mut protocol = None;
    let mut font = None;
    for answer in answers {
        match answer {
            Response::Kitty => protocol = Some(ProtocolType::Kitty),
            Response::Sixel => protocol = protocol.or(Some(ProtocolType::Sixel)),
            Response::CellSize(Some((width, height))) => {
                font = Some(FontSize::new(*width, *height));
            }
            _ => {}
        }
    }
    let Some(font) = font.or(window_font) else {
        return Picker::halfblocks();
    };
    // Deprecated only to steer callers to the query, which ratatui-image cannot do without
    // leaving a read behind; this is its documented way to build a picker from a known size.
    #[allow(deprecated)]
    let mut picker = Picker::from_fontsize(font);
    if let Some(protocol) = protocol {
        picker.set_protocol_type(protocol);
    }
    picker
}

/// The cell size from the window's size in pixels, where the terminal reports one.
fn window_font_size() -> Option<FontSize> {
    let size = crossterm::terminal::window_size().ok()?;
    if size.width == 0 || size.height == 0 || size.columns == 0 || size.rows == 0 {
        return None;
    }
    Some(FontSize::new(
        size.width / size.columns,
        size.height / size.rows,
    ))
}

/// Splits what the terminal sends during the query into its answers and the user's keys.
/// Answers are escape sequences a key never produces: a device attributes report
/// (`CSI ? … c`), a window report (`CSI … t`), a status report (`CSI … n`), kitty's graphics
/// answer (`APC G … ST`) and a colour report (`OSC … ST`). Everything else is typed input.
#[derive(Default)]
pub struct Split {
    /// An escape sequence not yet complete.
    pending: Vec<u8>,
    parser: Parser,
    answers: Vec<Response>,
    typed: Vec<u8>,
    /// The status report, the query's last answer, has arrived: the rest is typed.
    pub complete: bool,
}

/// What the bytes waiting in `pending` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sequence {
    /// More bytes are needed.
    Incomplete,
    /// Complete, and an answer to the query.
    Answer,
    /// Complete, and typed by the user (a plain key, an arrow, Alt with a key…).
    Typed,
    /// Complete, neither: dropped.
    Other,
}

impl Split {
    pub fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.complete {
                self.typed.push(byte);
                continue;
            }
            // A new escape inside an unfinished CSI or SS3 sequence ends it: what came before
            // was cut short (a lone Esc followed by an answer, say).
            if byte == ESC && !self.pending.is_empty() && !in_string(&self.pending) {
                if self.pending == [ESC] {
                    // The Esc key, then a new sequence (an answer, most likely).
                    self.resolve(Sequence::Typed);
                } else {
                    self.pending.clear();
                }
            }
            self.pending.push(byte);
            let kind = classify(&self.pending);
            if kind == Sequence::Incomplete && self.pending.len() > LONGEST_SEQUENCE {
                self.resolve(Sequence::Other);
            } else if kind != Sequence::Incomplete {
                self.resolve(kind);
            }
        }
    }

    fn resolve(&mut self, kind: Sequence) {
        let bytes = std::mem::take(&mut self.pending);
        match kind {
            Sequence::Answer => {
                for &b in &bytes {
                    let answers = self.parser.push(char::from(b));
                    self.complete |= answers.contains(&Response::Status);
                    self.answers.extend(answers);
                }
            }
            Sequence::Typed => self.typed.extend(bytes),
            Sequence::Incomplete | Sequence::Other => {}
        }
    }

    /// The answers, and the keys typed. A lone Esc left at the end was the Esc key; any other
    /// unfinished sequence is dropped.
    #[must_use]
    pub fn finish(mut self) -> (Vec<Response>, Vec<KeyEvent>) {
        if self.pending == [ESC] {
            self.typed.push(ESC);
        }
        (self.answers, decode_keys(&self.typed))
    }
}

/// Whether `pending` is an unfinished string sequence (APC, OSC, DCS), which ends with ESC `\`.
fn in_string(pending: &[u8]) -> bool {
    matches!(pending, [ESC, b'_' | b']' | b'P', ..])
}

fn classify(pending: &[u8]) -> Sequence {
    match pending {
        [] | [ESC] | [ESC, b'O'] => Sequence::Incomplete,
        [ESC, b'[', body @ ..] => match body.split_last() {
            Some((&last, params)) if (0x40..=0x7e).contains(&last) => {
                let answer = match last {
                    b'c' => params.first() == Some(&b'?'),
                    b't' | b'n' => true,
                    _ => false,
                };
                if answer {
                    Sequence::Answer
                } else {
                    Sequence::Typed
                }
            }
            _ => Sequence::Incomplete,
        },
        [ESC, kind @ (b'_' | b']' | b'P'), body @ ..] => {
            let ended = body.ends_with(&[ESC, b'\\']) || body.last() == Some(&BEL);
            match (ended, kind) {
                (false, _) => Sequence::Incomplete,
                (true, b'_') if body.first() == Some(&b'G') => Sequence::Answer,
                (true, b']') => Sequence::Answer,
                (true, _) => Sequence::Other,
            }
        }
        [ESC, b'O', _] => Sequence::Typed,
        // Alt with a character, or a character.
        [ESC, rest @ ..] | rest => utf8_complete(rest),
    }
}

/// Whether `bytes` hold one whole UTF-8 character (or a byte that cannot start one).
fn utf8_complete(bytes: &[u8]) -> Sequence {
    let needed = match bytes.first() {
        Some(b) if b & 0xe0 == 0xc0 => 2,
        Some(b) if b & 0xf0 == 0xe0 => 3,
        Some(b) if b & 0xf8 == 0xf0 => 4,
        _ => 1,
    };
    if bytes.len() < needed {
        Sequence::Incomplete
    } else {
        Sequence::Typed
    }
}

/// Decodes typed bytes into key presses the way crossterm does for the keys the viewer uses:
/// characters (upper case with Shift), Enter, Tab, Backspace, Esc, Ctrl with a letter, Alt
/// with a key, arrows, Home/End, Page Up/Down, Insert/Delete, Shift-Tab and F1–F12. A sequence
/// it does not know is skipped.
#[must_use]
pub fn decode_keys(bytes: &[u8]) -> Vec<KeyEvent> {
    let mut keys = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (key, used) = decode_one(rest);
        keys.extend(key);
        rest = &rest[used.max(1)..];
    }
    keys
}

fn decode_one(bytes: &[u8]) -> (Option<KeyEvent>, usize) {
    let plain = |code| Some(KeyEvent::new(code, KeyModifiers::NONE));
    match bytes {
        [ESC] | [ESC, ESC, ..] => (plain(KeyCode::Esc), 1),
        [ESC, b'[', rest @ ..] => {
            let Some(end) = rest.iter().position(|b| (0x40..=0x7e).contains(b)) else {
                return (None, bytes.len());
            };
            (csi_key(&rest[..end], rest[end]), end + 3)
        }
        [ESC, b'O', last, ..] => (ss3_key(*last).and_then(plain), 3),
        [ESC, rest @ ..] => {
            let (key, used) = decode_one(rest);
            let key = key.map(|mut k| {
                k.modifiers |= KeyModifiers::ALT;
                k
            });
            (key, used + 1)
        }
        [b'\r' | b'\n', ..] => (plain(KeyCode::Enter), 1),
        [b'\t', ..] => (plain(KeyCode::Tab), 1),
        [0x7f | 0x08, ..] => (plain(KeyCode::Backspace), 1),
        [0, ..] => (
            Some(KeyEvent::new(KeyCode::Char(' '), KeyModifiers::CONTROL)),
            1,
        ),
        [c @ 0x01..=0x1a, ..] => (
            Some(KeyEvent::new(
                KeyCode::Char(char::from(c - 1 + b'a')),
                KeyModifiers::CONTROL,
            )),
            1,
        ),
        [0x1c..=0x1f, ..] => (None, 1),
        _ => {
            let len = match bytes[0] {
                b if b & 0xe0 == 0xc0 => 2,
                b if b & 0xf0 == 0xe0 => 3,
                b if b & 0xf8 == 0xf0 => 4,
                _ => 1,
            };
            let len = len.min(bytes.len());
            let key = std::str::from_utf8(&bytes[..len])
                .ok()
                .and_then(|s| s.chars().next())
                .map(|c| {
                    let shift = if c.is_uppercase() {
                        KeyModifiers::SHIFT
                    } else {
                        KeyModifiers::NONE
                    };
                    KeyEvent::new(KeyCode::Char(c), shift)
                });
            (key, len)
        }
    }
}

fn ss3_key(last: u8) -> Option<KeyCode> {
    Some(match last {
        b'A' => KeyCode::Up,
        b'B' => KeyCode::Down,
        b'C' => KeyCode::Right,
        b'D' => KeyCode::Left,
        b'H' => KeyCode::Home,
        b'F' => KeyCode::End,
        b'P'..=b'S' => KeyCode::F(1 + last - b'P'),
        _ => return None,
    })
}

/// A CSI key: `params` between `ESC [` and the final byte `last`, e.g. `5` and `~` (Page Up)
/// or `1;5` and `A` (Ctrl-Up).
fn csi_key(params: &[u8], last: u8) -> Option<KeyEvent> {
    let params = std::str::from_utf8(params).ok()?;
    let mut numbers = params.split(';').map(|p| p.parse::<u8>().ok());
    let first = numbers.next().flatten();
    let modifier = numbers.next().flatten().unwrap_or(1).saturating_sub(1);
    let mut modifiers = KeyModifiers::NONE;
    for (bit, flag) in [
        (1, KeyModifiers::SHIFT),
        (2, KeyModifiers::ALT),
        (4, KeyModifiers::CONTROL),
    ] {
        if modifier & bit != 0 {
            modifiers |= flag;
        }
    }
    let code = match (last, first) {
        (b'Z', _) => return Some(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT)),
        (b'~', Some(1 | 7)) => KeyCode::Home,
        (b'~', Some(2)) => KeyCode::Insert,
        (b'~', Some(3)) => KeyCode::Delete,
        (b'~', Some(4 | 8)) => KeyCode::End,
        (b'~', Some(5)) => KeyCode::PageUp,
        (b'~', Some(6)) => KeyCode::PageDown,
        (b'~', Some(n @ 11..=15)) => KeyCode::F(n - 10),
        (b'~', Some(n @ 17..=21)) => KeyCode::F(n - 11),
        (b'~', Some(n @ 23..=24)) => KeyCode::F(n - 12),
        (last, _) => ss3_key(last)?,
    };
    Some(KeyEvent::new(code, modifiers))
}

/// Drops what crossterm makes of a kitty graphics answer that arrives after the query gave up
/// waiting (over a slow link): `ESC _ G … ESC \` reads as Alt-`_`, the characters of the
/// answer, then Alt-`\`. Without this, the letters of `Gi=31;OK` would be taken as commands.
#[derive(Default)]
pub struct LateAnswers {
    /// Inside such an answer: how many keys were dropped so far.
    inside: Option<usize>,
}

impl LateAnswers {
    /// Whether `key` is a key the user typed (and not part of a late answer).
    pub fn keep(&mut self, key: &KeyEvent) -> bool {
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match (self.inside, key.code) {
            (None, KeyCode::Char('_')) if alt => {
                self.inside = Some(0);
                false
            }
            (None, _) => true,
            (Some(_), KeyCode::Char('\\')) if alt => {
                self.inside = None;
                false
            }
            // An answer is short; a long run of keys was typed after all (Alt-_ is no command).
            (Some(n), _) if n >= 64 => {
                self.inside = None;
                true
            }
            (Some(n), _) => {
                self.inside = Some(n + 1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Split {
        let mut split = Split::default();
        for chunk in chunks {
            split.push(chunk);
        }
        split
    }

    fn chars(keys: &[KeyEvent]) -> String {
        keys.iter()
            .map(|k| match k.code {
                KeyCode::Char(c) => c,
                _ => '?',
            })
            .collect()
    }

    const SIXEL_TERMINAL: &[u8] = b"\x1b[?62;4;22c\x1b[6;20;10t\x1b[0n";

    #[test]
    fn answers_alone_give_the_protocol_and_no_keys() {
        let split = split(&[SIXEL_TERMINAL]);
        assert!(split.complete);
        let (answers, keys) = split.finish();
        assert_eq!(
            answers,
            vec![
                Response::Sixel,
                Response::CellSize(Some((10, 20))),
                Response::Status
            ]
        );
        assert!(keys.is_empty());
        let picker = picker_from(&answers, None);
        assert_eq!(picker.protocol_type(), ProtocolType::Sixel);
        assert_eq!(
            (picker.font_size().width, picker.font_size().height),
            (10, 20)
        );
    }

    #[test]
    fn keys_before_between_and_after_the_answers_are_kept_in_order() {
        let mut bytes = b"j".to_vec();
        bytes.extend(b"\x1b_Gi=31;OK\x1b\\");
        bytes.extend(b"k\x1b[?62;4c");
        bytes.extend(b"\x1b[B"); // Down
        bytes.extend(b"\x1b[0nGq");
        let split = split(&[&bytes]);
        assert!(split.complete);
        let (answers, keys) = split.finish();
        assert_eq!(
            answers,
            vec![Response::Kitty, Response::Sixel, Response::Status]
        );
        let codes: Vec<KeyCode> = keys.iter().map(|k| k.code).collect();
        assert_eq!(
            codes,
            vec![
                KeyCode::Char('j'),
                KeyCode::Char('k'),
                KeyCode::Down,
                KeyCode::Char('G'),
                KeyCode::Char('q')
            ]
        );
        assert_eq!(keys[3].modifiers, KeyModifiers::SHIFT);
        assert_eq!(
            picker_from(&answers, Some(FontSize::new(8, 16))).protocol_type(),
            ProtocolType::Kitty
        );
    }

    #[test]
    fn answers_split_across_reads_are_put_together() {
        let bytes = b"\x1b[?62;4c\x1b[6;20;10t\x1b[0n";
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let split = split(&chunks);
        assert!(split.complete);
        assert_eq!(split.finish().0.len(), 3);
    }

    #[test]
    fn no_answer_leaves_the_typed_keys_and_an_unfinished_query() {
        let split = split(&[b"jj", b"\x1b"]);
        assert!(!split.complete);
        let (answers, keys) = split.finish();
        assert!(answers.is_empty());
        let codes: Vec<KeyCode> = keys.iter().map(|k| k.code).collect();
        assert_eq!(
            codes,
            vec![KeyCode::Char('j'), KeyCode::Char('j'), KeyCode::Esc]
        );
        // Nothing answered and no window size: halfblocks.
        assert_eq!(
            picker_from(&answers, None).protocol_type(),
            ProtocolType::Halfblocks
        );
    }

    #[test]
    fn an_esc_key_right_before_an_answer_is_a_key() {
        let (answers, keys) = split(&[b"\x1b\x1b[0n"]).finish();
        assert_eq!(answers, vec![Response::Status]);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].code, KeyCode::Esc);
    }

    #[test]
    fn a_refused_kitty_query_is_no_key() {
        let (answers, keys) = split(&[b"\x1b_Gi=31;EINVAL:bad\x1b\\\x1b[0n"]).finish();
        assert_eq!(answers, vec![Response::Status]);
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[test]
    fn keys_decode_as_crossterm_reads_them() {
        let keys = decode_keys("aZé\r\t\x7f\x15\x1bx\x1b[5~\x1b[1;5A\x1bOP\x1b[Z".as_bytes());
        let expected = [
            (KeyCode::Char('a'), KeyModifiers::NONE),
            (KeyCode::Char('Z'), KeyModifiers::SHIFT),
            (KeyCode::Char('é'), KeyModifiers::NONE),
            (KeyCode::Enter, KeyModifiers::NONE),
            (KeyCode::Tab, KeyModifiers::NONE),
            (KeyCode::Backspace, KeyModifiers::NONE),
            (KeyCode::Char('u'), KeyModifiers::CONTROL),
            (KeyCode::Char('x'), KeyModifiers::ALT),
            (KeyCode::PageUp, KeyModifiers::NONE),
            (KeyCode::Up, KeyModifiers::CONTROL),
            (KeyCode::F(1), KeyModifiers::NONE),
            (KeyCode::BackTab, KeyModifiers::SHIFT),
        ];
        let got: Vec<(KeyCode, KeyModifiers)> =
            keys.iter().map(|k| (k.code, k.modifiers)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_late_kitty_answer_read_by_crossterm_is_dropped_but_keys_around_it_are_not() {
        // What crossterm makes of `j ESC _Gi=31;OK ESC \ k`.
        let mut keys = vec![KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE)];
        keys.push(KeyEvent::new(KeyCode::Char('_'), KeyModifiers::ALT));
        keys.extend(decode_keys(b"Gi=31;OK"));
        keys.push(KeyEvent::new(KeyCode::Char('\\'), KeyModifiers::ALT));
        keys.push(KeyEvent::new(KeyCode::Char('k'), KeyModifiers::NONE));
        let mut late = LateAnswers::default();
        let kept: Vec<KeyEvent> = keys.into_iter().filter(|k| late.keep(k)).collect();
        assert_eq!(chars(&kept), "jk");
    }
}
