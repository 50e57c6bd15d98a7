"""``python -m cropdoc``: the same as the ``cropdoc`` command."""

from .cli import main

main()
