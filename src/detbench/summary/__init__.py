"""From finished cells to the study's tables and the statistics over them.

- ``aggregate``: every finished cell into ``results/summary.csv``;
- ``cell_stats``: ``results/summary_stats.csv``, each cell over its repeats;
- ``stats``: spread, confidence intervals and the tests of two platforms, as typed values
  (a comparison's verdict is a ``Verdict``, never text);
- ``comparison``: platforms side by side over the report's cell frame: the cells on both
  platforms of a pair, their statistics over the repeats, the summary per model and batch;
- ``csv_table``: the CSV form of those tables.

pandas, numpy and scipy; no torch. Words about these numbers are written in ``report/``, which
imports this room (never the other way round).
"""
