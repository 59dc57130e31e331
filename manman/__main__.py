"""`python -m manman` is the `manman` command."""

from manman.cli import main

raise SystemExit(main())
