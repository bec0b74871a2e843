"""The study: what a user configures and what it expands to.

- ``config``: the JSON schema (``config.schema.yaml``) with every default, validation, and the
  typed settings a cell runs with;
- ``cells``: one cell (platform, model, batch, epochs, repeat) and the one place its folder and
  files are named;
- ``grid``: the configured grid of cells, each model's starting weights and repeats, and each
  repeat's seed.

Standard library, PyYAML and jsonschema only: the workflow imports this package at parse time.
It imports nothing else of detbench but ``errors`` and ``atomic``.
"""
