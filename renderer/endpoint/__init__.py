"""Talking to a served model: `client` (smoke test, OpenAI-compatible requests), `bench` (load test
with vLLM's serving metrics), `serve` (run a deployment's vLLM command on this machine).

This file imports nothing, so the CLI can offer `AUTH_KINDS` as choices without loading aiohttp.
"""

AUTH_KINDS = ("proxy", "api_key", "none")
