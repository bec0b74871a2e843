"""The study's answers, readable at a glance: tables, platform comparison, plots and findings.

``layout`` names every file of the report (stdlib only: the workflow imports it at parse time),
``reference`` reads the 2020 study's published figures, ``frame`` joins them with
``results/summary.csv`` into one table of cells, and ``tables``, ``comparison``, ``findings``
and ``plots`` turn that table into what a person reads (``snakemake --report report.html``).
The numbers of the platform comparison come from ``detbench.summary.comparison``; this room
turns its verdicts into words.
"""
