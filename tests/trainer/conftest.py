"""Layouts for the trainer tests, built once per session.

- ``criteo``: the embedded demo (synthetic Criteo, 2 days x 20k rows, 1/1000 of Kaggle's
  cardinalities) with a budget that makes 5 hot and 6 cold training minibatches of 2048.
- ``criteo_other_budget``: the same vocabulary with a smaller budget (other hot_rows).
- ``criteo_other_vocab``: the same data with ``min_count=2``, hence another vocabulary.
- ``lists``: a hand-written Taobao-like layout with list columns and a table shared by two
  columns (:func:`trainer_testlib.write_list_layout`), minibatches of 64.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from trainer_testlib import Layouts, write_list_layout

from fae_data import manifest as mf
from pipelines.demo import run_demo
from pipelines.layout import LayoutParams, run_layout


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Layouts:
    torch.set_num_threads(1)  # 2-core CI: an OpenMP team beside the prefetch thread thrashes
    work = tmp_path_factory.mktemp("trainer-layouts")
    demo = run_demo(work, rows=20_000, days=2, scale=0.001, budget="256KiB")
    root = str(work / "root")
    other_budget = run_layout(root, LayoutParams(dataset="criteo", budget="128KiB"))
    other_vocab = run_layout(root, LayoutParams(dataset="criteo", budget="256KiB", min_count=2))
    lists = write_list_layout(work / "lists")
    return Layouts(work, demo.layout.manifest_path, other_budget.manifest_path,
                   other_vocab.manifest_path, lists)


@pytest.fixture
def layout_copy(layouts: Layouts, tmp_path: Path):
    """A private copy of a layout folder, to damage; returns its manifest path."""

    def copy(manifest_path: str | None = None) -> Path:
        src = Path(manifest_path or layouts.criteo).parent
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst / mf.MANIFEST

    return copy
