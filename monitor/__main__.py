"""`python -m monitor` runs the treasury-monitor CLI."""

from monitor.cli.main import cli

if __name__ == "__main__":
    cli()
