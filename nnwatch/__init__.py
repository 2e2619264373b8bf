"""nnwatch under its distribution's name: ``import nnwatch`` gives the same API as ``import agent``.

    import nnwatch
    monitor = nnwatch.attach(model, optimizer)

``agent`` stays the package (the design's ``agent.attach``); this module re-exports its public names. When
another module named ``agent`` (a script's own ``agent.py``, common in RL code) comes first on ``sys.path``,
the import fails with a message naming it instead of an AttributeError later.
"""

from __future__ import annotations

import agent as _agent

if not hasattr(_agent, "attach") or not hasattr(_agent, "Monitor"):
    raise ImportError(f"nnwatch: the module 'agent' found at {getattr(_agent, '__file__', '?')} is not nnwatch's "
                      "package (a local agent.py or agent/ shadows it); rename that module or run from another "
                      "directory")

__all__ = list(_agent.__all__)
globals().update({name: getattr(_agent, name) for name in __all__})
