"""`python -m mlops_operator` is the `mlops` command."""

from mlops_operator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
