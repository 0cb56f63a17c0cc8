"""Stage 4: resolved deployments -> Modal app modules, as text. Pure: objects in, text out.

render       a Deployment -> its module (Jinja2; values only as Python literals, through one filter)
gateway      the fleet's gateway -> its module (a CPU-only app that routes by `model`)
write        the one atomic writer: all modules or none, and only over files fleetform generated
templates/   the Jinja templates, beside the code that renders them
runtime      start-up logic (start vLLM, wait for health, snapshot sleep/wake, the dev-route guard):
             its sections are copied into every module and imported by `fleetform serve --local`
gateway_app  the gateway's ASGI app, copied into the gateway's module
"""
