"""`skyreels serve` as a whole: its settings, checked; the workers it starts; the HTTP server on its socket.

    config = ServiceConfig(state_dir=Path("state"), port=0)
    serve(config)      # until Ctrl-C or SIGTERM; prints "listening on http://127.0.0.1:PORT/" first

Safe by default: it binds 127.0.0.1, and another address only with a token (`check_config`).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeviceError, UsageError
from .workers import WorkerConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_state_dir() -> Path:
    """$SKYREELS_STATE_DIR, else $XDG_STATE_HOME/skyreels, else ~/.local/state/skyreels."""
    if os.environ.get("SKYREELS_STATE_DIR"):
        return Path(os.environ["SKYREELS_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "skyreels"


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    state_dir: Path = field(default_factory=default_state_dir)
    token: str | None = None
    gpus: str = "all"                      # all, N (the first N), or a list: 0,2
    cpu_workers: int = 1                   # on a machine without a GPU
    models: tuple[str, ...] = ()           # offered to clients (empty: the registry's); the first is the default
    loras: dict[str, str] = field(default_factory=dict)  # name -> FILE[:SCALE]
    max_queued: int = 100                  # waiting jobs; one more is answered 429
    max_upload_mb: float = 100.0           # a request's body; more is answered 413
    max_prompt_chars: int = 10_000         # a prompt (and each text field); more is answered 413
    max_frames: int = 2880                 # a job's length in frames (two minutes at 24 fps); more: 413
    max_seconds: float = 120.0             # a job's length in seconds; more: 413
    cors: tuple[str, ...] = ()             # origins allowed to call the API from a browser (none by default)
    ray: str | None = None                 # a Ray cluster's address ("auto", "local", HOST:PORT): workers are actors
    shared_dir: Path | None = None         # with ray: jobs' files here, a folder every node sees at this path
    keep_last: float | None = None         # a live job's segments kept on disk (seconds) unless it says (None: all)
    max_live_seconds: float | None = None  # a live job's most (None: it runs until stopped)


def check_config(config: ServiceConfig) -> None:
    """Refuse settings that are unsafe or cannot work, before anything starts."""
    from ..models.lora import resolve_lora
    from ..models.naming import resolve_model

    if config.host not in LOOPBACK and not config.token:
        raise UsageError(f"--host {config.host} lets other machines in: give --token TOKEN (clients then send "
                         "'Authorization: Bearer TOKEN'), or keep the default --host 127.0.0.1")
    if config.token is not None and len(config.token) < 8:
        raise UsageError("--token is too short to guess slowly: give at least 8 characters")
    if not 0 <= config.port <= 65535:
        raise UsageError(f"--port {config.port} is not a port; give 1 to 65535 (0: any free port)")
    for name, value in (("--max-queued", config.max_queued), ("--max-upload-mb", config.max_upload_mb),
                        ("--max-prompt-chars", config.max_prompt_chars), ("--max-frames", config.max_frames),
                        ("--max-seconds", config.max_seconds)):
        if not value > 0:
            raise UsageError(f"{name} {value} must be positive")
    for name, value in (("--keep-last", config.keep_last), ("--max-live-seconds", config.max_live_seconds)):
        if value is not None and not 0 < value < float("inf"):
            raise UsageError(f"{name} {value} must be a positive number of seconds")
    if config.cpu_workers < 0:
        raise UsageError(f"--workers {config.cpu_workers} must be 0 or more (0: keep jobs queued, run none)")
    if config.shared_dir is not None and config.ray is None:
        raise UsageError("--shared-dir is where the workers of a Ray cluster write directly: it goes with --ray "
                         "(without it, the workers are on this machine and write into --state-dir)")
    if config.ray is not None and str(config.gpus).strip().lower() != "all":
        raise UsageError(f"--gpus {config.gpus} chooses GPUs of this machine; with --ray every GPU of the cluster "
                         "gets a worker: leave --gpus out")
    for name in config.models:
        resolve_model(name, None)
    for name, path in config.loras.items():
        if not name or "/" in name or ":" in name:
            raise UsageError(f"--lora {name}={path}: the name must be a plain word (clients give it)")
        resolve_lora(path)


def worker_configs(config: ServiceConfig) -> list[WorkerConfig]:
    """One worker per GPU chosen by --gpus; on a machine without a GPU, --workers CPU workers sharing the cores."""
    gpus = _chosen_gpus(config.gpus)
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",")] if visible else None
        return [WorkerConfig(f"gpu{i}", "cuda", {"CUDA_VISIBLE_DEVICES": ids[i] if ids else str(i)}) for i in gpus]
    count = config.cpu_workers
    threads = max(1, (os.cpu_count() or 1) // max(count, 1))
    return [WorkerConfig("cpu" if count == 1 else f"cpu{i}", "cpu", {"OMP_NUM_THREADS": str(threads)}, threads)
            for i in range(count)]


def _chosen_gpus(gpus: str) -> list[int]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = str(gpus).strip().lower()
    if text == "all":
        return list(range(count))
    try:
        chosen = list(range(int(text))) if text.isdigit() else [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--gpus {gpus!r}: give all, a number, or a list such as 0,2") from None
    if chosen and count == 0:
        raise DeviceError(f"--gpus {gpus}: no GPU is visible here; leave --gpus out to run on the CPU")
    missing = [i for i in chosen if not 0 <= i < count]
    if missing:
        raise DeviceError(f"--gpus {gpus}: GPU {missing[0]} is not there; this machine shows {count} GPU(s)")
    return chosen


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that --port 0 can say which port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServiceConfig) -> None:
    """Run the service until Ctrl-C or SIGTERM."""
    import uvicorn

    from .api import Service, create_app
    from .fields import Offer
    from .scheduler import Scheduler
    from .store import Store
    from .workers import ProcessFleet

    check_config(config)
    state = Path(config.state_dir).expanduser().resolve()
    # The jobs' files (uploads, videos): in the state folder, or where every node of a cluster sees them
    files = Path(config.shared_dir).expanduser().resolve() if config.shared_dir is not None else state
    if config.ray is not None:
        from .ray_fleet import RayFleet

        fleet = RayFleet(config.ray, files, config.cpu_workers, shared=config.shared_dir is not None)
        gpus = int(fleet.gpus)
    else:
        configs = worker_configs(config)
        fleet = ProcessFleet(configs)
        gpus = sum(c.device == "cuda" for c in configs)
    sock = bind(config.host, config.port)
    state.mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    store = Store(state / "queue.db")
    scheduler = Scheduler(store, files, fleet)
    offer = Offer(tuple(config.models), dict(config.loras), gpus=gpus, gpus_elsewhere=config.ray is not None,
                  max_prompt_chars=config.max_prompt_chars, max_frames=config.max_frames,
                  max_seconds=config.max_seconds, keep_last=config.keep_last,
                  max_live_seconds=config.max_live_seconds)
    service = Service(store, scheduler, offer, files, config)
    app = create_app(service)
    scheduler.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    workers = ", ".join(f"{w.name} ({w.device})" for w in scheduler.workers) or "none (jobs stay queued)"
    if config.ray is not None:
        workers += f"; Ray cluster at {config.ray}, {len(fleet.capacity())} node(s)"
        workers += f"; files shared in {files}" if config.shared_dir is not None else "; files shipped back"
    print(f"skyreels serve: listening on http://{shown}:{port}/ ; workers: {workers}; state: {state}",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.stop()
