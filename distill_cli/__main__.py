"""`python -m distill_cli …` is the `distill` command."""

from distill_cli.main import main

main()
