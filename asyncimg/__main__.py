"""``python -m asyncimg``: the ``asyncimg`` command."""

from .cli import main

raise SystemExit(main())
