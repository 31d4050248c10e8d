"""``p2p-pretrained``: the published pix2pix generators, downloaded and exported in one step.

    p2p-pretrained list
    p2p-pretrained get facades_label2photo [--fp16] [--sha256 HEX] [--force]
    p2p-pretrained get facades_label2photo --web site/facades   # a static in-browser page
    p2p-pretrained import latest_net_G.pth --name facades_label2photo

Then ``p2p-translate DIR --model facades_label2photo`` and ``p2p-serve --model NAME``.
Exit status: 0 on success, 1 on a failed download, hash mismatch or export, 2 for usage.
"""

from __future__ import annotations

from pathlib import Path

import click

from p2p.cli.common import CONTEXT, handle_errors, missing_extra, web_options
from p2p.runtime import pretrained as catalogue
from p2p.runtime.metadata import DIRECTIONS

try:  # the export needs torch; `list` and the name lookup do not
    from p2p.export.pretrained import PRECISIONS, PretrainedConfig, get as get_model, import_file
    from p2p.export.web import WebConfig, write_site
    MISSING = None
except ImportError as e:
    PRECISIONS, MISSING = {}, e


def _require_export(command: str) -> None:
    """`get` and `import` export with torch: without it, one line naming the extra (checked
    before anything else runs, so no name from the failed import is ever looked up)."""
    if MISSING is None:
        return
    line = missing_extra(f"p2p-pretrained {command}", MISSING)
    if line is None:  # not a missing optional dependency: a broken install stays a traceback
        raise MISSING
    raise click.ClickException(line.removeprefix("Error: "))


@click.group(context_settings=CONTEXT)
def main():
    """Published pix2pix generators (junyanz/pytorch-CycleGAN-and-pix2pix), ready to run.

    Downloads come from $P2P_MODELS_URL (default the reference project's server) into
    $P2P_CACHE/models (default ~/.cache/p2p/models).
    """


@main.command("list")
@click.option("--quiet", "-q", is_flag=True, help="Only the names, one a line (for scripts).")
def list_models(quiet):
    """The published generators: task, direction, size, norm, source and licence."""
    have = set(catalogue.cached_names())
    if quiet:
        for name in [*catalogue.CATALOGUE, *sorted(have - set(catalogue.CATALOGUE))]:
            click.echo(name)
        return
    for p in catalogue.CATALOGUE.values():
        mark = "downloaded" if p.name in have else "not downloaded"
        click.echo(f"{p.name:<20} {p.task} ({p.dataset} dataset, --direction {p.direction}); "
                   f"U-Net {p.image_size}px, ngf {p.ngf}, {p.norm} norm; {mark}")
        click.echo(f"{'':<20} {p.url}")
    others = sorted(have - set(catalogue.CATALOGUE))
    if others:
        click.echo(f"imported: {', '.join(others)}")
    click.echo(f"licence: {catalogue.LICENCE}")
    click.echo(f"cache: {catalogue.models_dir()}")


def _precision_options(fn):
    for name in reversed(PRECISIONS):
        fn = click.option(f"--{name}", name, is_flag=True,
                          help=f"Also export a {name.upper()} model beside the FP32 one.")(fn)
    return fn


def _shared_options(fn):
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(fn)
    fn = click.option("--calibration", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path),
                      help="--int8: images to calibrate on (the model's inputs, or A|B "
                           "pairs); a downloaded model has no training run to take them from.")(fn)
    fn = click.option("--sha256", help="The SHA-256 the file must have (pins it by hand).")(fn)
    return _precision_options(fn)


def _config(name, sha256, quiet, flags, force=False, direction=None):
    calibration = flags.pop("calibration", None)
    precisions = tuple(p for p in PRECISIONS if flags.get(p))
    return PretrainedConfig(name=name, precisions=precisions, sha256=sha256, force=force,
                            progress=not quiet, direction=direction, calibration=calibration)


@main.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Download and export again even when cached.")
@web_options
@_shared_options
@handle_errors
def get(name, force, web, web_precision, web_no_webgpu, sha256, quiet, **flags):
    """Download the generator NAME (see `list`) and export it to a verified ONNX model."""
    _require_export("get")
    if web_precision in PRECISIONS:  # the page's precision is exported for it
        flags[web_precision] = True
    paths = get_model(_config(name, sha256, quiet, flags, force=force))
    for path in paths:
        click.echo(path)
    if web:
        write_site(paths, WebConfig(output=web, precision=web_precision,
                                    webgpu=not web_no_webgpu, progress=not quiet), click.echo)


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The name to use it by (a `list` name, or your own).")
@click.option("--direction", type=click.Choice(DIRECTIONS),
              help="Which half of A|B images is the input [a listed model: its own].")
@_shared_options
@handle_errors
def import_(file, name, direction, sha256, quiet, **flags):
    """Use FILE (a *_net_G.pth fetched by hand) as the pretrained model NAME, and export it."""
    _require_export("import")
    for path in import_file(file, _config(name, sha256, quiet, flags, direction=direction)):
        click.echo(path)


if __name__ == "__main__":
    main()
