"""skyreels: turn the released SkyReels-V2 checkpoints into video files.

    import skyreels_cli as sk
    model = sk.load("df-1.3b-540p", device="cuda")
    result = model.generate(sk.Request(prompt="a fox in the snow", frames=257, seed=42), output="fox.mp4")
    for window in model.stream(sk.Request(prompt="a cat", frames=97, seed=1)):
        window.frames  # uint8 [T, H, W, 3]

    job = sk.Job("extend", sk.Request(prompt="a sailboat at dusk", seconds=30), output="sail.mp4")
    sk.run(job, on_event=print)            # what `skyreels extend ... -o sail.mp4` runs

Names are imported on first use, so `skyreels --help` does not wait for torch.
"""

from importlib import import_module

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "load": "core.model", "Model": "core.model",
    "Request": "core.request", "Shot": "core.request",
    "Job": "core.job", "LoadOptions": "run_options",
    "run": "core.runner", "check": "core.runner", "Checked": "core.runner",
    "read_batch": "core.batch", "run_batch": "core.batch", "ModelPool": "core.pool",
    "read_script": "core.shot_list", "prepare": "core.prepare",
    "Cancel": "core.run", "LivePrompts": "core.live",
    "RunStarted": "core.events", "StepDone": "core.events", "WindowDone": "core.events",
    "RunFinished": "core.events", "PromptEnhanced": "core.events",
    "Result": "core.results", "WindowFrames": "core.results",
    "DEFAULT_NEGATIVE_PROMPT": "core.resolve",
    "ModelSpec": "models.registry", "load_registry": "models.registry", "resolve_model": "models.naming",
    "SkyreelsError": "errors", "UsageError": "errors", "ModelError": "errors", "InputFileError": "errors",
    "OutputError": "errors", "DeviceError": "errors", "ResumeError": "errors", "OutOfMemory": "errors",
    "Cancelled": "errors", "SkyreelsWarning": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'skyreels_cli' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
