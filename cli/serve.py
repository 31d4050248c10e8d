"""``p2p-serve``: serve an exported p2p model over HTTP, with a drawing page at ``/``;
or, with ``--web DIR``, a static site written by ``p2p-export --web`` (no model here: it runs
in the browser), with the cross-origin isolation headers.

Exit status: 0 after a clean shutdown (Ctrl-C), 1 when the server cannot start (bad model,
provider that cannot run here, port in use, serve extra not installed), 2 for usage errors.
"""

from __future__ import annotations

from pathlib import Path

import click

from p2p.cli.common import CONTEXT, engine_options, handle_errors, model_option, requires
from p2p.runtime.locate import pick_model


@click.command(context_settings=CONTEXT)
@model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@engine_options
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most requests run together in one engine batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for company after its first request.")
@click.option("--max-queue", type=click.IntRange(min=1), default=None,
              help="Requests waiting for a batch before new ones get 503 "
                   "[default: 4 x --max-batch].")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Largest accepted upload (413 above).")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Per-request limit from upload to response (504 after).")
@click.option("--receive-timeout-s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Deadline for receiving a request's body (408 and the "
              "connection closed after): stalled uploads hold no connection.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode/encode threads [default: min(4, CPUs)].")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--web", type=click.Path(path_type=Path, file_okay=False),
              help="Serve the static site of p2p-export --web DIR instead of a model (the "
                   "model runs in the browser); not with --model.")
@click.option("--no-isolation", is_flag=True,
              help="--web: without the cross-origin isolation headers (one WASM thread, what "
                   "GitHub Pages visitors get).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print nothing but errors (no start-up lines, no access log).")
@handle_errors
def main(model, host, port, provider, threads, precision, max_batch, max_wait_ms, max_queue,
         max_body_mb, timeout_s, receive_timeout_s, workers, access_log, web, no_isolation,
         quiet):
    """Serve a p2p model: POST /translate, GET /healthz, GET /metrics, and a page at /.

    With --web DIR: serve the static page written by p2p-export --web (the model runs in
    the visitor's browser; nothing is translated on this machine).
    """
    if web is not None:
        if model is not None:
            raise click.UsageError("--web serves a static site whose page runs its own model; "
                                   "drop --model (or run a second p2p-serve for it)")
        from p2p.runtime.webserve import serve_site
        serve_site(web, host, port, isolation=not no_isolation, quiet=quiet or not access_log,
                   log_line=(lambda msg: None) if quiet else
                   (lambda msg: click.echo(msg, err=True)))
        return
    if no_isolation:
        raise click.UsageError("--no-isolation goes with --web")
    with requires("p2p-serve"):
        from p2p.runtime.server import ServeConfig, serve
    model, rule = pick_model(model, precision=precision, provider=provider)
    if rule and not quiet:
        click.echo(rule, err=True)
    cfg = ServeConfig(model=model, host=host, port=port, provider=provider, threads=threads,
                      precision=precision,
                      max_batch=max_batch, max_wait_ms=max_wait_ms,
                      max_queue=max_queue or 4 * max_batch,
                      max_body_bytes=int(max_body_mb * (1 << 20)), timeout_s=timeout_s,
                      receive_timeout_s=receive_timeout_s,
                      workers=workers, access_log=access_log and not quiet, quiet=quiet)
    serve(cfg, log_line=(lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True)))


if __name__ == "__main__":
    main()
