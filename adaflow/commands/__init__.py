"""CLI commands, one module each; every module exports its rows of the command table as
`COMMANDS` (adaflow.commands.common.Command), which adaflow/cli.py lists explicitly."""
