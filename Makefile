# The two set-up commands of the README: `make demo` (the offline demo study) and `make test`.
# Each creates .venv first when it is missing. `make test` also builds the manual (docs/,
# mkdocs.yml) into build/site, strictly: a broken link or a missing page fails it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test lint clean-demo

$(BIN)/detbench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[test]'
	touch $@

demo: $(BIN)/detbench
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES)
	@echo "Summary of the demo study: results/summary.csv"

test: $(BIN)/detbench
	$(BIN)/ruff check src tests workflow/scripts benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest

clean-demo:
	rm -rf results/demo-cpu results/datasets/synthetic results/summary.csv results/summary.columns.json \
		results/summary_stats.csv results/summary_stats.columns.json
