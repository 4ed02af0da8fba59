"""`python -m supervisor` is the farmhand CLI (how `up` starts the detached supervisor)."""

from .cli import main

main()
