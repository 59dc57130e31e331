"""`python -m manman` is the `manman` command."""

from manman.cli.main import main

raise SystemExit(main())
