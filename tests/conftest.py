"""Shared fixtures: where the real public data samples live.

The samples sit outside the repository (``../shared/data`` beside the checkout, as CI clones
them) and are read in place, never copied into the repo. Tests that modify a sample write
the modified copy to ``tmp_path``.
"""

from __future__ import annotations

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
