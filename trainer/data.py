"""Paired training data: side-by-side A|B images, two folders of same-named images, or one
folder of colour images for Lab colorization (L -> ab).

Every sample is (input, target) in [-1, 1], CHW float32, already arranged for the model's
direction. Augmentation is the paper's jitter: resize to ``load_size`` (286), take the SAME
random ``image_size`` (256) crop of A and B, and the SAME horizontal flip.

Reproducibility: jitter is not drawn from a global RNG but derived from (seed, epoch, index),
and each epoch's order from (seed, epoch). So a run resumed in the middle of an epoch sees
exactly the batches an uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from p2p.runtime import images, listing
from p2p.runtime.errors import DataError, ImageError, P2PError
from p2p.runtime.metadata import DATA_DEPTHS, ModelMetadata

from .layout import left_out, list_images, list_training, split_dirs  # noqa: F401  (public here)

MODES = ("side-by-side", "two-folders", "lab")


def _open(path: Path) -> np.ndarray:
    """Decode fully with p2p-translate's own decoder (``images.decode``: full precision,
    EXIF orientation, colour profile to sRGB, alpha composited on white, the
    $P2P_MAX_IMAGE_PIXELS bomb limit, no FIFOs), so the model trains on images exactly as it
    will see them at inference. (H, W, C) uint8 | uint16 | float32."""
    try:
        return images.decode(path)
    except ImageError as e:
        why = str(e).removeprefix(f"{path}: ")
        raise DataError(f"{path}: unreadable image: {why[:160]}") from None


ASPECT_TOLERANCE = 0.02  # two-folder pairs: A and B shapes may differ by rounding only
_BANDS = ", but the model takes "


def fits(bands: int, channels: int) -> bool:
    """Whether an image of ``bands`` feeds a model side of ``channels`` (``images.
    match_bands``: equal, or greyscale <-> RGB)."""
    return bands == channels or {bands, channels} == {1, 3}


def _bands_problem(path: Path, a: np.ndarray, sides: tuple) -> str | None:
    """Why the (H, W, C) image ``a`` cannot feed the model sides ``sides`` ((flag, channels)
    pairs), or None."""
    bands = a.shape[2]
    for flag, n in sides:
        if not fits(bands, n):
            return (f"{path}: {images.bands_text(bands, path)}{_BANDS}"
                    f"{n} ({flag} {n}; greyscale and RGB convert into each other)")
    return None


def _problem(item, ds: "PairDataset") -> tuple[str | None, dict[str, str]]:
    """(why the dataset item (a path, or an (a, b) pair of paths) cannot be trained on as the
    user meant, or None; {role: depth} of its files, role 'input', 'target' or 'both').
    Problems: unreadable, not a 2:1 A|B image, a band count the model side cannot take, a
    greyscale photo to colorize, or an A and a B of different shapes (each is resized to a
    square on its own, so they would no longer line up)."""
    ins = ("--in-channels", ds.meta.in_channels)
    outs = ("--out-channels", ds.meta.out_channels)
    if ds.mode == "two-folders":
        sides, roles = ((ins, outs), ("input", "target")) if ds.direction == "AtoB" else \
            ((outs, ins), ("target", "input"))
        found = [_opened(p) for p in item]
        bad = [f for f in found if isinstance(f, str)]
        if bad:
            return "; ".join(bad), {}
        for path, a, side in zip(item, found, sides):
            problem = _bands_problem(path, a, (side,))
            if problem:
                return problem, {}
        (ha, wa), (hb, wb) = (a.shape[:2] for a in found)
        if abs(wa * hb - wb * ha) > ASPECT_TOLERANCE * max(wa * hb, wb * ha):
            return (f"{item[0]}: {wa}x{ha} and its B image {item[1]}: {wb}x{hb} differ in "
                    "shape, so they would not line up after the resize (p2p-process resize "
                    "both folders)"), {}
        return None, {roles[0]: found[0].dtype.name, roles[1]: found[1].dtype.name}
    a = _opened(item)
    if isinstance(a, str):
        return a, {}
    if ds.mode == "side-by-side":
        problem = (images.ab_pair_problem(item, (a.shape[1], a.shape[0]))
                   or _bands_problem(item, a, (ins, outs)))
        if problem:
            return problem, {}
    elif ds.mode == "lab" and _is_grey(a):
        return (f"{item}: greyscale (R = G = B everywhere): no colour for --lab-colorization "
                "to learn from"), {}
    return None, {"both": a.dtype.name}


def _opened(path: Path) -> np.ndarray | str:
    try:
        return _open(path)
    except DataError as e:
        return str(e)


def _is_grey(a: np.ndarray) -> bool:
    """(H, W, C): one band, or R = G = B everywhere."""
    return a.shape[2] < 3 or bool(np.array_equal(a[..., 0], a[..., 1])
                                  and np.array_equal(a[..., 1], a[..., 2]))


def image_problems(items: list, ds: "PairDataset") -> list[tuple[str | None, dict]]:
    """(problem or None, {role: depth}) of each dataset item of ``ds``'s kind, decoded in
    parallel."""
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS is one error, not one per file
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda item: _problem(item, ds), items))


def raise_problems(problems: list, total: int) -> None:
    """One DataError naming every bad file in ``problems`` ((problem, depth) pairs or
    problems; None problems are fine files)."""
    problems = [p[0] if isinstance(p, tuple) else p for p in problems]
    bad = [p for p in problems if p]
    if len(bad) > 1 and all(_BANDS in p for p in bad):  # the flags, not the files, are wrong
        raise DataError(f"{bad[0]}; {len(bad) - 1} more of the {total} training images do "
                        "not fit either")
    listing.raise_problems(problems, total, "training images")


def check_images(ds: "PairDataset", samples: "PairDataset | None" = None) -> dict[str, str]:
    """Decode every training and sample image once, up front, so a bad file fails now and
    not hours into training (a truncated file passes a header check). It costs about one
    epoch's decoding, in parallel (shared between the ranks of a torchrun job). Every bad
    file is named, not just the first. Returns the data's depths (``data_depths``)."""
    items = all_items(ds, samples)
    found = image_problems(items, ds)
    raise_problems(found, len(items))
    return data_depths(found)


def data_depths(found: list[tuple[str | None, dict]]) -> dict[str, str]:
    """{'input_depth', 'output_depth'}: the deepest depth among the files of each role
    ('input', 'target', or 'both' for A|B images and Lab photos), from ``image_problems``:
    what the exported model records and writes its outputs at."""
    out = {}
    for key, role in (("input_depth", "input"), ("output_depth", "target")):
        seen = [d for _, depths in found for r, d in depths.items() if r in (role, "both")]
        out[key] = max(seen, key=DATA_DEPTHS.index) if seen else "uint8"
    return out


def pair_files(dir_a: Path, dir_b: Path) -> list[tuple[Path, Path]]:
    """Same-named images in two folders (``listing.pair_by_name``: 1.png also pairs with
    1.jpg); any image on one side only, or matching several, is a DataError."""
    a, b = list_images(dir_a), list_images(dir_b)
    m = listing.pair_by_name([p.relative_to(dir_a) for p in a], [p.relative_to(dir_b) for p in b])
    m.require_complete(dir_a, dir_b, "A image", "B image")
    return [(Path(dir_a) / ra, Path(dir_b) / rb) for ra, rb in m.pairs]


def jitter_params(seed: int, epoch: int, index: int, load_size: int, image_size: int,
                  flip: bool) -> tuple[int, int, bool]:
    """Crop corner and flip for one sample, a pure function of (seed, epoch, index)."""
    rng = np.random.default_rng([seed, epoch, index])
    x, y = (int(v) for v in rng.integers(0, load_size - image_size + 1, size=2))
    return x, y, bool(flip and rng.random() < 0.5)


def _jitter(a: np.ndarray, size: int, crop: tuple[int, int] | None, image_size: int,
            flip: bool) -> np.ndarray:
    """(H, W, C) -> resized to ``size`` (bicubic, as the reference's transforms.Resize(...,
    BICUBIC); ``images.resize``), cropped, flipped."""
    if a.shape[:2] != (size, size):
        a = images.resize(a, (size, size))
    if crop is not None:
        x, y = crop
        a = a[y:y + image_size, x:x + image_size]
    if flip:
        a = a[:, ::-1]
    return a


class PairDataset(Dataset):
    """``ds[(epoch, i)]`` -> jittered (input, target); ``ds[i]`` -> plain resize, no jitter.

    items: paths (side-by-side, lab) or (a, b) path pairs (two-folders).
    """

    def __init__(self, items: list, mode: str, direction: str = "AtoB", image_size: int = 256,
                 load_size: int = 286, flip: bool = True, seed: int = 0, in_channels: int = 3,
                 out_channels: int = 3):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}")
        if load_size < image_size:
            raise DataError(f"load size {load_size} is smaller than image size {image_size}")
        self.items, self.mode, self.direction = list(items), mode, direction
        self.image_size, self.load_size, self.flip, self.seed = image_size, load_size, flip, seed
        self.source = "train"  # samples: the folder they come from (val, test, train)
        self.notes: list[str] = []  # note lines for the user about the data (build_datasets)
        lab = mode == "lab"
        # What images.normalize needs: the value range and channels of the model's two
        # sides. Each file is read by its own depth's range (images.data_range), so 8- and
        # 16-bit files of one set mean the same brightness.
        self.meta = ModelMetadata(direction, image_size, image_size, False,
                                  "lab" if lab else "rgb", 1 if lab else in_channels,
                                  2 if lab else out_channels, "per-image")

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.items[i]
        if self.mode == "two-folders":
            return _open(item[0]), _open(item[1])
        im = _open(item)
        if self.mode == "lab":
            return im, None
        problem = images.ab_pair_problem(item, (im.shape[1], im.shape[0]))
        if problem:
            raise DataError(problem)
        return images.crop_half(im, "left"), images.crop_half(im, "right")

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (epoch, index): training sample with jitter
            epoch, i = key
            x, y, flip = jitter_params(self.seed, epoch, i, self.load_size, self.image_size,
                                       self.flip)
            size, crop = self.load_size, (x, y)
        else:  # evaluation / samples: the image at the model's size, untouched otherwise
            i, size, crop, flip = key, self.image_size, None, False
        a, b = self._load(i)
        a = _jitter(a, size, crop, self.image_size, flip)
        if self.mode == "lab":
            return self._tensor(a, "input", i), self._tensor(a, "output", i)
        b = _jitter(b, size, crop, self.image_size, flip)
        inp, tgt = (a, b) if self.direction == "AtoB" else (b, a)
        return self._tensor(inp, "input", i), self._tensor(tgt, "output", i)

    def _tensor(self, a: np.ndarray, side: str, i: int) -> torch.Tensor:
        """(H, W, C) -> (C, H, W) float32 in [-1, 1] by ``images.normalize``, the conversion
        p2p-translate applies (the paper's x / 127.5 - 1 on 8-bit images)."""
        try:
            return torch.from_numpy(images.normalize(a, self.meta, side))
        except ImageError as e:
            item = self.items[i]
            raise DataError(f"{item[0] if isinstance(item, tuple) else item}: "
                            f"{str(e).removeprefix('image: ')}") from None


def batches(loader):
    """Iterate a DataLoader; an error raised in a worker comes back as its own one line."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except P2PError as e:  # DataLoader re-raises with the worker's whole traceback
            last = str(e).strip().splitlines()[-1]
            raise type(e)(last.split(f"{type(e).__name__}: ", 1)[-1]) from None


def leave_stops_to_the_trainer(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a loader worker ignores SIGINT and SIGTERM.

    Ctrl-C reaches the terminal's whole process group, and torchrun ends a rank with
    ``os.killpg`` (torch/distributed/elastic/multiprocessing/subprocess_handler), so the
    workers get the signal too. Dying of it would fail the trainer's next batch ("DataLoader
    worker ... is killed by signal") before it can finish the step and save; the trainer's
    handler decides instead, and the workers end with the loader (or with their parent:
    torch's worker loop watches it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochSampler(Sampler):
    """Yields (epoch, index) keys: a permutation fixed by (seed, epoch), from ``start`` on.

    Set ``epoch`` and ``start`` before iterating; resuming mid-epoch sets ``start`` to the
    number of samples this rank had already consumed in that epoch.

    Under torchrun (``world`` > 1) rank r takes positions r, r + world, r + 2 world, ... of
    the permutation, padded by wrapping around to a multiple of ``world`` (as torch's
    DistributedSampler does) so that every rank takes the same number of steps. Global step k
    then covers exactly the ``world * batch_size`` samples that one process with a batch of
    ``world * batch_size`` would see at step k (when ``world`` divides the epoch evenly).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0
        self.rank, self.world = rank, world
        self.shard = -(-n // world)  # samples per rank and epoch

    def __len__(self) -> int:
        return self.shard - self.start

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.world > 1:
            order = np.resize(order, self.shard * self.world)[self.rank::self.world]
        return iter([(self.epoch, int(i)) for i in order[self.start:]])


def build_datasets(data: Path | None, data_a: Path | None, data_b: Path | None,
                   lab_colorization: bool, direction: str, image_size: int, load_size: int,
                   flip: bool, seed: int, check: bool = True, in_channels: int = 3,
                   out_channels: int = 3) -> tuple[PairDataset, PairDataset]:
    """(train set, sample set). The sample set is ``val/`` (or ``test/``) when there is one,
    else the training images themselves, without jitter (``sample_source`` says which).
    ``check``: decode every training and sample image now (``check_images``); torchrun
    ranks pass False and share the check instead."""
    if data_a is not None or data_b is not None:
        if data_a is None or data_b is None:
            raise DataError("--data-a and --data-b go together: give both folders")
        train_a, val_a = split_dirs(data_a)
        train_b, val_b = split_dirs(data_b)
        if (val_a is None) != (val_b is None):
            has, lacks = (val_a, data_b) if val_a else (val_b, data_a)
            raise DataError(f"{has}: a held-out folder with no counterpart in {lacks}; give "
                            "both sides the same train/ and val/ folders")
        train_items = pair_files(train_a, train_b)
        val_items = pair_files(val_a, val_b) if val_a and val_b else train_items
        mode, held = "two-folders", val_a
        notes = [n for side in (data_a, data_b) for n in left_out(side, held)]
    else:
        train_dir, held = split_dirs(data)
        mode = "lab" if lab_colorization else "side-by-side"
        train_items = list_training(train_dir, data)
        val_items = list_images(held) if held else train_items
        notes = left_out(data, held)
    kw = dict(mode=mode, direction=direction, image_size=image_size, load_size=load_size,
              flip=flip, seed=seed, in_channels=in_channels, out_channels=out_channels)
    train, samples = PairDataset(train_items, **kw), PairDataset(val_items, **kw)
    samples.source = held.name if held else "train"
    train.notes = notes  # printed by the trainer's first rank (images it does not read)
    if check:
        check_images(train, samples)
    return train, samples


def all_items(ds: "PairDataset", samples: "PairDataset | None" = None) -> list:
    """Every item a run reads: training, then samples not among them."""
    seen = set(map(str, ds.items))
    extra = samples.items if samples is not None else []
    return list(ds.items) + [i for i in extra if str(i) not in seen]
