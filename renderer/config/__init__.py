"""Stages 1-3: YAML text -> typed, fully resolved deployments. Data flows down this list:

    load         YAML text -> a tree of nodes that remember file:line:column (and which files make a fleet)
    schema       the one reader of schema/*.json: defaults, `$ref`s, the validator class
    validate     the tree against the JSON Schema -> diagnostics at their own line
    rules        semantic rules, one small function each (hardware, ordering, flags, env, fit)
    credentials  literal secrets anywhere in a document, keys included
    vllm_args    the one table that yields vLLM's command line and the flags fleetform manages
    resolve      fleet defaults + environment overlays + the file, checked in every environment
                 -> frozen `spec` objects
    spec         the typed result every later stage reads

`vllm/` holds the pinned vLLM's own option list (dumped from its parser), which `rules` and
`vllm_args` check against. Nothing here renders, prints or talks to the network.
"""
