"""OCI references and registry credentials."""

from __future__ import annotations

import pytest

from agent.models.oci import OciRef
from agent.models.sources import SourceError
from agent.models.sync_setup import manifest_ref, read_credentials


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("oci://registry:5000/models/defects:1.2.0", ("registry:5000", "models/defects", "1.2.0")),
        ("oci://r.example/defects", ("r.example", "defects", "latest")),
        ("oci://r/m@sha256:" + "a" * 64, ("r", "m", "sha256:" + "a" * 64)),
    ],
)
def test_references_parse(ref, parsed):
    got = OciRef.parse(ref)
    assert (got.host, got.repo, got.reference) == parsed


@pytest.mark.parametrize("ref", ["oci://", "oci://host", "https://r/m:1", "oci://r/M:1",
                                 "oci://r/m:../../x"])
def test_bad_references_are_refused(ref):
    with pytest.raises(SourceError, match="not an OCI reference"):
        OciRef.parse(ref)


def test_credentials_file_and_its_errors_never_echo_the_secret(tmp_path):
    good = tmp_path / "creds.json"
    good.write_text('{"registry:5000": {"username": "line3", "password": "hunter2"}}')
    assert read_credentials(str(good)) == {"registry:5000": ("line3", "hunter2")}
    assert read_credentials("") == {}
    bad = tmp_path / "bad.json"
    bad.write_text('{"registry:5000": {"user": "line3", "password": "hunter2"}}')
    with pytest.raises(SourceError) as err:
        read_credentials(str(bad))
    assert "hunter2" not in str(err.value.message)
    assert read_credentials(str(tmp_path / "missing.json")) == {}  # an optional Secret
    with pytest.raises(SourceError, match="expected JSON"):
        read_credentials(str(tmp_path))  # a directory: unreadable


def test_a_manifest_path_stays_a_path_through_symlinks(tmp_path):
    assert manifest_ref("https://cp/fleet.yaml") == "https://cp/fleet.yaml"
    assert manifest_ref(str(tmp_path / "fleet.yaml")) == (tmp_path / "fleet.yaml").as_uri()
