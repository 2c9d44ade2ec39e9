"""The `prefalign` command: main.py parses and dispatches; one module per subcommand group."""

from prefalign.cli.main import main  # noqa: F401  (the console script prefalign.cli:main)
