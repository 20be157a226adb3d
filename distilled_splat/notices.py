"""Notes printed once per process, however many models or renders of one run would repeat them."""

from __future__ import annotations

from nerfstudio.utils.rich_utils import CONSOLE

_said = set()


def say_once(message: str) -> None:
    """Print ``message`` the first time it is said in this process, and never again."""
    if message not in _said:
        _said.add(message)
        CONSOLE.print(message)
