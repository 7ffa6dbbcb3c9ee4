//! `cxr watch --send-to AE@host:port`: returns a DICOM queue entry's results (each
//! `METHOD.sc.dcm` Secondary Capture and `sr.dcm`) to a Storage SCP with C-STORE (dicom-ul
//! client association, Explicit VR Little Endian).
//!
//! Sending runs on its own thread, so a slow or dead receiver never holds up the watch loop,
//! and every connect, read and write is bounded by [`TIMEOUT`]. A send that fails leaves the
//! entry as it was, plus [`SEND_FAILED_FILE`] in it saying what failed; entries with that file
//! are sent again when the watcher starts and every [`RETRY_EVERY`] while it runs, and the file
//! goes once all their instances were stored, replaced by [`SENT_FILE`] (where and when). Each
//! instance sent or failed is a watch event.
//!
//! Entries queued while no receiver was set have neither file: `cxr queue send --unsent` finds
//! them ([`unsent_entries`]) and sends them in the foreground ([`send_now`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemDicomObject;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};

use super::{Msg, WatchEvent};
use crate::queue;
use crate::{CoreError, Result};

/// In a queue entry: why its results could not be sent (removed once they are).
pub const SEND_FAILED_FILE: &str = "dicom-send-failed.txt";
/// In a queue entry: where and when all its results were last stored, and their instances.
pub const SENT_FILE: &str = "dicom-sent.txt";
/// Connect, read and write limit of each step of an association.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Entries whose send failed are tried again this often.
pub const RETRY_EVERY: Duration = Duration::from_secs(60);

/// Where to send, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTo {
    /// The receiver's AE title.
    pub called_ae: String,
    /// `host:port`.
    pub address: String,
    /// Our AE title.
    pub calling_ae: String,
}

impl SendTo {
    /// Parses `AE@host:port`.
    pub fn parse(target: &str, calling_ae: &str) -> Result<Self> {
        let invalid = |why: &str| {
            CoreError::Invalid(format!(
                "--send-to {target:?}: {why} (expected AE@host:port)"
            ))
        };
        let (ae, address) = target.split_once('@').ok_or_else(|| invalid("no '@'"))?;
        let valid = |ae: &str| !ae.is_empty() && ae.len() <= 16 && ae.is_ascii();
        if !valid(ae) {
            return Err(invalid("an AE title is 1 to 16 ASCII characters"));
        }
        if !valid(calling_ae) {
            return Err(CoreError::Invalid(format!(
                "--ae-title {calling_ae:?}: an AE title is 1 to 16 ASCII characters"
            )));
        }
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) {
            return Err(invalid("no port"));
        }
        Ok(Self {
            called_ae: ae.to_owned(),
            address: address.to_owned(),
            calling_ae: calling_ae.to_owned(),
        })
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.called_ae, self.address)
    }
}

/// The sending thread: takes entries on [`Sender::send`]; stops (after the entry it is on)
/// when dropped.
pub(crate) struct Sender {
    entries: Option<mpsc::Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    pub(crate) fn start(
        target: &SendTo,
        queue_entries: &Path,
        events: mpsc::Sender<Msg>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let (target, queue_entries) = (target.clone(), queue_entries.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("cxr-dicom-send".into())
            .spawn(move || send_loop(&target, &queue_entries, &rx, &events))
            .map_err(|e| CoreError::Internal(format!("starting the DICOM sender: {e}")))?;
        Ok(Self {
            entries: Some(tx),
            thread: Some(thread),
        })
    }

    /// Sends the entry's results, if it has any, in the background.
    pub(crate) fn send(&self, entry: &Path) {
        if let Some(entries) = &self.entries {
            let _ = entries.send(entry.to_path_buf());
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.entries = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn send_loop(
    target: &SendTo,
    queue_entries: &Path,
    entries: &mpsc::Receiver<PathBuf>,
    events: &mpsc::Sender<Msg>,
) {
    let mut emit = |event: WatchEvent| {
        let _ = events.send(Msg::Event(event));
    };
    let mut last_retry: Option<Instant> = None;
    loop {
        if last_retry.is_none_or(|t| t.elapsed() >= RETRY_EVERY) {
            last_retry = Some(Instant::now());
            for entry in failed_entries(queue_entries) {
                send_entry(target, &entry, &mut emit);
            }
        }
        match entries.recv_timeout(RETRY_EVERY) {
            Ok(entry) => send_entry(target, &entry, &mut emit),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Entries holding [`SEND_FAILED_FILE`].
fn failed_entries(queue_entries: &Path) -> Vec<PathBuf> {
    entries_where(queue_entries, |entry| {
        entry.join(SEND_FAILED_FILE).is_file()
    })
}

/// Entries with DICOM results and no [`SENT_FILE`]: never sent, or not all stored yet.
#[must_use]
pub fn unsent_entries(queue_entries: &Path) -> Vec<PathBuf> {
    entries_where(queue_entries, |entry| {
        !entry.join(SENT_FILE).is_file() && !results_in(entry).is_empty()
    })
}

/// The entry folders in `queue_entries` that `keep` keeps, in name order.
fn entries_where(queue_entries: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(list) = std::fs::read_dir(queue_entries) else {
        return Vec::new();
    };
    let mut kept: Vec<PathBuf> = list
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && keep(p))
        .collect();
    kept.sort();
    kept
}

/// Sends `entry`'s results now, in this thread, and records the outcome in the entry as the
/// watcher does: one event per instance (sent or failed), and one per record it could not
/// write. No events for an entry without DICOM results.
#[must_use]
pub fn send_now(target: &SendTo, entry: &Path) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    send_entry(target, entry, &mut |event| events.push(event));
    events
}

/// The DICOM results in an entry: the Secondary Captures, then the SR.
fn results_in(entry: &Path) -> Vec<PathBuf> {
    let Ok(list) = std::fs::read_dir(entry) else {
        return Vec::new();
    };
    let mut captures: Vec<PathBuf> = list
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(queue::CAPTURE_SUFFIX))
        })
        .collect();
    captures.sort();
    let report = entry.join(queue::REPORT_SR_FILE);
    if report.is_file() {
        captures.push(report);
    }
    captures
}

/// Sends every result of `entry` in one association; records (or clears) the failures in the
/// entry before telling about them, so that an event's reader finds the record.
fn send_entry(target: &SendTo, entry: &Path, emit: &mut dyn FnMut(WatchEvent)) {
    let files = results_in(entry);
    if files.is_empty() {
        return;
    }
    let to = target.describe();
    let outcomes = match store_all(target, &files) {
        Ok(outcomes) => outcomes,
        // Nothing was sent: every file failed the same way.
        Err(error) => files.iter().map(|_| Err(error.clone())).collect(),
    };
    let mut events = Vec::with_capacity(files.len());
    let mut failures = Vec::new();
    for (file, outcome) in files.into_iter().zip(outcomes) {
        events.push(match outcome {
            Ok(sop_instance_uid) => WatchEvent::DicomSent {
                file,
                to: to.clone(),
                sop_instance_uid,
            },
            Err(error) => {
                failures.push(format!("{}: {error}", file.display()));
                WatchEvent::DicomSendFailed {
                    file,
                    to: to.clone(),
                    error,
                }
            }
        });
    }
    let record = entry.join(SEND_FAILED_FILE);
    let result = if failures.is_empty() {
        record_sent(entry, &to, &events).and_then(|()| match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CoreError::io(&record, e)),
            _ => Ok(()),
        })
    } else {
        let text = format!(
            "sending to {to} failed (tried again when cxr watch starts and every {} s):\n{}\n",
            RETRY_EVERY.as_secs(),
            failures.join("\n")
        );
        crate::fsutil::write_atomic(&record, text.as_bytes())
    };
    if let Err(e) = result {
        events.push(WatchEvent::Error {
            file: Some(record),
            error: format!("recording the DICOM send: {e}"),
        });
    }
    for event in events {
        emit(event);
    }
}

/// Writes [`SENT_FILE`]: the receiver, the time, and each instance stored with its file.
fn record_sent(entry: &Path, to: &str, events: &[WatchEvent]) -> Result<()> {
    let mut lines = vec![format!(
        "stored at {to} on {}:",
        queue::rfc3339_utc(std::time::SystemTime::now())
    )];
    for event in events {
        if let WatchEvent::DicomSent {
            file,
            sop_instance_uid,
            ..
        } = event
        {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            lines.push(format!("{sop_instance_uid} {name}"));
        }
    }
    let text = lines.join("\n") + "\n";
    crate::fsutil::write_atomic(&entry.join(SENT_FILE), text.as_bytes())
}

/// One instance to send: its SOP class and instance, and the data set in Explicit VR LE.
struct Instance {
    class: String,
    uid: String,
    data: Vec<u8>,
}

fn read_instance(file: &Path) -> std::result::Result<Instance, String> {
    let object = dicom_object::open_file(file).map_err(|e| format!("unreadable: {e}"))?;
    let meta = object.meta();
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut data = Vec::new();
    object
        .write_dataset_with_ts(&mut data, &ts)
        .map_err(|e| format!("cannot encode: {e}"))?;
    Ok(Instance {
        class: trim(meta.media_storage_sop_class_uid()),
        uid: trim(meta.media_storage_sop_instance_uid()),
        data,
    })
}

/// Stores `files` in one association: `Err` if it could not be made, else each file's SOP
/// Instance UID or why it was not stored.
fn store_all(
    target: &SendTo,
    files: &[PathBuf],
) -> std::result::Result<Vec<std::result::Result<String, String>>, String> {
    let instances: Vec<_> = files.iter().map(|f| read_instance(f)).collect();
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(target.calling_ae.clone())
        .called_ae_title(target.called_ae.clone())
        .connection_timeout(TIMEOUT)
        .read_timeout(TIMEOUT)
        .write_timeout(TIMEOUT);
    let mut classes: Vec<&str> = instances
        .iter()
        .flatten()
        .map(|i| i.class.as_str())
        .collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return Ok(instances.into_iter().map(|i| i.map(|i| i.uid)).collect());
    }
    for class in classes {
        options = options.with_presentation_context(
            class.to_owned(),
            vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned()],
        );
    }
    let mut association = options
        .establish(target.address.as_str())
        .map_err(|e| format!("no association: {e}"))?;
    let mut outcomes = Vec::with_capacity(instances.len());
    for (message_id, instance) in (1u16..).zip(instances) {
        let outcome =
            instance.and_then(|i| store(&mut association, &i, message_id).map(|()| i.uid));
        // A broken connection fails the rest too.
        let broken = outcome.as_ref().is_err_and(|e| e.starts_with("connection"));
        outcomes.push(outcome);
        if broken {
            while outcomes.len() < files.len() {
                outcomes.push(Err("connection lost before it was sent".into()));
            }
            let _ = association.abort();
            return Ok(outcomes);
        }
    }
    let _ = association.release();
    Ok(outcomes)
}

/// One C-STORE: the request, the data set, and the response's status.
fn store(
    association: &mut ClientAssociation<std::net::TcpStream>,
    instance: &Instance,
    message_id: u16,
) -> std::result::Result<(), String> {
    let context = association
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && pc.abstract_syntax.trim_end_matches('\0') == instance.class
        })
        .map(|pc| pc.id)
        .ok_or_else(|| format!("the receiver does not accept SOP class {}", instance.class))?;
    let request = store_request(instance, message_id);
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: PDataValueType::Command,
                is_last: true,
                data: request,
            }],
        })
        .map_err(|e| format!("connection: cannot send: {e}"))?;
    {
        use std::io::Write;
        let mut writer = association.send_pdata(context);
        writer
            .write_all(&instance.data)
            .and_then(|()| writer.finish())
            .map_err(|e| format!("connection: cannot send: {e}"))?;
    }
    let pdu = association
        .receive()
        .map_err(|e| format!("connection: no response: {e}"))?;
    let Pdu::PData { data } = pdu else {
        return Err(format!("connection: answered {}", pdu.short_description()));
    };
    let command: Vec<u8> = data
        .iter()
        .filter(|v| v.value_type == PDataValueType::Command)
        .flat_map(|v| v.data.iter().copied())
        .collect();
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let status = InMemDicomObject::read_dataset_with_ts(command.as_slice(), &ts)
        .ok()
        .and_then(|o| {
            o.element(tags::STATUS)
                .ok()
                .and_then(|e| e.to_int::<u16>().ok())
        })
        .ok_or("unreadable C-STORE response")?;
    // 0xB...: warnings, stored all the same.
    if status == 0 || status & 0xF000 == 0xB000 {
        Ok(())
    } else {
        Err(format!("refused by the receiver, status {status:#06x}"))
    }
}

/// A C-STORE-RQ command set, Implicit VR Little Endian with its group length.
fn store_request(instance: &Instance, message_id: u16) -> Vec<u8> {
    let mut object = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| {
        object.put(DataElement::new(tag, vr, value));
    };
    put(
        tags::AFFECTED_SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(instance.class.as_str()),
    );
    put(
        tags::COMMAND_FIELD,
        VR::US,
        PrimitiveValue::from(0x0001_u16),
    );
    put(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id));
    put(tags::PRIORITY, VR::US, PrimitiveValue::from(0_u16));
    // A data set follows.
    put(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(0x0000_u16),
    );
    put(
        tags::AFFECTED_SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(instance.uid.as_str()),
    );
    super::dicom_listen::command_bytes(&object)
}

#[cfg(test)]
mod tests {
    use super::SendTo;

    #[test]
    fn targets_are_parsed_or_refused() {
        let target = SendTo::parse("STORESCP@127.0.0.1:104", "CXR").unwrap();
        assert_eq!(target.called_ae, "STORESCP");
        assert_eq!(target.address, "127.0.0.1:104");
        for bad in [
            "127.0.0.1:104",
            "@h:1",
            "A@host",
            "A@host:0",
            "ABCDEFGHIJKLMNOPQ@h:1",
        ] {
            assert!(SendTo::parse(bad, "CXR").is_err(), "{bad}");
        }
    }
}
