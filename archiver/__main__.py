"""`python -m archiver` is the `pictory-archiver` command."""

from archiver.cli import main

main()
