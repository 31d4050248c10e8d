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
from p2p.runtime.errors import DataError, ImageError
from p2p.runtime.metadata import DATA_DEPTHS, ModelMetadata

MODES = ("side-by-side", "two-folders", "lab")


def list_images(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder``; a missing or empty folder is a DataError.
    Entries with an image name that are not regular files (a FIFO, a dangling or looping
    link) are listed too, so that the check reports them instead of silently dropping them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    files = [folder / rel for rel in listing.list_images(folder, recursive=False)]
    if not files:
        raise DataError(f"{folder}: no images ({images.SHOWN_EXTS}) in this folder")
    return files


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """pix2pix layout: ``root/train`` and ``root/val`` (or ``test``); else ``root`` is flat."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    if (root / "train").is_dir():
        val = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
        return root / "train", val
    return root, None


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


_BANDS = ", but the model takes "


def fits(bands: int, channels: int) -> bool:
    """Whether an image of ``bands`` feeds a model side of ``channels`` (``images.
    match_bands``: equal, or greyscale <-> RGB)."""
    return bands == channels or {bands, channels} == {1, 3}


def _problem(path: Path, side_by_side: bool, channels: tuple = ()
             ) -> tuple[str | None, str | None]:
    """(why ``path`` cannot be a training image or None, its depth); ``channels``: the
    (flag, channels) of the model sides it feeds."""
    try:
        a = _open(path)
    except DataError as e:
        return str(e), None
    bands, w = a.shape[2], a.shape[1]
    if side_by_side and w % 2:
        return f"{path}: width {w} is odd, so it is not an A|B side-by-side pair", None
    for flag, n in channels:
        if not fits(bands, n):
            return (f"{path}: {bands} band{'s' if bands > 1 else ''}{_BANDS}"
                    f"{n} ({flag} {n}; greyscale and RGB convert into each other)"), None
    return None, a.dtype.name


def image_problems(paths: list[Path], side_by_side: bool, channels=None
                   ) -> list[tuple[str | None, str | None]]:
    """(problem or None, depth) of each of ``paths``, decoded in parallel; ``channels``: per
    file, the (flag, channels) of the model sides it feeds (``image_paths``)."""
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS is one error, not one per file
    channels = channels or [()] * len(paths)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda pc: _problem(pc[0], side_by_side, pc[1]),
                             zip(paths, channels)))


def raise_problems(problems: list, total: int) -> None:
    """One DataError naming every bad file in ``problems`` ((problem, depth) pairs or
    problems; None problems are fine files)."""
    problems = [p[0] if isinstance(p, tuple) else p for p in problems]
    bad = [p for p in problems if p]
    if len(bad) > 1 and all(_BANDS in p for p in bad):  # the flags, not the files, are wrong
        raise DataError(f"{bad[0]}; {len(bad) - 1} more of the {total} training images do "
                        "not fit either")
    listing.raise_problems(problems, total, "training images")


def check_images(paths: list[Path], side_by_side: bool, channels=None) -> list[str | None]:
    """Decode every training image once, up front, so a bad file fails now and not hours
    into training (a truncated file passes a header check). It costs about one epoch's
    decoding, in parallel (shared between the ranks of a torchrun job). Every bad file is
    named, not just the first. Returns each file's depth (uint8, uint16, float32)."""
    found = image_problems(paths, side_by_side, channels)
    raise_problems(found, len(paths))
    return [depth for _, depth in found]


def data_depths(depths: list[str | None], roles: list[str]) -> dict[str, str]:
    """{'input_depth', 'output_depth'}: the deepest depth among the files of each role
    ('input', 'target', or 'both' for A|B images; ``image_paths``): what the exported
    model records and writes its outputs at."""
    out = {}
    for key, role in (("input_depth", "input"), ("output_depth", "target")):
        found = [d for d, r in zip(depths, roles) if d and r in (role, "both")]
        out[key] = max(found, key=DATA_DEPTHS.index) if found else "uint8"
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
        w = im.shape[1]
        if w % 2:
            raise DataError(f"{item}: width {w} is odd, so it is not an A|B side-by-side pair")
        return im[:, :w // 2], im[:, w // 2:]

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
    else the training images themselves, without jitter. ``check``: decode every training
    image now (``check_images``); torchrun ranks pass False and share the check instead."""
    if data_a is not None or data_b is not None:
        if data_a is None or data_b is None:
            raise DataError("--data-a and --data-b go together: give both folders")
        train_a, val_a = split_dirs(data_a)
        train_b, val_b = split_dirs(data_b)
        train_items = pair_files(train_a, train_b)
        val_items = pair_files(val_a, val_b) if val_a and val_b else train_items
        mode = "two-folders"
    else:
        train_dir, val_dir = split_dirs(data)
        mode = "lab" if lab_colorization else "side-by-side"
        train_items = list_images(train_dir)
        val_items = list_images(val_dir) if val_dir else train_items
    kw = dict(mode=mode, direction=direction, image_size=image_size, load_size=load_size,
              flip=flip, seed=seed, in_channels=in_channels, out_channels=out_channels)
    train = PairDataset(train_items, **kw)
    if check:
        paths, side_by_side, channels, _ = image_paths(train)
        check_images(paths, side_by_side, channels)
    return train, PairDataset(val_items, **kw)


def image_paths(ds: PairDataset) -> tuple[list[Path], bool, list[tuple], list[str]]:
    """Every file behind a dataset's items; whether each must be an A|B pair; per file the
    (flag, channels) of the model sides it feeds, and its role: 'input', 'target' or 'both'
    (A|B images; Lab colour photos, whose L is the input and ab the target)."""
    ins, outs = ("--in-channels", ds.meta.in_channels), ("--out-channels", ds.meta.out_channels)
    if ds.mode == "two-folders":
        a_side, b_side = (ins, outs) if ds.direction == "AtoB" else (outs, ins)
        a_role, b_role = ("input", "target") if ds.direction == "AtoB" else ("target", "input")
        paths = [p for pair in ds.items for p in pair]
        return (paths, False, [(a_side,), (b_side,)] * len(ds.items),
                [a_role, b_role] * len(ds.items))
    if ds.mode == "lab":
        return list(ds.items), False, [()] * len(ds.items), ["both"] * len(ds.items)
    return list(ds.items), True, [(ins, outs)] * len(ds.items), ["both"] * len(ds.items)
