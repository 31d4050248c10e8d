"""Which model file a ``--model`` value means: one rule for p2p-translate and p2p-serve.

- not given: the newest FP32 export under ``runs/`` (exported models, runs/*/export/*.onnx,
  before any other *.onnx; FP32 before FP16/INT8, which are faster, less exact choices a
  user makes by name or folder; then the newest);
- an existing file: that file;
- a run folder or its ``export/`` folder: its fastest verified export
  (``precision.fastest_export``: INT8 where this CPU and backend run it natively, else FP32);
- a downloaded pretrained name (``p2p-pretrained get NAME``): likewise, among its exports
  (a name wins over a folder of that name in the working directory, e.g. a dataset's).

``pick_model`` returns the path and the rule that picked it, for the start-up line.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError, P2PError
from .modelfile import read_metadata  # numpy + protobuf reading, no onnxruntime
from .precision import fastest_export
from .pretrained import is_downloaded, resolve_model


def pick_model(value: Path | str | None, runs: Path = Path("runs"), precision: str = "auto",
               provider: str = "auto") -> tuple[Path, str | None]:
    """(model file, the line that says why it was picked; None for a file given by path).
    A folder or name is resolved for ``precision`` and ``provider`` (the command's
    ``--precision`` and ``--provider``: ``--precision fp32`` takes the float export).
    Raises ``ModelError`` (one line) when ``value`` names nothing, or when it is None and
    ``runs`` holds no model."""
    if value is None:
        return default_model(runs)
    if Path(value).is_dir() and not is_downloaded(str(value)):  # a name beats a folder
        return fastest_export(Path(value), precision, provider)
    path = resolve_model(value)
    if path == Path(value):
        return path, None
    model, why = fastest_export(path.parent, precision, provider)  # a pretrained name: its folder of exports
    return model, f"--model {value} (downloaded pretrained model): {why}"


def default_model(runs: Path = Path("runs")) -> tuple[Path, str]:
    """The model used without --model, and the rule that picked it (see the module doc)."""
    # Hidden files are never models: a killed p2p-export leaves its half-written temp file
    # as .generator.onnx.<pid>.<random>.tmp.onnx, and pathlib's glob does not skip dot-files.
    def visible(paths):
        return [p for p in paths if not p.name.startswith(".")]

    found = visible(runs.glob("*/export/*.onnx")) or visible(runs.glob("**/*.onnx"))
    if not found:
        raise ModelError(f"no --model given and no *.onnx under {runs}/; export one with "
                         "p2p-export or pass --model PATH")

    def precision(p: Path) -> str:
        try:
            # model_precision, not input_dtype: an INT8 file takes float32 input too
            return read_metadata(p).model_precision
        except P2PError:
            return "unknown"  # not a p2p model: Engine says why if it is picked

    fp32 = [p for p in found if precision(p) == "fp32"]
    newest = max(fp32 or found, key=lambda p: p.stat().st_mtime)
    rule = (f"the newest FP32 model under {runs}/" if fp32 else
            f"the newest model under {runs}/ (there is no FP32 one)")
    return newest, f"no --model: using {newest}, {rule}; pass --model to choose"
