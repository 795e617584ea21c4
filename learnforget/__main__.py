"""`python -m learnforget`."""

from learnforget.cli import main

main()
