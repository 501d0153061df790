from regindex.cli import cli

cli()
