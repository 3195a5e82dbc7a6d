"""The run directory's status files: what is written reads back as it was, in its own order,
and a round that changes nothing rewrites nothing."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from local_helpers import local_manifest

from critbatch.files import dump_yaml, load_yaml
from critbatch.local.rundir import RunDir

SCALARS = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                            allow_infinity=False)
DOCS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=8), DOCS, max_size=6))
def test_dumped_yaml_reads_back_equal_with_its_keys_in_order(doc: dict) -> None:
    back = load_yaml(dump_yaml(doc), "status.yaml")
    assert back == doc
    assert list(back) == list(doc)


def test_the_status_is_written_when_it_changes_and_only_then(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    manifest = local_manifest()
    status = {"phase": "Running", "trials": [{"batchSize": 16, "seed": 0, "steps": 50}]}
    run.write_status(manifest, status)
    written = (run.status_file.stat().st_ino, run.manifest_file.stat().st_ino)

    status["trials"][0]["steps"] = 50  # the same values, in the caller's own dict
    run.write_status(manifest, status)
    assert (run.status_file.stat().st_ino, run.manifest_file.stat().st_ino) == written

    status["trials"][0]["steps"] = 100  # changed in place after the last write: seen
    run.write_status(manifest, status)
    assert load_yaml(run.status_file.read_text(), "status")["trials"][0]["steps"] == 100
    assert load_yaml(run.manifest_file.read_text(), "sweep")["status"] == status
