"""Import and warm litellm in the forkserver, before it forks any agent.

The environment variable must be set before litellm is imported: it makes litellm read its bundled model cost
map instead of fetching it. The warm-up resolves the lazy imports that the first `acompletion` would pay.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from llmling.agent_proc import llm_backend

litellm.suppress_debug_info = True
llm_backend.warm()
