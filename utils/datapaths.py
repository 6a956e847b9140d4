"""Where the project's reference data lives.

Tests and benchmarks find the shared reference folder (published weights,
golden outputs, WIDER FACE ground truth, ...) through one setting: the
environment variable RETINAFACE_DATA, defaulting to ../shared beside the
repository root.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_root():
    """The shared data folder: $RETINAFACE_DATA, or ../shared beside the repo."""
    return Path(os.environ.get("RETINAFACE_DATA", REPO_ROOT.parent / "shared"))


def shared_path(*parts):
    """A path below the shared data folder (it may not exist)."""
    return shared_root().joinpath(*parts)
