"""`skyreels serve`: the local video service (skyreels_cli/service/), started from the command line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import app, user_errors


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; another than 127.0.0.1 needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0: any free port, printed).")] = 7860,
    gpus: Annotated[str, typer.Option("--gpus", help="GPUs to run workers on, one each: all, a number, or a list such as 0,2. Without a GPU: CPU workers (--workers).")] = "all",
    workers: Annotated[int, typer.Option("--workers", help="CPU workers on a machine without a GPU, sharing its cores (0: keep jobs queued, run none).")] = 1,
    state_dir: Annotated[Optional[str], typer.Option("--state-dir", help="Where the queue, uploads and videos live (default $SKYREELS_STATE_DIR, else ~/.local/state/skyreels).")] = None,
    token: Annotated[Optional[str], typer.Option("--token", envvar="SKYREELS_TOKEN", help="Every request must send 'Authorization: Bearer TOKEN' (open the page as /#token=TOKEN). Default $SKYREELS_TOKEN.")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="A model clients may use (repeatable; default: every registry model). The first that fits a command is its default.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="NAME=FILE[:SCALE]: a LoRA clients may ask for by NAME (repeatable; none by default).")] = None,
    max_queued: Annotated[int, typer.Option("--max-queued", help="Jobs that may wait; a submission beyond is answered 429.")] = 100,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest request body (uploads) in MB; larger is answered 413.")] = 100.0,
    max_prompt_chars: Annotated[int, typer.Option("--max-prompt-chars", help="Longest prompt in characters; longer is answered 413.")] = 10_000,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Longest job in frames; longer is answered 413.")] = 2880,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Longest job in seconds; longer is answered 413.")] = 120.0,
    cors: Annotated[Optional[list[str]], typer.Option("--cors", help="An origin whose pages may call the API (repeatable; none by default).")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run the workers on a Ray cluster, one per GPU: auto (the cluster `ray start` made), local (start one here), or HOST:PORT. Needs pip install \"skyreels-cli[ray]\".")] = None,
    max_live_seconds: Annotated[Optional[float], typer.Option("--max-live-seconds", help="Longest live job in seconds of video (default: until its client stops it); --max-frames and --max-seconds bound other jobs.")] = None,
    keep_last: Annotated[Optional[float], typer.Option("--keep-last", help="A live job's HLS segments kept on disk: the last this many seconds, unless the job gives keep_last (default: all).")] = None,
    shared_dir: Annotated[Optional[str], typer.Option("--shared-dir", help="With --ray: keep uploads and videos in this folder, which every node mounts at the same path; the workers write there directly instead of sending each window back.")] = None,
) -> None:
    """A local video service: a job queue that survives restarts, one worker per GPU, an HTTP API in the shape of
    OpenAI's Videos API, and a web page at http://127.0.0.1:7860/.

    Each worker keeps the models it has loaded; jobs run highest priority first, then first in, first out. The
    queue, uploads and videos live in --state-dir: stopped or killed, the service finds its jobs again when it
    starts, and an interrupted extend continues from its last finished window. Safe by default: it listens on
    127.0.0.1 only, and any other address needs --token.

    Examples:

        skyreels serve
        skyreels serve --model tiny --port 8000
        skyreels serve --host 0.0.0.0 --token "$SKYREELS_TOKEN" --gpus 0,1
        skyreels serve --ray auto --host 0.0.0.0 --token "$SKYREELS_TOKEN"
    """
    from pathlib import Path

    from ..service.server import ServiceConfig, default_state_dir
    from ..service.server import serve as run_service

    with user_errors("serve"):
        config = ServiceConfig(host=host, port=port, state_dir=Path(state_dir) if state_dir else default_state_dir(),
                               token=token, gpus=gpus, cpu_workers=workers, models=tuple(model or ()),
                               loras=_loras(lora or []), max_queued=max_queued, max_upload_mb=max_upload_mb,
                               max_prompt_chars=max_prompt_chars, max_frames=max_frames, max_seconds=max_seconds, cors=tuple(cors or ()), ray=ray,
                               shared_dir=Path(shared_dir) if shared_dir else None, keep_last=keep_last,
                               max_live_seconds=max_live_seconds)
        try:
            run_service(config)
        except KeyboardInterrupt:
            pass


def _loras(given: list[str]) -> dict[str, str]:
    from ..errors import UsageError

    out = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"--lora {item}: give NAME=FILE[:SCALE], e.g. --lora style=style.safetensors:0.8")
        out[name.strip()] = path.strip()
    return out
