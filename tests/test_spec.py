"""spec/header.schema.json is the header schema the reader enforces."""
import json
import os

from slcodec.format import schema
from slcodec.format.container import Container

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_spec_schema_matches_code():
    committed = open(os.path.join(ROOT, "spec", "header.schema.json")).read()
    assert committed == schema.dump(), "regenerate: python -m slcodec.format.schema > spec/header.schema.json"


def test_golden_headers_match_the_committed_schema():
    spec = json.load(open(os.path.join(ROOT, "spec", "header.schema.json")))
    golden = os.path.join(ROOT, "spec", "golden")
    for name in os.listdir(golden):
        if name.endswith(".vqsl"):
            with Container.open(os.path.join(golden, name)) as c:
                schema.validate(c.header, spec["header"])
