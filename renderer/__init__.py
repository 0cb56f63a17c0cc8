"""fleetform: declare an LLM fleet in YAML, render it into Modal apps that run vLLM, deploy it.

The package is a pipeline, one module per stage, data flowing one way:

    load      YAML text -> tree of nodes that remember file:line:column
    validate  tree -> diagnostics (JSON Schema, then semantic rules)
    resolve   fleet defaults + deployment + environment overlays -> frozen, typed `spec.Deployment`
    render    Deployment -> Modal app module text (Jinja2), deterministic, content-hashed
    plan      rendered fleet -> what would run and what it costs (offline)
    deploy    rendered fleet -> live Modal apps, smoke-tested, rolled back on failure
    client    OpenAI-compatible HTTP client: smoke tests (`test`); `bench` is the load generator

Beside them: `modal_api` (the only module that talks to Modal), `runtime` (start-up logic shared
by every rendered app and `fleetform serve --local`, embedded verbatim in the modules), `diff` and
`gitref` (`plan --against REF`), `sizing` (`fleetform new` and the fit rule), `gateway` and
`gateway_app` (one endpoint for the fleet), `docs` (the generated schema reference), `cli`.
"""

__version__ = "0.1.0"
