"""p2p.runtime."""


def __getattr__(name):
    # ``p2p.runtime.Engine`` without importing numpy/onnxruntime for ``p2p.runtime.errors``.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'p2p.runtime' has no attribute {name!r}")
