"""``python -m fwp …`` and the ``fwp`` console script: the same CLI as ``python cli.py …``."""

from fwp.training.cli import main


def run() -> None:
    """Run the CLI on ``sys.argv``; the exit status is the CLI's (a console script would otherwise
    pass ``main``'s return value, the CLI object, to ``sys.exit``)."""
    main()


if __name__ == "__main__":
    run()
