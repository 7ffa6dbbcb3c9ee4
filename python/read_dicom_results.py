"""Reads cxr's DICOM results with pydicom, an independent reader, and prints what they say as
JSON, for the tests to compare with cxr's own JSON report.

    read_dicom_results.py sc FILE.sc.dcm OVERLAY.png   # the Secondary Capture against the PNG
    read_dicom_results.py sr FILE.sr.dcm               # the Structured Report's content tree
"""

import json
import sys

import numpy as np
import pydicom
from PIL import Image


def common(ds):
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "modality": str(ds.Modality),
        "patient_id": str(ds.get("PatientID", "")),
        "patient_name": str(ds.get("PatientName", "")),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
    }


def secondary_capture(path, png):
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    overlay = np.asarray(Image.open(png).convert("RGB"))
    out = common(ds)
    out.update(
        {
            "photometric": str(ds.PhotometricInterpretation),
            "shape": list(pixels.shape),
            "max_difference_from_png": int(
                np.abs(pixels.astype(int) - overlay.astype(int)).max()
            )
            if pixels.shape == overlay.shape
            else None,
            "source": [
                [str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID)]
                for r in ds.SourceImageSequence
            ],
        }
    )
    return out


def content(items):
    """The content tree as nested lists of {concept, type, value, children}."""
    tree = []
    for item in items:
        node = {
            "concept": item.ConceptNameCodeSequence[0].CodeMeaning,
            "code": [
                item.ConceptNameCodeSequence[0].CodeValue,
                item.ConceptNameCodeSequence[0].CodingSchemeDesignator,
            ],
            "relationship": item.RelationshipType,
            "type": item.ValueType,
        }
        if item.ValueType == "TEXT":
            node["value"] = item.TextValue
        elif item.ValueType == "NUM":
            measured = item.MeasuredValueSequence[0]
            node["value"] = float(measured.NumericValue)
            node["unit"] = measured.MeasurementUnitsCodeSequence[0].CodeValue
        elif item.ValueType == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            node["value"] = [str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)]
        if "ContentSequence" in item:
            node["children"] = content(item.ContentSequence)
        tree.append(node)
    return tree


def structured_report(path):
    ds = pydicom.dcmread(path)
    out = common(ds)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    out.update(
        {
            "completion": str(ds.CompletionFlag),
            "verification": str(ds.VerificationFlag),
            "title": ds.ConceptNameCodeSequence[0].CodeMeaning,
            "evidence": [
                str(evidence.StudyInstanceUID),
                str(evidence.ReferencedSeriesSequence[0].SeriesInstanceUID),
                str(evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            ],
            "content": content(ds.ContentSequence),
        }
    )
    return out


def main():
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "sc":
        result = secondary_capture(path, sys.argv[3])
    elif kind == "sr":
        result = structured_report(path)
    elif kind == "source":
        result = common(pydicom.dcmread(path, stop_before_pixels=True))
    else:
        sys.exit(f"unknown kind {kind!r}: sc, sr or source")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
