"""`python -m fleet` is the `fleet` command."""
from fleet.cli.main import main

raise SystemExit(main())
