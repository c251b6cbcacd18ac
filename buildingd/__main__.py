"""Entry point for ``python -m buildingd``."""

from buildingd.service.cli import main

raise SystemExit(main())
