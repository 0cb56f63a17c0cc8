"""Start-up logic for one vLLM server process, shared by every rendered app and `fleetform serve --local`.

`fleetform render` copies this file, verbatim, into each generated Modal module, and
`fleetform serve --local` imports it: both start vLLM, wait for it and stop it through the same
code, so a local run proves the one on Modal. It must therefore use the standard library only.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request


class ServerExited(RuntimeError):
    """The vLLM process ended before it became healthy."""


class StartupTimeout(RuntimeError):
    """The vLLM process did not answer /health in time."""


class VLLMProcess:
    """One `vllm serve` process: start it, wait until healthy, warm it up, sleep/wake it, stop it."""

    def __init__(self, argv, port, env=None, log=print):
        self.argv = [str(a) for a in argv]  # a list, run without a shell: nothing in it is interpreted
        self.port = int(port)
        self.env = dict(env or {})
        self.log = log
        self.proc = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    # --- process ---------------------------------------------------------------------------------

    def start(self):
        self.log("starting: " + " ".join(self.argv))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env})
        return self.proc

    def stop(self, grace=30.0):
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    # --- HTTP ----------------------------------------------------------------------------------------

    def _headers(self):
        headers = {"Content-Type": "application/json"}
        key = self.env.get("VLLM_API_KEY") or os.environ.get("VLLM_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def request(self, method, path, body=None, timeout=60.0):
        """(status, parsed JSON or text) of one request to the server."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read().decode(errors="replace")
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def healthy(self):
        try:
            return self.request("GET", "/health", timeout=5.0)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    # --- start-up sequence -----------------------------------------------------------------------------

    def wait_healthy(self, timeout, interval=1.0):
        """Poll /health until it answers 200. Returns the seconds since start()."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerExited(f"vLLM exited with code {self.proc.returncode} before it became healthy")
            if self.healthy():
                elapsed = time.monotonic() - self.started_at
                self.log(f"healthy after {elapsed:.1f} s")
                return elapsed
            if time.monotonic() > deadline:
                raise StartupTimeout(f"vLLM did not answer /health within {timeout:.0f} s")
            time.sleep(interval)

    def warm_up(self, model, requests=3, max_tokens=16):
        """Send a few real chat requests so first-request work (compilation, allocation) is done."""
        body = {"model": model, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "Say hello."}]}
        for _ in range(requests):
            status, answer = self.request("POST", "/v1/chat/completions", body, timeout=300.0)
            if status != 200:
                raise RuntimeError(f"warm-up request failed with HTTP {status}: {answer}")
        self.log(f"warmed up with {requests} requests")

    def sleep(self, level=1):
        """Offload weights and free the KV cache (vLLM sleep mode). Returns seconds taken."""
        t0 = time.monotonic()
        status, answer = self.request("POST", f"/sleep?level={int(level)}", timeout=600.0)
        if status != 200:
            raise RuntimeError(f"sleep failed with HTTP {status}: {answer}")
        return time.monotonic() - t0

    def wake_up(self):
        """Reload what sleep() offloaded. Returns seconds taken."""
        t0 = time.monotonic()
        status, answer = self.request("POST", "/wake_up", timeout=600.0)
        if status != 200:
            raise RuntimeError(f"wake_up failed with HTTP {status}: {answer}")
        return time.monotonic() - t0
