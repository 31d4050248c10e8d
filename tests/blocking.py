"""Run code in a fresh interpreter where some top-level modules cannot be imported.

"Works without X" can only be shown where X cannot load: in this test process torch and
onnxruntime are already imported, so a check here would pass whatever the code does. The
child gets a meta-path finder, first in ``sys.meta_path``, that refuses the named modules
(and their submodules) the way a missing install does: ModuleNotFoundError with ``name``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = '''
import importlib.abc, sys
BLOCKED = frozenset(sys.argv[1].split(",")) - {""}
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)",
                                      name=name)
        return None
assert not BLOCKED & set(sys.modules), "already imported at start-up: cannot block"
sys.meta_path.insert(0, _Blocked())
del sys.argv[1]
'''


def run_without(modules, code: str, *args, env=None, timeout: float = 120):
    """``python -c PRELUDE + code ARGS`` with ``modules`` unimportable; the code sees
    ``sys.argv[1:] == ARGS``."""
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code),
                           ",".join(modules), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def cli_without(modules, module: str, prog: str, *args, env=None, timeout: float = 120):
    """A p2p command (``p2p.cli.<module>:main`` as ``prog``) with ``modules`` unimportable."""
    return run_without(modules, f"""
        sys.argv[0] = {prog!r}
        from p2p.cli.{module} import main
        main()
    """, *args, env=env, timeout=timeout)
