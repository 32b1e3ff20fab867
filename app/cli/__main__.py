"""`python -m app.cli …` is the `distill` command."""

from app.cli.main import main

main()
