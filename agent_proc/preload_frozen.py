"""The forkserver's last preload: freeze the heap the preload built (`gc.freeze()`).

Agents are forked from a frozen heap, so their collections neither scan nor write to the inherited objects: a
full collection in an agent of a litellm forkserver otherwise copies ~70 MiB of shared pages and pauses ~200 ms
(measured by bench/run.py). The forkserver's own exit also skips collecting them (~1.1 s with litellm loaded).
"""

from __future__ import annotations

import gc

gc.freeze()
