"""Puts the project, the dbha package and the workspace's libdbha in reach."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET = Path(os.environ.get("DBHA_TARGET_DIR", ROOT / "target" / "debug"))

sys.path[:0] = [str(HERE), str(ROOT / "reader" / "python")]
os.environ.setdefault("DBHA_LIBRARY", str(TARGET / "libdbha.so"))
