"""`fleetform serve NAME --local`: run a deployment's own vLLM command line on this machine.

The command line is the one `resolve` built for the rendered app (`Deployment.argv`); only what
must differ on a local machine is changed: the executable (vLLM may have no console script), the
model source (a local copy instead of the hub id), the load format and the port. Start-up goes
through `runtime.VLLMProcess`, the same code the rendered app embeds: `LocalServer` starts and stops
one run (`fleetform tune --local` starts one per engine setting), `run_local` keeps it in the foreground.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from renderer.codegen import runtime
from renderer.config import spec


@dataclass(frozen=True)
class LocalOptions:
    model_path: str | None = None  # serve this directory instead of the hub id (drops --revision)
    load_format: str | None = None  # e.g. "dummy": random weights of the right shape
    port: int | None = None
    host: str | None = None  # None: the rendered app's (every interface); the CLI passes 127.0.0.1
    vllm: tuple[str, ...] = spec.VLLM_EXECUTABLE  # e.g. ("python3", "-m", "vllm.entrypoints.cli.main", "serve")
    startup_timeout: int | None = None  # default: the deployment's
    lora_dir: str | None = None  # where adapters go on this machine (default: under ~/.cache/fleetform)


def _local_lora_root(opts: LocalOptions) -> str:
    return opts.lora_dir or os.path.join(os.path.expanduser("~"), ".cache", "fleetform", "lora")


def local_adapters(d: spec.Deployment, opts: LocalOptions) -> list[dict[str, str]]:
    """The deployment's adapters with their folders moved from the Modal Volume to this machine."""
    root = _local_lora_root(opts)
    return [{**a.to_runtime(), "path": a.path.replace(spec.LORA_ROOT, root, 1)} for a in d.model.lora_adapters]


def local_argv(d: spec.Deployment, opts: LocalOptions) -> list[str]:
    """The deployment's argv with the local substitutions applied."""
    args: list[str] = []
    for arg in d.vllm_args:
        tokens = list(arg.tokens)
        if tokens == [d.model.id] and opts.model_path:
            tokens = [opts.model_path]
        elif tokens[0] == "--revision" and opts.model_path:
            continue  # a local directory has no revisions
        elif tokens[0] == "--host" and opts.host is not None:
            tokens = ["--host", opts.host]
        elif tokens[0] == "--port" and opts.port is not None:
            tokens = ["--port", str(opts.port)]
        elif tokens[0] == "--lora-modules":
            tokens = [t.replace(spec.LORA_ROOT, _local_lora_root(opts), 1) for t in tokens]
        args.extend(tokens)
    if opts.load_format:
        args.extend(["--load-format", opts.load_format])
    return [*opts.vllm, *args]


class ServeError(Exception):
    """vLLM did not come up healthy (it exited, timed out, or could not start)."""


@dataclass(frozen=True)
class Served:
    """How a local vLLM run ended: its exit status, and whether Ctrl-C (or SIGTERM) stopped it."""

    returncode: int | None
    interrupted: bool


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[None]:
    """This process's stdout and stderr pointed at `path` (appended) while a child is spawned: the child
    keeps them, this process gets its own back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


class _Process(runtime.VLLMProcess):
    """`runtime.VLLMProcess`, whose vLLM writes its output (and the start line) to `output` when set."""

    output: str | None = None

    def start(self):
        if self.output is None:
            return super().start()
        with _output_to(self.output):
            return super().start()


class LocalServer:
    """One vLLM run on this machine with the rendered app's start-up sequence.

    `start()` boots it as the Modal app does (for `cold_start: snapshot`: boot, warm up, sleep, wake)
    and returns the seconds from process start to ready; `stop()` ends it (SIGTERM, then SIGKILL). As
    a context manager, leaving the block stops it, by an exception or Ctrl-C too. `output`: a file for
    vLLM's own stdout and stderr (None: this process's).
    """

    def __init__(self, d: spec.Deployment, opts: LocalOptions, log=print, output: str | None = None):
        self.deployment = d
        self.opts = opts
        self.port = opts.port if opts.port is not None else d.engine.port
        self.proc = _Process(local_argv(d, opts), port=self.port, env=d.process_env, log=log)
        self.proc.output = output

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Boot and wait until ready; the seconds it took. Raises ServeError (after stopping it) when it
        never became ready, OSError when it cannot be started."""
        d, proc = self.deployment, self.proc
        timeout = self.opts.startup_timeout or d.scaling.startup_timeout
        try:
            if d.snapshot:  # the same sequence as on Modal: boot, warm up, sleep; then wake
                runtime.boot_for_snapshot(
                    proc, timeout=timeout, names=d.model.names, adapters=local_adapters(d, self.opts)
                )
                runtime.after_restore(proc)
            else:
                runtime.boot(proc, timeout=timeout, adapters=local_adapters(d, self.opts), warm=d.model.names)
        except (runtime.ServerExited, runtime.StartupTimeout, RuntimeError) as exc:
            self.stop()
            raise ServeError(str(exc)) from None
        return time.monotonic() - proc.started_at

    def stop(self) -> int | None:
        """Stop vLLM if it runs; its exit code. A second Ctrl-C while it shuts down kills it at once."""
        try:
            return self.proc.stop()
        except KeyboardInterrupt:
            child = self.proc.proc
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            raise

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_local(d: spec.Deployment, opts: LocalOptions, log=print) -> Served:
    """Start vLLM, wait for health, then stay in the foreground until it exits or Ctrl-C.

    Raises ServeError if it never became healthy (after stopping it), OSError if it cannot be started.
    """
    server = LocalServer(d, opts, log)
    proc = server.proc
    stopping = False

    def _stop(signum, frame):  # forward Ctrl-C / SIGTERM to vLLM; the main thread waits for it to exit
        nonlocal stopping
        if not stopping and proc.proc is not None and proc.proc.poll() is None:
            stopping = True
            log("stopping vLLM ...")
            proc.proc.send_signal(signal.SIGTERM)  # no waiting in a signal handler: wait() is not reentrant

    old_int = signal.signal(signal.SIGINT, _stop)
    old_term = signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            server.start()
        except ServeError:
            if stopping:
                return Served(None, True)
            raise
        names = ", ".join(d.model.served_model_names)
        log(f"serving {names} at http://127.0.0.1:{server.port}/v1 (Ctrl-C to stop)")
        code = proc.proc.wait()
        return Served(code, stopping)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        server.stop()
        sys.stdout.flush()
