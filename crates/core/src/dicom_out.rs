//! DICOM out: for a DICOM input, the overlays as Secondary Capture images (RGB) and the
//! prediction, flags and explanation metrics as a Comprehensive Structured Report, all in the
//! source image's study, each kind in a new series, each referencing the source image. A PACS
//! files them beside the radiograph they explain.
//!
//! UIDs: every new Series and SOP Instance UID is `2.25.` followed by a random (version 4)
//! UUID as one decimal number (PS3.5 B.2, ISO/IEC 9834-8): no organisation root is needed and
//! two UIDs never collide in practice.
//!
//! Codes: DICOM (`DCM`) and LOINC (`LN`) codes where one says exactly what an item is; the
//! project's own measures (probability, familiarity, explanation quality) use the private
//! coding scheme `99CXR` (PS3.16 8.2: designators starting with `99` are local).

use std::path::Path;
use std::time::SystemTime;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemDicomObject;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};

use crate::explain::report::MethodReport;
use crate::pipeline::ClassifyReport;
use crate::{CoreError, Result};

/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = uids::COMPREHENSIVE_SR_STORAGE;
/// The private coding scheme of this tool's own concepts.
pub const CODING_SCHEME: &str = "99CXR";
/// Series numbers of the new series, far from a modality's own 1, 2, ...
const CAPTURE_SERIES_NUMBER: i32 = 9001;
const REPORT_SERIES_NUMBER: i32 = 9002;

/// A new UID: `2.25.` and a random version-4 UUID as a decimal number (at most 44 characters).
#[must_use]
pub fn new_uid() -> String {
    let mut uuid: u128 = rand::random();
    // Version 4 (bits 76..80 = 0100) and the RFC 4122 variant (bits 62..64 = 10).
    uuid = (uuid & !(0xF << 76)) | (0x4 << 76);
    uuid = (uuid & !(0x3 << 62)) | (0x2 << 62);
    format!("2.25.{uuid}")
}

/// What the outputs take from the source file: its identity and its study.
#[derive(Debug, Clone)]
pub struct Source {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// Patient and study attributes copied as they are (name, id, birth date, sex, study
    /// date/time/id, accession number, referring physician), absent ones left out.
    copied: Vec<(Tag, VR, String)>,
}

/// Patient and General Study attributes copied into every output (Type 2 ones are written
/// empty when the source lacks them).
const COPIED: [(Tag, VR); 9] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
];

impl Source {
    /// Reads the source's identity from a DICOM Part 10 file held in memory (the pixel data
    /// is not parsed). A file without the UIDs that place it (SOP Class/Instance, Series,
    /// Study) cannot be referenced, so it is an error that says which is missing.
    pub fn read(bytes: &[u8], path: &Path) -> Result<Self> {
        let fail = |reason: String| CoreError::Invalid(format!("{}: {reason}", path.display()));
        if !cxr_io::dicom::is_dicom(bytes) {
            return Err(fail("not a DICOM file".into()));
        }
        let object = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(&bytes[128..])
            .map_err(|e| fail(format!("cannot read its DICOM header: {e}")))?;
        let text = |tag: Tag| {
            object
                .element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' ').to_owned())
                .filter(|s| !s.is_empty())
        };
        let uid = |tag: Tag, name: &str| {
            text(tag).ok_or_else(|| {
                fail(format!(
                    "it has no {name}, so DICOM results cannot reference it"
                ))
            })
        };
        Ok(Self {
            sop_class_uid: uid(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            series_instance_uid: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            study_instance_uid: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            copied: COPIED
                .iter()
                .filter_map(|&(tag, vr)| text(tag).map(|v| (tag, vr, v)))
                .collect(),
        })
    }

    /// The Patient and General Study modules, and the SOP Common and series attributes of a
    /// new instance of `sop_class` in series `series`.
    fn new_instance(&self, sop_class: &str, series: &Series, modality: &str) -> Instance {
        let mut object = InMemDicomObject::new_empty();
        // UTF-8: text copied from the source was decoded with its own character set.
        put(
            &mut object,
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            "ISO_IR 192",
        );
        for &(tag, vr) in &COPIED {
            let value = self
                .copied
                .iter()
                .find(|(t, _, _)| *t == tag)
                .map_or("", |(_, _, v)| v.as_str());
            put(&mut object, tag, vr, value);
        }
        let uid = new_uid();
        let (date, time) = dicom_now();
        put(&mut object, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put(&mut object, tags::SOP_INSTANCE_UID, VR::UI, &uid);
        put(
            &mut object,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &self.study_instance_uid,
        );
        put(&mut object, tags::SERIES_INSTANCE_UID, VR::UI, &series.uid);
        put(
            &mut object,
            tags::SERIES_NUMBER,
            VR::IS,
            &series.number.to_string(),
        );
        put(&mut object, tags::MODALITY, VR::CS, modality);
        put(
            &mut object,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &series.next().to_string(),
        );
        put(&mut object, tags::CONTENT_DATE, VR::DA, &date);
        put(&mut object, tags::CONTENT_TIME, VR::TM, &time);
        put(&mut object, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
        put(&mut object, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
        put(&mut object, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000");
        put(&mut object, tags::MANUFACTURER, VR::LO, "cxr");
        put(
            &mut object,
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            env!("CARGO_PKG_VERSION"),
        );
        Instance {
            uid,
            sop_class: sop_class.to_owned(),
            object,
        }
    }

    /// A Referenced SOP Sequence item naming the source image.
    fn reference(&self) -> InMemDicomObject {
        sop_reference(&self.sop_class_uid, &self.sop_instance_uid)
    }
}

/// A new series: its UID and the instance numbers handed out in it.
struct Series {
    uid: String,
    number: i32,
    instances: std::cell::Cell<i32>,
}

impl Series {
    fn new(number: i32) -> Self {
        Self {
            uid: new_uid(),
            number,
            instances: std::cell::Cell::new(0),
        }
    }

    fn next(&self) -> i32 {
        self.instances.set(self.instances.get() + 1);
        self.instances.get()
    }
}

struct Instance {
    uid: String,
    sop_class: String,
    object: InMemDicomObject,
}

impl Instance {
    /// The Part 10 file, Explicit VR Little Endian.
    fn encode(self) -> Result<Written> {
        let file = self
            .object
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|e| CoreError::Internal(format!("DICOM file meta: {e}")))?;
        let mut bytes = Vec::new();
        file.write_all(&mut bytes)
            .map_err(|e| CoreError::Internal(format!("writing DICOM: {e}")))?;
        Ok(Written {
            sop_instance_uid: self.uid,
            sop_class_uid: self.sop_class,
            bytes,
        })
    }
}

/// One DICOM file made, with its identity.
#[derive(Debug, Clone)]
pub struct Written {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// The Part 10 file.
    pub bytes: Vec<u8>,
}

/// Everything made for one analysed DICOM image.
#[derive(Debug, Clone)]
pub struct Results {
    /// One Secondary Capture per explanation overlay: `(method, file)`.
    pub captures: Vec<(String, Written)>,
    /// The Structured Report.
    pub report: Written,
}

/// One explanation to put out: its report and its overlay (PNG, at the source's size).
pub struct Overlay<'a> {
    pub report: &'a MethodReport,
    pub png: &'a [u8],
}

/// The Secondary Captures of `overlays` and the Structured Report of `classification` and the
/// explanations, for the DICOM image `source`. `model` is the model fingerprint, recorded as
/// the algorithm version.
pub fn results(
    source: &Source,
    classification: &ClassifyReport,
    overlays: &[Overlay<'_>],
    model: &str,
) -> Result<Results> {
    let capture_series = Series::new(CAPTURE_SERIES_NUMBER);
    let captures = overlays
        .iter()
        .map(|overlay| {
            let written = secondary_capture(source, &capture_series, overlay)?;
            Ok((overlay.report.method.clone(), written))
        })
        .collect::<Result<Vec<_>>>()?;
    let report = structured_report(
        source,
        classification,
        overlays,
        (&capture_series.uid, &captures),
        model,
    )?;
    Ok(Results { captures, report })
}

fn secondary_capture(source: &Source, series: &Series, overlay: &Overlay<'_>) -> Result<Written> {
    let rgb = image::load_from_memory_with_format(overlay.png, image::ImageFormat::Png)
        .map_err(|e| CoreError::Internal(format!("overlay PNG: {e}")))?
        .into_rgb8();
    let mut instance = source.new_instance(SECONDARY_CAPTURE, series, "OT");
    let object = &mut instance.object;
    put(object, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put(object, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    // The overlay carries a header and a colour bar drawn into the pixels.
    put(object, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put(object, tags::PATIENT_ORIENTATION, VR::CS, "");
    put(
        object,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &format!(
            "{} explanation of class {} overlaid on the source radiograph",
            overlay.report.method, overlay.report.target
        ),
    );
    sequence(
        object,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source.reference()],
    );
    put_u16(object, tags::SAMPLES_PER_PIXEL, 3);
    put(object, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(object, tags::PLANAR_CONFIGURATION, 0);
    let (width, height) = rgb.dimensions();
    let side = |v: u32| {
        u16::try_from(v).map_err(|_| CoreError::Invalid(format!("overlay side {v} over 65535")))
    };
    put_u16(object, tags::ROWS, side(height)?);
    put_u16(object, tags::COLUMNS, side(width)?);
    put_u16(object, tags::BITS_ALLOCATED, 8);
    put_u16(object, tags::BITS_STORED, 8);
    put_u16(object, tags::HIGH_BIT, 7);
    put_u16(object, tags::PIXEL_REPRESENTATION, 0);
    put(object, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    let mut pixels = rgb.into_raw();
    // Odd lengths are padded to even (PS3.5 7.1.1).
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));
    instance.encode()
}

fn structured_report(
    source: &Source,
    classification: &ClassifyReport,
    overlays: &[Overlay<'_>],
    (capture_series, captures): (&str, &[(String, Written)]),
    model: &str,
) -> Result<Written> {
    let series = Series::new(REPORT_SERIES_NUMBER);
    let mut instance = source.new_instance(COMPREHENSIVE_SR, &series, "SR");
    let object = &mut instance.object;
    put(object, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(object, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    sequence(
        object,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    sequence(object, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    // Evidence: the source image (what was analysed), the captures (made with the report).
    sequence(
        object,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(
            &source.study_instance_uid,
            &source.series_instance_uid,
            vec![source.reference()],
        )],
    );
    if !captures.is_empty() {
        sequence(
            object,
            tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
            vec![evidence(
                &source.study_instance_uid,
                capture_series,
                captures
                    .iter()
                    .map(|(_, c)| sop_reference(&c.sop_class_uid, &c.sop_instance_uid))
                    .collect(),
            )],
        );
    }
    // The document's root container and its content.
    put(object, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    code_sequence(
        object,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        ("18748-4", "LN", "Diagnostic Imaging Report"),
    );
    put(object, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut content = vec![
        text_item(("111001", "DCM", "Algorithm Name"), "cxr"),
        text_item(("111003", "DCM", "Algorithm Version"), model),
        image_item(
            ("121112", "DCM", "Source of Measurement"),
            source.reference(),
        ),
        text_item(("121071", "DCM", "Finding"), &classification.label),
    ];
    for (class, probability) in &classification.probabilities {
        let mut item = num_item(
            ("PROB", CODING_SCHEME, "Probability"),
            f64::from(*probability),
        );
        let class = text_item(("CLASS", CODING_SCHEME, "Class"), class);
        contents(&mut item, vec![with_relationship(class, "HAS CONCEPT MOD")]);
        content.push(item);
    }
    content.push(num_item(
        ("THRESHOLD", CODING_SCHEME, "Decision threshold"),
        f64::from(classification.threshold),
    ));
    content.push(num_item(
        ("LUNGFRAC", CODING_SCHEME, "Lung fraction of image"),
        f64::from(classification.lung_fraction),
    ));
    if let Some(familiarity) = classification.trust.familiarity {
        content.push(num_item(
            (
                "FAMILIARITY",
                CODING_SCHEME,
                "Distance from training images",
            ),
            f64::from(familiarity),
        ));
    }
    let trust = &classification.trust;
    if trust.flags.is_empty() {
        content.push(text_item(("FLAG", CODING_SCHEME, "Flag"), "none"));
    }
    for (i, flag) in trust.flags.iter().enumerate() {
        let reason = trust.reasons.get(i).map_or("", String::as_str);
        content.push(text_item(
            ("FLAG", CODING_SCHEME, "Flag"),
            &format!("{}: {reason}", flag.name()),
        ));
    }
    for overlay in overlays {
        content.push(explanation_container(overlay.report, captures));
    }
    contents(object, content);
    instance.encode()
}

/// One explanation: the explainer, the class explained, its quality measures and its overlay.
fn explanation_container(
    report: &MethodReport,
    captures: &[(String, Written)],
) -> InMemDicomObject {
    let mut container = InMemDicomObject::new_empty();
    put(&mut container, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put(&mut container, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    code_sequence(
        &mut container,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        ("EXPLANATION", CODING_SCHEME, "Explanation"),
    );
    put(
        &mut container,
        tags::CONTINUITY_OF_CONTENT,
        VR::CS,
        "SEPARATE",
    );
    let mut items = vec![
        text_item(("EXPLAINER", CODING_SCHEME, "Explainer"), &report.method),
        text_item(("TARGET", CODING_SCHEME, "Class explained"), &report.target),
    ];
    let quality = &report.quality;
    let measures = [
        (
            ("LUNGMASS", "Heatmap mass inside the lungs"),
            quality.lung_mass_share,
        ),
        (("DELETIONAUC", "Deletion AUC"), quality.deletion_auc),
        (("INSERTIONAUC", "Insertion AUC"), quality.insertion_auc),
        (
            ("RANDOMCORR", "Correlation with a randomised model's map"),
            quality.randomisation_correlation,
        ),
    ];
    for ((code, meaning), value) in measures {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            items.push(num_item((code, CODING_SCHEME, meaning), value));
        }
    }
    if let Some((_, capture)) = captures.iter().find(|(m, _)| *m == report.method) {
        items.push(image_item(
            ("OVERLAY", CODING_SCHEME, "Explanation overlay"),
            sop_reference(&capture.sop_class_uid, &capture.sop_instance_uid),
        ));
    }
    contents(&mut container, items);
    container
}

fn put(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_u16(object: &mut InMemDicomObject, tag: Tag, value: u16) {
    object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn sequence(object: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    object.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code(code: (&str, &str, &str)) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::CODE_VALUE, VR::SH, code.0);
    put(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, code.1);
    put(&mut item, tags::CODE_MEANING, VR::LO, code.2);
    item
}

fn code_sequence(object: &mut InMemDicomObject, tag: Tag, value: (&str, &str, &str)) {
    sequence(object, tag, vec![code(value)]);
}

fn sop_reference(class: &str, instance: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        instance,
    );
    item
}

/// A Hierarchical SOP Instance Reference item: one study, one series, its instances.
fn evidence(study: &str, series: &str, instances: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut series_item = InMemDicomObject::new_empty();
    put(&mut series_item, tags::SERIES_INSTANCE_UID, VR::UI, series);
    sequence(&mut series_item, tags::REFERENCED_SOP_SEQUENCE, instances);
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::STUDY_INSTANCE_UID, VR::UI, study);
    sequence(
        &mut item,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![series_item],
    );
    item
}

/// A content item of `value_type` named `concept`, contained in its parent.
fn item(value_type: &str, concept: (&str, &str, &str)) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    code_sequence(&mut item, tags::CONCEPT_NAME_CODE_SEQUENCE, concept);
    item
}

fn with_relationship(mut item: InMemDicomObject, relationship: &str) -> InMemDicomObject {
    put(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    item
}

fn text_item(concept: (&str, &str, &str), value: &str) -> InMemDicomObject {
    let mut item = item("TEXT", concept);
    put(&mut item, tags::TEXT_VALUE, VR::UT, value);
    item
}

/// A unitless number (UCUM `1`), written with up to 16 characters (the DS limit).
fn num_item(concept: (&str, &str, &str), value: f64) -> InMemDicomObject {
    let mut item = item("NUM", concept);
    let mut measured = InMemDicomObject::new_empty();
    put(
        &mut measured,
        tags::NUMERIC_VALUE,
        VR::DS,
        &decimal_string(value),
    );
    code_sequence(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        ("1", "UCUM", "no units"),
    );
    sequence(&mut item, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    item
}

fn image_item(concept: (&str, &str, &str), reference: InMemDicomObject) -> InMemDicomObject {
    let mut item = item("IMAGE", concept);
    sequence(&mut item, tags::REFERENCED_SOP_SEQUENCE, vec![reference]);
    item
}

fn contents(object: &mut InMemDicomObject, items: Vec<InMemDicomObject>) {
    sequence(object, tags::CONTENT_SEQUENCE, items);
}

/// `value` as a Decimal String: six significant decimals fit DS's 16 characters.
fn decimal_string(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "" | "-" | "-0" => "0".to_owned(),
        _ if text.len() > 16 => format!("{value:.6E}"),
        _ => text.to_owned(),
    }
}

/// The current date and time in UTC as DICOM DA and TM (`YYYYMMDD`, `HHMMSS`).
fn dicom_now() -> (String, String) {
    let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // 2026-12-06T01:30:00Z
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    (digits[..8].to_owned(), digits[8..14].to_owned())
}

/// The DICOM results of one image's [`crate::service::Report`] parts when the image is a
/// DICOM file (`None` otherwise): a Secondary Capture per explanation that succeeded, and the
/// Structured Report.
pub fn for_image(
    bytes: &[u8],
    path: &Path,
    classification: &ClassifyReport,
    methods: &[std::result::Result<crate::service::Rendered, crate::service::MethodFailure>],
    model: &str,
) -> Result<Option<Results>> {
    if !cxr_io::dicom::is_dicom(bytes) {
        return Ok(None);
    }
    let source = Source::read(bytes, path)?;
    let overlays: Vec<Overlay<'_>> = methods
        .iter()
        .flatten()
        .map(|rendered| Overlay {
            report: &rendered.report,
            png: &rendered.overlay_png,
        })
        .collect();
    results(&source, classification, &overlays, model).map(Some)
}

/// Writes `results` beside other outputs: `DIR/{prefix}{method}.sc.dcm` and
/// `DIR/{prefix}sr.dcm`, each atomically; returns the paths written.
pub fn write(results: &Results, dir: &Path, prefix: &str) -> Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    for (method, capture) in &results.captures {
        let path = dir.join(format!("{prefix}{method}.sc.dcm"));
        crate::fsutil::write_atomic(&path, &capture.bytes)?;
        written.push(path);
    }
    let path = dir.join(format!("{prefix}sr.dcm"));
    crate::fsutil::write_atomic(&path, &results.report.bytes)?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_uuid_derived_and_fit_the_ui_limit() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        for uid in [&a, &b] {
            assert!(uid.starts_with("2.25."), "{uid}");
            assert!(uid.len() <= 64, "{uid}");
            let n: u128 = uid[5..].parse().unwrap();
            assert_eq!((n >> 76) & 0xF, 4, "version 4");
            assert_eq!((n >> 62) & 0x3, 2, "RFC 4122 variant");
            // No leading zero (PS3.5 9.1).
            assert!(!uid[5..].starts_with('0'));
        }
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        for (value, expected) in [
            (0.5, "0.5"),
            (1.0, "1"),
            (0.0, "0"),
            (-0.000_000_1, "0"),
            (0.123_456_789, "0.123457"),
            (123_456.25, "123456.25"),
            (1e20, "1.000000E20"),
        ] {
            let text = decimal_string(value);
            assert_eq!(text, expected);
            assert!(text.len() <= 16);
        }
    }
}
