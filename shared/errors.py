"""What an operator can fix: one base class, so that every command prints it as one line.

A wrong config, an unreadable recorded cluster, a Proxmox API that refuses or cannot be reached,
Redis away: each module raises its own subclass with a message that names what to fix; the CLI
catches this base alone (without importing the client, Redis or the engine to name them) and
prints `error: <message>`, exit code 2, never a traceback.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Something the operator can fix; its message is the one line they read."""
