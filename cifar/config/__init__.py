"""The configs: what a run's (and evaluate.py's) keys are and mean, and the configs read from elsewhere as today's.

    schema.py           every run key on one line: its type, own rule, bookkeeping or not, when unused, its value before it existed
    schema_checks.py    a config held to its schema: unknown keys, numbers that are not finite, each key's own rule
    evaluate_schema.py  evaluate.py's keys, their checks and the options it will not read
    compose.py          Hydra's side: the schemas and resolvers registered, conf/ composed outside a run, a job's overrides
    identity.py         what makes a run this experiment (its settings less the bookkeeping ones), and what differs
    stored.py           a stored config (checkpoint, last.pt, summary.json, a run folder) read as this version writes it
    old_keys.py         the keys that have moved, read where they live now; given on the command line, refused in one line

Between the core and the run: a training run (cifar/run/) and what reads runs back (cifar/results/) both use it, and it
imports neither. The rules across keys and against this machine are the run's (cifar/run/checks.py).
"""
