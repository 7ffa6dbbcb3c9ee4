//! `cxr watch --dicom-listen ADDR --ae-title T`: a DICOM Storage SCP (C-STORE over the DICOM
//! upper layer, dicom-ul) that drops each received instance into the inbox, so that a modality
//! or PACS router can send images the way hospitals do.
//!
//! An instance is written the way a careful file drop is: the Part 10 file (the received data
//! set as it came, behind a file meta group naming its transfer syntax) goes to a hidden
//! temporary name in the inbox, is synced, renamed to `SOP_INSTANCE_UID.dcm` and the inbox
//! synced; only then does the sender get C-STORE success. A connection that drops, an
//! association that aborts or an instance over the size limit leaves nothing in the inbox, and
//! the sender gets a failure status (or no answer), so it keeps its copy and resends: nothing is
//! lost. The watcher takes the file from there, deduplicating by content: an instance sent twice
//! is queued once.
//!
//! Refused at association: a called AE title other than ours; presentation contexts of other
//! SOP classes than radiographs (CR, DX, Secondary Capture) and Verification, or in transfer
//! syntaxes the DICOM reader cannot decode.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::FileMetaTableBuilder;
use dicom_object::mem::InMemDicomObject;
use dicom_ul::association::server::AcceptCalledAeTitle;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, ServerAssociation, ServerAssociationOptions};

use super::{Msg, WatchEvent};
use crate::{CoreError, Result};

/// Where and as whom to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomListen {
    pub addr: SocketAddr,
    /// Our AE title: associations calling another one are rejected.
    pub ae_title: String,
    /// Largest instance accepted, in bytes (at most the input limit of every file).
    pub max_bytes: u64,
}

impl DicomListen {
    #[must_use]
    pub fn new(addr: SocketAddr, ae_title: impl Into<String>) -> Self {
        Self {
            addr,
            ae_title: ae_title.into(),
            max_bytes: cxr_io::limits::MAX_FILE_BYTES,
        }
    }
}

/// Storage SOP classes accepted: the radiographs cxr reads.
const STORAGE_CLASSES: [&str; 4] = [
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
];

/// Transfer syntaxes the DICOM reader decodes (see `cxr_io::dicom`).
const TRANSFER_SYNTAXES: [&str; 11] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    // Explicit VR Big Endian: retired, but still sent by old modalities, and read.
    "1.2.840.10008.1.2.2",
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
    uids::RLE_LOSSLESS,
];

/// Associations served at once; more are closed at connection (the sender retries).
const MAX_ASSOCIATIONS: usize = 8;
/// A silent peer is dropped after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// C-STORE-RSP statuses (PS3.4 B.2.3, PS3.7 C).
const SUCCESS: u16 = 0x0000;
const OUT_OF_RESOURCES: u16 = 0xA700;
const CANNOT_UNDERSTAND: u16 = 0xC000;
const PROCESSING_FAILURE: u16 = 0x0110;

/// The running listener: stops (and waits for its associations) when dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Listener {
    /// Binds `options.addr` (an error if it cannot: a fatal start-up problem) and serves
    /// associations on a thread until dropped; outcomes go to `events` as watch events.
    pub(crate) fn start(
        options: &DicomListen,
        inbox: &Path,
        events: mpsc::Sender<Msg>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(options.addr).map_err(|e| {
            CoreError::Invalid(format!(
                "--dicom-listen {}: cannot listen there: {e}",
                options.addr
            ))
        })?;
        let local_addr = listener.local_addr().map_err(|e| CoreError::io(inbox, e))?;
        // Polled, so that the loop sees `stop`.
        listener
            .set_nonblocking(true)
            .map_err(|e| CoreError::io(inbox, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = Server {
            options: options.clone(),
            inbox: inbox.to_path_buf(),
            events,
            stop: Arc::clone(&stop),
            active: Arc::new(AtomicUsize::new(0)),
        };
        let thread = std::thread::Builder::new()
            .name("cxr-dicom-listen".into())
            .spawn(move || server.accept_loop(&listener))
            .map_err(|e| CoreError::Internal(format!("starting the DICOM listener: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            local_addr,
        })
    }
}

#[derive(Clone)]
struct Server {
    options: DicomListen,
    inbox: PathBuf,
    events: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
}

impl Server {
    fn emit(&self, event: WatchEvent) {
        let _ = self.events.send(Msg::Event(event));
    }

    fn accept_loop(&self, listener: &TcpListener) {
        let mut handles: Vec<JoinHandle<()>> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((socket, peer)) => {
                    if self.active.load(Ordering::Relaxed) >= MAX_ASSOCIATIONS {
                        self.emit(WatchEvent::DicomRefused {
                            peer: peer.to_string(),
                            reason: format!("{MAX_ASSOCIATIONS} associations already open; closed"),
                        });
                        continue;
                    }
                    self.active.fetch_add(1, Ordering::Relaxed);
                    let server = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("cxr-dicom-association".into())
                        .spawn(move || {
                            server.serve(socket, peer);
                            server.active.fetch_sub(1, Ordering::Relaxed);
                        });
                    match spawned {
                        Ok(handle) => handles.push(handle),
                        Err(_) => {
                            self.active.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    handles.retain(|h| !h.is_finished());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    self.emit(WatchEvent::Error {
                        file: None,
                        error: format!("DICOM listener: {e}"),
                    });
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        // Associations in progress end at their next read (timeout) or finish their instance.
        for handle in handles {
            let _ = handle.join();
        }
    }

    fn serve(&self, socket: TcpStream, peer: SocketAddr) {
        let _ = socket.set_nonblocking(false);
        let mut options = ServerAssociationOptions::new()
            .accept_called_ae_title()
            .ae_title(self.options.ae_title.clone())
            .with_abstract_syntax(uids::VERIFICATION)
            .read_timeout(IDLE_TIMEOUT)
            .write_timeout(IDLE_TIMEOUT);
        for class in STORAGE_CLASSES {
            options = options.with_abstract_syntax(class);
        }
        for syntax in TRANSFER_SYNTAXES {
            options = options.with_transfer_syntax(syntax);
        }
        let association = match establish(&options, socket) {
            Ok(association) => association,
            Err(reason) => {
                self.emit(WatchEvent::DicomRefused {
                    peer: peer.to_string(),
                    reason,
                });
                return;
            }
        };
        let calling = dicom_ul::association::Association::peer_ae_title(&association).to_owned();
        // Senders propose many classes and take what is accepted, so a class we do not store
        // is not worth telling; a radiograph in a transfer syntax we cannot decode is.
        let contexts = association.presentation_contexts();
        let none_accepted = contexts
            .iter()
            .all(|pc| pc.reason != PresentationContextResultReason::Acceptance);
        let mut refused: Vec<String> = contexts
            .iter()
            .filter(|pc| {
                pc.reason == PresentationContextResultReason::TransferSyntaxesNotSupported
                    || none_accepted
            })
            .map(|pc| format!("{} ({:?})", pc.abstract_syntax, pc.reason))
            .collect();
        refused.dedup();
        if !refused.is_empty() {
            self.emit(WatchEvent::DicomRefused {
                peer: format!("{calling}@{peer}"),
                reason: format!(
                    "presentation contexts refused (radiograph storage classes, in the \
                     transfer syntaxes cxr decodes, only): {}",
                    refused.join(", ")
                ),
            });
        }
        if let Err(reason) = self.receive(association, &calling) {
            self.emit(WatchEvent::DicomRefused {
                peer: format!("{calling}@{peer}"),
                reason,
            });
        }
    }

    /// Serves one association's messages until release; `Err` says why it ended otherwise
    /// (whatever was half-received is dropped).
    fn receive(
        &self,
        mut association: ServerAssociation<TcpStream>,
        calling: &str,
    ) -> std::result::Result<(), String> {
        let mut message = Message::default();
        loop {
            let pdu = association
                .receive()
                .map_err(|e| format!("connection ended: {e}"))?;
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        if let Some(done) = message.add(&value, self.options.max_bytes) {
                            let reply = self.answer(&association, &done, calling);
                            association
                                .send(&reply)
                                .map_err(|e| format!("cannot answer: {e}"))?;
                            message = Message::default();
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = association.send(&Pdu::ReleaseRP);
                    return Ok(());
                }
                Pdu::AbortRQ { source } => {
                    return Err(format!("aborted by the sender ({source:?})"));
                }
                other => {
                    let _ = association.abort();
                    return Err(format!("unexpected {}", other.short_description()));
                }
            }
        }
    }

    /// The response to a complete message: C-ECHO-RSP, or C-STORE-RSP once the instance is
    /// durable in the inbox (or refused).
    fn answer(
        &self,
        association: &ServerAssociation<TcpStream>,
        message: &Complete,
        calling: &str,
    ) -> Pdu {
        let command = match read_command(&message.command) {
            Ok(command) => command,
            Err(reason) => {
                self.emit(WatchEvent::DicomRefused {
                    peer: calling.to_owned(),
                    reason,
                });
                return response(
                    message.context,
                    &Command::default(),
                    0x8001,
                    CANNOT_UNDERSTAND,
                );
            }
        };
        match command.field {
            0x0030 => response(message.context, &command, 0x8030, SUCCESS),
            0x0001 => {
                let status = match self.store(association, message, &command, calling) {
                    Ok(file) => {
                        self.emit(WatchEvent::DicomReceived {
                            file,
                            calling_ae: calling.to_owned(),
                            sop_instance_uid: command.instance.clone(),
                        });
                        SUCCESS
                    }
                    Err((status, reason)) => {
                        self.emit(WatchEvent::DicomRefused {
                            peer: calling.to_owned(),
                            reason: format!("instance {}: {reason}", command.instance),
                        });
                        status
                    }
                };
                response(message.context, &command, 0x8001, status)
            }
            other => {
                self.emit(WatchEvent::DicomRefused {
                    peer: calling.to_owned(),
                    reason: format!("unsupported DIMSE command {other:#06x}"),
                });
                // "Unrecognized operation" on a response of the same kind.
                response(message.context, &command, other | 0x8000, 0x0211)
            }
        }
    }

    /// Writes the instance into the inbox, durably; the error carries the C-STORE status.
    fn store(
        &self,
        association: &ServerAssociation<TcpStream>,
        message: &Complete,
        command: &Command,
        calling: &str,
    ) -> std::result::Result<PathBuf, (u16, String)> {
        if message.over_limit {
            return Err((
                OUT_OF_RESOURCES,
                format!(
                    "larger than the {} bytes accepted; refused, nothing written",
                    self.options.max_bytes
                ),
            ));
        }
        let transfer_syntax = association
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.id == message.context && pc.reason == PresentationContextResultReason::Acceptance
            })
            .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_owned())
            .ok_or((
                CANNOT_UNDERSTAND,
                "no accepted presentation context".to_owned(),
            ))?;
        // UIDs are digits and dots: a safe file name. Anything else is not a UID.
        let uid = &command.instance;
        if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err((
                CANNOT_UNDERSTAND,
                format!("invalid SOP Instance UID {uid:?}"),
            ));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(command.class.as_str())
            .media_storage_sop_instance_uid(uid.as_str())
            .transfer_syntax(transfer_syntax.as_str())
            .source_application_entity_title(calling)
            .build()
            .map_err(|e| (PROCESSING_FAILURE, format!("file meta: {e}")))?;
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        meta.write(&mut file)
            .map_err(|e| (PROCESSING_FAILURE, format!("file meta: {e}")))?;
        file.extend_from_slice(&message.data);
        let path = self.inbox.join(format!("{uid}.dcm"));
        crate::fsutil::write_atomic(&path, &file)
            .and_then(|()| crate::queue::sync_dir(&self.inbox))
            .map_err(|e| (OUT_OF_RESOURCES, format!("cannot write it: {e}")))?;
        Ok(path)
    }
}

fn establish(
    options: &ServerAssociationOptions<
        '_,
        AcceptCalledAeTitle,
        dicom_ul::association::server::DefaultNegotiation,
    >,
    socket: TcpStream,
) -> std::result::Result<ServerAssociation<TcpStream>, String> {
    options
        .establish(socket)
        .map_err(|e| format!("association refused: {e}"))
}

/// One DIMSE message being received: its command set and data set, fragment by fragment.
#[derive(Default)]
struct Message {
    context: u8,
    command: Vec<u8>,
    command_done: bool,
    data: Vec<u8>,
    /// The data set grew past the limit: the rest is read and dropped.
    over_limit: bool,
    expects_data: Option<bool>,
}

/// A complete message.
struct Complete {
    context: u8,
    command: Vec<u8>,
    data: Vec<u8>,
    over_limit: bool,
}

impl Message {
    /// Adds a fragment; returns the message once it is complete.
    fn add(&mut self, value: &PDataValue, max_bytes: u64) -> Option<Complete> {
        self.context = value.presentation_context_id;
        match value.value_type {
            PDataValueType::Command => {
                self.command.extend_from_slice(&value.data);
                if value.is_last {
                    self.command_done = true;
                    self.expects_data =
                        Some(read_command(&self.command).is_ok_and(|c| c.data_set_type != 0x0101));
                    if self.expects_data == Some(false) {
                        return Some(self.take());
                    }
                }
                None
            }
            PDataValueType::Data => {
                if self.data.len() as u64 + value.data.len() as u64 > max_bytes {
                    self.over_limit = true;
                    self.data = Vec::new();
                } else if !self.over_limit {
                    self.data.extend_from_slice(&value.data);
                }
                (value.is_last && self.command_done).then(|| self.take())
            }
        }
    }

    fn take(&mut self) -> Complete {
        let taken = std::mem::take(self);
        Complete {
            context: taken.context,
            command: taken.command,
            data: taken.data,
            over_limit: taken.over_limit,
        }
    }
}

/// The parts of a DIMSE command set this SCP uses.
#[derive(Debug, Default)]
struct Command {
    field: u16,
    message_id: u16,
    data_set_type: u16,
    class: String,
    instance: String,
}

/// Command sets are always Implicit VR Little Endian (PS3.7 6.3.1).
fn read_command(bytes: &[u8]) -> std::result::Result<Command, String> {
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let object = InMemDicomObject::read_dataset_with_ts(bytes, &ts)
        .map_err(|e| format!("unreadable command set: {e}"))?;
    let int = |tag: Tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())
            .ok_or_else(|| format!("command set without {tag}"))
    };
    let text = |tag: Tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
            .unwrap_or_default()
    };
    Ok(Command {
        field: int(tags::COMMAND_FIELD)?,
        message_id: int(tags::MESSAGE_ID)?,
        data_set_type: int(tags::COMMAND_DATA_SET_TYPE)?,
        class: text(tags::AFFECTED_SOP_CLASS_UID),
        instance: text(tags::AFFECTED_SOP_INSTANCE_UID),
    })
}

/// A response command (`field`: 0x8001 C-STORE-RSP, 0x8030 C-ECHO-RSP) with `status`.
fn response(context: u8, request: &Command, field: u16, status: u16) -> Pdu {
    let mut object = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| {
        object.put(DataElement::new(tag, vr, value));
    };
    if !request.class.is_empty() {
        put(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(request.class.as_str()),
        );
    }
    put(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field));
    put(
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        VR::US,
        PrimitiveValue::from(request.message_id),
    );
    // No data set follows.
    put(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(0x0101_u16),
    );
    put(tags::STATUS, VR::US, PrimitiveValue::from(status));
    if !request.instance.is_empty() {
        put(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(request.instance.as_str()),
        );
    }
    let data = command_bytes(&object);
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    }
}

/// A command set's bytes: Implicit VR Little Endian, behind its group length (PS3.7 E.1).
pub(super) fn command_bytes(object: &InMemDicomObject) -> Vec<u8> {
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut body = Vec::new();
    let _ = object.write_dataset_with_ts(&mut body, &ts);
    // The length of everything after it.
    let mut data = Vec::with_capacity(body.len() + 12);
    data.extend_from_slice(&0u16.to_le_bytes());
    data.extend_from_slice(&0u16.to_le_bytes());
    data.extend_from_slice(&4u32.to_le_bytes());
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&body);
    data
}
