"""Make ``ansible_collections.multiwan.linux`` importable from the work tree (.build/collections)."""

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".build" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
