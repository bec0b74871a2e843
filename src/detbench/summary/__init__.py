"""From finished cells to the study's tables and the statistics over them.

- ``aggregate``: every finished cell into ``results/summary.csv``;
- ``cell_stats``: ``results/summary_stats.csv``, each cell over its repeats;
- ``stats``: spread, confidence intervals and the platform comparisons, as typed values;
- ``csv_table``: the CSV form of those tables.

pandas, numpy and scipy; no torch.
"""
