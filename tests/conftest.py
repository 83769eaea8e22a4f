"""Shared fixtures: where the real public data samples live; an environment without AWS
credentials.

The samples sit outside the repository (``../shared/data`` beside the checkout, as CI clones
them) and are read in place, never copied into the repo. Tests that modify a sample write
the modified copy to ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = (
    "criteo_kaggle_train_head1000.tsv",
    "criteo_1tb_day0_sample8324.tsv",
    "criteo_deepctr_sample200.csv",
    "taobao_userbehavior_timeorder110k.csv",
    "taobao_userbehavior_userorder84k.csv",
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real Criteo/Taobao samples (``<repo>/../shared/data``)."""
    missing = [name for name in SAMPLES if not (SHARED_DATA / name).is_file()]
    if missing:
        pytest.fail(
            f"real data samples missing under {SHARED_DATA}: {', '.join(missing)}. "
            "Clone the shared folder beside the repository (../shared/data) and rerun.",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture
def no_aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An environment in which botocore finds no AWS credentials anywhere, and s3:// goes
    to a closed local port should it find some: no test reaches the network."""
    s3fs = pytest.importorskip("s3fs")
    import fsspec.config

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    nowhere = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("BOTO_CONFIG", str(nowhere / "boto"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://127.0.0.1:1"})
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()
