"""Stage 5: what a deploy would change, and what it costs; nothing here changes anything.

cost     the offline plan: per deployment GPUs, containers, content hash, $/hour; per fleet environment
live     against what Modal runs: create, update, unchanged, conflict, orphan (one `Action` enum)
against  against the fleet at a git revision, field by field, with the restart rule
gitref   load the fleet as it was at a git revision, named as in the working tree
"""
