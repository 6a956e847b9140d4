import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.datapaths import shared_path  # noqa: E402


def need_shared(*parts):
    """Return a path below the shared data folder, or skip the test if it is absent.

    Tests that need reference data may skip only when the data is missing, and say why.
    """
    p = shared_path(*parts)
    if not p.exists():
        pytest.skip(f"reference data not found: {p} (set RETINAFACE_DATA to the shared folder)")
    return p
