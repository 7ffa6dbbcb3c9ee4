//! DICOM network in (issue 22): `cxr watch --dicom-listen` against dcmtk's `storescu` on
//! loopback: instances end up queued exactly once; a wrong called AE title, an unsupported
//! transfer syntax, an instance over the size limit and a dropped connection are refused and
//! leave nothing half-written. With `--send-to`, the results (Secondary Capture, SR) go on to
//! dcmtk's `storescp`: the round trip storescu -> cxr -> queue -> storescp; a receiver that is
//! not there loses nothing and is retried. Entries queued with no receiver set go out with
//! `cxr queue send --unsent`, once.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{names_in, repo};

const RG1: &str = "../shared/data/dicom/pydicom-data_RG1_UNCR.dcm";
const TXV: &str = "../shared/data/dicom/torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";

/// A running `cxr watch --dicom-listen`, killed when dropped, with its events as they come.
struct Watcher {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    port: u16,
    dir: PathBuf,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watcher {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_explaining(dir, "none", extra)
    }

    fn start_explaining(dir: &Path, method: &str, extra: &[&str]) -> Self {
        // A free port: bound by the system, released, then named to cxr.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args([
                "watch",
                "--device",
                "cpu",
                "--method",
                method,
                "--watch-dir",
            ])
            .arg(dir)
            .arg("--dicom-listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--ae-title", "CXR"])
            .args(extra)
            .env_remove("CXR_MODELS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut watcher = Self {
            child,
            events,
            seen: Vec::new(),
            port,
            dir: dir.to_path_buf(),
        };
        watcher.wait_for("listening", |seen| count(seen, "dicom_listening") == 1);
        watcher
    }

    /// Waits (at most 90 s) until `done` holds for the events so far; panics with them all
    /// otherwise.
    fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done(&self.seen) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("not {what} in time: {:#?}", self.seen));
            match self.events.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("not {what} in time: {:#?}", self.seen)
                }
            }
        }
    }

    /// Takes the events that arrive within `quiet` (to see that nothing more happens).
    fn settle(&mut self, quiet: Duration) {
        while let Ok(event) = self.events.recv_timeout(quiet) {
            self.seen.push(event);
        }
    }

    /// `storescu -R -xy -aec CALLED 127.0.0.1 PORT FILES...` (-R: only the files' SOP
    /// classes; -xy: JPEG baseline proposed besides the uncompressed syntaxes), bounded in time.
    fn storescu(&self, called: &str, files: &[PathBuf]) -> Output {
        self.storescu_with(&["-xy"], called, files)
    }

    fn storescu_with(&self, syntaxes: &[&str], called: &str, files: &[PathBuf]) -> Output {
        support::output_within(
            Command::new("storescu")
                .args(["-R", "-aet", "MODALITY", "-aec", called, "-to", "20"])
                .args(syntaxes)
                .arg("127.0.0.1")
                .arg(self.port.to_string())
                .args(files),
            Duration::from_secs(60),
        )
    }

    /// Everything in the inbox, hidden temporary files included.
    fn inbox(&self) -> std::collections::BTreeSet<String> {
        names_in(&self.dir.join("inbox"))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn count(seen: &[Value], event: &str) -> usize {
    seen.iter().filter(|e| e["event"] == event).count()
}

fn refusals(seen: &[Value]) -> Vec<String> {
    seen.iter()
        .filter(|e| e["event"] == "dicom_refused")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs dcmtk"]
fn stored_instances_are_queued_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let mut watcher = Watcher::start(&dir, &[]);
    // Two radiographs in one association, then the first again in another.
    let out = watcher.storescu("CXR", &[repo().join(RG1), repo().join(TXV)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("two queued", |seen| count(seen, "queued") == 2);
    let out = watcher.storescu("CXR", &[repo().join(RG1)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("the resend recognised", |seen| {
        count(seen, "already_queued") + count(seen, "duplicate") == 1
    });
    watcher.settle(Duration::from_secs(2));
    assert_eq!(
        count(&watcher.seen, "dicom_received"),
        3,
        "{:#?}",
        watcher.seen
    );
    assert_eq!(count(&watcher.seen, "queued"), 2, "{:#?}", watcher.seen);
    assert_eq!(names_in(&dir.join("queue")).len(), 2);
    assert!(watcher.inbox().is_empty(), "{:?}", watcher.inbox());
    assert!(names_in(&dir.join("rejected")).is_empty());
    // The queued file is the instance as sent: same SOP Instance UID, pixels that decode.
    let received: Vec<&str> = watcher
        .seen
        .iter()
        .filter(|e| e["event"] == "dicom_received")
        .map(|e| e["sop_instance_uid"].as_str().unwrap())
        .collect();
    assert_eq!(received[0], received[2]);
    assert_ne!(received[0], received[1]);
}

#[test]
#[ignore = "needs dcmtk"]
fn hostile_associations_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let mut watcher = Watcher::start(&dir, &["--dicom-max-bytes", "1000000"]);

    // A called AE title that is not ours: A-ASSOCIATE-RJ.
    let out = watcher.storescu("NOT-CXR", &[repo().join(TXV)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Called AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    watcher.wait_for("the AE title refused", |seen| {
        refusals(seen)
            .iter()
            .any(|r| r.contains("called AE title not recognized"))
    });

    // JPEG-LS, which cxr does not decode: no presentation context is accepted.
    let jls = tmp.path().join("jpeg-ls.dcm");
    let made = Command::new("dcmcjpls")
        .arg(repo().join(RG1))
        .arg(&jls)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    // -xt: JPEG-LS proposed (refused here), besides uncompressed ones that storescu cannot
    // convert JPEG-LS to.
    let out = watcher.storescu_with(&["-xt"], "CXR", &[jls]);
    assert!(!out.status.success(), "{}", text(&out));
    watcher.wait_for("the transfer syntax refused", |seen| {
        refusals(seen)
            .iter()
            .any(|r| r.contains("TransferSyntaxesNotSupported"))
    });

    // 7 MB over a 1 MB limit: C-STORE-RSP "out of resources" (A700).
    let out = watcher.storescu_with(&["-v"], "CXR", &[repo().join(RG1)]);
    let said = text(&out).to_lowercase();
    assert!(said.contains("refused: outofresources"), "{said}");
    watcher.wait_for("the oversize instance refused", |seen| {
        refusals(seen)
            .iter()
            .any(|r| r.contains("larger than the 1000000 bytes"))
    });

    // A connection dropped in the middle of an instance's data.
    drop_mid_instance(watcher.port);
    watcher.wait_for("the dropped connection noticed", |seen| {
        refusals(seen)
            .iter()
            .any(|r| r.contains("connection ended"))
    });

    // Nothing was written, half or whole; the listener still serves a proper sender.
    assert!(watcher.inbox().is_empty(), "{:?}", watcher.inbox());
    let out = watcher.storescu("CXR", &[repo().join(TXV)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("the proper instance queued", |seen| {
        count(seen, "queued") == 1
    });
    assert_eq!(
        count(&watcher.seen, "dicom_received"),
        1,
        "{:#?}",
        watcher.seen
    );
    assert_eq!(names_in(&dir.join("queue")).len(), 1);
}

/// Associates by hand (A-ASSOCIATE-RQ for CR in Explicit VR Little Endian), sends a C-STORE
/// command and the first part of its data set, then closes the socket.
fn drop_mid_instance(port: u16) {
    fn item(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    fn ae(title: &str) -> Vec<u8> {
        format!("{title:<16}").into_bytes()
    }
    let cr = b"1.2.840.10008.5.1.4.1.1.1";
    let explicit = b"1.2.840.10008.1.2.1";
    let mut context = vec![1, 0, 0, 0];
    context.extend(item(0x30, cr));
    context.extend(item(0x40, explicit));
    let mut body = vec![0, 1, 0, 0];
    body.extend(ae("CXR"));
    body.extend(ae("DROPPER"));
    body.extend([0u8; 32]);
    body.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    body.extend(item(0x20, &context));
    body.extend(item(0x50, &item(0x51, &16_384u32.to_be_bytes())));
    let mut pdu = vec![1, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend(body);
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.write_all(&pdu).unwrap();
    let mut reply = [0u8; 6];
    std::io::Read::read_exact(&mut socket, &mut reply).unwrap();
    assert_eq!(reply[0], 2, "A-ASSOCIATE-AC expected");
    let mut rest = vec![0u8; u32::from_be_bytes(reply[2..6].try_into().unwrap()) as usize];
    std::io::Read::read_exact(&mut socket, &mut rest).unwrap();
    // The C-STORE-RQ command set (Implicit VR Little Endian).
    let element = |group: u16, elem: u16, value: &[u8]| {
        let mut out = group.to_le_bytes().to_vec();
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    };
    let mut command = element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.1\0");
    command.extend(element(0, 0x0100, &1u16.to_le_bytes()));
    command.extend(element(0, 0x0110, &7u16.to_le_bytes()));
    command.extend(element(0, 0x0700, &0u16.to_le_bytes()));
    command.extend(element(0, 0x0800, &0u16.to_le_bytes()));
    command.extend(element(0, 0x1000, b"1.2.3.4.5.6.7.8.9\0"));
    let pdata = |control: u8, data: &[u8]| {
        let mut value = vec![1, control];
        value.extend_from_slice(data);
        let mut out = vec![4, 0];
        out.extend_from_slice(&((value.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend(value);
        out
    };
    // Command, last fragment; then a data fragment that is not the last.
    socket.write_all(&pdata(0b11, &command)).unwrap();
    socket.write_all(&pdata(0b00, &[0u8; 4096])).unwrap();
    drop(socket);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// dcmtk's `storescp -aet STORESCP -od DIR PORT`, killed when dropped.
struct StoreScp(Child);

impl StoreScp {
    fn start(port: u16, into: &Path) -> Self {
        std::fs::create_dir_all(into).unwrap();
        let child = Command::new("storescp")
            .args(["-aet", "STORESCP", "-od"])
            .arg(into)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Listening once a connection is taken.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One attribute as dcmdump prints it (`+P TAG`), the value between the brackets.
fn dcmdump_value(file: &Path, tag: &str) -> String {
    let out = Command::new("dcmdump")
        .args(["-Un", "+P", tag])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or_else(
            || panic!("{tag} of {}: {said}", file.display()),
            |(value, _)| value.to_owned(),
        )
}

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

#[test]
#[ignore = "needs dcmtk"]
fn results_are_sent_on_to_a_storage_scp() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let received = tmp.path().join("storescp");
    let port = free_port();
    let _scp = StoreScp::start(port, &received);
    let target = format!("STORESCP@127.0.0.1:{port}");
    let mut watcher = Watcher::start_explaining(&dir, "grad-cam", &["--send-to", target.as_str()]);
    let out = watcher.storescu("CXR", &[repo().join(RG1)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("the SC and SR sent", |seen| count(seen, "dicom_sent") == 2);
    watcher.settle(Duration::from_secs(2));
    assert_eq!(count(&watcher.seen, "dicom_sent"), 2, "{:#?}", watcher.seen);
    assert_eq!(
        count(&watcher.seen, "dicom_send_failed"),
        0,
        "{:#?}",
        watcher.seen
    );
    // Exactly once each at the receiver, readable by dcmdump, in the source's study.
    let files: Vec<PathBuf> = names_in(&received)
        .into_iter()
        .map(|name| received.join(name))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let study = dcmdump_value(&repo().join(RG1), "StudyInstanceUID");
    let mut classes: Vec<String> = files
        .iter()
        .map(|file| {
            assert_eq!(dcmdump_value(file, "StudyInstanceUID"), study);
            dcmdump_value(file, "SOPClassUID")
        })
        .collect();
    classes.sort();
    assert_eq!(classes, [SECONDARY_CAPTURE, COMPREHENSIVE_SR]);
    // The instances sent are the entry's own.
    let sent: std::collections::BTreeSet<String> = watcher
        .seen
        .iter()
        .filter(|e| e["event"] == "dicom_sent")
        .map(|e| e["sop_instance_uid"].as_str().unwrap().to_owned())
        .collect();
    let arrived: std::collections::BTreeSet<String> = files
        .iter()
        .map(|file| dcmdump_value(file, "SOPInstanceUID"))
        .collect();
    assert_eq!(sent, arrived);
    let entries = names_in(&dir.join("queue"));
    assert_eq!(entries.len(), 1);
    // The entry records where its instances went.
    let entry = dir.join("queue").join(entries.first().unwrap());
    let record = std::fs::read_to_string(entry.join("dicom-sent.txt")).unwrap();
    assert!(
        record.contains(&format!("stored at {target} on ")),
        "{record}"
    );
    assert!(
        sent.iter().all(|uid| record.contains(uid.as_str())),
        "{record}"
    );
}

/// `cxr queue send ARGS... --watch-dir DIR`: its exit code, JSON lines and stderr.
fn queue_send(dir: &Path, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "send", "--watch-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines, text(&out))
}

#[test]
#[ignore = "needs dcmtk"]
fn entries_queued_with_no_receiver_are_sent_by_queue_send_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    // Two instances queued by a watcher that sends nowhere.
    let mut watcher = Watcher::start(&dir, &[]);
    let out = watcher.storescu("CXR", &[repo().join(RG1), repo().join(TXV)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("both queued", |seen| count(seen, "queued") == 2);
    drop(watcher);
    let entries: Vec<PathBuf> = names_in(&dir.join("queue"))
        .into_iter()
        .map(|id| dir.join("queue").join(id))
        .collect();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.join("sr.dcm").is_file()));

    // A receiver that is not there: each instance fails, is recorded, and nothing is lost.
    let port = free_port();
    let target = format!("STORESCP@127.0.0.1:{port}");
    let (code, lines, _) = queue_send(&dir, &["--unsent", "--to", &target]);
    assert_eq!(code, Some(1));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["event"] == "dicom_send_failed"));
    for entry in &entries {
        assert!(entry.join("dicom-send-failed.txt").is_file());
        assert!(entry.join("sr.dcm").is_file() && !entry.join("dicom-sent.txt").exists());
    }

    // The receiver is up: both SRs go, each entry records it, the failure records go.
    let received = tmp.path().join("storescp");
    let _scp = StoreScp::start(port, &received);
    let (code, lines, stderr) = queue_send(&dir, &["--unsent", "--to", &target]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["event"] == "dicom_sent" && l["to"] == target.as_str())
    );
    assert_eq!(names_in(&received).len(), 2);
    for entry in &entries {
        let record = std::fs::read_to_string(entry.join("dicom-sent.txt")).unwrap();
        assert!(record.contains(&target), "{record}");
        assert!(!entry.join("dicom-send-failed.txt").exists());
    }
    // Once: nothing is unsent now.
    let (code, lines, stderr) = queue_send(&dir, &["--unsent", "--to", &target]);
    assert_eq!((code, lines.len()), (Some(0), 0), "{stderr}");
    assert!(stderr.contains("nothing to send"), "{stderr}");
    // An entry named by a prefix of its id is sent again on request.
    let id = entries[0].file_name().unwrap().to_str().unwrap();
    let (code, lines, stderr) = queue_send(&dir, &[&id[..6], "--to", &target]);
    assert_eq!((code, lines.len()), (Some(0), 1), "{stderr}");
    // Bad requests: no target, an unknown id.
    let (code, _, stderr) = queue_send(&dir, &["--unsent", "--to", "127.0.0.1:104"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("expected AE@host:port"), "{stderr}");
    let (code, _, stderr) = queue_send(&dir, &["ffff0000", "--to", &target]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no queue entry"), "{stderr}");
}

#[test]
#[ignore = "needs dcmtk"]
fn a_receiver_that_is_not_there_loses_nothing_and_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    // Nothing listens there (yet).
    let port = free_port();
    let target = format!("STORESCP@127.0.0.1:{port}");
    let mut watcher = Watcher::start(&dir, &["--send-to", target.as_str()]);
    let out = watcher.storescu("CXR", &[repo().join(RG1)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("the send failed", |seen| {
        count(seen, "dicom_send_failed") == 1
    });
    // The watch loop goes on: another instance is queued meanwhile.
    let out = watcher.storescu("CXR", &[repo().join(TXV)]);
    assert!(out.status.success(), "{}", text(&out));
    watcher.wait_for("both queued, both sends failed", |seen| {
        count(seen, "queued") == 2 && count(seen, "dicom_send_failed") == 2
    });
    let failure = watcher
        .seen
        .iter()
        .find(|e| e["event"] == "dicom_send_failed")
        .unwrap();
    assert_eq!(failure["to"], target.as_str());
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("no association"),
        "{failure}"
    );
    // Each entry is whole, with its SR and the reason it was not sent.
    let entries: Vec<PathBuf> = names_in(&dir.join("queue"))
        .into_iter()
        .map(|id| dir.join("queue").join(id))
        .collect();
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        assert!(entry.join("sr.dcm").is_file());
        let why = std::fs::read_to_string(entry.join("dicom-send-failed.txt")).unwrap();
        assert!(why.contains(&target) && why.contains("sr.dcm"), "{why}");
    }
    drop(watcher);

    // The receiver is back: the next start sends what failed, once, and clears the record.
    let received = tmp.path().join("storescp");
    let _scp = StoreScp::start(port, &received);
    let mut watcher = Watcher::start(&dir, &["--send-to", target.as_str()]);
    watcher.wait_for("the failed sends retried", |seen| {
        count(seen, "dicom_sent") == 2
    });
    watcher.settle(Duration::from_secs(2));
    assert_eq!(count(&watcher.seen, "dicom_sent"), 2, "{:#?}", watcher.seen);
    assert_eq!(names_in(&received).len(), 2);
    for entry in &entries {
        assert!(!entry.join("dicom-send-failed.txt").exists());
    }
}
