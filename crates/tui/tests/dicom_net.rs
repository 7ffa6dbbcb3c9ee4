//! DICOM network in (issue 22): `cxr watch --dicom-listen` against dcmtk's `storescu` on
//! loopback: instances end up queued exactly once; a wrong called AE title, an unsupported
//! transfer syntax, an instance over the size limit and a dropped connection are refused and
//! leave nothing half-written.

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
                "none",
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
