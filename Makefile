.PHONY: demo test lint bench
demo:  ## run the demo: emulator + a real Airflow run of the example DAGs
	./scripts/demo.sh
test:  ## run the whole test suite
	./scripts/test.sh
lint:
	./scripts/bootstrap.sh .venv && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
bench:
	./scripts/bootstrap.sh .venv && for b in benchmarks/bench_*.py; do .venv/bin/python $$b; done
