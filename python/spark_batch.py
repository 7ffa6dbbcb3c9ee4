"""cxr on Apache Spark: a manifest's images classified by `cxr worker`, one per partition.

    python python/spark_batch.py MANIFEST --out DIR [--master local[2]] [--partitions N]
        [--cxr PATH] [--models DIR] [--jobs N] [--root DIR] [--worker-command CMD]
        [--explain METHODS [--overlays DIR]]

MANIFEST is what `cxr batch` reads: CSV with a header (or JSON lines, .jsonl/.ndjson) with a
`path` column, relative paths resolved against the manifest's folder, else its parent; the other
columns are carried through. The driver resolves every path and makes it relative to one root
(--root, default the deepest folder holding them all); each partition of the distinct paths is
piped (RDD.pipe) through one `cxr worker --dir ROOT --subfolders` process, which loads the models
once and answers `classify ID` lines with the service's typed classification. `--subfolders`
keeps the worker's path checks: each part of an ID is checked, and the file must lie inside ROOT.

pipe() is called with checkCode=True: a worker that dies (killed, out of memory) fails its task,
Spark discards that task's rows and runs the partition again (in local mode give the retries
in the master, local[2,4]). Results are joined back to the manifest rows by ID, so every row
appears exactly once, and written as a DataFrame to Parquet in DIR (Spark's part files).

Columns: row, path, the carried columns, sha256, predicted, probability_CLASS per class,
flags (comma-separated), familiarity, classification (the answer as JSON text), error.

--explain grad-cam,lime also sends `explain_NAME ID` for each explainer (default parameters, as
`cxr batch --explain`): the column `explanations` holds each image's answers as a JSON list in
the order asked, each the worker's explanation with `overlay`, the PNG it wrote to --overlays
(default OUT.overlays, a folder every executor must reach), or {"method", "error"}.
"""

import argparse
import json
import os
import shlex
import sys


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--out", required=True, help="output folder (Parquet, replaced)")
    parser.add_argument("--master", default=None, help="Spark master (default: spark-submit's)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the manifest [default: Spark's parallelism]")
    parser.add_argument("--cxr", default="cxr", help="the cxr binary on the executors")
    parser.add_argument("--models", default=None, help="models folder on the executors")
    parser.add_argument("--jobs", type=int, default=1, help="`cxr worker --jobs` per partition")
    parser.add_argument("--root", default=None, help="folder the IDs are relative to")
    parser.add_argument("--worker-command", default=None,
                        help="replaces `CXR worker` (a wrapper that runs it, e.g. in a container)")
    parser.add_argument("--explain", default="",
                        help="comma-separated explainers (`cxr explainers`) to run on every image")
    parser.add_argument("--overlays", default=None,
                        help="folder for the explanations' overlay PNGs [default: OUT.overlays]")
    return parser.parse_args(argv)


def explainers(spec, cxr):
    """The explainer names in `spec` (comma-separated), checked against `cxr explainers` when the
    driver can run CXR (with --worker-command it may not: the workers then report unknown
    names, row by row)."""
    import subprocess
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return []
    try:
        listing = subprocess.run([cxr, "explainers", "--json"], capture_output=True, text=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return names
    known = [json.loads(line)["name"] for line in listing.splitlines() if line.strip()]
    unknown = [n for n in names if n.replace("_", "-") not in known]
    if unknown:
        raise SystemExit(f"unknown explainers {unknown}: expected some of {', '.join(known)}")
    return [n.replace("_", "-") for n in names]


def read_manifest(path):
    """The manifest's (columns, rows): rows as (index, path as written, values per column)."""
    if path.lower().endswith((".jsonl", ".ndjson")):
        objects = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                value = json.loads(line)
                if not isinstance(value, dict) or not isinstance(value.get("path"), str):
                    raise SystemExit(f"{path}: line {number}: expected an object with a string path")
                objects.append(value)
        columns = []
        for obj in objects:
            columns += [k for k in obj if k != "path" and k not in columns]
        text = lambda v: None if v is None else v if isinstance(v, str) else json.dumps(v)
        rows = [(i, o["path"].strip(), [text(o.get(c)) for c in columns])
                for i, o in enumerate(objects)]
        return columns, rows
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        if "path" not in header:
            raise SystemExit(f"{path}: no `path` column (columns: {', '.join(header)})")
        at = header.index("path")
        columns = [h for i, h in enumerate(header) if i != at]
        rows = [(i, r[at].strip(), [v for j, v in enumerate(r) if j != at])
                for i, r in enumerate(reader)]
    return columns, rows


def resolve(base, path):
    """As cxr does: against the manifest's folder, else its parent when only that has it."""
    here = os.path.join(base, path)
    parent = os.path.join(os.path.dirname(base), path)
    if not os.path.exists(here) and os.path.exists(parent):
        return os.path.abspath(parent)
    return os.path.abspath(here)


def parse_reply(line):
    """A worker reply as (id, (command, answer or None, error or None))."""
    if line.startswith("error "):
        parts = line.split(" ", 3)
        return parts[2], (parts[1], None, parts[3] if len(parts) > 3 else "error")
    command, ident, result = line.split(" ", 2)
    return ident, (command, result, None)


def gather(replies, methods):
    """One ID's replies as (classification or None, error or None, explanations as JSON text, or
    None without --explain or a classification)."""
    by_command = {command: (answer, error) for command, answer, error in replies}
    classification, error = by_command.get("classify", (None, "no reply"))
    if not methods or classification is None:
        return classification, error, None
    explanations = []
    for method in methods:
        answer, why = by_command.get(f"explain_{method}", (None, "no reply"))
        explanations.append(json.loads(answer) if answer else {"method": method, "error": why})
    return classification, error, json.dumps(explanations)


def main(argv):
    args = parse_args(argv)
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType, LongType, StringType, StructField, StructType

    manifest = os.path.abspath(args.manifest)
    columns, rows = read_manifest(manifest)
    reserved = {"row", "sha256", "predicted", "flags", "familiarity", "classification", "error",
                "explanations"}
    clash = [c for c in columns if c in reserved or c.startswith("probability_")]
    if clash:
        raise SystemExit(f"{manifest}: columns {clash} have the names of result columns")
    base = os.path.dirname(manifest)
    files = {path: resolve(base, path) for _, path, _ in rows}
    root = os.path.realpath(args.root or os.path.commonpath(
        [os.path.dirname(f) for f in files.values()] or [base]))

    def ident(path):
        """The worker's ID for a manifest path, or None (with why) when it cannot be sent."""
        relative = os.path.relpath(os.path.realpath(files[path]), root)
        if relative.startswith("..") or any(c.isspace() for c in relative):
            return None, f"{files[path]}: outside --root {root} or contains whitespace"
        return relative, None

    worker = args.worker_command or f"{shlex.quote(args.cxr)} worker"
    command = f"{worker} --device cpu --dir {shlex.quote(root)} --subfolders --no-cache " \
              f"--jobs {args.jobs}"
    if args.models:
        command += f" --models {shlex.quote(args.models)}"
    methods = explainers(args.explain, args.cxr)
    if methods:
        overlays = os.path.abspath(args.overlays or args.out.rstrip("/") + ".overlays")
        os.makedirs(overlays, exist_ok=True)
        command += f" --out {shlex.quote(overlays)}"

    builder = SparkSession.builder.appName("cxr-batch")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    partitions = args.partitions or sc.defaultParallelism

    ids = {path: ident(path) for path in files}
    requests = sorted({i for i, _ in ids.values() if i is not None})
    asked = ["classify"] + [f"explain_{m}" for m in methods]
    # Kept: the classes are read from the replies before the join uses them again.
    replies = (sc.parallelize(requests, partitions)
               .flatMap(lambda i: [f"{verb} {i}" for verb in asked])
               .pipe(command, checkCode=True)
               .filter(lambda line: line.strip())
               .map(parse_reply)
               .groupByKey()
               .mapValues(lambda r: gather(r, methods))
               .persist())
    classes = sorted(replies
                     .flatMap(lambda kv: json.loads(kv[1][0])["probabilities"] if kv[1][0] else [])
                     .distinct().collect())
    schema = StructType(
        [StructField("row", LongType(), False), StructField("path", StringType(), False)]
        + [StructField(c, StringType(), True) for c in columns]
        + [StructField("sha256", StringType(), True), StructField("predicted", StringType(), True)]
        + [StructField(f"probability_{c}", FloatType(), True) for c in classes]
        + [StructField("flags", StringType(), True), StructField("familiarity", FloatType(), True),
           StructField("classification", StringType(), True),
           StructField("error", StringType(), True)]
        + ([StructField("explanations", StringType(), True)] if methods else []))

    def record(row, reply):
        (index, path, values, why) = row
        classification, error, explanations = (reply if reply is not None
                                               else (None, why or "no reply", None))
        answer = json.loads(classification) if classification else None
        trust = (answer or {}).get("trust", {})
        return ([index, path] + values
                + [answer and answer["sha256"], answer and answer["label"]]
                + [answer and answer["probabilities"].get(c) for c in classes]
                + [answer and ",".join(trust.get("flags", [])), trust.get("familiarity"),
                   classification, error]
                + ([explanations] if methods else []))

    # Every manifest row once, with the one reply for its ID (rows that could not be sent
    # get a key no reply has, and their reason as the error).
    keyed = [(ids[path][0] or f"/unsent/{index}", (index, path, values, ids[path][1]))
             for index, path, values in rows]
    table = (sc.parallelize(keyed, partitions)
             .leftOuterJoin(replies)
             .map(lambda kv: record(kv[1][0], kv[1][1])))
    frame = spark.createDataFrame(table, schema)
    frame.write.mode("overwrite").parquet(args.out)
    written = spark.read.parquet(args.out)
    summary = {"rows": written.count(), "manifest_rows": len(rows), "images": len(requests),
               "errors": written.filter("error IS NOT NULL").count(),
               "partitions": partitions, "out": args.out}
    if methods:
        summary["explainers"] = methods
        # Counted on the executors: the explanations stay where they are.
        summary["explanation_errors"] = (
            written.select("explanations").rdd
            .map(lambda r: sum("error" in e for e in json.loads(r[0])) if r[0] else 0)
            .sum())
    print(json.dumps(summary))
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
