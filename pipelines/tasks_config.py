"""The DAGs' settings, read from the environment when a DAG file is parsed.

Every DAG file reads the storage root and the datasets it handles from the same
``FAE_*`` variables, with the same defaults and the same checks, so the three DAGs agree
on where data lives and what a dataset name may be.
"""

from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass

from fae_data.errors import InputError

ENV_STORAGE_ROOT = "FAE_STORAGE_ROOT"
ENV_LANDING_URL = "FAE_LANDING_URL"
ENV_DATASETS = "FAE_DATASETS"
ENV_TRAIN_COMMAND = "FAE_TRAIN_COMMAND"
DEFAULT_STORAGE_ROOT = "fae-root"
DEFAULT_LANDING_URL = "landing/{dataset}/{ds}.tsv"
DEFAULT_DATASETS = "criteo:criteo"
#: ``{python}`` is this interpreter, ``{manifest}`` the manifest.json to train on.
DEFAULT_TRAIN_COMMAND = "{python} -m trainer.cli {manifest} --max-steps {max_steps} --json"
KINDS = ("criteo", "taobao")
#: The rule of :func:`fae_data.partition.check_name`, spelled out here so that parsing a
#: DAG file stays cheap (a test keeps the two equal).
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$"


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset the DAGs handle: its name under ``<root>/ingested/`` and its kind."""

    name: str
    kind: str


def env_flag(value: str | None, default: bool = False) -> bool:
    """``1/true/yes/on`` (any case) is True, ``0/false/no/off`` False, unset the default."""
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InputError(f"boolean setting {value!r}: use true or false")


def parse_datasets(value: str | None) -> tuple[DatasetConfig, ...]:
    """``FAE_DATASETS``: comma-separated ``name[:kind]`` (kind defaults to the name).

    ``"criteo"`` -> one Criteo dataset; ``"kaggle:criteo,tb:taobao"`` -> two datasets.

    Raises:
        InputError: a kind other than criteo/taobao, a bad or repeated name.
    """
    text = value if value and value.strip() else DEFAULT_DATASETS
    out: list[DatasetConfig] = []
    for item in text.split(","):
        name, _, kind = item.strip().partition(":")
        kind = kind or name
        if kind not in KINDS:
            raise InputError(f"{ENV_DATASETS}={text!r}: kind {kind!r} of dataset {name!r} is "
                             f"not one of {', '.join(KINDS)}")
        if not re.match(_NAME_PATTERN, name):
            raise InputError(f"{ENV_DATASETS}={text!r}: dataset name {name!r} is not allowed: "
                             "use letters, digits and _ . = - (starting with a letter or digit)")
        if "=" in name or "." in name:
            raise InputError(f"{ENV_DATASETS}={text!r}: dataset name {name!r} is not allowed "
                             "in the DAGs: its task groups and layout DAGs are named after it; "
                             "use letters, digits, _ and -")
        if any(d.name == name for d in out):
            raise InputError(f"{ENV_DATASETS}={text!r}: dataset {name!r} appears twice")
        out.append(DatasetConfig(name, kind))
    return tuple(out)


def storage_root(value: str | None) -> str:
    """``FAE_STORAGE_ROOT`` as an absolute local path or a URL (``s3://bucket/prefix``)."""
    root = value if value and value.strip() else DEFAULT_STORAGE_ROOT
    if "://" in root:
        return root.rstrip("/")
    return os.path.abspath(root)


def asset_uri(root: str, *parts: str) -> str:
    """The Asset URI of a place under the storage root: ``file:///abs/...`` for a local
    root, the root's own URL (``s3://...``) otherwise."""
    base = root if "://" in root else "file://" + urllib.parse.quote(storage_root(root))
    return posixpath.join(base.rstrip("/"), *parts)
