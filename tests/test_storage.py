"""Tests of :mod:`fae_data.storage`: roots that cannot be used fail with one StorageError
naming the root, the protocol and the remedy, never with a backend's own exception."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from fae_data.errors import BackendError, InputError
from fae_data.storage import Storage


def test_unknown_protocol() -> None:
    with pytest.raises(BackendError, match=r"storage root nosuchproto://x: unknown protocol "
                                           r"nosuchproto:// .*use a local path"):
        Storage("nosuchproto://x")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_backend_not_installed() -> None:
    with pytest.raises(BackendError, match=r"storage root gcs://bucket/x: the gcs:// protocol "
                                           r"needs an fsspec backend .*pip install gcsfs"):
        Storage("gcs://bucket/x")


@pytest.mark.usefixtures("no_aws_credentials")
def test_no_credentials_is_one_error_naming_the_path() -> None:
    storage = Storage("s3://bucket/x")  # s3fs connects lazily: the first call fails
    start = time.monotonic()
    for call in (lambda: storage.exists("a.json"), lambda: storage.read_bytes("a.json"),
                 lambda: storage.listdir("a"), lambda: storage.remove("a.json")):
        with pytest.raises(BackendError, match=r"s3://bucket/x/a(\.json)?: the s3:// object "
                                               r"store has no usable credentials .*"
                                               r"AWS_ACCESS_KEY_ID"):
            call()
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("root", ["", "  "])
def test_an_empty_root_is_refused(root: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # what an empty root used to mean
    with pytest.raises(InputError, match=r"storage root .* is empty: give a folder or a URL"):
        Storage(root)
