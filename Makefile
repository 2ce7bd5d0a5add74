# Short commands, as in peft: `make quality` checks the code, `make style` fixes what ruff can, `make test` runs the
# README's test command (every test that runs on CPU, the slow ones too; `python -m pytest` alone is the fast part).
.PHONY: quality style test

quality:
	ruff check .
	ruff format --check .
	lint-imports

style:
	ruff format .
	ruff check --fix .

test:
	python -m pytest -m "not gpu and not multi_gpu"
