"""`facestudio eval` (being built: registers no command yet)."""


def add_commands(commands) -> None:
    """Register this module's commands on the `facestudio` subparsers."""
