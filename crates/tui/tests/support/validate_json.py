"""Validates JSON documents against one of the schemas in docs/schema (JSON Schema 2020-12, the
`jsonschema` package), resolving the schemas' references to each other within that folder.
Usage: validate_json.py SCHEMA_DIR SCHEMA_FILE DOCUMENT...; a document file holds one JSON value
or JSON lines. Exits 1 naming every violation."""
import json
import pathlib
import sys

import jsonschema
from referencing import Registry, Resource

folder = pathlib.Path(sys.argv[1])
registry = Registry()
for path in folder.glob("*.schema.json"):
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
root = json.loads((folder / sys.argv[2]).read_text())
validator = jsonschema.Draft202012Validator(root, registry=registry)
errors = []
count = 0
for name in sys.argv[3:]:
    text = pathlib.Path(name).read_text()
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    for document in documents:
        count += 1
        for error in validator.iter_errors(document):
            errors.append(f"{name}: {error.json_path}: {error.message}")
print(f"{count} documents checked against {sys.argv[2]}")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
