"""Glue between Snakemake and detbench: what the rules and the checks before any job call.

- ``runner``: the thin rule scripts' runner (logging, one-line errors);
- ``rule_params``: what each rule's ``params:`` hold, and so which jobs a config change reruns;
- ``invocation``: what the ``snakemake`` command line asked for and the profiles it names;
- ``completeness``: which cells are only partly there, so they are rebuilt, not summarised.

Imports ``study`` and the standard library at parse time; never torch.
"""
