from __future__ import annotations

import os
import sys
from pathlib import Path

# Runners of local slot queues linger a little after their last job; in tests, not for long.
os.environ.setdefault("FLEET_RUNNER_IDLE_S", "3")
sys.path.insert(0, str(Path(__file__).parent))
